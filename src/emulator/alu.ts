/**
 * Integer ALU with x86 flag semantics, for the instructions the MMIO emulator runs.
 * Pure functions over bigint; `size` is the operand size in bytes (1, 2, 4, 8).
 * @module
 */

/** RFLAGS bits. */
export const CF = 1n << 0n
export const PF = 1n << 2n
export const AF = 1n << 4n
export const ZF = 1n << 6n
export const SF = 1n << 7n
export const DF = 1n << 10n
export const OF = 1n << 11n
/** The six arithmetic status flags. */
export const STATUS = CF | PF | AF | ZF | SF | OF

/** A result and the status flags it sets (the others are left to the caller). */
export interface AluResult {
  value: bigint
  flags: bigint
}

/** All ones of 0..8 bytes, precomputed: masks are taken on every port and MMIO exit. */
const MASKS: readonly bigint[] = Array.from({ length: 9 }, (_, n) => (1n << BigInt(n * 8)) - 1n)

/** All ones of `size` bytes. */
export function mask(size: number): bigint {
  return MASKS[size] ?? (1n << BigInt(size * 8)) - 1n
}

/** Sign-extends the low `size` bytes of `v` to 64 bits (as an unsigned bigint). */
export function signExtend(v: bigint, size: number): bigint {
  const bits = BigInt(size * 8)
  return BigInt.asUintN(64, BigInt.asIntN(Number(bits), v))
}

function parity(v: bigint): bigint {
  let b = Number(v & 0xffn)
  b ^= b >> 4
  b ^= b >> 2
  b ^= b >> 1
  return (b & 1) === 0 ? PF : 0n
}

/** ZF, SF and PF of a result. */
function zsp(r: bigint, size: number): bigint {
  const sign = 1n << BigInt(size * 8 - 1)
  return (r === 0n ? ZF : 0n) | ((r & sign) !== 0n ? SF : 0n) | parity(r)
}

/** ADD / ADC. */
export function add(size: number, a: bigint, b: bigint, carry = 0n): AluResult {
  const m = mask(size)
  const full = (a & m) + (b & m) + carry
  const r = full & m
  const sign = 1n << BigInt(size * 8 - 1)
  let flags = zsp(r, size)
  if (full > m) flags |= CF
  if (((a ^ r) & (b ^ r) & sign) !== 0n) flags |= OF
  if (((a ^ b ^ r) & 0x10n) !== 0n) flags |= AF
  return { value: r, flags }
}

/** SUB / SBB / CMP. */
export function sub(size: number, a: bigint, b: bigint, borrow = 0n): AluResult {
  const m = mask(size)
  const r = ((a & m) - (b & m) - borrow) & m
  const sign = 1n << BigInt(size * 8 - 1)
  let flags = zsp(r, size)
  if ((a & m) < (b & m) + borrow) flags |= CF
  if (((a ^ b) & (a ^ r) & sign) !== 0n) flags |= OF
  if (((a ^ b ^ r) & 0x10n) !== 0n) flags |= AF
  return { value: r, flags }
}

/** AND / OR / XOR / TEST: CF and OF clear; AF is undefined (cleared here, as hardware does). */
export function logic(size: number, r: bigint): AluResult {
  const v = r & mask(size)
  return { value: v, flags: zsp(v, size) }
}

/** Merges `result.flags` into `rflags` for the bits in `which`. */
export function mergeFlags(rflags: bigint, flags: bigint, which: bigint = STATUS): bigint {
  return (rflags & ~which) | (flags & which)
}

/** INC / DEC: ADD / SUB of 1 with CF left as it was (the caller merges {@link NOT_CF}). */
export function incDec(size: number, a: bigint, dec: boolean): AluResult {
  return dec ? sub(size, a, 1n) : add(size, a, 1n)
}

/** The status flags but CF: what INC and DEC set (SDM vol 2 INC, DEC). */
export const NOT_CF = STATUS & ~CF

/** NEG: 0 - a, with CF set unless a is 0 (SDM vol 2 NEG); the rest as SUB sets them. */
export function neg(size: number, a: bigint): AluResult {
  return sub(size, 0n, a)
}

/** ZF, SF and PF of `r` at `size` (for results whose other flags are computed apart). */
export function resultFlags(size: number, r: bigint): bigint {
  return zsp(r & mask(size), size)
}

/**
 * Whether condition `cc` (iced's ConditionCode: 1 o, 2 no, 3 b, 4 ae, 5 e, 6 ne, 7 be,
 * 8 a, 9 s, 10 ns, 11 p, 12 np, 13 l, 14 ge, 15 le, 16 g) holds for `rflags` (SDM vol 1
 * appendix B, table B-1).
 */
export function holds(cc: number, rflags: bigint): boolean {
  const f = (bit: bigint) => (rflags & bit) !== 0n
  const base = (cc - 1) >> 1
  let r: boolean
  switch (base) {
    case 0:
      r = f(OF)
      break
    case 1:
      r = f(CF)
      break
    case 2:
      r = f(ZF)
      break
    case 3:
      r = f(CF) || f(ZF)
      break
    case 4:
      r = f(SF)
      break
    case 5:
      r = f(PF)
      break
    case 6:
      r = f(SF) !== f(OF)
      break
    default:
      r = f(ZF) || f(SF) !== f(OF)
  }
  // Odd codes are the condition, even ones its negation.
  return (cc & 1) === 1 ? r : !r
}
