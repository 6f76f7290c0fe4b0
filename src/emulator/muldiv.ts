/**
 * Multiplication and division as MUL, IMUL, DIV and IDIV compute them (SDM vol 2 for
 * each): pure functions over bigint; `size` is the operand size in bytes.
 * @module
 */
import { CF, OF, STATUS, mask, resultFlags } from './alu.js'

/** A double-width product's halves and whether the high half is more than the low half's extension. */
export interface Product {
  lo: bigint
  hi: bigint
  overflow: boolean
}

/**
 * `a * b` at `size`: unsigned (MUL: overflow when the high half is not 0) or signed
 * (IMUL: overflow when the low half, sign-extended, is not the whole product).
 */
export function multiply(size: number, a: bigint, b: bigint, signed: boolean): Product {
  const bits = size * 8
  const m = mask(size)
  if (signed) {
    const w = BigInt.asIntN(bits, a & m) * BigInt.asIntN(bits, b & m)
    const lo = w & m
    return { lo, hi: (w >> BigInt(bits)) & m, overflow: BigInt.asIntN(bits, lo) !== w }
  }
  const w = (a & m) * (b & m)
  const hi = (w >> BigInt(bits)) & m
  return { lo: w & m, hi, overflow: hi !== 0n }
}

/**
 * The flags of a multiply: CF = OF = overflow. SF, ZF, AF and PF are undefined (SDM);
 * they are set from the low half with AF clear, as the sim's processor does
 * (crates/sim-cpu/src/ops/arith.rs mul_flags), so RAM and device operands agree.
 */
export function productFlags(size: number, p: Product): bigint {
  return (resultFlags(size, p.lo) | (p.overflow ? CF | OF : 0n)) & STATUS
}

/**
 * `hi:lo / d` at `size`: the quotient and remainder, or undefined where the processor
 * raises #DE (a zero divisor, or a quotient that does not fit the operand size). Signed
 * division truncates toward zero and the remainder takes the dividend's sign.
 */
export function divide(size: number, hi: bigint, lo: bigint, d: bigint, signed: boolean): { q: bigint; r: bigint } | undefined {
  const bits = size * 8
  const m = mask(size)
  const n = ((hi & m) << BigInt(bits)) | (lo & m)
  if ((d & m) === 0n) return undefined
  if (!signed) {
    const q = n / (d & m)
    if (q > m) return undefined
    return { q, r: n % (d & m) }
  }
  const sn = BigInt.asIntN(2 * bits, n)
  const sd = BigInt.asIntN(bits, d & m)
  // BigInt division truncates toward zero, as IDIV does.
  const q = sn / sd
  const limit = 1n << BigInt(bits - 1)
  if (q < -limit || q >= limit) return undefined
  return { q: q & m, r: (sn % sd) & m }
}
