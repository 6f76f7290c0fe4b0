/**
 * Errors with a stable `code`, like the native layer's.
 * @module
 */

/** An `Error` carrying an errno-like `code`. */
export class MshvError extends Error {
  /** Stable, machine-readable code (`EINVAL`, `EUNHANDLED_EXIT`, ...). */
  readonly code: string

  constructor(code: string, message: string) {
    super(message)
    this.name = 'MshvError'
    this.code = code
  }
}

/** Returns `v` when it is an integer in 0..2^32-1; else an `EINVAL` naming `what` and the value. */
export function checkU32(what: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
    throw new MshvError('EINVAL', `${what} must be an integer in 0..0xffffffff, got ${String(v)}`)
  }
  return v
}

/** Formats a number or bigint as hex. */
export function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`
}
