/**
 * What an exit was, from its message, for traces: the port or the address, the size,
 * the direction and the value written — as QEMU's `trace-events` for I/O and MMIO say.
 * Read before the exit is handled (the handler may run the guest's next instruction's
 * data into the same buffer).
 * @module
 */
import { message, messageType } from '../layout.js'
import { hex } from '../errors.js'

const T_IO = messageType('ioPort')
const T_UNMAPPED = messageType('unmappedGpa')
const T_GPA = messageType('gpaIntercept')
const T_MSR = messageType('msr')
const T_EXCEPTION = messageType('exception')
const RIP = message('rip')
const ACCESS = message('interceptAccessType')
const PORT = message('ioPortNumber')
const INFO = message('ioAccessInfo')
const RAX = message('ioRax')
const GPA = message('memGpa')
const MSR = message('msrNumber')
const MSR_RAX = message('msrRax')
const MSR_RDX = message('msrRdx')
const VECTOR = message('exceptionVector')
const ACCESS_NAMES = ['read', 'write', 'execute'] as const

/** The exit in `msg` (of message type `code`) as trace arguments: always `rip`. */
export function exitArgs(code: number, msg: DataView): Record<string, string | number> {
  const args: Record<string, string | number> = { rip: hex(msg.getBigUint64(RIP, true)) }
  const access = msg.getUint8(ACCESS)
  if (code === T_IO) {
    const info = msg.getUint8(INFO)
    const size = info & 7
    args['port'] = hex(msg.getUint16(PORT, true))
    args['size'] = size
    args['direction'] = access === 1 ? 'out' : 'in'
    if (info & 8) args['string'] = (info & 16) !== 0 ? 'rep' : 'once'
    else if (access === 1) args['value'] = hex(msg.getBigUint64(RAX, true) & ((1n << BigInt(8 * size)) - 1n))
  } else if (code === T_UNMAPPED || code === T_GPA) {
    args['gpa'] = hex(msg.getBigUint64(GPA, true))
    args['access'] = ACCESS_NAMES[access] ?? access
  } else if (code === T_MSR) {
    args['msr'] = hex(msg.getUint32(MSR, true))
    args['direction'] = access === 1 ? 'write' : 'read'
    if (access === 1) args['value'] = hex((msg.getBigUint64(MSR_RDX, true) << 32n) | (msg.getBigUint64(MSR_RAX, true) & 0xffff_ffffn))
  } else if (code === T_EXCEPTION) {
    args['vector'] = msg.getUint16(VECTOR, true)
  }
  return args
}
