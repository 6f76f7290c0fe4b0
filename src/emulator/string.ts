/**
 * What string instructions (MOVS, STOS, INS, OUTS) share: the linear address of an
 * index register's operand and the index step under DF and the address size.
 * @module
 */
import type { RegisterCache } from '../registers.js'
import type { Decoded } from './decode.js'
import type { Register } from 'iced-x86'
import { lazy } from '../iced.js'
import { DF, mask } from './alu.js'

/** Segments whose base 64-bit mode ignores. */
const FLAT_IN_LONG_MODE = new Set<SegmentName>(['cs', 'ds', 'es', 'ss'])

/** A segment register's name. */
export type SegmentName = 'es' | 'cs' | 'ss' | 'ds' | 'fs' | 'gs'

const segmentNames = lazy(
  ({ Register }) =>
    new Map<Register, SegmentName>([
      [Register.ES, 'es'],
      [Register.CS, 'cs'],
      [Register.SS, 'ss'],
      [Register.DS, 'ds'],
      [Register.FS, 'fs'],
      [Register.GS, 'gs'],
    ]),
)

/** The register cache's name of an iced segment register, or undefined for another register. */
export function segmentName(reg: Register): SegmentName | undefined {
  return segmentNames().get(reg)
}

/** The base of `segment` for an instruction running in `bitness`-bit mode. */
export function segmentBase(regs: RegisterCache, segment: SegmentName, bitness: number): bigint {
  if (bitness === 64 && FLAT_IN_LONG_MODE.has(segment)) return 0n
  return regs.getRaw(segment)[0]
}

/** The element step: +size, or -size when the direction flag is set. */
export function stringStep(regs: RegisterCache, size: number): bigint {
  return (regs.get('rflags') & DF) !== 0n ? -BigInt(size) : BigInt(size)
}

/**
 * Writes `value` to the register at cache index `index` (rSI, rDI, rCX) as an instruction
 * with `ins`'s address size does: 16-bit addressing keeps the upper bits; 32-bit
 * zero-extends in 64-bit mode.
 */
export function setAddressSized(regs: RegisterCache, index: number, value: bigint, ins: Decoded, bitness: number): void {
  const am = mask(ins.addressSize)
  const v = value & am
  regs.setAt(index, ins.addressSize === 4 && bitness === 64 ? v : (regs.getAt(index) & ~am) | v)
}

/** Adds `delta` to the index register at cache index `index` within the address size. */
export function advanceIndex(regs: RegisterCache, index: number, delta: bigint, ins: Decoded, bitness: number): void {
  setAddressSized(regs, index, regs.getAt(index) + delta, ins, bitness)
}
