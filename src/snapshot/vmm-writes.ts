/**
 * The pages the VMM itself wrote into guest RAM (DMA, `vm.write`, the emulator's
 * stores) while the hypervisor logs the guest's: what an incremental snapshot needs
 * beside the hypervisor's dirty log, which sees only the guest's writes. Writes made
 * through `GuestRam.bytes` directly are not seen.
 * @module
 */

/** Pages written, a byte per page, for each region by its first address. */
export class VmmWrites {
  private readonly pages = new Map<number, Uint8Array>()

  constructor(regions: readonly { readonly start: number; readonly size: number }[]) {
    for (const r of regions) this.pages.set(r.start, new Uint8Array(Math.ceil(r.size / 4096)))
  }

  /** `[gpa, gpa + length)` was written. */
  note(gpa: number, length: number): void {
    if (length <= 0) return
    for (const [start, flags] of this.pages) {
      const end = start + flags.length * 4096
      if (gpa >= end || gpa + length <= start) continue
      const first = Math.floor((Math.max(gpa, start) - start) / 4096)
      const last = Math.floor((Math.min(gpa + length, end) - 1 - start) / 4096)
      flags.fill(1, first, last + 1)
    }
  }

  /** The pages written in the region at `start` (a flag per page), cleared. */
  take(start: number): Uint8Array {
    const flags = this.pages.get(start)
    if (!flags) return new Uint8Array(0)
    const out = flags.slice()
    flags.fill(0)
    return out
  }
}
