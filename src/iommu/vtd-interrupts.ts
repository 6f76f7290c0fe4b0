/**
 * Interrupt remapping (Intel VT-d rev 4.x, 5.1 "Interrupt Remapping"; QEMU's
 * `vtd_interrupt_remap_msi`, `vtd_remap_irq_get`, `vtd_irte_get`): an interrupt request
 * in remappable format (5.1.2.2) names an entry of the interrupt remapping table (9.10,
 * "Interrupt Remapping Table Entry (IRTE) for Remapped Interrupts"), which says what is
 * delivered; one in compatibility format (5.1.2.1) passes only where GSTS.CFIS allows.
 * xAPIC mode only (IRTA.EIME 0: ECAP.EIM is 0).
 * @module
 */
import type { GuestMemory } from '../guest-memory.js'
import type { MsiMessage } from '../pci/iommu.js'
import { FAULT } from './vtd-registers.js'

/** What remapping needs of the unit. */
export interface RemapUnit {
  readonly memory: GuestMemory
  /** The table's address and its entries (2^(IRTA.S + 1)), as the last SIRTP latched them. */
  readonly table: number
  readonly entries: number
  /** GSTS.CFIS: compatibility-format requests pass through unremapped. */
  readonly compatibility: boolean
}

/** A remapped (or passed) interrupt: the compatibility-format message to deliver. */
export interface Delivered {
  readonly ok: true
  readonly message: MsiMessage
}

/** A blocked interrupt: its fault reason (7.1.4), the index it named, the IRTE's FPD. */
export interface Blocked {
  readonly ok: false
  readonly reason: number
  readonly index: number
  readonly fpd: boolean
}

/** Checks a requester ID against an IRTE's SID, SQ and SVT (9.10: Source Validation Type, Source-id Qualifier). */
function sourceValid(svt: number, sq: number, sid: number, requesterId: number): boolean {
  if (svt === 1) {
    // SQ: compare all 16 bits, or ignore function bit 2, bits 2:1, bits 2:0.
    const ignore = [0, 0b100, 0b110, 0b111][sq] as number
    return (sid & ~ignore) === (requesterId & ~ignore)
  }
  // SVT 10b: the requester's bus in [SID 15:8, SID 7:0].
  const bus = requesterId >> 8
  return bus >= sid >> 8 && bus <= (sid & 0xff)
}

/**
 * Remaps `message` from `requesterId` (undefined: a source with none, QEMU's I/O APIC,
 * whose requests skip source validation as QEMU's `vtd_irte_get` skips them).
 */
export function remapInterrupt(unit: RemapUnit, requesterId: number | undefined, message: MsiMessage): Delivered | Blocked {
  const a = message.address
  // Address bits 63:32 are reserved in both formats, and 31:20 are 0xFEE.
  if (a >> 32n !== 0n || (a >> 20n) !== 0xfeen) return { ok: false, reason: FAULT.IR_REQ_RSVD, index: 0, fpd: false }
  if ((a & 0x10n) === 0n) {
    // Compatibility format (5.1.2.1): through only with GSTS.CFIS set (xAPIC mode).
    return unit.compatibility ? { ok: true, message } : { ok: false, reason: FAULT.IR_REQ_COMPAT, index: 0, fpd: false }
  }
  // Remappable format (5.1.2.2): handle 14:0 in address 19:5, handle 15 in bit 2; SHV bit 3 adds the data's subhandle.
  let index = Number((a >> 5n) & 0x7fffn) | (Number((a >> 2n) & 1n) << 15)
  if ((a & 8n) !== 0n) index = (index + (message.data & 0xffff)) & 0xffff
  if (index >= unit.entries) return { ok: false, reason: FAULT.IR_INDEX_OVER, index, fpd: false }
  const at = unit.table + index * 16
  if (!unit.memory.contains(at, 16)) return { ok: false, reason: FAULT.IR_ROOT_INVAL, index, fpd: false }
  const v = unit.memory.dataView(at, 16)
  const lo = v.getBigUint64(0, true)
  const hi = v.getBigUint64(8, true)
  const fpd = (lo & 2n) !== 0n
  if ((lo & 1n) === 0n) return { ok: false, reason: FAULT.IR_ENTRY_P, index, fpd }
  // Reserved (9.10, xAPIC mode): 14:12, IM 15 (posted interrupts: ECAP.PI is 0), 31:24,
  // destination bits 39:32 and 63:48, and 127:84.
  const reservedLo = 0x7000n | 0x8000n | 0xff00_0000n | (0xffn << 32n) | (0xffffn << 48n)
  if ((lo & reservedLo) !== 0n || hi >> 20n !== 0n) return { ok: false, reason: FAULT.IR_IRTE_RSVD, index, fpd }
  const svt = Number((hi >> 18n) & 3n)
  if (svt === 3) return { ok: false, reason: FAULT.IR_IRTE_RSVD, index, fpd }
  if (svt !== 0 && requesterId !== undefined && !sourceValid(svt, Number((hi >> 16n) & 3n), Number(hi & 0xffffn), requesterId)) {
    return { ok: false, reason: FAULT.IR_SID_ERR, index, fpd }
  }
  const dm = (lo >> 2n) & 1n
  const rh = (lo >> 3n) & 1n
  const tm = Number((lo >> 4n) & 1n)
  const dlm = Number((lo >> 5n) & 7n)
  const vector = Number((lo >> 16n) & 0xffn)
  const destination = (lo >> 40n) & 0xffn
  const address = 0xfee0_0000n | (destination << 12n) | (rh << 3n) | (dm << 2n)
  const data = vector | (dlm << 8) | (tm << 15) | (tm << 14)
  return { ok: true, message: { address, data } }
}
