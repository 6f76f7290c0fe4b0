/**
 * The `mshv` command's arguments.
 * @module
 */
import { MshvError } from '../errors.js'
import type { SessionOptions } from '../repl/session.js'

/** The command's usage text. */
export const USAGE = `usage: mshv repl [--backend auto|sim|mshv] [--ram MiB]
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
