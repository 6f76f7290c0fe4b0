/**
 * The device bus: port ranges mapped to devices.
 * @module
 */
import { MshvError, describe, hex } from './errors.js'
import { mask } from './emulator/alu.js'
import type { RegisterCache } from './registers.js'

/** What a device sees of the vCPU during an access. */
export interface AccessContext {
  /** The vCPU's registers; call `synchronize()` for the full state. */
  readonly regs: RegisterCache
  /** Index of the vCPU making the access. */
  readonly vcpuIndex: number
}

/** A device on the I/O port bus. Sizes are 1, 2 or 4 bytes. */
export interface PioDevice {
  /** Reads `size` bytes at `port`; the result's low `size` bytes are used. */
  ioRead?(port: number, size: number, ctx: AccessContext): number
  /** Writes the low `size` bytes of `value` to `port`. */
  ioWrite?(port: number, size: number, value: number, ctx: AccessContext): void
}

/** A device on the MMIO bus. Offsets are from the start of its range; sizes are 1, 2, 4 or 8. */
export interface MmioDevice {
  /** Reads `size` bytes at `offset`; the low `size` bytes of the result are used. */
  mmioRead?(offset: number, size: number, ctx: AccessContext): bigint
  /** Writes the low `size` bytes of `value` at `offset`. */
  mmioWrite?(offset: number, size: number, value: bigint, ctx: AccessContext): void
}

/**
 * What handles the accesses to a {@link DeviceWindow}: offsets from the window's start,
 * sizes 1, 2, 4 (or 8 for MMIO), values as bigints in both spaces.
 */
export interface WindowHandler {
  /** Reads `size` bytes at `offset`; the low `size` bytes of the result are used. */
  read(offset: number, size: number, ctx: AccessContext): bigint
  /** Writes the low `size` bytes of `value` at `offset`. */
  write(offset: number, size: number, value: bigint, ctx: AccessContext): void
}

/** The address space a window lives in. */
export type WindowSpace = 'pio' | 'mmio'

/**
 * An address window a device owns (OpenVMM's `chipset_device` model): the device maps
 * it where it is told, unmaps it, and moves it (a PCI BAR the guest reprograms), and its
 * handler sees offsets within the window, so no device keeps its base address twice.
 */
export class DeviceWindow {
  private at: bigint | undefined

  /** @internal */
  constructor(
    private readonly bus: IoBus,
    /** Ports or guest physical addresses. */
    readonly space: WindowSpace,
    /** Its length in ports or bytes. */
    readonly size: number,
    private readonly handler: WindowHandler,
    /** What errors and listings call it. */
    readonly name: string,
  ) {}

  /** Where it is mapped now, if it is. */
  get base(): bigint | undefined {
    return this.at
  }

  /** Maps it at `base` (moving it there if it is mapped elsewhere); `EOVERLAP` if another device or RAM is there, and then it stays unmapped. */
  map(base: number | bigint): void {
    this.unmap()
    const h = this.handler
    if (this.space === 'pio') {
      const start = Number(base)
      this.bus.register(
        start,
        this.size,
        {
          ioRead: (port, size, ctx) => Number(h.read(port - start, size, ctx) & 0xffff_ffffn),
          ioWrite: (port, size, value, ctx) => h.write(port - start, size, BigInt(value >>> 0), ctx),
        },
        this.name,
      )
    } else {
      this.bus.registerMmio(base, this.size, { mmioRead: (o, size, ctx) => h.read(o, size, ctx), mmioWrite: (o, size, v, ctx) => h.write(o, size, v, ctx) }, this.name)
    }
    this.at = BigInt(base)
  }

  /** Unmaps it (nothing happens if it is not mapped). */
  unmap(): void {
    const at = this.at
    if (at === undefined) return
    if (this.space === 'pio') this.bus.unregister(Number(at))
    else this.bus.unregisterMmio(at)
    this.at = undefined
  }
}

interface MmioRange {
  start: bigint
  end: bigint
  /** `start` and `end` as numbers (GPAs are below 2^52): the per-access checks compare these. */
  low: number
  high: number
  device: MmioDevice
  name: string
}

interface Range {
  start: number
  end: number
  device: PioDevice
  name: string
}

/** Counters of the bus. */
export interface BusStats {
  /** Reads of ports no device claims (they read as all ones). */
  unclaimedReads: number
  /** Writes to ports no device claims (dropped). */
  unclaimedWrites: number
  /** MMIO reads no device claims (they read as all ones). */
  unclaimedMmioReads: number
  /** MMIO writes no device claims (dropped). */
  unclaimedMmioWrites: number
  /**
   * Which ports and addresses those were, with their counts (reads and writes
   * together; the first {@link UNCLAIMED_NAMED} of each): what the guest looked for.
   */
  readonly unclaimedPorts: Map<number, number>
  readonly unclaimedAddresses: Map<bigint, number>
}

/** Distinct unclaimed ports (and addresses) {@link BusStats} names; later ones are counted only. */
export const UNCLAIMED_NAMED = 256

function noteUnclaimed<K>(map: Map<K, number>, key: K): void {
  const n = map.get(key)
  if (n !== undefined) map.set(key, n + 1)
  else if (map.size < UNCLAIMED_NAMED) map.set(key, 1)
}

/** Port I/O and MMIO dispatch with overlap checking. */
export class IoBus {
  /** Port ranges by slot; a released slot is reused. */
  private readonly ranges: (Range | undefined)[] = []
  /**
   * Per port, 1 + the index in `ranges` of the range that claims it (0: none): a port
   * access finds its device in one load however many devices a VM has.
   */
  private readonly portOwner = new Uint32Array(0x10000)
  /** Sorted by start, for a binary search. */
  private readonly mmio: MmioRange[] = []
  /** Unclaimed accesses, as real hardware would silently absorb them. */
  readonly stats: BusStats = { unclaimedReads: 0, unclaimedWrites: 0, unclaimedMmioReads: 0, unclaimedMmioWrites: 0, unclaimedPorts: new Map(), unclaimedAddresses: new Map() }
  /**
   * Describes the guest RAM overlapping `[start, end)`, if any: MMIO there would never
   * be called. The VM sets it.
   * @internal
   */
  ramOverlap: (start: bigint, end: bigint) => string | undefined = () => undefined

  /** Claims ports `[start, start + length)` for `device`; overlaps are rejected. */
  register(start: number, length: number, device: PioDevice, name = 'device'): void {
    checkName(name)
    if (!Number.isInteger(start) || start < 0 || !Number.isInteger(length) || length < 1 || start + length > 0x10000) {
      throw new MshvError('EINVAL', `port range ${describe(start)} (+${describe(length)}) for ${name} is outside 0..0xffff`)
    }
    checkDevice(device, ['ioRead', 'ioWrite'], name)
    const end = start + length
    const taken = this.portOwner.subarray(start, end).find((k) => k !== 0)
    if (taken !== undefined) {
      const clash = this.ranges[taken - 1] as Range
      throw new MshvError(
        'EOVERLAP',
        `ports ${hex(start)}..${hex(end - 1)} for ${name} overlap ${clash.name} at ${hex(clash.start)}..${hex(clash.end - 1)}`,
      )
    }
    let slot = this.ranges.indexOf(undefined)
    if (slot === -1) slot = this.ranges.push(undefined) - 1
    this.ranges[slot] = { start, end, device, name }
    this.portOwner.fill(slot + 1, start, end)
  }

  /**
   * A window of `size` ports or bytes for `handler`, not yet mapped: the device maps,
   * unmaps and moves it ({@link DeviceWindow}).
   */
  window(space: WindowSpace, size: number, handler: WindowHandler, name = 'device'): DeviceWindow {
    if (space !== 'pio' && space !== 'mmio') throw new MshvError('EINVAL', `window space must be 'pio' or 'mmio', got ${describe(space)}`)
    const limit = space === 'pio' ? 0x10000 : 2 ** 52
    if (!Number.isSafeInteger(size) || size < 1 || size > limit) throw new MshvError('EINVAL', `${name}: window size must be an integer in 1..${hex(limit)}, got ${describe(size)}`)
    checkDevice(handler, ['read', 'write'], name)
    return new DeviceWindow(this, space, size, handler, name)
  }

  /** Releases the port range that starts at `start`; returns its device. */
  unregister(start: number): PioDevice {
    const k = Number.isInteger(start) && start >= 0 && start < 0x10000 ? (this.portOwner[start] ?? 0) : 0
    const r = k === 0 ? undefined : this.ranges[k - 1]
    if (!r || r.start !== start) throw new MshvError('ENOTMAPPED', `no device's port range starts at ${describe(start)}`)
    this.portOwner.fill(0, r.start, r.end)
    this.ranges[k - 1] = undefined
    return r.device
  }

  private find(port: number): Range | undefined {
    const k = this.portOwner[port] ?? 0
    return k === 0 ? undefined : this.ranges[k - 1]
  }

  /** Reads from a port; unclaimed ports read as all ones. */
  read(port: number, size: number, ctx: AccessContext): number {
    if (!isPort(port) || !isSize(size, 4) || !isContext(ctx)) throw badAccess('read', port, size, ctx)
    const r = this.find(port)
    if (!r?.device.ioRead) {
      this.stats.unclaimedReads++
      noteUnclaimed(this.stats.unclaimedPorts, port)
      return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1
    }
    const v = r.device.ioRead(port, size, ctx)
    // The low `size` bytes are used; anything but an integer of at most 32 bits is a device bug.
    if (typeof v !== 'number' || !Number.isInteger(v) || v < -0x8000_0000 || v > 0xffff_ffff) {
      throw new MshvError('EDEVICE', `${r.name}: ioRead(${hex(port)}, ${size}) returned ${describe(v)}; it must return an integer of at most 32 bits`)
    }
    return v
  }

  /** Writes to a port; writes to unclaimed ports are dropped and counted. */
  write(port: number, size: number, value: number, ctx: AccessContext): void {
    if (!isPort(port) || !isSize(size, 4) || !isContext(ctx)) throw badAccess('write', port, size, ctx)
    if (typeof value !== 'number') throw new MshvError('EINVAL', `bus.write: value must be a number, got ${describe(value)}`)
    const r = this.find(port)
    if (!r?.device.ioWrite) {
      this.stats.unclaimedWrites++
      noteUnclaimed(this.stats.unclaimedPorts, port)
      return
    }
    r.device.ioWrite(port, size, value, ctx)
  }

  /**
   * Claims guest physical addresses `[gpa, gpa + size)` for `device`; overlaps with
   * other MMIO ranges are rejected. The range must not be RAM (or must be intercepted)
   * for the guest's accesses to exit.
   */
  registerMmio(gpa: number | bigint, size: number | bigint, device: MmioDevice, name = 'device'): void {
    checkName(name)
    const start = integer(gpa)
    const len = integer(size)
    if (start === undefined || len === undefined || start < 0n || len < 1n || start + len > 1n << 52n) {
      throw new MshvError('EINVAL', `MMIO range ${describe(gpa)} (+${describe(size)}) for ${name} is outside the 52-bit physical address space`)
    }
    checkDevice(device, ['mmioRead', 'mmioWrite'], name)
    const end = start + len
    const ram = this.ramOverlap(start, end)
    if (ram) throw new MshvError('EOVERLAP', `MMIO ${hex(start)}..${hex(end - 1n)} for ${name} overlaps ${ram}: the guest's accesses there go to memory, never to the device`)
    // The first range ending after `start` is the only one that can overlap, and the new one goes before it.
    const at = this.firstEndingAfter(start)
    const clash = this.mmio[at]
    if (clash && clash.start < end) {
      throw new MshvError(
        'EOVERLAP',
        `MMIO ${hex(start)}..${hex(end - 1n)} for ${name} overlaps ${clash.name} at ${hex(clash.start)}..${hex(clash.end - 1n)}`,
      )
    }
    this.mmio.splice(at, 0, { start, end, low: Number(start), high: Number(end), device, name })
  }

  /** Releases the MMIO range that starts at `gpa`; returns its device. */
  unregisterMmio(gpa: number | bigint): MmioDevice {
    const start = integer(gpa)
    const at = start === undefined ? -1 : this.firstEndingAfter(start)
    const r = this.mmio[at]
    if (!r || r.start !== start) throw new MshvError('ENOTMAPPED', `no device's MMIO range starts at ${describe(gpa)}`)
    this.mmio.splice(at, 1)
    if (this.lastMmio === r) this.lastMmio = undefined
    return r.device
  }

  /** Describes the MMIO range overlapping `[start, end)`, if any. @internal */
  mmioOverlap(start: bigint, end: bigint): string | undefined {
    const r = this.mmio[this.firstEndingAfter(start)]
    return r && r.start < end ? `${r.name} at ${hex(r.start)}..${hex(r.end - 1n)}` : undefined
  }

  /** The index of the first range (by start) ending after `gpa`: ranges do not overlap, so ends sort as starts do. */
  private firstEndingAfter(gpa: bigint): number {
    let lo = 0
    let hi = this.mmio.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((this.mmio[mid] as MmioRange).end <= gpa) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** The range the last MMIO access found: a device is usually hit many times in a row. */
  private lastMmio: MmioRange | undefined

  private findMmio(at: number, size: number): MmioRange | undefined {
    const last = this.lastMmio
    if (last && at >= last.low && at + size <= last.high) return last
    const r = this.mmio[this.firstEndingAfter(BigInt(at))]
    const found = r && at >= r.low && at + size <= r.high ? r : undefined
    if (found) this.lastMmio = found
    return found
  }

  /** Reads MMIO; unclaimed addresses read as all ones. */
  mmioRead(gpa: bigint, size: number, ctx: AccessContext): bigint {
    if (typeof gpa !== 'bigint' || !isSize(size, 8) || !isContext(ctx)) throw badAccess('mmioRead', gpa, size, ctx)
    const at = Number(gpa)
    const r = this.findMmio(at, size)
    const m = mask(size)
    if (!r?.device.mmioRead) {
      this.stats.unclaimedMmioReads++
      noteUnclaimed(this.stats.unclaimedAddresses, gpa)
      return m
    }
    const offset = at - r.low
    const v = r.device.mmioRead(offset, size, ctx)
    if (typeof v !== 'bigint') {
      throw new MshvError('EDEVICE', `${r.name}: mmioRead(${hex(offset)}, ${size}) returned ${describe(v)}; it must return a bigint`)
    }
    return v & m
  }

  /** Writes MMIO; writes no device claims are dropped and counted. */
  mmioWrite(gpa: bigint, size: number, value: bigint, ctx: AccessContext): void {
    if (typeof gpa !== 'bigint' || !isSize(size, 8) || !isContext(ctx)) throw badAccess('mmioWrite', gpa, size, ctx)
    if (typeof value !== 'bigint') throw new MshvError('EINVAL', `bus.mmioWrite: value must be a bigint, got ${describe(value)}`)
    const at = Number(gpa)
    const r = this.findMmio(at, size)
    if (!r?.device.mmioWrite) {
      this.stats.unclaimedMmioWrites++
      noteUnclaimed(this.stats.unclaimedAddresses, gpa)
      return
    }
    r.device.mmioWrite(at - r.low, size, value & mask(size), ctx)
  }
}

/*
 * An access's parts, checked on the exit path (a few compares each): a port in 0..0xffff,
 * a size of 1, 2 or 4 bytes (ports) or 1..8 (MMIO), a context object if any (a driver
 * written in TypeScript calls the bus without one).
 */
function isPort(port: unknown): boolean {
  return typeof port === 'number' && port >>> 0 === port && port <= 0xffff
}

function isSize(size: unknown, max: 4 | 8): boolean {
  return max === 8 ? typeof size === 'number' && size >>> 0 === size && size >= 1 && size <= 8 : size === 1 || size === 2 || size === 4
}

function isContext(ctx: unknown): boolean {
  return ctx === undefined || (typeof ctx === 'object' && ctx !== null)
}

/** The `EINVAL` for an access the checks above refused, naming the part that was wrong. */
function badAccess(what: 'read' | 'write' | 'mmioRead' | 'mmioWrite', address: unknown, size: unknown, ctx: unknown): MshvError {
  const mmio = what === 'mmioRead' || what === 'mmioWrite'
  if (mmio ? typeof address !== 'bigint' : !isPort(address)) {
    return new MshvError('EINVAL', `bus.${what}: the ${mmio ? 'address must be a bigint' : 'port must be an integer in 0..0xffff'}, got ${describe(address)}`)
  }
  if (!isSize(size, mmio ? 8 : 4)) return new MshvError('EINVAL', `bus.${what}: size must be ${mmio ? 'an integer in 1..8' : '1, 2 or 4'}, got ${describe(size)}`)
  return new MshvError('EINVAL', `bus.${what}: ctx must be the exit's access context (an object) or left out, got ${describe(ctx)}`)
}

/** A device's name, which every message about its ranges shows. */
function checkName(name: unknown): void {
  if (typeof name !== 'string' || name.length > 200) throw new MshvError('EINVAL', `a device name must be a string of at most 200 characters, got ${describe(name)}`)
}

/** `v` as a bigint when it is an integer number or a bigint. */
function integer(v: unknown): bigint | undefined {
  if (typeof v === 'bigint') return v
  return typeof v === 'number' && Number.isSafeInteger(v) ? BigInt(v) : undefined
}

/** A device must be an object with at least one of `methods` as a function. */
function checkDevice(device: unknown, methods: readonly string[], name: string): void {
  const d = device as Record<string, unknown> | null
  const ok = typeof d === 'object' && d !== null && methods.some((m) => typeof d[m] === 'function')
  if (!ok) throw new MshvError('EINVAL', `${name} must be an object with ${methods.join(' and/or ')} methods, got ${describe(device)}`)
  for (const m of methods) {
    if (d[m] !== undefined && typeof d[m] !== 'function') throw new MshvError('EINVAL', `${name}.${m} must be a function, got ${describe(d[m])}`)
  }
}
