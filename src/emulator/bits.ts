/**
 * Bit instructions on a device operand: BT/BTS/BTR/BTC, BSF/BSR, MOVBE, and the shifts
 * and rotates (SDM vol 2 for each; the arithmetic of shifts is in shift.ts).
 * @module
 */
import type { Mnemonic } from 'iced-x86'
import { iced, lazy } from '../iced.js'
import { CF, STATUS, ZF, mergeFlags } from './alu.js'
import { MemoryOperand, type MmioAccess, type MmioMachine } from './context.js'
import { operandRegister, operandValue, readRegister, writeRegister } from './operands.js'
import { doubleShift, shift, type ShiftKind } from './shift.js'

/**
 * BT, BTS, BTR, BTC: CF = the selected bit, which BTS sets, BTR clears and BTC flips.
 * An immediate bit offset is taken modulo the operand width. A register bit offset is
 * signed and addresses any bit of memory from the operand's address (SDM vol 2 BT, "bit
 * base"): the operand-sized word at EA + size * floor(offset / width), bit offset mod
 * width. Only CF changes (OF, SF, AF and PF are undefined; ZF is unaffected), as the
 * sim's processor leaves them.
 */
export function bitTest(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic, OpKind } = iced()
  const { ins } = a
  const size = ins.memorySize
  const bits = BigInt(size * 8)
  let bit: bigint
  let delta = 0n
  if (ins.opKinds[1] === OpKind.Register) {
    const offset = BigInt.asIntN(size * 8, readRegister(m.regs, operandRegister(ins, 1)))
    // Floor division and a non-negative remainder: bit -1 is the top bit of the word before.
    const word = offset >= 0n ? offset / bits : -((-offset + bits - 1n) / bits)
    delta = word * BigInt(size)
    bit = offset - word * bits
  } else {
    bit = (ins.immediates[1] ?? 0n) & (bits - 1n)
  }
  const op = new MemoryOperand(a, m, delta)
  const v = op.read(size)
  const rflags = m.regs.get('rflags')
  m.regs.set('rflags', ((v >> bit) & 1n) !== 0n ? rflags | CF : rflags & ~CF)
  const one = 1n << bit
  if (ins.mnemonic === Mnemonic.Bts) op.write(size, v | one)
  else if (ins.mnemonic === Mnemonic.Btr) op.write(size, v & ~one)
  else if (ins.mnemonic === Mnemonic.Btc) op.write(size, v ^ one)
  return true
}

/**
 * BSF / BSR r, m: the index of the lowest (highest) set bit, ZF clear; a zero source
 * sets ZF and leaves the destination as it was. CF, OF, SF, AF and PF are undefined and
 * cleared, as the sim's processor clears them.
 */
export function bitScan(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic } = iced()
  const { ins } = a
  const size = ins.memorySize
  const v = new MemoryOperand(a, m).read(size)
  const rflags = m.regs.get('rflags')
  if (v === 0n) {
    m.regs.set('rflags', mergeFlags(rflags, ZF, STATUS))
    return true
  }
  let index = 0n
  if (ins.mnemonic === Mnemonic.Bsf) while (((v >> index) & 1n) === 0n) index++
  else index = BigInt(v.toString(2).length - 1)
  writeRegister(m.regs, operandRegister(ins, 0), index)
  m.regs.set('rflags', mergeFlags(rflags, 0n, STATUS))
  return true
}

/** Reverses the bytes of the low `size` bytes of `v`. */
function swapBytes(v: bigint, size: number): bigint {
  let r = 0n
  for (let i = 0; i < size; i++) r = (r << 8n) | ((v >> BigInt(8 * i)) & 0xffn)
  return r
}

/** MOVBE r, m / m, r: a move with the bytes reversed (SDM vol 2 MOVBE); no flags. */
export function movbe(a: MmioAccess, m: MmioMachine): boolean {
  const { OpKind } = iced()
  const { ins } = a
  const size = ins.memorySize
  const op = new MemoryOperand(a, m)
  if (ins.opKinds[0] === OpKind.Memory) op.write(size, swapBytes(readRegister(m.regs, operandRegister(ins, 1)), size))
  else writeRegister(m.regs, operandRegister(ins, 0), swapBytes(op.read(size), size))
  return true
}

const shiftKinds = lazy(
  ({ Mnemonic }) =>
    new Map<Mnemonic, ShiftKind>([
      [Mnemonic.Rol, 'rol'],
      [Mnemonic.Ror, 'ror'],
      [Mnemonic.Rcl, 'rcl'],
      [Mnemonic.Rcr, 'rcr'],
      [Mnemonic.Shl, 'shl'],
      [Mnemonic.Sal, 'shl'],
      [Mnemonic.Shr, 'shr'],
      [Mnemonic.Sar, 'sar'],
    ]),
)

/**
 * A shift or rotate of memory by 1, CL or an immediate. A count that masks to 0 changes
 * nothing: no flag, and memory is not written (the sim's processor skips the store too).
 */
export function shiftMemory(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const size = ins.memorySize
  const kind = shiftKinds().get(ins.mnemonic) ?? 'shl'
  const op = new MemoryOperand(a, m)
  const v = op.read(size)
  const rflags = m.regs.get('rflags')
  const r = shift(size, kind, v, operandValue(ins, 1, 1, m.regs), (rflags & CF) !== 0n)
  if (!r) return true
  op.write(size, r.value)
  m.regs.set('rflags', mergeFlags(rflags, r.flags, r.which))
  return true
}

/** SHLD / SHRD m, r, imm8 or CL (SDM vol 2 SHLD, SHRD); a zero count changes nothing. */
export function shiftDouble(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic } = iced()
  const { ins } = a
  const size = ins.memorySize
  const op = new MemoryOperand(a, m)
  const v = op.read(size)
  const src = readRegister(m.regs, operandRegister(ins, 1))
  const r = doubleShift(size, ins.mnemonic === Mnemonic.Shld, v, src, operandValue(ins, 2, 1, m.regs))
  if (!r) return true
  op.write(size, r.value)
  m.regs.set('rflags', mergeFlags(m.regs.get('rflags'), r.flags, r.which))
  return true
}
