/**
 * The device bus: port ranges mapped to devices.
 * @module
 */
import { MshvError, hex } from './errors.js'
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

interface MmioRange {
  start: bigint
  end: bigint
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
}

/** Port I/O and MMIO dispatch with overlap checking. */
export class IoBus {
  private readonly ranges: Range[] = []
  /**
   * Per port, 1 + the index in `ranges` of the range that claims it (0: none): a port
   * access finds its device in one load however many devices a VM has.
   */
  private readonly portOwner = new Uint32Array(0x10000)
  /** Sorted by start, for a binary search. */
  private readonly mmio: MmioRange[] = []
  /** Unclaimed accesses, as real hardware would silently absorb them. */
  readonly stats: BusStats = { unclaimedReads: 0, unclaimedWrites: 0, unclaimedMmioReads: 0, unclaimedMmioWrites: 0 }

  /** Claims ports `[start, start + length)` for `device`; overlaps are rejected. */
  register(start: number, length: number, device: PioDevice, name = 'device'): void {
    if (!Number.isInteger(start) || start < 0 || !Number.isInteger(length) || length < 1 || start + length > 0x10000) {
      throw new MshvError('EINVAL', `port range ${hex(start)} (+${length}) for ${name} is outside 0..0xffff`)
    }
    const end = start + length
    const taken = this.portOwner.subarray(start, end).find((k) => k !== 0)
    if (taken !== undefined) {
      const clash = this.ranges[taken - 1] as Range
      throw new MshvError(
        'EOVERLAP',
        `ports ${hex(start)}..${hex(end - 1)} for ${name} overlap ${clash.name} at ${hex(clash.start)}..${hex(clash.end - 1)}`,
      )
    }
    this.ranges.push({ start, end, device, name })
    this.portOwner.fill(this.ranges.length, start, end)
  }

  private find(port: number): Range | undefined {
    const k = this.portOwner[port] ?? 0
    return k === 0 ? undefined : this.ranges[k - 1]
  }

  /** Reads from a port; unclaimed ports read as all ones. */
  read(port: number, size: number, ctx: AccessContext): number {
    const r = this.find(port)
    if (!r?.device.ioRead) {
      this.stats.unclaimedReads++
      return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1
    }
    return r.device.ioRead(port, size, ctx)
  }

  /** Writes to a port; writes to unclaimed ports are dropped and counted. */
  write(port: number, size: number, value: number, ctx: AccessContext): void {
    const r = this.find(port)
    if (!r?.device.ioWrite) {
      this.stats.unclaimedWrites++
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
    const start = BigInt(gpa)
    const len = BigInt(size)
    if (start < 0n || len < 1n || start + len > 1n << 52n) {
      throw new MshvError('EINVAL', `MMIO range ${hex(start)} (+${hex(len)}) for ${name} is outside the 52-bit physical address space`)
    }
    const end = start + len
    // The first range ending after `start` is the only one that can overlap, and the new one goes before it.
    const at = this.firstEndingAfter(start)
    const clash = this.mmio[at]
    if (clash && clash.start < end) {
      throw new MshvError(
        'EOVERLAP',
        `MMIO ${hex(start)}..${hex(end - 1n)} for ${name} overlaps ${clash.name} at ${hex(clash.start)}..${hex(clash.end - 1n)}`,
      )
    }
    this.mmio.splice(at, 0, { start, end, device, name })
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

  private findMmio(gpa: bigint, size: number): MmioRange | undefined {
    const r = this.mmio[this.firstEndingAfter(gpa)]
    return r && gpa >= r.start && gpa + BigInt(size) <= r.end ? r : undefined
  }

  /** Reads MMIO; unclaimed addresses read as all ones. */
  mmioRead(gpa: bigint, size: number, ctx: AccessContext): bigint {
    const r = this.findMmio(gpa, size)
    const m = (1n << BigInt(size * 8)) - 1n
    if (!r?.device.mmioRead) {
      this.stats.unclaimedMmioReads++
      return m
    }
    return r.device.mmioRead(Number(gpa - r.start), size, ctx) & m
  }

  /** Writes MMIO; writes no device claims are dropped and counted. */
  mmioWrite(gpa: bigint, size: number, value: bigint, ctx: AccessContext): void {
    const r = this.findMmio(gpa, size)
    if (!r?.device.mmioWrite) {
      this.stats.unclaimedMmioWrites++
      return
    }
    r.device.mmioWrite(Number(gpa - r.start), size, value & ((1n << BigInt(size * 8)) - 1n), ctx)
  }
}
