/**
 * Shifts and rotates with x86 flag semantics: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR,
 * SHLD and SHRD (SDM vol 2 "SAL/SAR/SHL/SHR", "RCL/RCR/ROL/ROR", "SHLD", "SHRD").
 * Pure functions over bigint; `size` is the operand size in bytes. Where the SDM leaves
 * a flag or result undefined (OF for counts above 1, CF past the operand's width, SHLD
 * and SHRD counts past a 16-bit width) the value is the one the sim's processor
 * computes (crates/sim-cpu/src/ops/shift.rs), so a guest sees the same whether its
 * operand is RAM or a device.
 * @module
 */
import { CF, OF, STATUS, mask, resultFlags } from './alu.js'

/** What a shift or rotate does: its result, the flags it computes and which flags those are. */
export interface ShiftResult {
  value: bigint
  flags: bigint
  /** The flags the instruction writes (rotates write only CF and OF). */
  which: bigint
}

/** The shift and rotate kinds, as the reg field of opcodes C0/C1/D0..D3 numbers them. */
export type ShiftKind = 'rol' | 'ror' | 'rcl' | 'rcr' | 'shl' | 'shr' | 'sar'

/** The count the processor uses: 5 bits, 6 for 64-bit operands (SDM: "the count is masked"). */
export function maskedCount(size: number, count: bigint): bigint {
  return count & (size === 8 ? 0x3fn : 0x1fn)
}

const bit = (v: bigint, n: bigint): bigint => (v >> n) & 1n
const flag = (b: bigint, f: bigint): bigint => (b !== 0n ? f : 0n)

/**
 * Shifts or rotates `a` by `count` (before masking); `cf` is CF on entry (RCL, RCR).
 * Undefined when the masked count is 0: nothing changes, no flag either.
 */
export function shift(size: number, kind: ShiftKind, a: bigint, count: bigint, cf: boolean): ShiftResult | undefined {
  const bits = BigInt(size * 8)
  const m = mask(size)
  const x = a & m
  const n = maskedCount(size, count)
  if (n === 0n) return undefined
  const msb = (v: bigint) => bit(v, bits - 1n)
  switch (kind) {
    case 'rol':
    case 'ror': {
      const r = n % bits
      const value = kind === 'rol' ? ((x << r) | (x >> (bits - r))) & m : ((x >> r) | (x << (bits - r))) & m
      const c = kind === 'rol' ? value & 1n : msb(value)
      const o = kind === 'rol' ? msb(value) ^ c : msb(value) ^ bit(value, bits - 2n)
      return { value, flags: flag(c, CF) | flag(o, OF), which: CF | OF }
    }
    case 'rcl':
    case 'rcr': {
      // A (bits + 1)-bit rotation through CF; 8- and 16-bit counts are taken mod 9 and 17.
      const total = bits + 1n
      const r = n % total
      const wide = x | ((cf ? 1n : 0n) << bits)
      const full = (1n << total) - 1n
      const rot = r === 0n ? wide : kind === 'rcl' ? ((wide << r) | (wide >> (total - r))) & full : ((wide >> r) | (wide << (total - r))) & full
      const value = rot & m
      const c = bit(rot, bits)
      const o = kind === 'rcl' ? msb(value) ^ c : msb(value) ^ bit(value, bits - 2n)
      return { value, flags: flag(c, CF) | flag(o, OF), which: CF | OF }
    }
    case 'shl': {
      const value = n >= bits ? 0n : (x << n) & m
      const c = n > bits ? 0n : bit(x, bits - n)
      return { value, flags: resultFlags(size, value) | flag(c, CF) | flag(msb(value) ^ c, OF), which: STATUS }
    }
    case 'shr': {
      const value = n >= bits ? 0n : x >> n
      const c = n > bits ? 0n : bit(x, n - 1n)
      return { value, flags: resultFlags(size, value) | flag(c, CF) | flag(msb(x), OF), which: STATUS }
    }
    default: {
      // SAR: the sign fills; counts past the width leave all sign bits.
      const s = BigInt.asIntN(Number(bits), x)
      const value = BigInt.asUintN(Number(bits), s >> (n > 63n ? 63n : n))
      const c = BigInt.asUintN(1, s >> (n - 1n > 63n ? 63n : n - 1n))
      return { value, flags: resultFlags(size, value) | flag(c, CF), which: STATUS }
    }
  }
}

/**
 * SHLD (`left`) / SHRD: `dst` shifted by `count`, the vacated bits filled from `src`.
 * Undefined when the masked count is 0 (nothing changes). A 16-bit count past 16 shifts
 * `dst` in again after `src`, as the sim's processor and Intel's do.
 */
export function doubleShift(size: number, left: boolean, dst: bigint, src: bigint, count: bigint): ShiftResult | undefined {
  const bits = BigInt(size * 8)
  const n = maskedCount(size, count)
  if (n === 0n) return undefined
  const m = mask(size)
  const d = dst & m
  const s = src & m
  let value: bigint
  let c: bigint
  if (bits === 64n) {
    if (left) {
      value = ((((d << 64n) | s) << n) >> 64n) & m
      c = bit(d, 64n - n)
    } else {
      value = (((s << 64n) | d) >> n) & m
      c = bit(d, n - 1n)
    }
  } else {
    // The window dst:src:dst.
    const w = (d << (2n * bits)) | (s << bits) | d
    if (left) {
      value = ((w << n) >> (2n * bits)) & m
      c = bit(w, 3n * bits - n)
    } else {
      value = (w >> n) & m
      c = bit(w, n - 1n)
    }
  }
  const o = bit(value, bits - 1n) ^ bit(d, bits - 1n)
  return { value, flags: resultFlags(size, value) | flag(c, CF) | flag(o, OF), which: STATUS }
}
