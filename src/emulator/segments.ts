/**
 * Segment loads an emulated instruction makes: MOV/POP Sreg, LTR and far JMP to a code
 * segment, with the checks and faults of SDM vol 2 (MOV, POP, LTR, JMP "Operation") and
 * vol 3 chapter 5, as the sim's processor makes them (crates/sim-cpu/src/segment.rs).
 * Descriptors are read through the guest's paging, as the processor's implicit
 * supervisor accesses are. Far transfers through call gates, task gates or a TSS (a task
 * switch) are refused by name: no guest of ours takes one from device memory.
 * @module
 */
import type { RegisterCache } from '../registers.js'
import { MshvError, hex } from '../errors.js'
import type { MmioMachine } from './context.js'
import { GuestFault, NP, SS_FAULT, UD, gp, selectorError } from './fault.js'
import type { SegmentName } from './string.js'

const CR0_PE = 1n
const EFER_LMA = 1n << 10n
const RFLAGS_VM = 1n << 17n
const CR4_LA57 = 1n << 12n

const TYPE_TSS16_AVAILABLE = 1
const TYPE_TSS32_AVAILABLE = 9

/** A descriptor as the GDT or LDT holds it (`high`: the upper 8 bytes of a 16-byte system descriptor in long mode). */
export interface Descriptor {
  readonly low: bigint
  readonly high: bigint
  /** Its linear address. */
  readonly at: bigint
}

const field = (d: Descriptor, shift: bigint, bits: bigint): number => Number((d.low >> shift) & ((1n << bits) - 1n))
/** The `hv_x64_segment_register` attributes: the access byte and the flags nibble (G, D/B, L, AVL). */
const attributes = (d: Descriptor): number => field(d, 40n, 8n) | (field(d, 52n, 4n) << 12)
const present = (d: Descriptor): boolean => field(d, 47n, 1n) === 1
const dpl = (d: Descriptor): number => field(d, 45n, 2n)
const kind = (d: Descriptor): number => field(d, 40n, 4n)
const codeOrData = (d: Descriptor): boolean => field(d, 44n, 1n) === 1
const isCode = (d: Descriptor): boolean => codeOrData(d) && (kind(d) & 8) !== 0
const conforming = (d: Descriptor): boolean => isCode(d) && (kind(d) & 4) !== 0
const readableCode = (d: Descriptor): boolean => isCode(d) && (kind(d) & 2) !== 0
const writableData = (d: Descriptor): boolean => codeOrData(d) && !isCode(d) && (kind(d) & 2) !== 0
const base32 = (d: Descriptor): bigint => ((d.low >> 16n) & 0xff_ffffn) | (((d.low >> 56n) & 0xffn) << 24n)

/** The limit in bytes: the 20-bit field, scaled by 4 KiB when G is set. */
function limitOf(d: Descriptor): bigint {
  const raw = (d.low & 0xffffn) | (((d.low >> 48n) & 0xfn) << 16n)
  return (d.low & (1n << 55n)) !== 0n ? (raw << 12n) | 0xfffn : raw
}

/** Packs a segment register's cache as the register cache holds it: [base, limit | selector << 32 | attributes << 48]. */
function packSegment(base: bigint, limit: bigint, selector: number, attrs: number): [bigint, bigint] {
  return [base, limit | (BigInt(selector) << 32n) | (BigInt(attrs) << 48n)]
}

/** The segment register loaded from `d` for `selector`, marked accessed. */
function fromDescriptor(d: Descriptor, selector: number, base = base32(d)): [bigint, bigint] {
  return packSegment(base, limitOf(d), selector, attributes(d) | 1)
}

/** Protected mode (CR0.PE), not virtual-8086. */
export function protectedMode(regs: RegisterCache): boolean {
  return (regs.get('cr0') & CR0_PE) !== 0n && (regs.get('rflags') & RFLAGS_VM) === 0n
}

/** IA-32e mode is active (EFER.LMA). */
export function longModeActive(regs: RegisterCache): boolean {
  return (regs.get('efer') & EFER_LMA) !== 0n
}

/** The current privilege level: 0 in real mode, 3 in virtual-8086 mode, else SS.DPL (SDM vol 3 5.5). */
export function cpl(regs: RegisterCache): number {
  if ((regs.get('cr0') & CR0_PE) === 0n) return 0
  if ((regs.get('rflags') & RFLAGS_VM) !== 0n) return 3
  return Number((regs.getRaw('ss')[1] >> 53n) & 3n)
}

/** Whether `v` is canonical: bits 63..47 (63..56 with 5-level paging, CR4.LA57) all equal (SDM vol 1 3.3.7.1). */
export function canonical(regs: RegisterCache, v: bigint): boolean {
  const bits = (regs.get('cr4') & CR4_LA57) !== 0n ? 57 : 48
  return BigInt.asUintN(64, BigInt.asIntN(bits, v)) === v
}

/**
 * The descriptor of `selector` (16 bytes if `wide`) from the GDT or, with TI set, the
 * LDT; beyond the table's limit, or an LDT selector without a usable LDT, is #GP(selector).
 */
function readDescriptor(m: MmioMachine, selector: number, wide: boolean): Descriptor {
  const regs = m.regs
  let base: bigint
  let limit: bigint
  if ((selector & 4) !== 0) {
    const [ldtBase, ldt] = regs.getRaw('ldtr')
    const usable = ((ldt >> 48n) & 0x80n) !== 0n && ((ldt >> 32n) & 0xfffcn) !== 0n
    if (!usable) throw gp(selectorError(selector))
    base = ldtBase
    limit = ldt & 0xffff_ffffn
  } else {
    const [lo, hi] = regs.getRaw('gdtr')
    base = hi
    limit = (lo >> 48n) & 0xffffn
  }
  const index = BigInt(selector & ~7)
  if (index + (wide ? 15n : 7n) > limit) throw gp(selectorError(selector))
  const at = longModeActive(regs) ? BigInt.asUintN(64, base + index) : (base + index) & 0xffff_ffffn
  const low = m.memory.read(at, 8)
  const high = wide ? m.memory.read(at + 8n, 8) : 0n
  return { low, high, at }
}

/** Sets a descriptor's accessed bit in memory, as the processor does when it loads it. */
function setAccessed(m: MmioMachine, d: Descriptor): void {
  if ((d.low & (1n << 40n)) === 0n) m.memory.write(d.at + 5n, 1, ((d.low >> 40n) & 0xffn) | 1n)
}

/**
 * MOV Sreg / POP Sreg for DS, ES, FS, GS or SS (SDM vol 2 MOV, "Operation"). Real and
 * virtual-8086 mode take the selector as a paragraph. In protected mode a null selector
 * makes the register unusable, except SS, which only 64-bit mode below CPL 3 accepts
 * (with RPL = CPL); otherwise the descriptor must be a readable segment the CPL may use
 * (SS: a writable data segment at DPL = RPL = CPL), present (#NP, #SS for SS).
 */
export function loadDataSegment(m: MmioMachine, segment: SegmentName, selector: number, bitness: 16 | 32 | 64): void {
  const regs = m.regs
  if (!protectedMode(regs)) {
    const [, cache] = regs.getRaw(segment)
    const v86 = (regs.get('rflags') & RFLAGS_VM) !== 0n
    // Virtual-8086 mode: every segment is a 64 KiB read/write data segment at DPL 3.
    const rest = v86 ? packSegment(0n, 0xffffn, selector, 0xf3)[1] : (cache & ~(0xffffn << 32n)) | (BigInt(selector) << 32n)
    regs.setRaw(segment, BigInt(selector) << 4n, rest)
    return
  }
  const privilege = cpl(regs)
  const rpl = selector & 3
  if ((selector & ~3) === 0) {
    if (segment === 'ss') {
      if (bitness === 64 && privilege !== 3 && rpl === privilege) {
        regs.setRaw('ss', ...packSegment(0n, 0n, selector, privilege << 5))
        return
      }
      throw gp(0)
    }
    // Unusable, its DPL the selector's RPL.
    regs.setRaw(segment, ...packSegment(0n, 0n, selector, rpl << 5))
    return
  }
  const d = readDescriptor(m, selector, false)
  const error = selectorError(selector)
  if (segment === 'ss') {
    if (rpl !== privilege || !writableData(d) || dpl(d) !== privilege) throw gp(error)
    if (!present(d)) throw new GuestFault(SS_FAULT, error)
  } else {
    const readable = !isCode(d) || readableCode(d)
    if (!codeOrData(d) || !readable) throw gp(error)
    if (!conforming(d) && (rpl > dpl(d) || privilege > dpl(d))) throw gp(error)
    if (!present(d)) throw new GuestFault(NP, error)
  }
  setAccessed(m, d)
  regs.setRaw(segment, ...fromDescriptor(d, selector))
}

/**
 * LTR (SDM vol 2 LTR): CPL 0 in protected mode (#UD outside it, #GP(0) above CPL 0); a
 * GDT selector, not null, of an available TSS (a 32/64-bit one in IA-32e mode, 16-byte,
 * its base canonical), present; the descriptor is marked busy and loaded into TR.
 */
export function loadTaskRegister(m: MmioMachine, selector: number): void {
  const regs = m.regs
  if (!protectedMode(regs)) throw new GuestFault(UD)
  if (cpl(regs) !== 0) throw gp(0)
  const error = selectorError(selector)
  if ((selector & ~3) === 0) throw gp(0)
  if ((selector & 4) !== 0) throw gp(error)
  const long = longModeActive(regs)
  const d = readDescriptor(m, selector, long)
  const available = !codeOrData(d) && (kind(d) === TYPE_TSS32_AVAILABLE || (!long && kind(d) === TYPE_TSS16_AVAILABLE))
  if (!available) throw gp(error)
  if (!present(d)) throw new GuestFault(NP, error)
  const base = long ? base32(d) | ((d.high & 0xffff_ffffn) << 32n) : base32(d)
  if (long && !canonical(regs, base)) throw gp(error)
  const busy = ((d.low >> 40n) & 0xffn) | 2n
  m.memory.write(d.at + 5n, 1, busy)
  regs.setRaw('tr', ...packSegment(base, limitOf(d), selector, attributes(d) | 2))
}

/**
 * JMP or CALL m16:16/32/64 (SDM vol 2 JMP, CALL, "Operation"): in real and virtual-8086
 * mode CS takes the selector as a paragraph, the offset within CS's limit; in protected
 * mode the target must be a code segment the CPL may enter directly (conforming: DPL <=
 * CPL; else RPL <= CPL and DPL = CPL), present, not both L and D in IA-32e mode, and the
 * offset inside it (canonical in 64-bit code): #GP / #NP otherwise. CS keeps the CPL as
 * its RPL. `pushReturn` (a CALL's) pushes the return frame, given the old CS selector,
 * once every check has passed and before CS changes. Sets RIP.
 */
export function farTransfer(m: MmioMachine, selector: number, offset: bigint, pushReturn?: (cs: bigint) => void): void {
  const regs = m.regs
  const [, cs] = regs.getRaw('cs')
  const oldSelector = (cs >> 32n) & 0xffffn
  if (!protectedMode(regs)) {
    if (offset > (cs & 0xffff_ffffn)) throw gp(0)
    pushReturn?.(oldSelector)
    regs.setRaw('cs', BigInt(selector) << 4n, (cs & ~(0xffffn << 32n)) | (BigInt(selector) << 32n))
    regs.set('rip', offset)
    return
  }
  if ((selector & ~3) === 0) throw gp(0)
  const d = readDescriptor(m, selector, false)
  if (!codeOrData(d)) {
    throw new MshvError(
      'EUNSUPPORTED_INSTRUCTION',
      `a far ${pushReturn ? 'CALL' : 'JMP'} through system descriptor ${hex(selector)} (type ${kind(d)}: a call gate, task gate or TSS) is not emulated`,
    )
  }
  const privilege = cpl(regs)
  const error = selectorError(selector)
  if (!isCode(d)) throw gp(error)
  if (conforming(d) ? dpl(d) > privilege : (selector & 3) > privilege || dpl(d) !== privilege) throw gp(error)
  if (!present(d)) throw new GuestFault(NP, error)
  const long = (d.low & (1n << 53n)) !== 0n
  if (longModeActive(regs) && long && (d.low & (1n << 54n)) !== 0n) throw gp(error)
  if (longModeActive(regs) && long) {
    if (!canonical(regs, offset)) throw gp(0)
  } else if (offset > limitOf(d)) {
    throw gp(0)
  }
  pushReturn?.(oldSelector)
  setAccessed(m, d)
  regs.setRaw('cs', ...fromDescriptor(d, (selector & ~3) | privilege))
  regs.set('rip', offset)
}
