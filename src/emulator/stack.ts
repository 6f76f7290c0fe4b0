/**
 * The stack when it, or the operand moved on or off it, is device memory: PUSH and POP
 * of general registers, segment registers, immediates and memory, ENTER and LEAVE (SDM
 * vol 2 for each). The stack is SS:rSP at the stack's width: 64 bits in 64-bit mode,
 * else 32 or 16 by SS's B flag (vol 3 6.2.3); a narrower stack keeps rSP's upper bits.
 * @module
 */
import type { Register } from 'iced-x86'
import { iced } from '../iced.js'
import { MshvError } from '../errors.js'
import type { RegisterCache } from '../registers.js'
import { mask } from './alu.js'
import { MemoryOperand, readLinear, writeLinear, type MmioAccess, type MmioMachine } from './context.js'
import { GPR, operandRegister, operandValue, writeRegister } from './operands.js'
import { loadDataSegment } from './segments.js'
import { segmentBase, segmentName } from './string.js'

const RSP = GPR[4] as number
const RBP = GPR[5] as number
const SS_B = 1n << 14n

/** The stack pointer's width in bytes. */
export function stackWidth(regs: RegisterCache, bitness: number): number {
  if (bitness === 64) return 8
  return ((regs.getRaw('ss')[1] >> 48n) & SS_B) !== 0n ? 4 : 2
}

/** Writes rSP at the stack's width. */
export function setStackPointer(regs: RegisterCache, bitness: number, v: bigint): void {
  const m = mask(stackWidth(regs, bitness))
  regs.setAt(RSP, (regs.getAt(RSP) & ~m) | (v & m))
}

/** The linear address of stack offset `sp` (already at the stack's width). */
function stackLinear(a: MmioAccess, regs: RegisterCache, sp: bigint): bigint {
  const lin = segmentBase(regs, 'ss', a.bitness) + sp
  return a.bitness === 64 ? BigInt.asUintN(64, lin) : lin & 0xffff_ffffn
}

/** Pushes the low `size` bytes of `value`: memory is written before rSP moves. */
export function push(a: MmioAccess, m: MmioMachine, value: bigint, size: number): void {
  const sp = (m.regs.getAt(RSP) - BigInt(size)) & mask(stackWidth(m.regs, a.bitness))
  writeLinear(a, m, stackLinear(a, m.regs, sp), size, value & mask(size))
  setStackPointer(m.regs, a.bitness, sp)
}

/** Reads `size` bytes at `skip` bytes above the top of the stack. */
export function peek(a: MmioAccess, m: MmioMachine, size: number, skip = 0n): bigint {
  const sp = (m.regs.getAt(RSP) + skip) & mask(stackWidth(m.regs, a.bitness))
  return readLinear(a, m, stackLinear(a, m.regs, sp), size)
}

/** Pops `size` bytes. */
export function pop(a: MmioAccess, m: MmioMachine, size: number): bigint {
  const v = peek(a, m, size)
  setStackPointer(m.regs, a.bitness, m.regs.getAt(RSP) + BigInt(size))
  return v
}

/**
 * PUSH and POP. The operand size is the stack pointer's move (iced's stack increment).
 * PUSH m reads its operand before rSP moves; POP m computes its address after (SDM
 * vol 2 POP: "If the destination operand uses rSP as a base, it is the incremented
 * one"). PUSH Sreg moves rSP by the operand size and writes the selector's 16 bits, as
 * recent processors (and the sim's) do; POP Sreg is a segment load, POP SS also holds
 * off interrupts for one instruction (vol 3 6.8.3).
 */
export function pushPop(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic, OpKind } = iced()
  const { ins } = a
  const size = Math.abs(ins.stackIncrement)
  const kind = ins.opKinds[0]
  if (ins.mnemonic === Mnemonic.Push) {
    if (kind === OpKind.Memory) {
      push(a, m, new MemoryOperand(a, m, 0n, false).read(size), size)
      return true
    }
    const segment = kind === OpKind.Register ? segmentName(operandRegister(ins, 0)) : undefined
    if (segment) {
      const sp = (m.regs.getAt(RSP) - BigInt(size)) & mask(stackWidth(m.regs, a.bitness))
      writeLinear(a, m, stackLinear(a, m.regs, sp), 2, operandValue(ins, 0, 2, m.regs))
      setStackPointer(m.regs, a.bitness, sp)
      return true
    }
    push(a, m, operandValue(ins, 0, size, m.regs), size)
    return true
  }
  if (kind === OpKind.Memory) {
    const v = peek(a, m, size)
    setStackPointer(m.regs, a.bitness, m.regs.getAt(RSP) + BigInt(size))
    new MemoryOperand(a, m, 0n, false).write(size, v)
    return true
  }
  const r = operandRegister(ins, 0)
  const segment = segmentName(r)
  if (!segment) {
    writeRegister(m.regs, r, pop(a, m, size))
    return true
  }
  if (segment === 'cs') throw new MshvError('EUNSUPPORTED_INSTRUCTION', `'${ins.text}' is not an instruction`)
  // The stack's width is the one the instruction began with, even when it loads SS.
  const v = peek(a, m, size)
  const sp = m.regs.getAt(RSP) + BigInt(size)
  const width = mask(stackWidth(m.regs, a.bitness))
  loadDataSegment(m, segment, Number(v & 0xffffn), a.bitness)
  m.regs.setAt(RSP, (m.regs.getAt(RSP) & ~width) | (sp & width))
  if (segment === 'ss') m.regs.set('interruptState', m.regs.get('interruptState') | 1n)
  return true
}

/** The operand size of ENTER or LEAVE, from its form: iced gives LEAVE no stack increment. */
function frameSize(a: MmioAccess): number {
  const { Code } = iced()
  const c = a.ins.code
  if (c === Code.Enterw_imm16_imm8 || c === Code.Leavew) return 2
  if (c === Code.Enterd_imm16_imm8 || c === Code.Leaved) return 4
  return 8
}

/**
 * ENTER imm16, imm8 (SDM vol 2 ENTER): pushes rBP, copies `imm8 % 32` - 1 frame
 * pointers from the old frame and pushes the new one when the level is not 0, points
 * rBP at the frame and reserves imm16 bytes below it.
 */
export function enter(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const size = frameSize(a)
  const regs = m.regs
  const width = mask(stackWidth(regs, a.bitness))
  const allocation = (ins.immediates[0] ?? 0n) & 0xffffn
  const level = Number((ins.immediates[1] ?? 0n) % 32n)
  push(a, m, regs.getAt(RBP), size)
  // FrameTemp is all of rSP; rBP takes its operand-size part.
  const frame = regs.getAt(RSP)
  if (level > 0) {
    let bp = regs.getAt(RBP)
    for (let i = 1; i < level; i++) {
      bp = (bp - BigInt(size)) & width
      push(a, m, readLinear(a, m, stackLinear(a, regs, bp), size), size)
    }
    push(a, m, frame, size)
  }
  writeRegister(regs, framePointer(size), frame)
  setStackPointer(regs, a.bitness, regs.getAt(RSP) - allocation)
  return true
}

/** rBP as the `size`-byte register ENTER and LEAVE write. */
function framePointer(size: number): Register {
  const { Register } = iced()
  return size === 2 ? Register.BP : size === 4 ? Register.EBP : Register.RBP
}

/** LEAVE: rSP = rBP (at the stack's width), then rBP = POP (at the operand size). */
export function leave(a: MmioAccess, m: MmioMachine): boolean {
  const size = frameSize(a)
  setStackPointer(m.regs, a.bitness, m.regs.getAt(RBP))
  writeRegister(m.regs, framePointer(size), pop(a, m, size))
  return true
}

