/**
 * The error of an unrecoverable exception (a triple fault, a shutdown): what the guest
 * was doing, the exception that began it and CR2, so that a user sees "#PF at
 * 0xffff888000001000" rather than only the registers after the last fault.
 * @module
 */
import { MshvError, hex } from '../errors.js'
import { checkInteger } from '../check.js'
import type { NativeTripleFault } from '../native.js'

/** One exception of a triple fault's chain. */
export interface GuestException {
  /** The vector (SDM vol 3 table 6-1). */
  readonly vector: number
  /** Its mnemonic (`#PF`), or `vector N` for one the table does not name. */
  readonly name: string
}

/** Mnemonics of the architecture's exception vectors (SDM vol 3 table 6-1). */
const NAMES: Readonly<Record<number, string>> = {
  0: '#DE', 1: '#DB', 2: 'NMI', 3: '#BP', 4: '#OF', 5: '#BR', 6: '#UD', 7: '#NM', 8: '#DF',
  10: '#TS', 11: '#NP', 12: '#SS', 13: '#GP', 14: '#PF', 16: '#MF', 17: '#AC', 18: '#MC',
  19: '#XM', 20: '#VE', 21: '#CP',
}

/** An exception vector's mnemonic (SDM vol 3 table 6-1): `14` is `'#PF'`. */
export function exceptionName(vector: number): string {
  checkInteger('exceptionName: vector', vector, 0, 255)
  return NAMES[vector] ?? `vector ${vector}`
}

/**
 * `EGUEST_FATAL`: the guest hit an exception it could not take (a triple fault). The
 * sim says which exceptions led there; MSHV's unrecoverable-exception message carries
 * only the intercept header (mshv-bindings `hv_x64_unrecoverable_exception_message`),
 * so on a host `exceptions` is undefined and CR2 and the registers are what is known.
 */
export class GuestFatalError extends MshvError {
  /** The exceptions raised, the first first and the undeliverable one last (sim only). */
  readonly exceptions: readonly GuestException[] | undefined
  /** The first exception's error code, when it pushes one (sim only). */
  readonly errorCode: number | undefined
  /** The first exception's faulting address, when it was a #PF (sim only). */
  readonly faultAddress: bigint | undefined
  /** CR2 at the shutdown: the address of the chain's last #PF. */
  readonly cr2: bigint
  /** Where the vCPU stopped. */
  readonly rip: bigint

  constructor(message: string, fields: TripleFaultFields, options?: { cause?: unknown }) {
    super('EGUEST_FATAL', message, options)
    this.exceptions = fields.exceptions
    this.errorCode = fields.errorCode
    this.faultAddress = fields.faultAddress
    this.cr2 = fields.cr2
    this.rip = fields.rip
  }

  /** The error of a vCPU's unrecoverable-exception exit: `registers` is its register text. */
  static fromExit(chain: NativeTripleFault | null, cr2: bigint, rip: bigint, registers: string): GuestFatalError {
    const exceptions = chain?.vectors.map((vector) => ({ vector, name: exceptionName(vector) }))
    const fields = { exceptions, errorCode: chain?.errorCode ?? undefined, faultAddress: chain?.cr2 ?? undefined, cr2, rip }
    return new GuestFatalError(`the guest hit an unrecoverable exception (triple fault): ${cause(fields)}; ${registers}`, fields)
  }
}

/** What a {@link GuestFatalError} carries besides its message. */
export type TripleFaultFields = Pick<GuestFatalError, 'exceptions' | 'errorCode' | 'faultAddress' | 'cr2' | 'rip'>

/** "first #PF (error code 0x2, address 0x1000), then #PF, #DF, #PF", or what is known without a chain. */
function cause(f: TripleFaultFields): string {
  const [first, ...then] = f.exceptions ?? []
  if (first === undefined) return `the hypervisor does not say which exception began it; cr2=${hex(f.cr2)}`
  const details = [
    f.errorCode === undefined ? undefined : `error code ${hex(f.errorCode)}`,
    f.faultAddress === undefined ? undefined : `address ${hex(f.faultAddress)}`,
  ].filter((d) => d !== undefined)
  const head = `${first.name}${details.length > 0 ? ` (${details.join(', ')})` : ''}`
  return `first ${head}${then.length > 0 ? `, then ${then.map((e) => e.name).join(', ')}` : ''}`
}
