/**
 * Exceptions an emulated instruction raises in the guest (#DE, #GP, #SS, #NP, #UD): the
 * emulator stops where the processor would, before anything changes, and the vCPU takes
 * the exception at the instruction (a fault: RIP stays on it; SDM vol 3 6.5).
 * @module
 */

/** Vector numbers (SDM vol 3 table 6-1). */
export const DE = 0
export const UD = 6
export const NP = 11
export const SS_FAULT = 12
export const GP = 13

/**
 * Thrown inside the emulator for an exception the guest takes; {@link emulateMmio}
 * catches it and injects it. Not an error of ours: the guest's instruction faults.
 */
export class GuestFault extends Error {
  constructor(
    readonly vector: number,
    readonly errorCode?: number,
  ) {
    super(`guest exception ${vector}${errorCode === undefined ? '' : ` (error code ${errorCode})`}`)
    this.name = 'GuestFault'
  }
}

/** #GP(errorCode). */
export function gp(errorCode = 0): GuestFault {
  return new GuestFault(GP, errorCode)
}

/** The error code of a selector fault: the selector without its RPL (vol 3 6.13). */
export function selectorError(selector: number): number {
  return selector & 0xfffc
}
