/**
 * MSR exits: RDMSR/WRMSR of intercepted MSRs, answered by a handler per MSR. A handler
 * may refuse an access, which injects #GP(0) as hardware does; an exit for an MSR with
 * no handler is an error naming it.
 * @module
 */
import { message, registerIndex } from '../layout.js'
import { MshvError, describe as describeValue, hex } from '../errors.js'
import type { RegisterCache } from '../registers.js'

/** What an MSR handler sees. */
export interface MsrContext {
  /** The MSR number (ECX). */
  readonly msr: number
  /** The vCPU's registers. */
  readonly regs: RegisterCache
  /** Index of the vCPU. */
  readonly vcpuIndex: number
}

/** Emulates one MSR. A missing method refuses that direction with #GP(0). */
export interface MsrHandler {
  /** The value RDMSR returns, or `undefined` to refuse with #GP(0). */
  read?(ctx: MsrContext): bigint | undefined
  /** Accepts a WRMSR of `value` (EDX:EAX); return `false` to refuse with #GP(0). */
  write?(value: bigint, ctx: MsrContext): boolean | void
}

/**
 * What an access to an MSR the hypervisor does not implement does: `'gp'` injects #GP(0)
 * (hardware's and MSHV's default), `'ignore'` reads 0 and drops writes (inside the
 * hypervisor, no exit), `'error'` exits and `run()` throws `EUNHANDLED_MSR` (sim only).
 */
export type UnknownMsrPolicy = 'gp' | 'ignore' | 'error'

const RIP = message('rip')
const LEN = message('instructionLengthCr8')
const ACCESS_TYPE = message('interceptAccessType')
const WRITE = message('accessWrite')
const NUMBER = message('msrNumber')
const MSG_RAX = message('msrRax')
const MSG_RDX = message('msrRdx')
const RAX = registerIndex('rax')
const RDX = registerIndex('rdx')
const RIP_REG = registerIndex('rip')
const LOW32 = 0xffff_ffffn

/** How an MSR exit ended. */
export type MsrOutcome = 'done' | 'gp'

/**
 * Completes an MSR exit with its handler. Returns `'gp'` when the handler refused the
 * access: RIP stays on the instruction and the caller injects #GP(0).
 */
export function handleMsr(
  msg: DataView,
  regs: RegisterCache,
  handlers: ReadonlyMap<number, MsrHandler>,
  vcpuIndex: number,
  describe: () => string,
): MsrOutcome {
  const rip = msg.getBigUint64(RIP, true)
  const msr = msg.getUint32(NUMBER, true)
  const write = msg.getUint8(ACCESS_TYPE) === WRITE
  regs.seed(RIP_REG, rip)
  regs.seed(RAX, msg.getBigUint64(MSG_RAX, true))
  regs.seed(RDX, msg.getBigUint64(MSG_RDX, true))
  const handler = handlers.get(msr)
  if (!handler) {
    throw new MshvError('EUNHANDLED_MSR', `${write ? 'WRMSR' : 'RDMSR'} of MSR ${hex(msr)} has no handler: ${describe()}`)
  }
  const ctx: MsrContext = { msr, regs, vcpuIndex }
  if (write) {
    const value = ((regs.getAt(RDX) & LOW32) << 32n) | (regs.getAt(RAX) & LOW32)
    if (!handler.write || handler.write(value, ctx) === false) return 'gp'
  } else {
    const value = handler.read?.(ctx)
    if (value === undefined) return 'gp'
    if (typeof value !== 'bigint' || value < 0n || value > 0xffff_ffff_ffff_ffffn) {
      throw new MshvError('EINVAL', `the handler of MSR ${hex(msr)} returned ${describeValue(value)}, not a bigint in 0..2^64-1`)
    }
    regs.setAt(RAX, value & LOW32)
    regs.setAt(RDX, value >> 32n)
  }
  regs.setAt(RIP_REG, rip + BigInt(msg.getUint8(LEN) & 0xf))
  return 'done'
}
