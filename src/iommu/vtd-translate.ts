/**
 * DMA remapping in legacy mode (Intel VT-d rev 4.x, 3.4.2 "Legacy Mode Address
 * Translation"; QEMU's `vtd_do_iommu_translate`, `vtd_dev_to_context_entry`,
 * `vtd_iova_to_slpte`): the requester's bus picks a root entry (9.1), its device and
 * function a context entry (9.3), whose second-level table (3.7, 9.8) maps the I/O
 * virtual address to a guest physical one. Every table is read from guest memory at
 * each walk: nothing is cached, so every invalidation the guest asks for is already done.
 * @module
 */
import { MshvError } from '../errors.js'
import type { GuestMemory } from '../guest-memory.js'
import { AGAW_BITS, FAULT } from './vtd-registers.js'

/** What a walk needs of the unit. */
export interface WalkUnit {
  /** Guest memory, where the tables are (the unit's own reads are untranslated). */
  readonly memory: GuestMemory
  /** The root table's address (RTADDR as the last SRTP latched it). */
  readonly rootTable: number
  /** The host address width in bits (39 or 48): address bits above it are reserved in every entry. */
  readonly width: number
}

/** A translated page: where it is and what it allows. */
export interface Translated {
  readonly ok: true
  /** The guest physical address the input address maps to. */
  readonly address: number
  /** The bytes from `address` to the end of its page (4 KiB, 2 MiB or 1 GiB), all mapped alike. */
  readonly rest: number
}

/** A refused request: the fault reason (7.1.3) and whether the context entry's FPD was set. */
export interface Refused {
  readonly ok: false
  readonly reason: number
  /** The context entry's Fault Processing Disable (9.3), as far as the walk got (false before it). */
  readonly fpd: boolean
}

/** Reads the 64-bit entry at `gpa`; undefined where it is not in guest RAM. */
function entry(memory: GuestMemory, gpa: number): bigint | undefined {
  if (!memory.contains(gpa, 8)) return undefined
  return memory.dataView(gpa, 8).getBigUint64(0, true)
}

/** Ignored bits of second-level entries: 63 and 61:52 (9.8; QEMU's `VTD_SL_IGN_COM`). */
const SL_IGNORED = 0xbff0_0000_0000_0000n

/**
 * Reserved bits of a second-level entry at `level` (9.8; QEMU's `vtd_spte_rsvd`,
 * `vtd_spte_rsvd_large`): SNP (bit 11; ECAP.SC is 0) and the address bits above the
 * host address width always; PS (bit 7) at level 4; the address bits below the page
 * size in a 2 MiB or 1 GiB page.
 */
function reservedBits(level: number, large: boolean, width: number): bigint {
  const above = ~(((1n << BigInt(width)) - 1n) | SL_IGNORED) & 0xffff_ffff_ffff_ffffn
  if (large) return (level === 3 ? 0x3fff_f800n : 0x1f_f800n) | above
  return (level === 4 ? 0x880n : 0x800n) | above
}

/**
 * Translates a DMA of requester `requesterId` at I/O virtual address `iova` (a read, or
 * a write when `write`), as 3.4.2 says: root entry, context entry, then the
 * second-level walk, each failure the fault reason the spec gives it.
 */
export function translate(unit: WalkUnit, requesterId: number, iova: number, write: boolean): Translated | Refused {
  const { memory, width } = unit
  const haw = (1n << BigInt(width)) - 1n
  const bus = requesterId >> 8
  const devfn = requesterId & 0xff
  // Root entry (9.1): P bit 0, context-table pointer 63:12; 11:1 and the upper 64 bits reserved.
  const rootAt = unit.rootTable + bus * 16
  const rootLo = entry(memory, rootAt)
  const rootHi = entry(memory, rootAt + 8)
  if (rootLo === undefined || rootHi === undefined) return { ok: false, reason: FAULT.ROOT_TABLE_INV, fpd: false }
  if ((rootLo & 1n) === 0n) return { ok: false, reason: FAULT.ROOT_ENTRY_P, fpd: false }
  if ((rootLo & (0xffen | ~haw)) !== 0n || rootHi !== 0n) return { ok: false, reason: FAULT.ROOT_ENTRY_RSVD, fpd: false }
  // Context entry (9.3): P 0, FPD 1, TT 3:2, SLPTPTR 63:12; AW 66:64, DID 87:72.
  const ctxAt = Number(rootLo & ~0xfffn) + devfn * 16
  const lo = entry(memory, ctxAt)
  const hi = entry(memory, ctxAt + 8)
  if (lo === undefined || hi === undefined) return { ok: false, reason: FAULT.CONTEXT_TABLE_INV, fpd: false }
  const fpd = (lo & 2n) !== 0n
  if ((lo & 1n) === 0n) return { ok: false, reason: FAULT.CONTEXT_ENTRY_P, fpd }
  // Reserved: 11:4 and the pointer's bits above the host address width; 71 and 127:88.
  if ((lo & (0xff0n | ~haw & 0xffff_ffff_ffff_f000n)) !== 0n || (hi & 0xffff_ffff_ff00_0080n) !== 0n) return { ok: false, reason: FAULT.CONTEXT_ENTRY_RSVD, fpd }
  const tt = Number((lo >> 2n) & 3n)
  // TT 10b: pass-through (ECAP.PT): the input address is the output address.
  if (tt === 2) return { ok: true, address: iova, rest: 0x1000 - (iova % 0x1000) }
  // TT 01b needs device-TLBs (ECAP.DT is 0) and 11b is reserved: invalid programming.
  if (tt !== 0) return { ok: false, reason: FAULT.CONTEXT_ENTRY_INV, fpd }
  const aw = Number(hi & 7n)
  const bits = AGAW_BITS[aw]
  if (bits === undefined || bits > width) return { ok: false, reason: FAULT.CONTEXT_ENTRY_INV, fpd }
  if (iova >= 2 ** bits) return { ok: false, reason: FAULT.ADDR_BEYOND_AGAW, fpd }
  // The second-level walk (3.7): 9 bits of the address per level, from bit 12 + 9 * (level - 1).
  let table = Number(lo & ~0xfffn & haw)
  for (let level = aw + 2; level >= 1; level--) {
    const shift = 12 + 9 * (level - 1)
    const index = Math.floor(iova / 2 ** shift) % 512
    const e = entry(memory, table + index * 8)
    if (e === undefined) return { ok: false, reason: FAULT.PAGING_ENTRY_INV, fpd }
    // Read (bit 0) and Write (bit 1) are checked at every level: the access needs them all.
    if ((e & (write ? 2n : 1n)) === 0n) return { ok: false, reason: write ? FAULT.WRITE : FAULT.READ, fpd }
    const large = level > 1 && (e & 0x80n) !== 0n && level < 4
    if ((e & reservedBits(level, large, width)) !== 0n) return { ok: false, reason: FAULT.PAGING_ENTRY_RSVD, fpd }
    const next = Number(e & haw & ~0xfffn)
    if (level === 1 || large) {
      const size = 2 ** shift
      const offset = iova % size
      return { ok: true, address: next + offset, rest: size - offset }
    }
    table = next
  }
  throw new MshvError('EINVAL', `VT-d walk of ${iova}: no level ended it (address width field ${aw})`)
}
