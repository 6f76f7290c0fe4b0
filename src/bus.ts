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
}

/** Port I/O dispatch with overlap checking. */
export class IoBus {
  private readonly ranges: Range[] = []
  /** Unclaimed accesses, as real hardware would silently absorb them. */
  readonly stats: BusStats = { unclaimedReads: 0, unclaimedWrites: 0 }

  /** Claims ports `[start, start + length)` for `device`; overlaps are rejected. */
  register(start: number, length: number, device: PioDevice, name = 'device'): void {
    if (!Number.isInteger(start) || start < 0 || !Number.isInteger(length) || length < 1 || start + length > 0x10000) {
      throw new MshvError('EINVAL', `port range ${hex(start)} (+${length}) for ${name} is outside 0..0xffff`)
    }
    const end = start + length
    const clash = this.ranges.find((r) => start < r.end && r.start < end)
    if (clash) {
      throw new MshvError(
        'EOVERLAP',
        `ports ${hex(start)}..${hex(end - 1)} for ${name} overlap ${clash.name} at ${hex(clash.start)}..${hex(clash.end - 1)}`,
      )
    }
    this.ranges.push({ start, end, device, name })
    this.ranges.sort((a, b) => a.start - b.start)
  }

  private find(port: number): Range | undefined {
    for (const r of this.ranges) if (port >= r.start && port < r.end) return r
    return undefined
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
}
