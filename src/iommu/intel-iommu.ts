/**
 * An Intel VT-d DMA- and interrupt-remapping unit (Intel Virtualization Technology for
 * Directed I/O Architecture Specification, rev 4.x), as QEMU's `-device intel-iommu`
 * (hw/i386/intel_iommu.c) presents one on q35: its registers at 0xFED90000 (chapter
 * 10), legacy-mode root and context tables with second-level page tables translating
 * each PCI function's DMA by its requester ID (3.4.2, 9.1, 9.3, 9.8), interrupt
 * remapping of remappable-format MSIs and I/O APIC interrupts through the IRTE table
 * in xAPIC mode (5.1, 9.10), queued invalidation with wait descriptors (6.5.2), and
 * primary fault logging in one fault recording register with fault events (7.2-7.3).
 * Not modelled: scalable mode (PASIDs, first-level tables), device-TLBs, x2APIC mode
 * (EIM), posted interrupts, advanced fault logging, protected memory regions, page
 * requests.
 * @module
 */
import { checkInstance, checkInteger, checkObject, checkU32, checkUnsignedBigint, invalid } from '../check.js'
import { MshvError, describe, hex } from '../errors.js'
import { GuestMemory } from '../guest-memory.js'
import type { MmioDevice } from '../bus.js'
import type { DmaMemory, MsiMessage, PciIommu } from '../pci/iommu.js'
import { PcPlatform } from '../platform/pc.js'
import { hex64, int, list, noneLeft, parseState, record, toHex64, u16, u32, version, type Saveable } from '../snapshot/device-state.js'
import { Vm } from '../vm.js'
import { capability, EVENT_IM, EVENT_IP, extendedCapability, FAULT, FRCD_COUNT, FSTS, GCMD, ICS_IWC, QUALIFIED_FAULTS, REG, VTD_BASE, VTD_SIZE } from './vtd-registers.js'
import { translate } from './vtd-translate.js'
import { remapInterrupt } from './vtd-interrupts.js'
import { decodeDescriptor } from './vtd-queue.js'

/** Options for {@link addIntelIommu}. */
export interface IntelIommuOptions {
  /**
   * The address width it translates (CAP.MGAW, SAGAW): 39 bits (3-level tables, QEMU
   * 7.2's `aw-bits` default) or 48 (3- and 4-level). Default 39.
   */
  addressWidth?: 39 | 48
  /** Interrupt remapping (QEMU's `intremap=on`; ECAP.IR). Default true. */
  interruptRemapping?: boolean
}

/** Counters of an {@link IntelIommu}. */
export interface IntelIommuStats {
  /** DMA pages translated by the tables (translation on). */
  translated: number
  /** DMAs the tables refused: not performed (each a fault, recorded unless FPD or the log said otherwise). */
  dmaBlocked: number
  /** Interrupts remapped through an IRTE. */
  interruptsRemapped: number
  /** Interrupts blocked by interrupt remapping. */
  interruptsBlocked: number
  /** Faults written to the fault recording register. */
  faultsRecorded: number
  /** Invalidation descriptors carried out. */
  descriptors: number
  /** Register accesses of a size or alignment the spec does not allow (10.2): reads give 0, writes are dropped. */
  badAccesses: number
}

/** One fault recording register (10.4.14) as two 64-bit halves, hex. */
export interface IntelIommuFaultRecord {
  lo: string
  hi: string
}

/** What the guest programmed into an {@link IntelIommu} ({@link IntelIommu.save}). */
export interface IntelIommuState {
  version: 1
  gsts: number
  rtaddr: string
  /** The root table's address as the last SRTP latched it. */
  rootTable: number
  ccmd: string
  fsts: number
  fectl: number
  fedata: number
  feaddr: number
  feuaddr: number
  /** Invalidation queue head and tail, in descriptors. */
  iqh: number
  iqt: number
  iqa: string
  ics: number
  iectl: number
  iedata: number
  ieaddr: number
  ieuaddr: number
  irta: string
  /** The interrupt remapping table as the last SIRTP latched it. */
  irtTable: number
  irtEntries: number
  iva: string
  iotlb: string
  frcd: IntelIommuFaultRecord[]
  nextFrcd: number
  /** The fault recording index FSTS.FRI reports. */
  fri: number
}

/** The registers' values at reset (10.4: every field 0 but the event masks). */
function resetState(): Omit<IntelIommuState, 'version'> {
  return {
    gsts: 0,
    rtaddr: '0x0',
    rootTable: 0,
    ccmd: '0x0',
    fsts: 0,
    fectl: EVENT_IM >>> 0,
    fedata: 0,
    feaddr: 0,
    feuaddr: 0,
    iqh: 0,
    iqt: 0,
    iqa: '0x0',
    ics: 0,
    iectl: EVENT_IM >>> 0,
    iedata: 0,
    ieaddr: 0,
    ieuaddr: 0,
    irta: '0x0',
    irtTable: 0,
    irtEntries: 0,
    iva: '0x0',
    iotlb: '0x0',
    frcd: Array.from({ length: FRCD_COUNT }, () => ({ lo: '0x0', hi: '0x0' })),
    nextFrcd: 0,
    fri: 0,
  }
}

/** The 64-bit registers (10.4), by offset: each read and written whole or by 32-bit halves. */
const QUADS: ReadonlySet<number> = new Set([REG.CAP, REG.ECAP, REG.RTADDR, REG.CCMD, REG.IQH, REG.IQT, REG.IQA, REG.IRTA, REG.IVA, REG.IOTLB, REG.FRCD, REG.FRCD + 8])

const MASK64 = 0xffff_ffff_ffff_ffffn

/** An Intel VT-d remapping unit: an MMIO device, and the IOMMU of a PCI bus. */
export class IntelIommu implements MmioDevice, PciIommu, Saveable<IntelIommuState> {
  /** CAP (10.4.2) and ECAP (10.4.3), fixed by the options. */
  readonly cap: bigint
  readonly ecap: bigint
  /** The address width translated (and the host address width: as QEMU, one `aw-bits`). */
  readonly addressWidth: 39 | 48
  /** Whether it remaps interrupts (ECAP.IR). */
  readonly interruptRemapping: boolean
  readonly stats: IntelIommuStats = { translated: 0, dmaBlocked: 0, interruptsRemapped: 0, interruptsBlocked: 0, faultsRecorded: 0, descriptors: 0, badAccesses: 0 }
  private readonly memory: GuestMemory
  private readonly spaces = new Map<number, DmaMemory>()
  private s: Omit<IntelIommuState, 'version'> = resetState()

  /** @internal use {@link addIntelIommu} */
  constructor(
    vm: Vm,
    options: IntelIommuOptions = {},
    /** Sends the unit's own event interrupts (fault and invalidation completion events: never remapped). */
    private readonly sendEvent: (address: bigint, data: number) => void = (a, d) => vm.deviceMsi(a, d),
  ) {
    checkInstance('IntelIommu: vm', vm, Vm)
    checkObject('IntelIommu: options', options)
    const width = options.addressWidth ?? 39
    if (width !== 39 && width !== 48) throw new MshvError('EINVAL', `IntelIommu: addressWidth must be 39 or 48, got ${describe(options.addressWidth)}`)
    const ir = options.interruptRemapping ?? true
    if (typeof ir !== 'boolean') throw new MshvError('EINVAL', `IntelIommu: interruptRemapping must be a boolean, got ${describe(ir)}`)
    this.addressWidth = width
    this.interruptRemapping = ir
    this.cap = capability(width)
    this.ecap = extendedCapability(ir)
    this.memory = vm.memory
  }

  /** Guest physical addresses the unit can name: its host address width (QEMU's `VTD_HAW_MASK`). */
  private get haw(): bigint {
    return (1n << BigInt(this.addressWidth)) - 1n
  }

  /** GSTS (10.4.5). */
  get status(): number {
    return this.s.gsts >>> 0
  }

  // ---- DMA remapping -------------------------------------------------------------

  /** The memory requester `requesterId` reaches (its translation when GSTS.TES is set, guest memory as it is when not). */
  dmaFor(requesterId: number): DmaMemory {
    checkInteger('IntelIommu.dmaFor: requesterId', requesterId, 0, 0xffff)
    let d = this.spaces.get(requesterId)
    if (!d) {
      d = new RemappedDma(this, requesterId, this.memory)
      this.spaces.set(requesterId, d)
    }
    return d
  }

  /**
   * Where `address` of requester `requesterId` goes for a read or a `write`: its guest
   * physical address and the bytes left in its page, or an `EFAULT` (the fault recorded
   * as 7.2.1 says) when the tables refuse it. Translation off: the address itself. @internal
   */
  translate(requesterId: number, address: number, write: boolean): { address: number; rest: number } {
    if ((this.s.gsts & GCMD.TE) === 0) return { address, rest: Number.MAX_SAFE_INTEGER }
    const r = translate({ memory: this.memory, rootTable: this.s.rootTable, width: this.addressWidth }, requesterId, address, write)
    if (r.ok) {
      this.stats.translated++
      return r
    }
    this.stats.dmaBlocked++
    if (!(r.fpd && QUALIFIED_FAULTS.has(r.reason))) this.recordFault(requesterId, r.reason, BigInt(address) & ~0xfffn, write)
    throw new MshvError('EFAULT', `DMA ${write ? 'write' : 'read'} at ${hex(address)} by requester ${rid(requesterId)} blocked by the IOMMU: fault reason ${hex(r.reason)}`)
  }

  // ---- Interrupt remapping ------------------------------------------------------

  /** The interrupt `message` from `requesterId` becomes (5.1): itself with remapping off, else its IRTE's; undefined when blocked. */
  remapInterrupt(requesterId: number | undefined, message: MsiMessage): MsiMessage | undefined {
    if (requesterId !== undefined) checkInteger('IntelIommu.remapInterrupt: requesterId', requesterId, 0, 0xffff)
    checkObject<MsiMessage>('IntelIommu.remapInterrupt: message', message)
    checkUnsignedBigint('IntelIommu.remapInterrupt: message.address', message.address)
    checkU32('IntelIommu.remapInterrupt: message.data', message.data)
    if ((this.s.gsts & GCMD.IRE) === 0) return message
    const r = remapInterrupt({ memory: this.memory, table: this.s.irtTable, entries: this.s.irtEntries, compatibility: (this.s.gsts & GCMD.CFI) !== 0 }, requesterId, message)
    if (r.ok) {
      this.stats.interruptsRemapped++
      return r.message
    }
    this.stats.interruptsBlocked++
    // The IRTE's FPD keeps its qualified faults (not present, reserved, source-id: 5.1.4.1) from the log.
    const qualified = r.reason === FAULT.IR_ENTRY_P || r.reason === FAULT.IR_IRTE_RSVD || r.reason === FAULT.IR_SID_ERR
    if (!(r.fpd && qualified)) this.recordFault(requesterId ?? 0, r.reason, BigInt(r.index) << 48n, false)
    return undefined
  }

  // ---- Faults (7.2.1 primary fault logging, 7.3 fault events) --------------------

  private frcdHi(i: number): bigint {
    return BigInt((this.s.frcd[i] as IntelIommuFaultRecord).hi)
  }

  /**
   * Records a fault (7.2.1; QEMU's `vtd_report_dmar_fault`): not while PFO is set; one
   * from a requester with a fault pending already is collapsed into it; a full register
   * sets PFO; else the record (FI, SID, FR, T), F set, and a fault event if PPF was clear.
   */
  private recordFault(requesterId: number, reason: number, fi: bigint, write: boolean): void {
    const before = this.fsts()
    if ((before & FSTS.PFO) !== 0) return
    for (let i = 0; i < FRCD_COUNT; i++) {
      const hi = this.frcdHi(i)
      if (hi >> 63n === 1n && Number(hi & 0xffffn) === requesterId) return
    }
    const at = this.s.nextFrcd
    if (this.frcdHi(at) >> 63n === 1n) {
      this.s.fsts |= FSTS.PFO
      this.faultEvent(before)
      return
    }
    // T (bit 126): 0 a write, 1 a read; FR 103:96; SID 79:64; FI 63:12 (or the interrupt index, 63:48).
    const hi = (1n << 63n) | ((write ? 0n : 1n) << 62n) | (BigInt(reason) << 32n) | BigInt(requesterId & 0xffff)
    this.s.frcd[at] = { lo: toHex64(fi & MASK64), hi: toHex64(hi) }
    this.stats.faultsRecorded++
    if ((before & FSTS.PPF) === 0) this.s.fri = at
    this.s.nextFrcd = (at + 1) % FRCD_COUNT
    this.faultEvent(before)
  }

  /** FSTS as read: the RW1C bits, PPF (any F set) and FRI (10.4.9). */
  private fsts(): number {
    let ppf = false
    for (let i = 0; i < FRCD_COUNT; i++) if (this.frcdHi(i) >> 63n === 1n) ppf = true
    return (this.s.fsts | (ppf ? FSTS.PPF : 0) | (this.s.fri << 8)) >>> 0
  }

  /**
   * A fault event (7.3; QEMU's `vtd_generate_fault_event`): only when no status was
   * pending before (`before`); IP set, and the message sent now unless IM masks it.
   */
  private faultEvent(before: number): void {
    if ((before & (FSTS.PFO | FSTS.PPF | FSTS.IQE)) !== 0) return
    if ((this.fsts() & (FSTS.PFO | FSTS.PPF | FSTS.IQE)) === 0) return
    this.s.fectl = (this.s.fectl | EVENT_IP) >>> 0
    this.deliverPending('fault')
  }

  /** Sends a pending event (fault or invalidation completion) unless masked; IP clears once sent. */
  private deliverPending(which: 'fault' | 'completion'): void {
    const ctl = which === 'fault' ? this.s.fectl : this.s.iectl
    if ((ctl & EVENT_IP) === 0 || (ctl & EVENT_IM) !== 0) return
    const [data, low, high] = which === 'fault' ? [this.s.fedata, this.s.feaddr, this.s.feuaddr] : [this.s.iedata, this.s.ieaddr, this.s.ieuaddr]
    if (which === 'fault') this.s.fectl = (ctl & ~EVENT_IP) >>> 0
    else this.s.iectl = (ctl & ~EVENT_IP) >>> 0
    this.sendEvent((BigInt(high) << 32n) | BigInt(low), data)
  }

  /** Clears FECTL.IP once software has serviced every status that raised it (10.4.10). */
  private faultServiced(): void {
    if ((this.fsts() & (FSTS.PFO | FSTS.PPF | FSTS.IQE)) === 0) this.s.fectl = (this.s.fectl & ~EVENT_IP) >>> 0
  }

  // ---- Queued invalidation (6.5.2) ----------------------------------------------

  /** Descriptors in the queue: 2^(IQA.QS + 8) of 128 bits (10.4.24). */
  private queueSize(): number {
    return 2 ** (Number(BigInt(this.s.iqa) & 7n) + 8)
  }

  /** Carries out descriptors from IQH to IQT while QI is on and no IQE is pending; an erroneous one stops it at IQH. */
  private processQueue(): void {
    if ((this.s.gsts & GCMD.QIE) === 0) return
    const size = this.queueSize()
    const base = Number(BigInt(this.s.iqa) & ~0xfffn & this.haw)
    while (this.s.iqh !== this.s.iqt && (this.s.fsts & FSTS.IQE) === 0) {
      if (this.s.iqt >= size) return this.queueError()
      const at = base + this.s.iqh * 16
      if (!this.memory.contains(at, 16)) return this.queueError()
      const v = this.memory.dataView(at, 16)
      const d = decodeDescriptor(v.getBigUint64(0, true), v.getBigUint64(8, true), this.interruptRemapping)
      if (d.kind === 'invalid') return this.queueError()
      if (d.kind === 'wait') {
        const w = d.wait.statusWrite
        if (w) {
          // The unit's own write, untranslated; one outside RAM is an error of the descriptor (QEMU's `vtd_process_wait_desc`).
          if (!this.memory.contains(w.address, 4)) return this.queueError()
          this.memory.dataView(w.address, 4, true).setUint32(0, w.data, true)
        }
        if (d.wait.interrupt && (this.s.ics & ICS_IWC) === 0) {
          this.s.ics |= ICS_IWC
          this.s.iectl = (this.s.iectl | EVENT_IP) >>> 0
          this.deliverPending('completion')
        }
      }
      this.stats.descriptors++
      this.s.iqh = (this.s.iqh + 1) % size
    }
  }

  /** An Invalidation Queue Error (10.4.9 IQE): IQH stays at the descriptor; a fault event. */
  private queueError(): void {
    const before = this.fsts()
    this.s.fsts |= FSTS.IQE
    this.faultEvent(before)
  }

  // ---- Global command (10.4.4) ----------------------------------------------------

  /** A GCMD write (QEMU's `vtd_handle_gcmd_write`): each bit that differs from GSTS, and the one-shot SRTP and SIRTP. */
  private command(value: number): void {
    const changed = (this.s.gsts ^ value) >>> 0
    let gsts = this.s.gsts
    if ((changed & GCMD.TE) !== 0) gsts = value & GCMD.TE ? gsts | GCMD.TE : gsts & ~GCMD.TE
    if ((value & GCMD.SRTP) !== 0) {
      // Latch RTADDR (10.4.6: legacy mode, TTM 00b; bits 11:0 are reserved here).
      this.s.rootTable = Number(BigInt(this.s.rtaddr) & this.haw & ~0xfffn)
      gsts |= GCMD.SRTP
    }
    if ((changed & GCMD.QIE) !== 0) {
      if (value & GCMD.QIE) gsts |= GCMD.QIE
      else {
        // 10.4.22: IQH is reset to 0 whenever queued invalidation is disabled.
        gsts &= ~GCMD.QIE
        this.s.iqh = 0
      }
    }
    if (this.interruptRemapping) {
      if ((value & GCMD.SIRTP) !== 0) {
        // Latch IRTA (10.4.29): the table at 63:12, 2^(S + 1) entries; EIME is reserved (ECAP.EIM is 0).
        const irta = BigInt(this.s.irta)
        this.s.irtTable = Number(irta & this.haw & ~0xfffn)
        this.s.irtEntries = 2 ** (Number(irta & 0xfn) + 1)
        gsts |= GCMD.SIRTP
      }
      if ((changed & GCMD.IRE) !== 0) gsts = value & GCMD.IRE ? gsts | GCMD.IRE : gsts & ~GCMD.IRE
      if ((changed & GCMD.CFI) !== 0) gsts = value & GCMD.CFI ? gsts | GCMD.CFI : gsts & ~GCMD.CFI
    }
    // WBF (CAP.RWBF 0), SFL and EAFL (CAP.AFL 0) have no effect on this unit.
    this.s.gsts = gsts >>> 0
    if ((changed & GCMD.QIE) !== 0 && (value & GCMD.QIE) !== 0) this.processQueue()
  }

  // ---- The register file ------------------------------------------------------------

  /** The 32-bit register (or half of a 64-bit one) at `offset`; 0 where there is none. */
  private dword(offset: number): number {
    const o = offset & ~7
    if (QUADS.has(o)) {
      const q = this.quad(o)
      return Number(offset === o ? q & 0xffff_ffffn : q >> 32n)
    }
    const s = this.s
    switch (offset) {
      case REG.VER:
        return 0x10 // major 1, minor 0: QEMU's DMAR_VER_REG
      case REG.GSTS:
        return s.gsts >>> 0
      case REG.FSTS:
        return this.fsts()
      case REG.FECTL:
        return s.fectl
      case REG.FEDATA:
        return s.fedata
      case REG.FEADDR:
        return s.feaddr
      case REG.FEUADDR:
        return s.feuaddr
      case REG.ICS:
        return s.ics
      case REG.IECTL:
        return s.iectl
      case REG.IEDATA:
        return s.iedata
      case REG.IEADDR:
        return s.ieaddr
      case REG.IEUADDR:
        return s.ieuaddr
      default:
        return 0 // GCMD is write-only; reserved offsets read 0
    }
  }

  private quad(offset: number): bigint {
    const s = this.s
    switch (offset) {
      case REG.CAP:
        return this.cap
      case REG.ECAP:
        return this.ecap
      case REG.RTADDR:
        return BigInt(s.rtaddr)
      case REG.CCMD:
        return BigInt(s.ccmd)
      case REG.IQH:
        return BigInt(s.iqh) << 4n
      case REG.IQT:
        return BigInt(s.iqt) << 4n
      case REG.IQA:
        return BigInt(s.iqa)
      case REG.IRTA:
        return BigInt(s.irta)
      case REG.IVA:
        return BigInt(s.iva)
      case REG.IOTLB:
        return BigInt(s.iotlb)
      case REG.FRCD:
        return BigInt((s.frcd[0] as IntelIommuFaultRecord).lo)
      case REG.FRCD + 8:
        return this.frcdHi(0)
      default:
        return 0n
    }
  }

  /** A write of the whole 64-bit register at `offset` (a 32-bit write merged into it first). */
  private writeQuad(offset: number, v: bigint): void {
    const s = this.s
    switch (offset) {
      case REG.RTADDR:
        // 63:12 the root table (bits above the host address width reserved); TTM 11:10 reserved (legacy mode only).
        s.rtaddr = toHex64(v & this.haw & ~0xfffn)
        return
      case REG.CCMD: {
        // 10.4.7: ICC 63 starts it; CIRG 62:61 asked, CAIG 60:59 done; FM 33:32, SID 31:16, DID 15:0.
        let c = v & ((1n << 63n) | (3n << 61n) | (3n << 32n) | 0xffff_ffffn)
        if (c >> 63n === 1n) c = (c & ~((1n << 63n) | (3n << 59n))) | (((c >> 61n) & 3n) << 59n) // nothing cached: done at once
        s.ccmd = toHex64(c)
        return
      }
      case REG.IOTLB: {
        // 10.4.8.1: IVT 63; IIRG 61:60 asked, IAIG 58:57 done; DR 49, DW 48, DID 47:32.
        let c = v & ((1n << 63n) | (3n << 60n) | (3n << 48n) | (0xffffn << 32n))
        if (c >> 63n === 1n) c = (c & ~((1n << 63n) | (3n << 57n))) | (((c >> 60n) & 3n) << 57n)
        s.iotlb = toHex64(c)
        return
      }
      case REG.IVA:
        // 10.4.8.2: ADDR 63:12, IH 6, AM 5:0.
        s.iva = toHex64(v & (this.haw & ~0xfffn | 0x7fn))
        return
      case REG.IQT:
        // 10.4.23: QT 18:4 (128-bit descriptors); the rest reserved.
        s.iqt = Number((v >> 4n) & 0x7fffn)
        this.processQueue()
        return
      case REG.IQA:
        // 10.4.24: IQA 63:12, QS 2:0 (DW 11 needs scalable mode: reserved).
        s.iqa = toHex64(v & (this.haw & ~0xfffn | 7n))
        return
      case REG.IRTA:
        // 10.4.29: IRTA 63:12, S 3:0 (EIME 11 reserved: ECAP.EIM is 0).
        if (this.interruptRemapping) s.irta = toHex64(v & (this.haw & ~0xfffn | 0xfn))
        return
      default:
        // CAP, ECAP, IQH, FRCD's low half: read-only.
        return
    }
  }

  private writeDword(offset: number, value: number): void {
    const s = this.s
    const o = offset & ~7
    if (o === REG.FRCD + 8) {
      // F (bit 127) is RW1C; the rest of the record is read-only (10.4.14).
      if (offset === o + 4 && (value & 0x8000_0000) !== 0) this.clearFault(0)
      return
    }
    if (QUADS.has(o)) {
      const q = this.quad(o)
      const v = BigInt(value >>> 0)
      return this.writeQuad(o, offset === o ? (q & 0xffff_ffff_0000_0000n) | v : (q & 0xffff_ffffn) | (v << 32n))
    }
    switch (offset) {
      case REG.GCMD:
        return this.command(value >>> 0)
      case REG.FSTS: {
        // PFO and IQE are RW1C (ICE and ITE are reserved without device-TLBs); PPF and FRI are read-only.
        s.fsts &= ~(value & (FSTS.PFO | FSTS.IQE))
        this.faultServiced()
        // With IQE cleared the queue goes on from IQH, where the erroneous descriptor was (now fixed, or to fail again).
        if ((value & FSTS.IQE) !== 0) this.processQueue()
        return
      }
      case REG.FECTL:
        s.fectl = ((s.fectl & EVENT_IP) | (value & EVENT_IM)) >>> 0
        return this.deliverPending('fault')
      case REG.FEDATA:
        s.fedata = value & 0xffff
        return
      case REG.FEADDR:
        s.feaddr = (value & 0xffff_fffc) >>> 0
        return
      case REG.FEUADDR:
        s.feuaddr = value >>> 0
        return
      case REG.ICS:
        if ((value & ICS_IWC) !== 0) {
          s.ics &= ~ICS_IWC
          s.iectl = (s.iectl & ~EVENT_IP) >>> 0
        }
        return
      case REG.IECTL:
        s.iectl = ((s.iectl & EVENT_IP) | (value & EVENT_IM)) >>> 0
        return this.deliverPending('completion')
      case REG.IEDATA:
        s.iedata = value & 0xffff
        return
      case REG.IEADDR:
        s.ieaddr = (value & 0xffff_fffc) >>> 0
        return
      case REG.IEUADDR:
        s.ieuaddr = value >>> 0
        return
      default:
        return // read-only or reserved
    }
  }

  private clearFault(i: number): void {
    const r = this.s.frcd[i] as IntelIommuFaultRecord
    r.hi = toHex64(BigInt(r.hi) & ~(1n << 63n))
    this.faultServiced()
  }

  /** Reads a register: 4 or 8 bytes, aligned (10.2); anything else reads 0. */
  mmioRead(offset: number, size: number): bigint {
    if ((size !== 4 && size !== 8) || offset % size !== 0) {
      this.stats.badAccesses++
      return 0n
    }
    const lo = BigInt(this.dword(offset))
    return size === 4 ? lo : lo | (BigInt(this.dword(offset + 4)) << 32n)
  }

  /** Writes a register: 4 or 8 bytes, aligned (10.2); anything else is dropped. */
  mmioWrite(offset: number, size: number, value: bigint): void {
    if ((size !== 4 && size !== 8) || offset % size !== 0) {
      this.stats.badAccesses++
      return
    }
    if (size === 8 && QUADS.has(offset)) {
      if (offset === REG.FRCD + 8) return this.writeDword(offset + 4, Number((value >> 32n) & 0xffff_ffffn))
      return this.writeQuad(offset, value & MASK64)
    }
    this.writeDword(offset, Number(value & 0xffff_ffffn))
    if (size === 8) this.writeDword(offset + 4, Number((value >> 32n) & 0xffff_ffffn))
  }

  // ---- State ------------------------------------------------------------------------

  /** Every register the guest programmed, the latched table pointers and the fault record. */
  save(): IntelIommuState {
    return { version: 1, ...structuredClone(this.s) } satisfies IntelIommuState
  }

  /** Restores what {@link save} gave; `EINVAL` (and nothing changed) for a bad state. */
  restore(state: IntelIommuState): void {
    const addr = int(0, 2 ** this.addressWidth - 1)
    const { version: _, ...fields } = parseState<IntelIommuState>('intelIommu.restore: state', state, {
      version: version(1),
      gsts: (what, v) => {
        const g = u32(what, v)
        if ((g & 0x7f_ffff) !== 0) throw invalid(what, 'GSTS bits (31:23) only', hex(g))
        return g
      },
      rtaddr: hex64(),
      rootTable: addr,
      ccmd: hex64(),
      fsts: int(0, 0x7f),
      fectl: u32,
      fedata: u16,
      feaddr: u32,
      feuaddr: u32,
      iqh: int(0, 0x7fff),
      iqt: int(0, 0x7fff),
      iqa: hex64(),
      ics: int(0, 1),
      iectl: u32,
      iedata: u16,
      ieaddr: u32,
      ieuaddr: u32,
      irta: hex64(),
      irtTable: addr,
      irtEntries: int(0, 0x1_0000),
      iva: hex64(),
      iotlb: hex64(),
      frcd: list(record<IntelIommuFaultRecord>({ lo: hex64(), hi: hex64() }), FRCD_COUNT, FRCD_COUNT),
      nextFrcd: int(0, FRCD_COUNT - 1),
      fri: int(0, FRCD_COUNT - 1),
    })
    const { gsts, rtaddr, rootTable, ccmd, fsts, fectl, fedata, feaddr, feuaddr, iqh, iqt, iqa, ics, iectl, iedata, ieaddr, ieuaddr, irta, irtTable, irtEntries, iva, iotlb, frcd, nextFrcd, fri, ...rest } = fields
    noneLeft(rest)
    this.s = { gsts, rtaddr, rootTable, ccmd, fsts, fectl, fedata, feaddr, feuaddr, iqh, iqt, iqa, ics, iectl, iedata, ieaddr, ieuaddr, irta, irtTable, irtEntries, iva, iotlb, frcd, nextFrcd, fri }
  }
}

function rid(requesterId: number): string {
  return `${(requesterId >> 8).toString(16).padStart(2, '0')}:${((requesterId >> 3) & 0x1f).toString(16).padStart(2, '0')}.${requesterId & 7}`
}

/**
 * A requester's view of memory through the unit: each page translated as it is
 * reached, so a copy spans pages the tables scatter; a refused page is an `EFAULT` and
 * nothing of the request is moved. A live view must be one contiguous run of RAM.
 */
class RemappedDma implements DmaMemory {
  constructor(
    private readonly unit: IntelIommu,
    private readonly requesterId: number,
    private readonly memory: GuestMemory,
  ) {}

  /** The guest physical runs `[address, address + length)` maps to; every page checked before any is used. */
  private runs(address: number, length: number, write: boolean): { gpa: number; length: number }[] {
    if (!Number.isSafeInteger(address) || address < 0 || address >= 2 ** 64) throw new MshvError('EINVAL', `DMA address must be a non-negative integer, got ${describe(address)}`)
    if (!Number.isSafeInteger(length) || length < 0) throw new MshvError('EINVAL', `DMA length must be a non-negative integer, got ${describe(length)}`)
    const out: { gpa: number; length: number }[] = []
    let at = address
    let left = length
    while (left > 0) {
      const t = this.unit.translate(this.requesterId, at, write)
      const n = Math.min(left, t.rest)
      const last = out[out.length - 1]
      if (last && last.gpa + last.length === t.address) last.length += n
      else out.push({ gpa: t.address, length: n })
      at += n
      left -= n
    }
    for (const r of out) if (!this.memory.contains(r.gpa, r.length)) this.memory.view(r.gpa, r.length, write) // its EFAULT, naming the address
    return out
  }

  read(address: number, length: number): Uint8Array {
    const out = new Uint8Array(length)
    let i = 0
    for (const r of this.runs(address, length, false)) {
      out.set(this.memory.view(r.gpa, r.length), i)
      i += r.length
    }
    return out
  }

  write(address: number, data: Uint8Array): void {
    checkInstance('DMA write: data', data, Uint8Array)
    const runs = this.runs(address, data.length, true)
    for (const r of runs) this.memory.view(r.gpa, r.length, true) // ROM refused before anything is written
    let i = 0
    for (const r of runs) {
      this.memory.view(r.gpa, r.length, true).set(data.subarray(i, i + r.length))
      i += r.length
    }
  }

  view(address: number, length: number, write = false): Uint8Array {
    const runs = this.runs(address, length, write)
    const first = runs[0]
    if (!first) return new Uint8Array(0)
    if (runs.length > 1) throw new MshvError('EFAULT', `DMA ${write ? 'write' : 'read'} of ${length} bytes at ${hex(address)}: its pages are not contiguous in guest memory (copy it with read/write)`)
    return this.memory.view(first.gpa, length, write)
  }

  dataView(address: number, length: number, write = false): DataView {
    const v = this.view(address, length, write)
    return new DataView(v.buffer, v.byteOffset, v.byteLength)
  }
}

/**
 * Adds an Intel VT-d unit to `pc` (registers at 0xFED90000, as QEMU's q35): every
 * function on its PCI bus then does DMA and sends MSIs through it, and its I/O APIC's
 * interrupts pass its interrupt remapping. Translation and remapping start off (GSTS 0),
 * as at reset: a guest that never programs it sees no difference. Its state goes into
 * the VM's snapshots as `intel-iommu`.
 */
export function addIntelIommu(pc: PcPlatform, options: IntelIommuOptions = {}): IntelIommu {
  checkInstance('addIntelIommu: pc', pc, PcPlatform)
  const pci = pc.pci
  if (!pci) throw new MshvError('EINVAL', 'addIntelIommu: the PC has no PCI bus (addPcPlatform with pci: false)')
  if (pci.iommu) throw new MshvError('EBUSY', 'addIntelIommu: the PCI bus has an IOMMU already')
  const vm = pci.vm
  const iommu = new IntelIommu(vm, options)
  vm.bus.registerMmio(VTD_BASE, VTD_SIZE, iommu, 'Intel VT-d')
  pci.iommu = iommu
  if (iommu.interruptRemapping) pc.ioapic.interruptRemapping = (m) => iommu.remapInterrupt(undefined, m)
  vm.addState('intel-iommu', iommu)
  return iommu
}
