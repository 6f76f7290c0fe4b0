/**
 * Errors with a stable `code`, like the native layer's.
 * @module
 */

/** An `Error` carrying an errno-like `code`. */
export class MshvError extends Error {
  /** Stable, machine-readable code (`EINVAL`, `EUNHANDLED_EXIT`, ...). */
  readonly code: string

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'MshvError'
    this.code = code
  }
}

/**
 * `e` as an {@link MshvError}: a coded `Error` thrown by the native binding keeps its
 * code and message (the original becomes the `cause`); anything else is returned as is.
 */
export function coded(e: unknown): unknown {
  if (e instanceof MshvError || !(e instanceof Error)) return e
  const code = (e as Error & { code?: unknown }).code
  return typeof code === 'string' ? new MshvError(code, e.message, { cause: e }) : e
}

/** Formats a number or bigint as hex: `0x1f`, `-0x1` for a negative value, the value itself for a fraction. */
export function hex(v: number | bigint): string {
  if (typeof v === 'number' && !Number.isInteger(v)) return String(v)
  return v < 0 ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`
}

/** `['a', 'b', 'c']` as "'a', 'b' or 'c'", for messages that list the choices. */
export function oneOf(choices: readonly string[]): string {
  const quoted = choices.map((c) => `'${c}'`)
  const last = quoted.pop()
  return quoted.length === 0 ? (last ?? '') : `${quoted.join(', ')} or ${last}`
}

/** `v` as an error message shows it: strings quoted, bigints with `n`, objects by their JSON. */
export function describe(v: unknown): string {
  switch (typeof v) {
    case 'string':
      return `'${v.length > 40 ? `${v.slice(0, 40)}...` : v}'`
    case 'bigint':
      return `${v}n`
    case 'function':
      return 'a function'
    case 'symbol':
      return v.toString()
    case 'object': {
      if (v === null) return 'null'
      // Large values are named, not printed: stringifying a 32 MiB array to keep 60
      // characters of it took seconds and gigabytes.
      if (ArrayBuffer.isView(v)) return `a ${v.constructor.name} of ${v.byteLength} bytes`
      if (v instanceof ArrayBuffer) return `an ArrayBuffer of ${v.byteLength} bytes`
      if (Array.isArray(v) && v.length > 64) return `an array of ${v.length} elements`
      try {
        // Stop once the text is long enough: only its first 60 characters are shown.
        let budget = 64
        const text = JSON.stringify(v, (_k, x: unknown) => {
          if (--budget < 0) throw new RangeError('enough')
          return typeof x === 'bigint' ? `${x}n` : x
        })
        return text.length > 60 ? `${text.slice(0, 60)}...` : text
      } catch {
        return Array.isArray(v) ? `an array of ${v.length} elements` : Object.prototype.toString.call(v)
      }
    }
    default:
      return String(v)
  }
}
