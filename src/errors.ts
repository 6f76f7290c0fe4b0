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

/** Formats a number or bigint as hex. */
export function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`
}
