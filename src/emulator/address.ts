/**
 * The linear address of an instruction's explicit memory operand, from its decoded
 * parts and the registers at the exit (SDM vol 1 3.7.5 effective address; vol 3 3.4
 * segment base; 64-bit mode ignores the bases of CS, DS, ES and SS, vol 1 3.4.2.1).
 * @module
 */
import type { RegisterCache } from '../registers.js'
import { MshvError } from '../errors.js'
import { mask } from './alu.js'
import type { AddressParts, Decoded } from './decode.js'
import { segmentBase } from './string.js'

/** The parts of `ins`'s memory operand; an instruction without one is refused by name. */
export function addressOf(ins: Decoded): AddressParts {
  if (!ins.address) throw new MshvError('EUNSUPPORTED_INSTRUCTION', `'${ins.text}' has no explicit memory operand`)
  return ins.address
}

/**
 * The effective address of `ins`'s memory operand at `delta` bytes past it (BT's bit
 * base, a far pointer's selector): the sum wraps to the address size, as the
 * processor's does, before any segment base is added.
 */
export function effectiveAddress(ins: Decoded, regs: RegisterCache, rip: bigint, delta = 0n): bigint {
  const p = addressOf(ins)
  let ea = p.displacement + delta
  if (p.ripRelative) ea += rip + BigInt(ins.length)
  if (p.base >= 0) ea += regs.getAt(p.base)
  if (p.index >= 0) ea += regs.getAt(p.index) * p.scale
  return ea & mask(p.size)
}

/**
 * The linear address of `ins`'s memory operand (`delta` bytes past it): the segment's
 * base plus the effective address; outside 64-bit mode it wraps at 4 GiB (vol 3 3.4).
 * Segment limits are not checked here: the processor checked the operand's before the
 * access that exited.
 */
export function operandLinear(ins: Decoded, regs: RegisterCache, rip: bigint, bitness: 16 | 32 | 64, delta = 0n): bigint {
  const lin = segmentBase(regs, ins.segment || 'ds', bitness) + effectiveAddress(ins, regs, rip, delta)
  return bitness === 64 ? BigInt.asUintN(64, lin) : lin & 0xffff_ffffn
}

/**
 * Whether a plain MOV's operand starts on a page boundary, in 32-bit arithmetic on the
 * address's low 12 bits (no BigInt: it runs on MMIO exits at page offset 0, the plain
 * MOV's fast path). An exit at offset 0 is the operand's start only if so: otherwise the
 * operand straddles the page before, whose bytes the access reached first.
 */
export function startsPage(ins: Decoded, regs: RegisterCache, rip: bigint, bitness: 16 | 32 | 64): boolean {
  const p = addressOf(ins)
  let low = p.displacementLow
  if (p.ripRelative) low += Number(rip & 0xfffn) + ins.length
  if (p.base >= 0) low += regs.peekLow32At(p.base)
  if (p.index >= 0) low += regs.peekLow32At(p.index) * p.scaleNumber
  const segment = ins.segment
  if (bitness !== 64 || segment === 'fs' || segment === 'gs') low += Number(segmentBase(regs, segment || 'ds', bitness) & 0xfffn)
  return (low & 0xfff) === 0
}
