/**
 * PCI bus 0 behind a host bridge: configuration mechanism #1 (ports 0xCF8/0xCFC, PCI
 * Local Bus Specification 3.0, 3.2.2.3.2) and ECAM (PCI Express Base Specification,
 * 7.2.2; described to the OS by the ACPI MCFG table), BAR assignment from the bridge's
 * windows as firmware does it before the OS runs, and INTx wired to I/O APIC pins
 * 16-23 (the DSDT's `_PRT` says which).
 * @module
 */
import { checkFunction, checkInstance, checkInteger, checkObject } from '../check.js'
import { Vm } from '../vm.js'
import type { IrqSink } from '../platform/irq.js'
import { MshvError, describe, hex } from '../errors.js'
import { PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PciFunction, type PciFunctionState } from './function.js'
import { noneLeft, parseState, u32, version, type Saveable } from '../snapshot/device-state.js'
import type { PciIommu } from './iommu.js'

/** CONFIG_ADDRESS and CONFIG_DATA of mechanism #1. */
export const PCI_CONFIG_ADDRESS = 0xcf8
export const PCI_CONFIG_DATA = 0xcfc
/** ECAM: bus 0's 32 devices x 8 functions x 4 KiB, below the I/O APIC (the e820 map reserves it). */
export const PCI_ECAM_BASE = 0xe000_0000
export const PCI_ECAM_SIZE = 1 << 20
/** The bridge's 32-bit memory window, where BARs go: from 3 GiB (the most RAM the loader gives) to the ECAM. */
export const PCI_MMIO_START = 0xc000_0000
export const PCI_MMIO_END = PCI_ECAM_BASE
/** The bridge's I/O window for I/O BARs. */
export const PCI_IO_START = 0xc000
export const PCI_IO_END = 0x1_0000
/** The I/O APIC pins PCI INTx lines reach. */
export const PCI_INTX_GSI_BASE = 16
const PCI_INTX_GSIS = 8
/** Devices on a bus (slots). */
export const PCI_SLOTS = 32

/**
 * The GSI INTx `pin` (0 = INTA# .. 3 = INTD#) of `slot` reaches: the usual swizzle
 * (PCI-to-PCI Bridge Architecture Specification 1.2, 9.1), spread over pins 16-23.
 */
export function pciIntxGsi(slot: number, pin: number): number {
  checkInteger('pciIntxGsi: slot', slot, 0, PCI_SLOTS - 1)
  checkInteger('pciIntxGsi: pin (0 = INTA# .. 3 = INTD#)', pin, 0, 3)
  return PCI_INTX_GSI_BASE + ((slot + pin) % PCI_INTX_GSIS)
}

/**
 * The register a CONFIG_DATA access at `port` reaches: CONFIG_ADDRESS's register number
 * (bits 7:2) and the byte lane of the port (PCI Local Bus 3.0, 3.2.2.3.2). The address's
 * bits 1:0, which that section has software leave 0, are ORed in as QEMU's
 * `pci_host_data_read`/`pci_host_data_write` do (`config_reg | (addr & 3)`):
 * kvm-unit-tests' lib/x86/asm/pci.h reads a word at register 2 as `outl(... | 2, 0xCF8)`
 * then `inw(0xCFC)`. Software that leaves them 0, as Linux and firmware do, sees no difference.
 */
function dataOffset(address: number, port: number): number {
  return (address & 0xff) | (port - PCI_CONFIG_DATA)
}

/** A level-triggered line several functions share (PCI 2.2.6): asserted while any of them asserts it. */
class SharedLine {
  private readonly holders = new Set<PciFunction>()
  constructor(
    private readonly sink: IrqSink,
    private readonly gsi: number,
  ) {}
  set(fn: PciFunction, asserted: boolean): void {
    const before = this.holders.size > 0
    this.hold(fn, asserted)
    const after = this.holders.size > 0
    if (after !== before) this.sink.setIrq(this.gsi, after)
  }
  /** `fn` holds the line or not, the I/O APIC not told (a restore: it restores its own view). */
  hold(fn: PciFunction, asserted: boolean): void {
    if (asserted) this.holders.add(fn)
    else this.holders.delete(fn)
  }
}

/** The host bridge's state ({@link PciHost.save}): CONFIG_ADDRESS and the bridge's own configuration space. */
export interface PciHostState {
  version: 1
  /** The CONFIG_ADDRESS latch of mechanism #1. */
  address: number
  /** The host bridge function (slot 0). */
  bridge: PciFunctionState
}

/** The host bridge and bus 0. */
export class PciHost implements Saveable<PciHostState> {
  private readonly slots: (PciFunction | undefined)[] = new Array<PciFunction | undefined>(PCI_SLOTS).fill(undefined)
  private readonly lines: SharedLine[] = []
  private address = 0
  private nextMmio = PCI_MMIO_START
  private nextIo = PCI_IO_START
  /** The host bridge itself, in slot 0. */
  readonly bridge: PciFunction
  /**
   * The IOMMU every function's DMA and MSIs go through (an {@link IntelIommu} sets
   * itself here); undefined: they reach guest memory and the local APICs directly.
   */
  iommu: PciIommu | undefined

  /** @internal use {@link addPci} */
  constructor(
    /** The VM the bus belongs to (its devices signal MSIs and do DMA through it). */
    readonly vm: Vm,
    intx: IrqSink,
  ) {
    for (let i = 0; i < PCI_INTX_GSIS; i++) this.lines.push(new SharedLine(intx, PCI_INTX_GSI_BASE + i))
    // Cloud Hypervisor's PciRoot presents Intel's ID for a virtual host bridge (pci/src/bus.rs).
    this.bridge = new PciFunction({ name: 'host bridge', vendorId: 0x8086, deviceId: 0x0d57, classCode: 0x06_00_00, interruptPin: 0 })
    this.add(this.bridge, 0)
    const bus = vm.bus
    bus.register(PCI_CONFIG_ADDRESS, 1, {
      ioRead: (_port, size) => (size === 4 ? this.address : 0xffff_ffff),
      // Only a DWORD access reaches CONFIG_ADDRESS (3.2.2.3.2); byte writes to 0xCF8-0xCFB go elsewhere on a PC.
      ioWrite: (_port, size, value) => {
        if (size === 4) this.address = value >>> 0
      },
    }, 'PCI CONFIG_ADDRESS')
    bus.register(PCI_CONFIG_DATA, 4, {
      ioRead: (port, size) => {
        const a = this.address
        if ((a & 0x8000_0000) === 0) return 0xffff_ffff
        return this.configRead((a >>> 16) & 0xff, (a >>> 11) & 0x1f, (a >>> 8) & 7, dataOffset(a, port), size)
      },
      ioWrite: (port, size, value) => {
        const a = this.address
        if ((a & 0x8000_0000) === 0) return
        this.configWrite((a >>> 16) & 0xff, (a >>> 11) & 0x1f, (a >>> 8) & 7, dataOffset(a, port), size, value)
      },
    }, 'PCI CONFIG_DATA')
    bus.registerMmio(PCI_ECAM_BASE, PCI_ECAM_SIZE, {
      mmioRead: (offset, size) => {
        if (size > 4) return BigInt(this.ecamRead(offset, 4)) | (BigInt(this.ecamRead(offset + 4, 4)) << 32n)
        return BigInt(this.ecamRead(offset, size))
      },
      mmioWrite: (offset, size, value) => {
        if (size > 4) {
          this.ecamWrite(offset, 4, Number(value & 0xffff_ffffn))
          this.ecamWrite(offset + 4, 4, Number(value >> 32n))
        } else this.ecamWrite(offset, size, Number(value))
      },
    }, 'PCI ECAM')
  }

  private ecamRead(offset: number, size: number): number {
    return this.configRead(offset >>> 20, (offset >>> 15) & 0x1f, (offset >>> 12) & 7, offset & 0xfff, size)
  }

  private ecamWrite(offset: number, size: number, value: number): void {
    this.configWrite(offset >>> 20, (offset >>> 15) & 0x1f, (offset >>> 12) & 7, offset & 0xfff, size, value)
  }

  private fn(bus: number, device: number, func: number): PciFunction | undefined {
    return bus === 0 && func === 0 ? this.slots[device] : undefined
  }

  /**
   * Reads configuration space as the guest does: a function nobody has reads as all
   * ones (the master abort the OS probes for); an access not aligned to its size too.
   */
  configRead(bus: number, device: number, func: number, offset: number, size: number): number {
    const f = this.fn(bus, device, func)
    if (!f || offset % size !== 0) return size === 4 ? 0xffff_ffff : (1 << (size * 8)) - 1
    return f.configRead(offset, size)
  }

  /** Writes configuration space as the guest does; writes to absent functions are dropped. */
  configWrite(bus: number, device: number, func: number, offset: number, size: number, value: number): void {
    const f = this.fn(bus, device, func)
    if (!f || offset % size !== 0) return
    f.configWrite(offset, size, value)
  }

  /** The functions on the bus, by slot. */
  devices(): readonly { readonly slot: number; readonly fn: PciFunction }[] {
    const out: { slot: number; fn: PciFunction }[] = []
    this.slots.forEach((fn, slot) => fn && out.push({ slot, fn }))
    return out
  }

  /**
   * Puts `fn` in `slot` (default: the first free one), gives its BARs addresses in the
   * bridge's windows (each aligned to its size) and turns their decoding on, as
   * firmware does; the OS may move them. Returns the slot.
   */
  add(fn: PciFunction, slot?: number): number {
    if (!(fn instanceof PciFunction)) throw new MshvError('EINVAL', `PCI add takes a PciFunction, got ${describe(fn)}`)
    const s = slot ?? this.slots.findIndex((x, i) => i > 0 && x === undefined)
    if (!Number.isInteger(s) || s < 0 || s >= PCI_SLOTS) throw new MshvError(s === -1 ? 'ENOSPC' : 'EINVAL', s === -1 ? `PCI bus 0 has no free slot for ${fn.name}` : `PCI slot must be an integer in 0..31, got ${describe(slot)}`)
    const taken = this.slots[s]
    if (taken) throw new MshvError('EBUSY', `PCI slot ${s} holds ${taken.name}`)
    const pin = fn.configRead(0x3d, 1)
    const line = pin === 0 ? undefined : this.lines[pciIntxGsi(s, pin - 1) - PCI_INTX_GSI_BASE]
    // Everything that can fail is checked before anything is changed.
    const plan = fn.declaredBars().map((b) => {
      const io = b.kind === 'io'
      const next = io ? this.nextIo : this.nextMmio
      const at = Math.ceil(next / b.size) * b.size
      if (at + b.size > (io ? PCI_IO_END : PCI_MMIO_END)) {
        throw new MshvError('ENOSPC', `${fn.name}: BAR ${b.index} (${hex(b.size)} bytes) does not fit in the host bridge's ${io ? 'I/O' : 'memory'} window`)
      }
      if (io) this.nextIo = at + b.size
      else this.nextMmio = at + b.size
      return { index: b.index, at, io }
    })
    const vm = this.vm
    const host = this as PciHost
    fn.attach(vm.bus, line && { set: (asserted) => line.set(fn, asserted), restoreLevel: (asserted) => line.hold(fn, asserted) }, {
      requesterId: s << 3, // bus 0, function 0
      memory: vm.memory,
      get iommu() {
        return host.iommu
      },
      deliverMsi: (address, data) => vm.deviceMsi(address, data),
    })
    this.slots[s] = fn
    for (const p of plan) fn.assign(p.index, p.at)
    const command = (plan.some((p) => p.io) ? PCI_COMMAND_IO : 0) | (plan.some((p) => !p.io) ? PCI_COMMAND_MEMORY : 0)
    if (command !== 0) fn.setCommand(command)
    return s
  }

  /**
   * CONFIG_ADDRESS and the host bridge. The functions on the bus are their owners' to
   * save (a {@link VirtioPci}'s is in its state).
   */
  save(): PciHostState {
    return { version: 1, address: this.address, bridge: this.bridge.save() } satisfies PciHostState
  }

  /**
   * Restores what {@link save} gave; `EINVAL` (and nothing changed) for a bad state.
   * Restore the host after the functions on its bus: a BAR window another function's
   * old place kept from mapping is mapped now that it is free.
   */
  restore(state: PciHostState): void {
    const { version: _, address, bridge, ...rest } = parseState<PciHostState>('pciHost.restore: state', state, { version: version(1), address: u32, bridge: this.bridge.stateCheck() })
    noneLeft(rest)
    this.address = address
    this.bridge.restore(bridge)
    for (const fn of this.slots) fn?.remap()
  }
}

/** Adds PCI bus 0 to `vm` (config mechanism #1, ECAM and a host bridge), its INTx lines on `ioapic`'s pins 16-23. */
export function addPci(vm: Vm, ioapic: IrqSink): PciHost {
  checkInstance('addPci: vm', vm, Vm)
  checkFunction('addPci: ioapic.setIrq', checkObject<IrqSink>('addPci: ioapic', ioapic).setIrq)
  return new PciHost(vm, ioapic)
}
