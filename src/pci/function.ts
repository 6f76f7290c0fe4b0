/**
 * A PCI function as its device author declares it: IDs, class, BARs and capabilities;
 * the type 0 configuration header (PCI Local Bus Specification 3.0, 6.1-6.2), BAR
 * sizing and decoding (6.2.5), the capability list (6.7) and INTx (6.2.4, 6.8.1.3
 * "Interrupt Disable", "Interrupt Status") are this class's job. A BAR's window maps
 * where the guest's BAR value and the command register say, and moves when they change.
 * @module
 */
import { checkInteger, checkU32, checkUnsignedBigint, invalid } from '../check.js'
import type { DeviceWindow, IoBus, WindowHandler } from '../bus.js'
import { MshvError, describe, hex } from '../errors.js'
import { bool, noneLeft, record, u16, u8, version, type Check, type Saveable } from '../snapshot/device-state.js'
import type { DmaMemory, PciUpstream } from './iommu.js'

/** Command register bits (6.2.2). */
export const PCI_COMMAND_IO = 1 << 0
export const PCI_COMMAND_MEMORY = 1 << 1
export const PCI_COMMAND_MASTER = 1 << 2
export const PCI_COMMAND_INTX_DISABLE = 1 << 10
/** The command bits a guest may set here: I/O, memory, bus master, SERR#, INTx disable. */
const COMMAND_WRITABLE = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | (1 << 8) | PCI_COMMAND_INTX_DISABLE
/** Status register bits (6.2.3). */
const STATUS_INTERRUPT = 1 << 3
const STATUS_CAP_LIST = 1 << 4
/** Where the first capability goes: after the 64-byte header. */
const CAP_START = 0x40
/** Conventional PCI's configuration space. */
export const PCI_CONFIG_SIZE = 256

/** One BAR as the device declares it. */
export interface PciBarOptions {
  /** `'mmio32'`, `'mmio64'` (takes this BAR and the next) or `'io'`. */
  kind: 'mmio32' | 'mmio64' | 'io'
  /** Bytes (or ports): a power of two, at least 16 for memory and 4 for I/O (6.2.5.1). */
  size: number
  /** Memory only: reads have no side effects (the BAR's bit 3). */
  prefetchable?: boolean
  /** Handles the guest's accesses, at offsets within the BAR. */
  handler: WindowHandler
}

/**
 * A capability in the list (6.7): its first two bytes (ID, next pointer) belong to the
 * function; the rest are the capability's.
 */
export interface PciCapability {
  /** The capability ID (0x05 MSI, 0x09 vendor-specific, 0x11 MSI-X, ...). */
  readonly id: number
  /** Its length in bytes, the two header bytes included. */
  readonly length: number
  /** Reads `size` bytes at `offset` from the capability's start (offset >= 2; the function reads byte by byte). */
  read(offset: number, size: number): number
  /** Writes `size` bytes at `offset` from the capability's start (offset >= 2). */
  write(offset: number, size: number, value: number): void
}

/** What a PCI function is, declared. */
export interface PciFunctionOptions {
  /** What listings and errors call it. */
  name: string
  vendorId: number
  deviceId: number
  /** Base class, sub-class and programming interface: `0x020000` is an Ethernet controller. */
  classCode: number
  revision?: number
  subsystemVendorId?: number
  subsystemId?: number
  /** The INTx pin it uses: 1 (INTA#) .. 4 (INTD#), or 0 for none (default 1). */
  interruptPin?: number
  /** BARs by number; an `mmio64` BAR leaves the next number empty. */
  bars?: readonly (PciBarOptions | undefined)[]
  /** The capability list, in order. */
  capabilities?: readonly PciCapability[]
}

/** The INTx line a function drives (the host bridge's share of an I/O APIC pin). @internal */
export interface PciIntx {
  /** Drives the pin. */
  set(asserted: boolean): void
  /** Sets the pin's level without telling the I/O APIC (a restore: the I/O APIC restores its own view). */
  restoreLevel(asserted: boolean): void
}

/**
 * What the guest (or the firmware) wrote of a function's configuration space
 * ({@link PciFunction.save}); its IDs, class and capability list are its declaration.
 * Its capabilities' state is their owner's (an {@link Msix}'s is the virtio transport's).
 */
export interface PciFunctionState {
  version: 1
  /** The command register. */
  command: number
  /** Plain storage the guest may write: cache line size, latency timer, interrupt line. */
  cacheLineSize: number
  latencyTimer: number
  interruptLine: number
  /** Each BAR's address by number; null where there is none (or the upper half of a 64-bit one). */
  bars: (number | null)[]
  /** The INTx pin as the function drives it (the command register may disable it). */
  intx: boolean
}

/** A BAR at run time: its declaration, the address the guest (or the firmware) gave it, its window. */
interface Bar {
  readonly options: PciBarOptions
  /** The address programmed (a number: GPAs fit in 52 bits). */
  address: number
  window: DeviceWindow | undefined
}

function checkId(what: string, v: unknown, bits: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= 2 ** bits) {
    throw new MshvError('EINVAL', `PCI ${what} must be an integer in 0..${hex(2 ** bits - 1)}, got ${describe(v)}`)
  }
  return v
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0
}

/** A PCI function: its configuration space, BAR windows and INTx line. */
export class PciFunction implements Saveable<PciFunctionState> {
  readonly name: string
  private readonly header = new DataView(new ArrayBuffer(0x40))
  private readonly bars: (Bar | undefined)[] = new Array<Bar | undefined>(6).fill(undefined)
  private readonly caps: { readonly at: number; readonly cap: PciCapability }[] = []
  private command = 0
  private intxLevel = false
  private intx: PciIntx | undefined
  private bus: IoBus | undefined
  private upstream: PciUpstream | undefined
  /** Bumped when a window could not be mapped where the guest put it (it overlapped another). */
  windowConflicts = 0

  constructor(options: PciFunctionOptions) {
    if (typeof options !== 'object' || options === null) throw new MshvError('EINVAL', `PciFunction: options must be an object, got ${describe(options)}`)
    this.name = String(options.name)
    const h = this.header
    h.setUint16(0x00, checkId('vendorId', options.vendorId, 16), true)
    h.setUint16(0x02, checkId('deviceId', options.deviceId, 16), true)
    h.setUint8(0x08, checkId('revision', options.revision ?? 0, 8))
    h.setUint32(0x08, (h.getUint8(0x08) | (checkId('classCode', options.classCode, 24) << 8)) >>> 0, true)
    h.setUint16(0x2c, checkId('subsystemVendorId', options.subsystemVendorId ?? 0, 16), true)
    h.setUint16(0x2e, checkId('subsystemId', options.subsystemId ?? 0, 16), true)
    const pin = checkId('interruptPin', options.interruptPin ?? 1, 8)
    if (pin > 4) throw new MshvError('EINVAL', `PCI interruptPin must be 0 (none) or 1..4 (INTA#..INTD#), got ${pin}`)
    h.setUint8(0x3d, pin)
    const bars = options.bars ?? []
    if (bars.length > 6) throw new MshvError('EINVAL', `${this.name}: a type 0 header has 6 BARs, got ${bars.length}`)
    bars.forEach((b, i) => {
      if (b === undefined) return
      const minimum = b.kind === 'io' ? 4 : 16
      if (!['mmio32', 'mmio64', 'io'].includes(b.kind)) throw new MshvError('EINVAL', `${this.name}: BAR ${i} kind must be 'mmio32', 'mmio64' or 'io', got ${describe(b.kind)}`)
      if (!isPowerOfTwo(b.size) || b.size < minimum || (b.kind === 'io' && b.size > 256) || (b.kind === 'mmio32' && b.size > 2 ** 31)) {
        throw new MshvError('EINVAL', `${this.name}: BAR ${i} size must be a power of two from ${minimum}${b.kind === 'io' ? ' to 256' : ''}, got ${describe(b.size)}`)
      }
      if (b.kind === 'mmio64' && (i === 5 || bars[i + 1] !== undefined)) throw new MshvError('EINVAL', `${this.name}: 64-bit BAR ${i} needs BAR ${i + 1} free for its upper half`)
      if (this.bars[i] !== undefined) throw new MshvError('EINVAL', `${this.name}: BAR ${i} is the upper half of BAR ${i - 1}`)
      this.bars[i] = { options: b, address: 0, window: undefined }
      if (b.kind === 'mmio64') this.bars[i + 1] = undefined
    })
    let at = CAP_START
    for (const cap of options.capabilities ?? []) {
      if (!Number.isInteger(cap.length) || cap.length < 2 || at + cap.length > PCI_CONFIG_SIZE) throw new MshvError('EINVAL', `${this.name}: capability ${hex(cap.id)} does not fit in configuration space`)
      this.caps.push({ at, cap })
      at = (at + cap.length + 3) & ~3
    }
    if (this.caps.length > 0) {
      h.setUint16(0x06, STATUS_CAP_LIST, true)
      h.setUint8(0x34, CAP_START)
    }
  }

  /** The vendor ID. */
  get vendorId(): number {
    return this.header.getUint16(0x00, true)
  }

  /** The device ID. */
  get deviceId(): number {
    return this.header.getUint16(0x02, true)
  }

  /** Whether the guest enabled bus mastering (the function may do DMA and signal MSIs). */
  get busMaster(): boolean {
    return (this.command & PCI_COMMAND_MASTER) !== 0
  }

  private onBus(what: string): PciUpstream {
    const u = this.upstream
    if (!u) throw new MshvError('EINVAL', `${this.name}: ${what} needs the function on a PCI bus (PciHost.add)`)
    return u
  }

  /** Its requester ID on the bus: bus << 8 | device << 3 | function (PCIe Base 2.2.6.2). */
  get requesterId(): number {
    return this.onBus('a requester ID').requesterId
  }

  /**
   * The memory the function's DMA reaches: guest memory itself (`vm.memory`) when the
   * bus has no IOMMU, else the IOMMU's translation for this requester ID, where a DMA
   * the tables refuse is an `EFAULT` and a fault the IOMMU records.
   */
  get dma(): DmaMemory {
    const u = this.onBus('DMA')
    return u.iommu === undefined ? u.memory : u.iommu.dmaFor(u.requesterId)
  }

  /**
   * Sends a message-signalled interrupt as this function (what {@link Msi} and
   * {@link Msix} call): to the local APICs as it is, or through the bus's IOMMU's
   * interrupt remapping with this function's requester ID when it has one (dropped
   * when the IOMMU blocks it). A function not on a bus sends nothing.
   */
  sendMsi(address: number | bigint, data: number): void {
    const a = checkUnsignedBigint(`${this.name}: MSI address`, typeof address === 'number' && Number.isSafeInteger(address) ? BigInt(address) : address)
    checkU32(`${this.name}: MSI data`, data)
    const u = this.upstream
    if (!u) return
    if (u.iommu === undefined) return u.deliverMsi(a, data)
    const m = u.iommu.remapInterrupt(u.requesterId, { address: a, data })
    if (m) u.deliverMsi(m.address, m.data)
  }

  /** The address BAR `index` holds now, if it is a BAR. */
  barAddress(index: number): number | undefined {
    checkInteger('barAddress: index', index, 0, 5)
    return this.bars[index]?.address
  }

  /** The BARs declared: number, kind and size (for the firmware's assignment). */
  declaredBars(): readonly { readonly index: number; readonly kind: PciBarOptions['kind']; readonly size: number }[] {
    const out: { index: number; kind: PciBarOptions['kind']; size: number }[] = []
    this.bars.forEach((b, index) => b && out.push({ index, kind: b.options.kind, size: b.options.size }))
    return out
  }

  /**
   * Connects the function to a bus: its BAR windows go on `bus`, its INTx pin drives
   * `intx`, its DMA and MSIs go through `upstream`. The host bridge calls it when the
   * function is added. @internal
   */
  attach(bus: IoBus, intx: PciIntx | undefined, upstream?: PciUpstream): void {
    if (this.bus) throw new MshvError('EBUSY', `${this.name} is already on a PCI bus`)
    this.bus = bus
    this.intx = intx
    this.upstream = upstream
    this.bars.forEach((b, i) => {
      if (b) b.window = bus.window(b.options.kind === 'io' ? 'pio' : 'mmio', b.options.size, b.options.handler, `${this.name} BAR ${i}`)
    })
  }

  /** What the firmware does before the OS runs: gives BAR `index` an address, and turns decoding on with `command`. @internal */
  assign(index: number, address: number): void {
    const b = this.bars[index]
    if (!b) throw new MshvError('EINVAL', `${this.name}: no BAR ${index}`)
    b.address = address
    this.updateWindows()
  }

  /** Sets the command register as firmware leaves it. @internal */
  setCommand(command: number): void {
    this.command = command & COMMAND_WRITABLE
    this.updateWindows()
    this.driveIntx()
  }

  /** Asserts or deasserts the function's INTx pin (level-triggered, shared: PCI 2.2.6). */
  setIntx(asserted: boolean): void {
    this.intxLevel = asserted
    this.driveIntx()
  }

  private driveIntx(): void {
    this.intx?.set(this.intxOutput())
  }

  /** The INTx pin's level: asserted and not disabled by the command register. */
  private intxOutput(): boolean {
    return this.intxLevel && (this.command & PCI_COMMAND_INTX_DISABLE) === 0
  }

  /** Maps each BAR's window where its address and the command register put it. */
  private updateWindows(): void {
    for (const b of this.bars) {
      if (!b?.window) continue
      const io = b.options.kind === 'io'
      const enabled = (this.command & (io ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY)) !== 0
      const limit = io ? 0x10000 : 2 ** 52
      // An address of 0 is "unassigned"; one past the space (a sizing pattern left in
      // place) is one the window cannot have.
      const wanted = enabled && b.address !== 0 && b.address + b.options.size <= limit ? b.address : undefined
      const at = b.window.base
      if (wanted === undefined) {
        b.window.unmap()
        continue
      }
      if (at !== undefined && Number(at) === wanted) continue
      try {
        b.window.map(wanted)
      } catch (e) {
        // Two decoders on one address: hardware behaviour is undefined; here the
        // window stays unmapped until the guest moves it somewhere free.
        if (!(e instanceof MshvError) || e.code !== 'EOVERLAP') throw e
        this.windowConflicts++
      }
    }
  }

  /** The BAR register at `index` as the guest reads it (6.2.5.1). */
  private barRegister(index: number): number {
    const b = this.bars[index]
    if (!b) {
      const low = this.bars[index - 1]
      // The upper half of a 64-bit BAR.
      if (index > 0 && low?.options.kind === 'mmio64') return Math.floor(low.address / 2 ** 32) >>> 0
      return 0
    }
    const o = b.options
    if (o.kind === 'io') return ((b.address & 0xfffc) | 1) >>> 0
    const flags = (o.kind === 'mmio64' ? 0b100 : 0) | (o.prefetchable ? 0b1000 : 0)
    return ((b.address % 2 ** 32) | flags) >>> 0
  }

  private writeBar(index: number, value: number): void {
    const b = this.bars[index]
    if (!b) {
      const low = this.bars[index - 1]
      if (index > 0 && low?.options.kind === 'mmio64') {
        // The upper half: the bits above the size are the address's (all of them below 4 GiB sizes).
        const sizeHigh = Math.floor((low.options.size - 1) / 2 ** 32)
        const high = (value & ~sizeHigh) >>> 0
        low.address = high * 2 ** 32 + (low.address % 2 ** 32)
        this.updateWindows()
      }
      return
    }
    const size = b.options.size
    // The address bits below the size read as zero: writing all ones and reading back gives the size.
    const mask = b.options.kind === 'io' ? (~(size - 1) & 0xffff) >>> 0 : size >= 2 ** 32 ? 0 : (~(size - 1) >>> 0) & 0xffff_fff0
    const low = (value & mask) >>> 0
    b.address = b.options.kind === 'mmio64' ? Math.floor(b.address / 2 ** 32) * 2 ** 32 + low : low
    this.updateWindows()
  }

  /** Reads `size` (1, 2 or 4) bytes of configuration space at `offset` (aligned to its size). */
  configRead(offset: number, size: number): number {
    const dword = offset & ~3
    const v = this.readDword(dword)
    const shift = (offset & 3) * 8
    return size === 4 ? v >>> 0 : (v >>> shift) & ((1 << (size * 8)) - 1)
  }

  private readDword(at: number): number {
    if (at >= PCI_CONFIG_SIZE) return 0 // no extended capabilities
    if (at >= 0x10 && at < 0x28) return this.barRegister((at - 0x10) >> 2)
    if (at === 0x04) {
      const status = this.header.getUint16(0x06, true) | (this.intxLevel ? STATUS_INTERRUPT : 0)
      return (this.command | (status << 16)) >>> 0
    }
    if (at < 0x40) return this.header.getUint32(at, true)
    const c = this.caps.find(({ at: start, cap }) => at + 4 > start && at < start + cap.length)
    if (!c) return 0
    // Dword by dword, byte by byte where a capability starts or ends inside it.
    let v = 0
    for (let i = 0; i < 4; i++) v |= this.capabilityByte(at + i) << (i * 8)
    return v >>> 0
  }

  private capabilityByte(offset: number): number {
    const i = this.caps.findIndex(({ at, cap }) => offset >= at && offset < at + cap.length)
    const c = this.caps[i]
    if (!c) return 0
    const rel = offset - c.at
    if (rel === 0) return c.cap.id
    if (rel === 1) return this.caps[i + 1]?.at ?? 0
    return c.cap.read(rel, 1) & 0xff
  }

  /** Writes the low `size` (1, 2 or 4) bytes of `value` at `offset` (aligned to its size). */
  configWrite(offset: number, size: number, value: number): void {
    if (offset >= PCI_CONFIG_SIZE) return
    const dword = offset & ~3
    if (dword === 0x04) {
      // Command (the status half's error bits are RW1C; none is ever set here).
      if (offset < 0x06) {
        const shift = (offset & 3) * 8
        const bytes = Math.min(size, 2 - (offset & 3))
        const m = ((1 << (bytes * 8)) - 1) << shift
        this.setCommand(((this.command & ~m) | ((value << shift) & m)) & 0xffff)
      }
      return
    }
    if (dword >= 0x10 && dword < 0x28) {
      // BARs are written whole (Linux and every firmware do); a partial write merges into the current value.
      const index = (dword - 0x10) >> 2
      const shift = (offset & 3) * 8
      const m = size === 4 ? 0xffff_ffff : ((1 << (size * 8)) - 1) << shift
      this.writeBar(index, ((this.barRegister(index) & ~m) | ((value << shift) & m)) >>> 0)
      return
    }
    if (offset === 0x0c || offset === 0x0d || offset === 0x3c) {
      // Cache line size, latency timer, interrupt line: plain storage.
      for (let i = 0; i < size && offset + i <= 0x3c; i++) if ([0x0c, 0x0d, 0x3c].includes(offset + i)) this.header.setUint8(offset + i, (value >>> (i * 8)) & 0xff)
      return
    }
    if (offset < 0x40) return
    // The bytes past each capability's ID and next pointer are the capability's.
    for (const { at, cap } of this.caps) {
      const start = Math.max(offset, at + 2)
      const end = Math.min(offset + size, at + cap.length)
      if (start < end) cap.write(start - at, end - start, value >>> ((start - offset) * 8))
    }
  }

  /** The command register, the writable header bytes, the BARs' addresses and the INTx pin. */
  save(): PciFunctionState {
    const h = this.header
    return {
      version: 1,
      command: this.command,
      cacheLineSize: h.getUint8(0x0c),
      latencyTimer: h.getUint8(0x0d),
      interruptLine: h.getUint8(0x3c),
      bars: this.bars.map((b) => (b ? b.address : null)),
      intx: this.intxLevel,
    } satisfies PciFunctionState
  }

  /** The check of a state of this function: its BARs are this function's. @internal */
  stateCheck(): Check<PciFunctionState> {
    return record<PciFunctionState>({
      version: version(1),
      command: (what, v) => {
        const c = u16(what, v)
        if ((c & ~COMMAND_WRITABLE) !== 0) throw invalid(what, `a command register within ${hex(COMMAND_WRITABLE)}`, c)
        return c
      },
      cacheLineSize: u8,
      latencyTimer: u8,
      interruptLine: u8,
      bars: (what, v) => {
        if (!Array.isArray(v) || v.length !== 6) throw invalid(what, 'an array of 6', v)
        return v.map((a: unknown, i) => this.checkBar(`${what}[${i}]`, i, a))
      },
      intx: bool,
    })
  }

  /** BAR `index`'s address as the guest can leave it: inside its space, aligned to its size; null where there is no BAR. */
  private checkBar(what: string, index: number, v: unknown): number | null {
    const b = this.bars[index]
    if (!b) {
      if (v !== null) throw invalid(what, `null (${this.name} has no BAR ${index})`, v)
      return null
    }
    const { kind, size } = b.options
    // A 64-bit BAR's address is a number: all ones in both halves (sizing) rounds to 2^64 itself.
    const limit = kind === 'io' ? 0xffff : kind === 'mmio32' ? 2 ** 32 - 1 : 2 ** 64
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > limit || v % size !== 0) {
      throw invalid(what, `an address in 0..${hex(limit)} aligned to BAR ${index}'s ${hex(size)} bytes`, v)
    }
    return v
  }

  /**
   * Restores what {@link save} gave: the BAR windows move where the addresses say, the
   * INTx pin takes its level without telling the I/O APIC (which restores its own view).
   * `EINVAL` (and nothing changed) for a bad state or one of another function's BARs.
   */
  restore(state: PciFunctionState): void {
    const { version: _, command, cacheLineSize, latencyTimer, interruptLine, bars, intx, ...rest } = this.stateCheck()('pciFunction.restore: state', state)
    noneLeft(rest)
    this.header.setUint8(0x0c, cacheLineSize)
    this.header.setUint8(0x0d, latencyTimer)
    this.header.setUint8(0x3c, interruptLine)
    this.command = command
    bars.forEach((a, i) => {
      const b = this.bars[i]
      if (b && a !== null) b.address = a
    })
    this.intxLevel = intx
    this.updateWindows()
    this.intx?.restoreLevel(this.intxOutput())
  }

  /** Maps each window where its BAR says, if it is free now (after a restore moved another out of the way). @internal */
  remap(): void {
    this.updateWindows()
  }
}
