/**
 * Port I/O exits: IN/OUT of every size, completed on the synced register state.
 * @module
 */
import type { AccessContext, IoBus } from '../bus.js'
import { message, registerIndex } from '../layout.js'
import { MshvError, hex } from '../errors.js'
import type { RegisterCache } from '../registers.js'

const PORT = message('ioPortNumber')
const ACCESS_INFO = message('ioAccessInfo')
const ACCESS_TYPE = message('interceptAccessType')
const LEN = message('instructionLengthCr8')
const RIP = message('rip')
const RAX_MSG = message('ioRax')
const WRITE = message('accessWrite')
const RAX = registerIndex('rax')
const RIP_REG = registerIndex('rip')

/** Seeds the registers an I/O message carries (no hypercall needed for them). */
export function seedIo(msg: DataView, regs: RegisterCache): void {
  regs.seed(RIP_REG, msg.getBigUint64(RIP, true))
  regs.seed(RAX, msg.getBigUint64(RAX_MSG, true))
}

/** Handles an I/O port intercept. */
export function handleIo(msg: DataView, regs: RegisterCache, bus: IoBus, ctx: AccessContext): void {
  const port = msg.getUint16(PORT, true)
  const info = msg.getUint8(ACCESS_INFO)
  const size = info & 7
  const string = (info & 8) !== 0
  const len = msg.getUint8(LEN) & 0xf
  if (string) {
    throw new MshvError('EUNSUPPORTED_EXIT', `string I/O (INS/OUTS) on port ${hex(port)} is not emulated yet`)
  }
  const mask = size === 4 ? 0xffffffffn : BigInt((1 << (size * 8)) - 1)
  if (msg.getUint8(ACCESS_TYPE) === WRITE) {
    bus.write(port, size, Number(regs.getAt(RAX) & mask), ctx)
  } else {
    const value = BigInt(bus.read(port, size, ctx) >>> 0) & mask
    // Read RAX after the device ran: a device that synchronized and wrote RAX itself
    // (vmport) must not be undone by the message's stale copy.
    const rax = regs.getAt(RAX)
    regs.setAt(RAX, size === 4 ? value : (rax & ~mask) | value)
  }
  regs.setAt(RIP_REG, regs.getAt(RIP_REG) + BigInt(len))
}
