/**
 * Branches whose target or return address is in device memory, or whose stack is:
 * JMP and CALL through memory, CALL rel with the stack on a device, RET, and far JMP and
 * CALL through an m16:16/32/64 pointer (SDM vol 2 JMP, CALL, RET "Operation"). They set RIP
 * themselves: the handlers return false, so RIP does not advance past them.
 * @module
 */
import { mask } from './alu.js'
import { MemoryOperand, type MmioAccess, type MmioMachine } from './context.js'
import { gp } from './fault.js'
import { canonical, farTransfer } from './segments.js'
import { peek, push, setStackPointer } from './stack.js'

/**
 * A near branch's `target` at operand size `size`, checked: in 64-bit mode a
 * non-canonical target is #GP(0), elsewhere one beyond CS's limit is (the branch faults
 * before anything changes, RIP on it).
 */
function nearTarget(a: MmioAccess, m: MmioMachine, target: bigint, size: number): bigint {
  const t = target & mask(size)
  if (a.bitness === 64) {
    if (!canonical(m.regs, t)) throw gp(0)
  } else if (t > (m.regs.getRaw('cs')[1] & 0xffff_ffffn)) {
    throw gp(0)
  }
  return t
}

/** JMP r/m: to the address in memory. */
export function jumpNear(a: MmioAccess, m: MmioMachine): boolean {
  const size = a.ins.memorySize
  m.regs.set('rip', nearTarget(a, m, new MemoryOperand(a, m).read(size), size))
  return false
}

/**
 * CALL rel or r/m: the target is read and checked first, then the return address (the
 * next instruction's) is pushed, then RIP moves.
 */
export function callNear(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const size = Math.abs(ins.stackIncrement)
  const next = a.rip + BigInt(ins.length)
  const target = ins.address ? new MemoryOperand(a, m, 0n, false).read(size) : next + (ins.branchOffset ?? 0n)
  const t = nearTarget(a, m, target, size)
  push(a, m, next, size)
  m.regs.set('rip', t)
  return false
}

/** RET and RET imm16: the return address is read and checked, then rSP releases it and imm16 more bytes. */
export function returnNear(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const release = (ins.immediates[0] ?? 0n) & 0xffffn
  const size = Math.abs(ins.stackIncrement) - Number(release)
  const t = nearTarget(a, m, peek(a, m, size), size)
  setStackPointer(m.regs, a.bitness, m.regs.get('rsp') + BigInt(size) + release)
  m.regs.set('rip', t)
  return false
}

/**
 * JMP or CALL m16:16, m16:32 or m16:64: the offset, then the selector after it. CALL
 * pushes CS (zero-extended to the operand size, as the sim's processor writes it) and
 * the next RIP, at the offset's size.
 */
export function far(a: MmioAccess, m: MmioMachine, call: boolean): boolean {
  const { ins } = a
  const offsetSize = ins.memorySize - 2
  const op = new MemoryOperand(a, m, 0n, false)
  const offset = op.read(offsetSize)
  const selector = Number(op.read(2, BigInt(offsetSize)))
  const next = a.rip + BigInt(ins.length)
  const pushReturn = (cs: bigint) => {
    push(a, m, cs, offsetSize)
    push(a, m, next, offsetSize)
  }
  farTransfer(m, selector, offset, call ? pushReturn : undefined)
  return false
}
