/**
 * Device state as data (issue #29): what every device's `save()` and `restore()` keep
 * to, and the types that turn a field one of them forgot into a compile error.
 *
 * The rule, OpenVMM's destructuring `save_restore` written in TypeScript:
 * 1. A device's state is an interface `XState { version: 1; ... }` of plain JSON data
 *    ({@link Saveable} refuses bigints, `undefined`, optional fields, typed arrays and
 *    functions): a snapshot writes it with `JSON.stringify`. Bytes are hex strings
 *    ({@link toHex}); 64-bit values that can pass 2^53 are `0x` strings ({@link hex64}).
 * 2. `save()` returns an object literal `satisfies XState`: a field it leaves out (or
 *    one the state has not) does not compile.
 * 3. `restore()` checks its input with a {@link Schema}`<XState>` — one check per field,
 *    so a field without a check does not compile — before it changes anything, then
 *    destructures every field and hands the rest to {@link noneLeft}: a field it does
 *    not take does not compile. Bad input is an `EINVAL` naming the field and the value.
 * 4. Where a device's own representation is the state's, its mutable fields live in one
 *    object typed {@link Fields}`<XState>`, so a field the device gains is a field of the
 *    state (and then, by 2 and 3, of save and restore); a small class that is its own
 *    state (an 8259 chip, an 8254 channel) proves it has no other mutable field with
 *    {@link SameKeys}`<`{@link MutableDataKeys}`<Class>, keyof Fields<XState>>`.
 *
 * What a device is wired to (IRQ lines, the timers, guest memory, callbacks, backends)
 * is not state: `restore()` goes into a device constructed the same way. Counters
 * (`stats`) are the host's observations and start again from zero.
 * @module
 */
import { checkBytes, checkObject, checkString, invalid } from '../check.js'
import { MshvError, describe } from '../errors.js'

/**
 * Any JSON value: what a state that holds another device's (a virtio transport holding
 * its device's) types that field as. A state held so is a `type`, not an `interface`
 * (only a type alias is assignable to an index signature).
 */
export type JsonValue = null | boolean | number | string | readonly JsonValue[] | { readonly [key: string]: JsonValue }

/** `T` if it is plain JSON data (no bigint, undefined, optional field, typed array or function); `never` where it is not. */
export type Plain<T> = [T] extends [JsonValue]
  ? T
  : T extends string | number | boolean | null
    ? T
    : T extends readonly unknown[]
      ? { [K in keyof T]: Plain<T[K]> }
      : T extends (...args: never[]) => unknown
        ? never
        : T extends ArrayBufferView | ArrayBufferLike
          ? never
          : T extends object
            ? { [K in keyof T]-?: Plain<T[K]> }
            : never

/** `S` when it is a versioned plain-data state, else `never` (so that nothing satisfies it). */
export type StateOf<S> = [S] extends [{ version: number } & Plain<S>] ? S : never

/**
 * A device whose state is data. `implements Saveable<XState>` fails to compile when
 * `XState` is not versioned plain JSON data.
 */
export interface Saveable<S> {
  /** The device's state now, as data that `JSON.stringify` keeps whole. */
  save(): StateOf<S>
  /**
   * Puts the device in `state` (what {@link save} gave, perhaps through JSON), checked
   * first: a bad one is an `EINVAL` and leaves the device as it was.
   */
  restore(state: StateOf<S>): void
}

/** The state's fields but its version, writable: a device's mutable fields held in one object (rule 4). */
export type Fields<S> = { -readonly [K in Exclude<keyof S, 'version'>]: S[K] }

/** Checks one value: returns it typed, or throws an `EINVAL` naming `what`. */
export type Check<T> = (what: string, v: unknown) => T

/** One check per field of `T`: a field without a check (or a check without a field) does not compile. */
export type Schema<T> = { readonly [K in keyof T]-?: Check<T[K]> }

/**
 * The check of an object with exactly the fields of `schema`: a field missing, or one
 * the schema does not have, is refused (a state from another device, or a newer one).
 */
export function record<T>(schema: Schema<T>): Check<T> {
  checkObject('record: schema', schema)
  return (what, v) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(what, 'an object', v)
    const input = v as Record<string, unknown>
    for (const key of Object.keys(input)) {
      if (!Object.hasOwn(schema, key)) throw new MshvError('EINVAL', `${what} has a field ${describe(key)} this state does not have`)
    }
    const out: Partial<T> = {}
    for (const key of Object.keys(schema) as (keyof T & string)[]) {
      if (!Object.hasOwn(input, key)) throw new MshvError('EINVAL', `${what}.${key} is missing`)
      out[key] = schema[key](`${what}.${key}`, input[key])
    }
    return out as T
  }
}

/** Checks `v` against `schema` (rule 3): the state, typed, or an `EINVAL` naming the field. */
export function parseState<T>(what: string, v: unknown, schema: Schema<T>): T {
  checkString('parseState: what', what, 256)
  return record(schema)(what, v)
}

/**
 * Takes what is left after `restore()` destructured a state: `{}` compiles, a field it
 * did not take does not (rule 3). At run time it refuses a field that got past the schema.
 */
export function noneLeft(rest: Record<string, never>): void {
  const left = Object.keys(checkObject('noneLeft: rest', rest))
  if (left.length > 0) throw new MshvError('EINVAL', `a state field was not restored: ${left.join(', ')}`)
}

/** `version` must be exactly `v`. */
export function version<V extends number>(v: V): Check<V> {
  return (what, x) => {
    if (x !== v) throw new MshvError('EINVAL', `${what} must be ${v} (a state this version of the device can restore), got ${describe(x)}`)
    return v
  }
}

/** A boolean. */
export const bool: Check<boolean> = (what, v) => {
  if (typeof v !== 'boolean') throw invalid(what, 'a boolean', v)
  return v
}

/** An integer in `min..max`. */
export function int(min: number, max: number): Check<number> {
  return (what, v) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw invalid(what, `an integer in ${min}..${max}`, v)
    return v
  }
}

/** A byte, a 16-bit and a 32-bit register. */
export const u8 = int(0, 0xff)
export const u16 = int(0, 0xffff)
export const u32 = int(0, 0xffff_ffff)

/** A guest time in nanoseconds (a timer's due time). */
export const guestTime = int(0, Number.MAX_SAFE_INTEGER)

/** One of `names`: a state machine's named state. */
export function oneOf<V extends string>(...names: readonly V[]): Check<V> {
  return (what, v) => {
    if (typeof v !== 'string' || !(names as readonly string[]).includes(v)) throw invalid(what, `one of ${names.map((n) => `'${n}'`).join(', ')}`, v)
    return v as V
  }
}

/** `check`'s value or `null` (a timer not armed, a value not there). */
export function nullable<T>(check: Check<T>): Check<T | null> {
  return (what, v) => (v === null ? null : check(what, v))
}

/** An array of `min..max` values, each checked. */
export function list<T>(check: Check<T>, min: number, max: number): Check<T[]> {
  return (what, v) => {
    if (!Array.isArray(v) || v.length < min || v.length > max) throw invalid(what, min === max ? `an array of ${min}` : `an array of ${min}..${max}`, v)
    return v.map((x: unknown, i) => check(`${what}[${i}]`, x))
  }
}

/** A string of at most `max` characters. */
export function text(max: number): Check<string> {
  return (what, v) => {
    if (typeof v !== 'string' || v.length > max) throw invalid(what, `a string of at most ${max} characters`, v)
    return v
  }
}

/** Bytes as lowercase hex, two digits a byte (how a state holds bytes: JSON has no byte arrays). */
export function toHex(bytes: Uint8Array | readonly number[]): string {
  if (bytes instanceof Uint8Array) return Buffer.from(checkBytes('toHex: bytes', bytes).buffer, bytes.byteOffset, bytes.length).toString('hex')
  return Buffer.from(list(u8, 0, 2 ** 30)('toHex: bytes', bytes)).toString('hex')
}

/** The bytes of a hex string {@link bytes} checked (a copy the caller owns). */
export function fromHex(hex: string): Uint8Array {
  const b = Buffer.from(bytes(0, 2 ** 30)('fromHex: hex', hex), 'hex')
  return new Uint8Array(b.buffer, b.byteOffset, b.length).slice()
}

/** Bytes as {@link toHex} writes them: `min..max` of them. */
export function bytes(min: number, max: number): Check<string> {
  return (what, v) => {
    if (typeof v !== 'string' || v.length % 2 !== 0 || v.length < 2 * min || v.length > 2 * max || !/^[0-9a-f]*$/.test(v)) {
      throw invalid(what, `${min === max ? min : `${min}..${max}`} bytes as lowercase hex`, v)
    }
    return v
  }
}

/** A value of up to `bits` bits as a `0x` hex string (64-bit feature words: a number loses bits past 2^53). */
export function hex64(bits = 64): Check<string> {
  return (what, v) => {
    if (typeof v !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(v) || BigInt(v) >> BigInt(bits) !== 0n) throw invalid(what, `a 0x hex string of at most ${bits} bits`, v)
    return v
  }
}

/** `v` as a {@link hex64} string. */
export function toHex64(v: bigint): string {
  if (typeof v !== 'bigint' || v < 0n) throw invalid('toHex64: value', 'a bigint from 0', v)
  return `0x${v.toString(16)}`
}

type IfEquals<X, Y, A, B> = (<T>() => T extends X ? 1 : 2) extends <T>() => T extends Y ? 1 : 2 ? A : B

/** The keys of `T`'s writable data fields (not readonly, not methods): what a class mutates. */
export type MutableDataKeys<T> = {
  [K in keyof T]-?: T[K] extends (...args: never[]) => unknown ? never : IfEquals<{ [Q in K]: T[K] }, { -readonly [Q in K]: T[K] }, K, never>
}[keyof T]

/**
 * `true` when `A` and `B` are the same set of keys, else `false`: with
 * {@link MutableDataKeys}, a class holding its state in its own public fields
 * (`implements Fields<XState>`) proves it has no other mutable field (rule 4):
 * `const tied: SameKeys<MutableDataKeys<Chip>, keyof Fields<ChipState>> = true`.
 */
export type SameKeys<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
