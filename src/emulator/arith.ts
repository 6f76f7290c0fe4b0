/**
 * Integer arithmetic on a device operand: ADD..CMP and TEST, INC/DEC/NEG/NOT, XADD,
 * CMPXCHG, CMPXCHG8B/16B, MUL/IMUL/DIV/IDIV (SDM vol 2 for each; flags per vol 1
 * appendix A). A read-modify-write reads the device once and writes it once.
 * @module
 */
import { iced } from '../iced.js'
import { add, incDec, logic, mergeFlags, neg, sub, CF, NOT_CF, STATUS, ZF, type AluResult } from './alu.js'
import { MemoryOperand, type MmioAccess, type MmioMachine } from './context.js'
import { DE, GuestFault, gp } from './fault.js'
import { divide, multiply, productFlags } from './muldiv.js'
import { GPR, operandRegister, operandValue, readRegister, writeRegister } from './operands.js'

const RAX = GPR[0] as number
const RCX = GPR[1] as number
const RDX = GPR[2] as number
const RBX = GPR[3] as number

/** ADD, ADC, SUB, SBB, AND, OR, XOR, CMP, TEST with a memory destination or source. */
export function binary(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic, OpKind } = iced()
  const { ins } = a
  const size = ins.memorySize
  const memFirst = ins.opKinds[0] === OpKind.Memory
  const op = new MemoryOperand(a, m)
  const mem = op.read(size)
  const other = memFirst ? operandValue(ins, 1, size, m.regs) : readRegister(m.regs, operandRegister(ins, 0))
  const [x, y] = memFirst ? [mem, other] : [other, mem]
  const rflags = m.regs.get('rflags')
  const carry = (rflags & CF) !== 0n ? 1n : 0n
  let r: AluResult
  switch (ins.mnemonic) {
    case Mnemonic.Add:
      r = add(size, x, y)
      break
    case Mnemonic.Adc:
      r = add(size, x, y, carry)
      break
    case Mnemonic.Sub:
    case Mnemonic.Cmp:
      r = sub(size, x, y)
      break
    case Mnemonic.Sbb:
      r = sub(size, x, y, carry)
      break
    case Mnemonic.And:
    case Mnemonic.Test:
      r = logic(size, x & y)
      break
    case Mnemonic.Or:
      r = logic(size, x | y)
      break
    default:
      r = logic(size, x ^ y)
  }
  m.regs.set('rflags', mergeFlags(rflags, r.flags, STATUS))
  if (ins.mnemonic === Mnemonic.Cmp || ins.mnemonic === Mnemonic.Test) return true
  if (memFirst) op.write(size, r.value)
  else writeRegister(m.regs, operandRegister(ins, 0), r.value)
  return true
}

/** INC and DEC (CF kept), NEG (CF = operand not 0), NOT (no flags) of a memory operand. */
export function unary(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic } = iced()
  const { ins } = a
  const size = ins.memorySize
  const op = new MemoryOperand(a, m)
  const v = op.read(size)
  if (ins.mnemonic === Mnemonic.Not) {
    op.write(size, ~v)
    return true
  }
  const rflags = m.regs.get('rflags')
  if (ins.mnemonic === Mnemonic.Neg) {
    const r = neg(size, v)
    m.regs.set('rflags', mergeFlags(rflags, r.flags, STATUS))
    op.write(size, r.value)
    return true
  }
  const r = incDec(size, v, ins.mnemonic === Mnemonic.Dec)
  m.regs.set('rflags', mergeFlags(rflags, r.flags, NOT_CF))
  op.write(size, r.value)
  return true
}

/** XADD m, r: the sum to memory, memory's old value to the register, flags as ADD. */
export function xadd(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const size = ins.memorySize
  const r = operandRegister(ins, 1)
  const op = new MemoryOperand(a, m)
  const dst = op.read(size)
  const sum = add(size, dst, readRegister(m.regs, r))
  m.regs.set('rflags', mergeFlags(m.regs.get('rflags'), sum.flags, STATUS))
  op.write(size, sum.value)
  writeRegister(m.regs, r, dst)
  return true
}

/**
 * CMPXCHG m, r: compares the accumulator with memory (flags as CMP); equal: memory takes
 * the register; otherwise the accumulator takes memory, and memory is written with its
 * own value ("the destination operand is written back if the comparison fails", SDM).
 */
export function cmpxchg(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const size = ins.memorySize
  const op = new MemoryOperand(a, m)
  const dst = op.read(size)
  const accumulator = m.regs.getAt(RAX)
  const r = sub(size, accumulator, dst)
  m.regs.set('rflags', mergeFlags(m.regs.get('rflags'), r.flags, STATUS))
  if (r.value === 0n) {
    op.write(size, readRegister(m.regs, operandRegister(ins, 1)))
    return true
  }
  op.write(size, dst)
  writeSized(m, RAX, size, dst)
  return true
}

/**
 * CMPXCHG8B m64 / CMPXCHG16B m128: EDX:EAX (RDX:RAX) against memory; equal: memory takes
 * ECX:EBX (RCX:RBX) and ZF is set; otherwise EDX:EAX takes memory (written back as
 * is) and ZF is clear. CMPXCHG16B's operand must be 16-byte aligned: #GP(0).
 */
export function cmpxchgWide(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const half = ins.memorySize / 2
  const op = new MemoryOperand(a, m)
  if (half === 8 && (op.linear & 15n) !== 0n) throw gp(0)
  const lo = op.read(half)
  const hi = op.read(half, BigInt(half))
  const m64 = (1n << BigInt(8 * half)) - 1n
  const equal = lo === (m.regs.getAt(RAX) & m64) && hi === (m.regs.getAt(RDX) & m64)
  const rflags = m.regs.get('rflags')
  if (equal) {
    op.write(half, m.regs.getAt(RBX))
    op.write(half, m.regs.getAt(RCX), BigInt(half))
    m.regs.set('rflags', rflags | ZF)
    return true
  }
  op.write(half, lo)
  op.write(half, hi, BigInt(half))
  writeSized(m, RAX, half, lo)
  writeSized(m, RDX, half, hi)
  m.regs.set('rflags', rflags & ~ZF)
  return true
}

/** Writes register `index` as a `size`-byte operand does: 4 and 8 whole, 1 and 2 merged. */
function writeSized(m: MmioMachine, index: number, size: number, v: bigint): void {
  if (size >= 4) {
    m.regs.setAt(index, v & ((1n << BigInt(8 * size)) - 1n))
    return
  }
  const mk = (1n << BigInt(8 * size)) - 1n
  m.regs.setAt(index, (m.regs.getAt(index) & ~mk) | (v & mk))
}

/**
 * MUL and one-operand IMUL: RDX:RAX (AX for bytes) = RAX * m; two- and three-operand
 * IMUL: r = truncated r * m or m * imm. CF = OF = the product does not fit.
 */
export function mulImul(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic } = iced()
  const { ins } = a
  const size = ins.memorySize
  const src = new MemoryOperand(a, m).read(size)
  const rflags = m.regs.get('rflags')
  if (ins.opKinds.length === 1) {
    const p = multiply(size, m.regs.getAt(RAX), src, ins.mnemonic === Mnemonic.Imul)
    if (size === 1) writeSized(m, RAX, 2, p.lo | (p.hi << 8n))
    else {
      writeSized(m, RAX, size, p.lo)
      writeSized(m, RDX, size, p.hi)
    }
    m.regs.set('rflags', mergeFlags(rflags, productFlags(size, p), STATUS))
    return true
  }
  const dst = operandRegister(ins, 0)
  const other = ins.opKinds.length === 3 ? operandValue(ins, 2, size, m.regs) : readRegister(m.regs, dst)
  const p = multiply(size, other, src, true)
  writeRegister(m.regs, dst, p.lo)
  m.regs.set('rflags', mergeFlags(rflags, productFlags(size, p), STATUS))
  return true
}

/**
 * DIV and IDIV: RDX:RAX (AX for bytes) / m, the quotient to RAX (AL) and the remainder
 * to RDX (AH); #DE for a zero divisor or a quotient too wide, before anything changes.
 * The flags are undefined and left as they were, as the sim's processor leaves them.
 */
export function divIdiv(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic } = iced()
  const { ins } = a
  const size = ins.memorySize
  const d = new MemoryOperand(a, m).read(size)
  const rax = m.regs.getAt(RAX)
  const [hi, lo] = size === 1 ? [(rax >> 8n) & 0xffn, rax & 0xffn] : [m.regs.getAt(RDX), rax]
  const r = divide(size, hi, lo, d, ins.mnemonic === Mnemonic.Idiv)
  if (!r) throw new GuestFault(DE)
  if (size === 1) writeSized(m, RAX, 2, r.q | (r.r << 8n))
  else {
    writeSized(m, RAX, size, r.q)
    writeSized(m, RDX, size, r.r)
  }
  return true
}

