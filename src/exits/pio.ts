/**
 * Port I/O exits: IN/OUT of every size, and INS/OUTS with or without REP through guest
 * memory, completed on the synced register state.
 * @module
 */
import type { AccessContext, IoBus } from '../bus.js'
import { message, registerIndex } from '../layout.js'
import type { RegisterCache } from '../registers.js'
import { GPR } from '../emulator/operands.js'
import { mask } from '../emulator/alu.js'
import { advanceIndex, segmentBase, setAddressSized, stringStep } from '../emulator/string.js'
import type { LinearMemory } from '../emulator/memory.js'
import { MshvError, hex } from '../errors.js'
import { bitness, decodeIntercepted } from './mmio.js'

const PORT = message('ioPortNumber')
const ACCESS_INFO = message('ioAccessInfo')
const ACCESS_TYPE = message('interceptAccessType')
const LEN = message('instructionLengthCr8')
const RIP = message('rip')
const RFLAGS = message('rflags')
const RAX_MSG = message('ioRax')
const RCX_MSG = message('ioRcx')
const RSI_MSG = message('ioRsi')
const RDI_MSG = message('ioRdi')
const BYTE_COUNT = message('ioInstructionByteCount')
const BYTES = message('ioInstructionBytes')
const DS_MSG = message('ioDsSegment')
const ES_MSG = message('ioEsSegment')
const WRITE = message('accessWrite')
const RAX = registerIndex('rax')
const RIP_REG = registerIndex('rip')
const RFLAGS_REG = registerIndex('rflags')
const DS = registerIndex('ds')
const ES = registerIndex('es')
const RCX = GPR[1] as number
const RSI = GPR[6] as number
const RDI = GPR[7] as number
/** `access_info`: size in bits 0..2, string op bit 3, REP bit 4. */
const STRING_OP = 1 << 3
/** The value bits of a 1-, 2- or 4-byte port access. */
const SIZE_MASK = [0, 0xff, 0xffff, 0, 0xffff_ffff] as const
const REP_PREFIX = 1 << 4

/**
 * Elements one exit moves at most. A longer REP INS/OUTS leaves RIP on the instruction
 * with RCX counted down, so the guest re-executes it: a huge RCX never stalls the VMM.
 */
export const STRING_IO_BATCH = 1024

/**
 * Seeds the registers an I/O message carries (no hypercall needed for them), from the
 * message as u32 words: this runs on every port exit.
 */
export function seedIo(words: Uint32Array, regs: RegisterCache): void {
  regs.seedWords(RIP_REG, words, RIP >>> 2)
  regs.seedWords(RAX, words, RAX_MSG >>> 2)
}

/**
 * Handles an I/O port intercept; `memory` is asked for only by INS/OUTS. Runs on every
 * port exit: the string and error paths are functions of their own, so this one stays
 * small enough for V8 to inline into the run loop.
 */
export function handleIo(msg: DataView, regs: RegisterCache, bus: IoBus, ctx: AccessContext, memory: () => LinearMemory): void {
  const info = msg.getUint8(ACCESS_INFO)
  if ((info & STRING_OP) !== 0) {
    handleStringIo(msg, info, regs, bus, ctx, memory)
    return
  }
  const port = msg.getUint16(PORT, true)
  const size = info & 7
  if (size !== 1 && size !== 2 && size !== 4) badSize(port, size)
  if (msg.getUint8(ACCESS_TYPE) === WRITE) {
    bus.write(port, size, regs.getLow32At(RAX) & SIZE_MASK[size], ctx)
  } else {
    // Merged into RAX after the device ran: a device that synchronized and wrote RAX
    // itself (vmport) must not be undone by the message's stale copy.
    regs.setSizedAt(RAX, size, bus.read(port, size, ctx) >>> 0)
  }
  regs.addAt(RIP_REG, msg.getUint8(LEN) & 0xf)
}

function badSize(port: number, size: number): never {
  throw new MshvError('EUNHANDLED_EXIT', `port ${hex(port)} access of ${size} bytes`)
}

/** INS/OUTS: RIP moves past the instruction once its last element is done. */
function handleStringIo(msg: DataView, info: number, regs: RegisterCache, bus: IoBus, ctx: AccessContext, memory: () => LinearMemory): void {
  const access = { port: msg.getUint16(PORT, true), size: info & 7, input: msg.getUint8(ACCESS_TYPE) !== WRITE, rep: (info & REP_PREFIX) !== 0 }
  if (stringIo(msg, { regs, bus, ctx, memory: memory() }, access)) {
    regs.addAt(RIP_REG, msg.getUint8(LEN) & 0xf)
  }
}

interface StringIoMachine {
  readonly regs: RegisterCache
  readonly bus: IoBus
  readonly ctx: AccessContext
  readonly memory: LinearMemory
}

interface StringIoAccess {
  readonly port: number
  readonly size: number
  readonly input: boolean
  readonly rep: boolean
}

/**
 * INS (port -> ES:rDI) or OUTS (DS:rSI or its override -> port), honouring DF, the
 * address size and paging. Returns whether the instruction is complete.
 */
function stringIo(msg: DataView, m: StringIoMachine, a: StringIoAccess): boolean {
  const { regs } = m
  regs.seed(RFLAGS_REG, msg.getBigUint64(RFLAGS, true))
  regs.seed(RCX, msg.getBigUint64(RCX_MSG, true))
  regs.seed(RSI, msg.getBigUint64(RSI_MSG, true))
  regs.seed(RDI, msg.getBigUint64(RDI_MSG, true))
  // The message's segments have the register value's layout: base, then limit/selector/attributes.
  regs.seed(DS, msg.getBigUint64(DS_MSG, true), msg.getBigUint64(DS_MSG + 8, true))
  regs.seed(ES, msg.getBigUint64(ES_MSG, true), msg.getBigUint64(ES_MSG + 8, true))
  const mode = bitness(msg)
  const ins = decodeIntercepted(msg, BYTE_COUNT, BYTES, () => m.memory)
  const am = mask(ins.addressSize)
  const pending = a.rep ? regs.getAt(RCX) & am : 1n
  const n = pending < BigInt(STRING_IO_BATCH) ? Number(pending) : STRING_IO_BATCH
  const step = stringStep(regs, a.size)
  const index = a.input ? RDI : RSI
  const base = segmentBase(regs, a.input ? 'es' : ins.segment || 'ds', mode)
  const element = mask(a.size)
  for (let i = 0; i < n; i++) {
    const linear = base + (regs.getAt(index) & am)
    if (a.input) m.memory.write(linear, a.size, BigInt(m.bus.read(a.port, a.size, m.ctx) >>> 0) & element)
    else m.bus.write(a.port, a.size, Number(m.memory.read(linear, a.size)), m.ctx)
    advanceIndex(regs, index, step, ins, mode)
  }
  if (!a.rep) return true
  const left = pending - BigInt(n)
  setAddressSized(regs, RCX, left, ins, mode)
  return left === 0n
}
