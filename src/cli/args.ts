/**
 * The `mshv` command's arguments.
 * @module
 */
import { MshvError } from '../errors.js'
import type { SessionOptions } from '../repl/session.js'

/** The command's usage text. */
export const USAGE = `usage: mshv repl [--backend auto|sim|mshv] [--ram MiB]
       mshv doctor [--backend auto|sim|mshv] [--json [FILE]] [--experiment-ms N]
       mshv --version`

/** `--backend sim --ram 32` -> session options; throws a usage error on anything else. */
export function parseArgs(args: readonly string[]): SessionOptions {
  const out: { backend?: SessionOptions['backend']; ramMiB?: number } = {}
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]
    const value = args[i + 1]
    if (flag === '--backend' && (value === 'auto' || value === 'sim' || value === 'mshv')) out.backend = value
    else if (flag === '--ram' && value !== undefined && /^[0-9]+$/.test(value)) out.ramMiB = Number(value)
    else throw new MshvError('EINVAL', `unknown or incomplete option '${flag ?? ''}${value === undefined ? '' : ` ${value}`}'\n${USAGE}`)
    i++
  }
  return out
}

/** What `mshv doctor` was asked for. */
export interface DoctorArgs {
  backend?: 'auto' | 'sim' | 'mshv'
  /** Write the report as JSON: to this file, or to stdout when `'-'`. */
  json?: string
  /** Measuring time per experiment case (0 skips the experiment). */
  experimentMs?: number
}

/** `--backend sim --json report.json` -> doctor options; throws a usage error on anything else. */
export function parseDoctorArgs(args: readonly string[]): DoctorArgs {
  const out: DoctorArgs = {}
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]
    const value = args[i + 1]
    if (flag === '--backend' && (value === 'auto' || value === 'sim' || value === 'mshv')) out.backend = value
    else if (flag === '--experiment-ms' && value !== undefined && /^[0-9]+$/.test(value)) out.experimentMs = Number(value)
    else if (flag === '--json') {
      // The file is optional: a following flag (or nothing) means stdout.
      if (value === undefined || value.startsWith('--')) {
        out.json = '-'
        continue
      }
      out.json = value
    } else throw new MshvError('EINVAL', `unknown or incomplete option '${flag ?? ''}${value === undefined ? '' : ` ${value}`}'\n${USAGE}`)
    i++
  }
  return out
}
