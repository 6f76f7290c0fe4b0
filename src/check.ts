/**
 * Argument checks for the public API: each returns the value, typed, or throws an
 * `EINVAL` {@link MshvError} naming the argument and the value it got (never a plain
 * TypeError from deeper down, issue #32 item 22).
 * @module
 */
import { MshvError, describe } from './errors.js'

/** An `EINVAL` saying `what` must be `must`, and what it got. */
export function invalid(what: string, must: string, got: unknown): MshvError {
  return new MshvError('EINVAL', `${what} must be ${must}, got ${describe(got)}`)
}

/** An integer in `min..max` (inclusive). */
export function checkInteger(what: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw invalid(what, `an integer in ${min}..${max}`, v)
  return v
}

/** Returns `v` when it is an integer in 0..2^32-1; else an `EINVAL` naming `what` and the value. */
export function checkU32(what: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
    throw invalid(what, 'an integer in 0..0xffffffff', v)
  }
  return v
}

/** A finite number in `min..max` (inclusive). */
export function checkNumber(what: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !(v >= min && v <= max)) throw invalid(what, `a number in ${min}..${max}`, v)
  return v
}

/** A bigint in `0..2^bits-1`. */
export function checkUnsignedBigint(what: string, v: unknown, bits = 64): bigint {
  if (typeof v !== 'bigint' || v < 0n || v >> BigInt(bits) !== 0n) throw invalid(what, `a bigint in 0..2^${bits}-1`, v)
  return v
}

/** A `Uint8Array` whose buffer is not detached. */
export function checkBytes(what: string, v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array) || isDetached(v)) throw invalid(what, 'a Uint8Array (not detached)', v)
  return v
}

/** An array of `Uint8Array`s (not detached), at most `max` of them. */
export function checkBuffers(what: string, v: unknown, max = 1 << 16): readonly Uint8Array[] {
  if (!Array.isArray(v) || v.length > max) throw invalid(what, `an array of at most ${max} Uint8Arrays`, v)
  v.forEach((b, i) => checkBytes(`${what}[${i}]`, b))
  return v as readonly Uint8Array[]
}

/** A string (at most `max` characters). */
export function checkString(what: string, v: unknown, max = 1 << 20): string {
  if (typeof v !== 'string' || v.length > max) throw invalid(what, `a string of at most ${max} characters`, v)
  return v
}

/** An array of strings, at most `max` of them. */
export function checkStrings(what: string, v: unknown, max = 1 << 16): readonly string[] {
  if (!Array.isArray(v) || v.length > max) throw invalid(what, `an array of at most ${max} strings`, v)
  v.forEach((s, i) => checkString(`${what}[${i}]`, s))
  return v as readonly string[]
}

/** A function. */
export function checkFunction<F extends (...args: never[]) => unknown>(what: string, v: unknown): F {
  if (typeof v !== 'function') throw invalid(what, 'a function', v)
  return v as F
}

/** A plain object (not null, not an array). */
export function checkObject<T extends object>(what: string, v: unknown): T {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(what, 'an object', v)
  return v as T
}

/** An instance of `type` (its name is what the message says `v` must be). */
export function checkInstance<T>(what: string, v: unknown, type: abstract new (...args: never[]) => T): T {
  if (!(v instanceof type)) throw invalid(what, `a ${type.name}`, v)
  return v
}

/** Whether a view's buffer has been detached (transferred or closed). */
function isDetached(v: ArrayBufferView): boolean {
  return (v.buffer as ArrayBuffer & { detached?: boolean }).detached === true || (v.byteLength === 0 && v.buffer.byteLength === 0 && v.byteOffset === 0 && isDetachedBuffer(v.buffer))
}

function isDetachedBuffer(b: ArrayBufferLike): boolean {
  try {
    new Uint8Array(b)
    return false
  } catch {
    return true
  }
}
