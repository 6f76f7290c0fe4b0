/**
 * Intel VT-d's register file (Intel Virtualization Technology for Directed I/O
 * Architecture Specification, rev 4.x, chapter 10, "Register Descriptions"; offsets as
 * QEMU's hw/i386/intel_iommu_internal.h and Linux's include/linux/intel-iommu.h name
 * them), and the capabilities this model reports.
 * @module
 */

/** Where QEMU's q35 puts the remapping unit's registers (`Q35_HOST_BRIDGE_IOMMU_ADDR`); kvm-unit-tests looks there. */
export const VTD_BASE = 0xfed9_0000
/** The register window: one 4 KiB page (10.2, "Register Location": page-aligned, a multiple of 4 KiB). */
export const VTD_SIZE = 0x1000

/** Register offsets (10.4, table "Address Mapping for Remapping Hardware Registers"). */
export const REG = {
  VER: 0x00,
  CAP: 0x08,
  ECAP: 0x10,
  GCMD: 0x18,
  GSTS: 0x1c,
  RTADDR: 0x20,
  CCMD: 0x28,
  FSTS: 0x34,
  FECTL: 0x38,
  FEDATA: 0x3c,
  FEADDR: 0x40,
  FEUADDR: 0x44,
  IQH: 0x80,
  IQT: 0x88,
  IQA: 0x90,
  ICS: 0x9c,
  IECTL: 0xa0,
  IEDATA: 0xa4,
  IEADDR: 0xa8,
  IEUADDR: 0xac,
  IRTA: 0xb8,
  /** IOTLB registers at ECAP.IRO * 16 (10.4.8): invalidate address, then IOTLB invalidate. */
  IVA: 0xf0,
  IOTLB: 0xf8,
  /** Fault recording registers at CAP.FRO * 16 (10.4.14), 16 bytes each. */
  FRCD: 0x220,
} as const

/** Fault recording registers (CAP.NFR + 1): one, as QEMU's `DMAR_FRCD_REG_NR`. */
export const FRCD_COUNT = 1

/** Global command and status bits (10.4.4 GCMD, 10.4.5 GSTS: the same positions). */
export const GCMD = {
  /** Translation Enable / Status. */
  TE: 1 << 31,
  /** Set Root Table Pointer / Root Table Pointer Status. */
  SRTP: 1 << 30,
  /** Set Fault Log (advanced fault logging: not supported, CAP.AFL = 0). */
  SFL: 1 << 29,
  /** Enable Advanced Fault Logging (CAP.AFL = 0). */
  EAFL: 1 << 28,
  /** Write Buffer Flush (CAP.RWBF = 0: not needed). */
  WBF: 1 << 27,
  /** Queued Invalidation Enable. */
  QIE: 1 << 26,
  /** Interrupt Remapping Enable. */
  IRE: 1 << 25,
  /** Set Interrupt Remap Table Pointer. */
  SIRTP: 1 << 24,
  /** Compatibility Format Interrupt. */
  CFI: 1 << 23,
} as const

/** Fault status bits (10.4.9). */
export const FSTS = {
  /** Primary Fault Overflow (RW1C). */
  PFO: 1 << 0,
  /** Primary Pending Fault: the OR of the F fields of the fault recording registers (RO). */
  PPF: 1 << 1,
  /** Invalidation Queue Error (RW1C). */
  IQE: 1 << 4,
  /** Invalidation Completion Error (RW1C; device-TLBs only: reserved here). */
  ICE: 1 << 5,
  /** Invalidation Time-out Error (RW1C; device-TLBs only: reserved here). */
  ITE: 1 << 6,
} as const

/** Interrupt Mask and Interrupt Pending of FECTL and IECTL (10.4.10, 10.4.26). */
export const EVENT_IM = 1 << 31
export const EVENT_IP = 1 << 30

/** Invalidation Wait Descriptor Complete, ICS bit 0 (10.4.25). */
export const ICS_IWC = 1

/**
 * DMA-remapping and interrupt-remapping fault reasons (7.1.3 and 7.1.4: the fault
 * reason encodings; QEMU's `VTDFaultReason`).
 */
export const FAULT = {
  /** The root entry's Present field is 0. */
  ROOT_ENTRY_P: 0x1,
  /** The context entry's Present field is 0. */
  CONTEXT_ENTRY_P: 0x2,
  /** Invalid programming of a context entry: an AW SAGAW does not report, a TT not supported. */
  CONTEXT_ENTRY_INV: 0x3,
  /** The input address is above 2^X - 1, X the context entry's address width. */
  ADDR_BEYOND_AGAW: 0x4,
  /** A write to a page without write permission. */
  WRITE: 0x5,
  /** A read from a page without read permission. */
  READ: 0x6,
  /** A second-level paging entry could not be read. */
  PAGING_ENTRY_INV: 0x7,
  /** The root entry could not be read. */
  ROOT_TABLE_INV: 0x8,
  /** The context entry could not be read. */
  CONTEXT_TABLE_INV: 0x9,
  /** A present root entry has a reserved bit set. */
  ROOT_ENTRY_RSVD: 0xa,
  /** A present context entry has a reserved bit set. */
  CONTEXT_ENTRY_RSVD: 0xb,
  /** A second-level paging entry with R or W set has a reserved bit set. */
  PAGING_ENTRY_RSVD: 0xc,
  /** An interrupt request with a reserved field set. */
  IR_REQ_RSVD: 0x20,
  /** An interrupt index beyond the table's size (IRTA.S). */
  IR_INDEX_OVER: 0x21,
  /** The IRTE's Present field is 0. */
  IR_ENTRY_P: 0x22,
  /** The IRTE could not be read. */
  IR_ROOT_INVAL: 0x23,
  /** A present IRTE has a reserved field set. */
  IR_IRTE_RSVD: 0x24,
  /** A compatibility-format interrupt while remapping is on and GSTS.CFIS is 0. */
  IR_REQ_COMPAT: 0x25,
  /** The IRTE's source-id check refused the requester. */
  IR_SID_ERR: 0x26,
} as const

/**
 * Faults a context entry's FPD (Fault Processing Disable) keeps from being recorded:
 * the "qualified" ones (9.3, FPD; QEMU's `vtd_qualified_faults`).
 */
export const QUALIFIED_FAULTS: ReadonlySet<number> = new Set([FAULT.CONTEXT_ENTRY_P, FAULT.CONTEXT_ENTRY_INV, FAULT.ADDR_BEYOND_AGAW, FAULT.WRITE, FAULT.READ, FAULT.PAGING_ENTRY_INV, FAULT.PAGING_ENTRY_RSVD])

/** The address widths a context entry's AW field selects (9.3: 1 = 39-bit 3-level, 2 = 48-bit 4-level). */
export const AGAW_BITS: Readonly<Record<number, number>> = { 1: 39, 2: 48 }

/**
 * The Capability register (10.4.2) for a unit translating `width`-bit addresses, as
 * QEMU's `vtd_init` (7.2; `vtd_cap_init` later) builds it: FRO (the fault recording
 * registers at 0x220), NFR 0 (one), ND 6 (16-bit domain IDs), MAMV 18, PSI, SLLPS
 * (2 MiB and 1 GiB pages), MGAW, SAGAW (39-bit; 48-bit too for a 48-bit unit), and
 * DRD/DWD (read and write draining, `dma-drain` on). RWBF, AFL, CM, PLMR/PHMR are 0.
 */
export function capability(width: 39 | 48): bigint {
  const fro = BigInt(REG.FRCD / 16) << 24n
  const nfr = BigInt(FRCD_COUNT - 1) << 40n
  const nd = 6n // (16 - 4) / 2: 2^16 domains
  const mgaw = BigInt(width - 1) << 16n
  const sagaw = (width === 48 ? 0b110n : 0b010n) << 8n
  const mamv = 18n << 48n
  const psi = 1n << 39n
  const sllps = 0b11n << 34n
  const drain = 0b11n << 54n
  return fro | nfr | nd | mgaw | sagaw | mamv | psi | sllps | drain
}

/**
 * The Extended Capability register (10.4.3): QI, IRO (the IOTLB registers at 0xF0),
 * PT (pass-through), and with interrupt remapping IR and MHMV 15 (QEMU's `vtd_init`
 * with `intremap=on`); EIM only with x2APIC (`eim=on`, not modelled: off).
 */
export function extendedCapability(interruptRemapping: boolean): bigint {
  const qi = 1n << 1n
  const iro = BigInt(REG.IVA / 16) << 8n
  const pt = 1n << 6n
  const ir = interruptRemapping ? (1n << 3n) | (15n << 20n) : 0n
  return qi | iro | pt | ir
}
