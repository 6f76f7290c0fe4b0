/**
 * Register operands of decoded instructions, read and written through the register
 * cache with x86 width rules (8-bit high halves, 32-bit writes zero-extend).
 * @module
 */
import type { Register } from 'iced-x86'
import { iced, lazy } from '../iced.js'
import { registerIndex } from '../layout.js'
import type { RegisterCache } from '../registers.js'
import { mask } from './alu.js'
import { MshvError } from '../errors.js'
import type { Decoded } from './decode.js'
import { segmentName } from './string.js'

const GPR_NAMES = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const
/** Cache indexes of the GPRs in hardware encoding order. */
export const GPR = GPR_NAMES.map(registerIndex)
const highBytes = lazy(({ Register }) => new Set<Register>([Register.AH, Register.CH, Register.DH, Register.BH]))

interface Slot {
  index: number
  size: number
  high: boolean
}

const slots = new Map<Register, Slot>()

function slot(reg: Register): Slot {
  let s = slots.get(reg)
  if (s) return s
  const { Register, RegisterExt } = iced()
  if (!RegisterExt.isGPR(reg)) throw new MshvError('EUNSUPPORTED_INSTRUCTION', `register ${Register[reg]} is not a general-purpose register`)
  const index = GPR[RegisterExt.number(RegisterExt.fullRegister(reg))]
  if (index === undefined) throw new MshvError('EUNSUPPORTED_INSTRUCTION', `no register slot for ${Register[reg]}`)
  s = { index, size: RegisterExt.size(reg), high: highBytes().has(reg) }
  slots.set(reg, s)
  return s
}

/** Reads a general-purpose register operand (AL, AH, AX, EAX, RAX, R8B, ...). */
export function readRegister(regs: RegisterCache, reg: Register): bigint {
  const s = slot(reg)
  const v = regs.getAt(s.index)
  return s.high ? (v >> 8n) & 0xffn : v & mask(s.size)
}

/** Writes a general-purpose register operand with x86 width semantics. */
export function writeRegister(regs: RegisterCache, reg: Register, value: bigint): void {
  const s = slot(reg)
  if (s.size >= 4) {
    regs.setAt(s.index, value & mask(s.size)) // 32-bit writes clear the upper half
    return
  }
  const old = regs.getAt(s.index)
  const shift = s.high ? 8n : 0n
  const m = mask(s.size) << shift
  regs.setAt(s.index, (old & ~m) | ((value << shift) & m))
}

/** Register operand `i` of `ins`; an operand of another kind is refused by name. */
export function operandRegister(ins: Decoded, i: number): Register {
  const { OpKind } = iced()
  const r = ins.registers[i]
  if (r === undefined || ins.opKinds[i] !== OpKind.Register) {
    throw new MshvError('EUNSUPPORTED_INSTRUCTION', `operand ${i} of '${ins.text}' is not a register`)
  }
  return r
}

/**
 * The value of register or immediate operand `i` of `ins`, masked to `size` bytes. A
 * segment register gives its selector (MOV m16, Sreg: SDM vol 2B MOV "Move Segment
 * Register"; the cache's segment value: base, then limit | selector << 32 | attributes << 48).
 */
export function operandValue(ins: Decoded, i: number, size: number, regs: RegisterCache): bigint {
  const { OpKind } = iced()
  if (ins.opKinds[i] === OpKind.Register) {
    const r = operandRegister(ins, i)
    const segment = segmentName(r)
    if (segment) return (regs.getRaw(segment)[1] >> 32n) & 0xffffn & mask(size)
    return readRegister(regs, r) & mask(size)
  }
  return (ins.immediates[i] ?? 0n) & mask(size)
}
