/**
 * Guest memory as a device doing DMA sees it: reads, writes and zero-copy views by
 * guest physical address, every one bounds-checked against the VM's RAM (as rust-vmm's
 * `vm-memory` checks `GuestMemory` accesses). An address outside RAM is an `EFAULT`
 * naming it, never a short copy and never host memory.
 * @module
 */
import { checkBytes } from './check.js'
import { MshvError, describe, hex } from './errors.js'

/** One region of guest RAM as DMA sees it. */
export interface DmaRegion {
  /** First guest physical address. */
  readonly start: number
  /** The region's bytes (a live view over the memory the guest uses). */
  readonly bytes: Uint8Array
  /** Guest writes to it are not memory (ROM): DMA may read it, never write it. */
  readonly readOnly: boolean
}

/** The highest guest physical address + 1 (52 bits, the x86-64 architectural limit; SDM vol 1 3.3.1). */
const GPA_LIMIT = 2 ** 52

/** Guest physical memory for DMA: bounds-checked views of the VM's RAM regions. */
export class GuestMemory {
  private regions: readonly DmaRegion[] = []
  /** The region the last lookup found: descriptor rings and buffers cluster, so it is usually the next one's too. */
  private last: DmaRegion | undefined

  /** @internal */
  constructor(
    private readonly closed: () => boolean = () => false,
    /** Hears of each range handed out for writing (the VM's own dirty pages). */
    private readonly written: (gpa: number, length: number) => void = () => {},
  ) {}

  /** Replaces the regions (the VM calls it when RAM is added or removed). @internal */
  setRegions(regions: readonly DmaRegion[]): void {
    this.regions = regions
    this.last = undefined
  }

  /** The regions of RAM and ROM now mapped, for a search of the whole of guest memory (empty once the VM is closed). */
  list(): readonly DmaRegion[] {
    return this.closed() ? [] : this.regions
  }

  private region(gpa: number, length: number): DmaRegion | undefined {
    const l = this.last
    if (l && gpa >= l.start && gpa + length <= l.start + l.bytes.length) return l
    for (const r of this.regions) {
      if (gpa >= r.start && gpa + length <= r.start + r.bytes.length) {
        this.last = r
        return r
      }
    }
    return undefined
  }

  /** Whether `[gpa, gpa + length)` lies inside one RAM region. */
  contains(gpa: number, length: number): boolean {
    return Number.isSafeInteger(gpa) && gpa >= 0 && Number.isSafeInteger(length) && length >= 0 && this.region(gpa, length) !== undefined
  }

  /**
   * A view of `[gpa, gpa + length)`: the guest's own memory, no copy. `write` asks for
   * memory DMA may write (not ROM). `EFAULT` when the range is not inside one region.
   */
  view(gpa: number, length: number, write = false): Uint8Array {
    if (this.closed()) throw new MshvError('ECLOSED', `DMA at ${hex(gpa)}: the VM is closed`)
    if (!Number.isSafeInteger(gpa) || gpa < 0 || gpa >= GPA_LIMIT) throw new MshvError('EINVAL', `DMA address must be an integer in 0..2^52, got ${describe(gpa)}`)
    if (!Number.isSafeInteger(length) || length < 0) throw new MshvError('EINVAL', `DMA length must be a non-negative integer, got ${describe(length)}`)
    const r = this.region(gpa, length)
    if (!r) throw new MshvError('EFAULT', `DMA ${write ? 'write' : 'read'} of ${length} bytes at ${hex(gpa)} is not inside guest RAM`)
    if (write && r.readOnly) throw new MshvError('EFAULT', `DMA write of ${length} bytes at ${hex(gpa)} targets ROM`)
    const off = gpa - r.start
    if (write) this.written(gpa, length)
    return r.bytes.subarray(off, off + length)
  }

  /** A copy of `length` bytes at `gpa`. */
  read(gpa: number, length: number): Uint8Array {
    return this.view(gpa, length).slice()
  }

  /** Copies `data` to `gpa`. */
  write(gpa: number, data: Uint8Array): void {
    checkBytes('memory.write: data', data)
    this.view(gpa, data.length, true).set(data)
  }

  /** A little-endian DataView of `[gpa, gpa + length)` (rings, headers). */
  dataView(gpa: number, length: number, write = false): DataView {
    const v = this.view(gpa, length, write)
    return new DataView(v.buffer, v.byteOffset, v.byteLength)
  }
}
