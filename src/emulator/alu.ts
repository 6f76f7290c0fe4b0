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
