/**
 * The MMIO instruction emulator: completes the instruction that touched device memory,
 * on the synced register state, the way a VMM's instruction emulator does (QEMU's
 * target/i386/emulate, Cloud Hypervisor's x86 emulator, KVM's emulate.c). The handlers
 * live by family in arith.ts, bits.ts, strings.ts, stack.ts, branch.ts, segments.ts and
 * simd.ts; this module dispatches and holds the moves.
 * @module
 */
import { iced, lazy } from '../iced.js'
import type { Mnemonic } from 'iced-x86'
import type { RegisterCache } from '../registers.js'
import { MshvError, hex } from '../errors.js'
import { holds, mask, signExtend } from './alu.js'
import { binary, cmpxchg, cmpxchgWide, divIdiv, mulImul, unary, xadd } from './arith.js'
import { bitScan, bitTest, movbe, shiftDouble, shiftMemory } from './bits.js'
import { callNear, far, jumpNear, returnNear } from './branch.js'
import { MemoryOperand, type MmioAccess, type MmioMachine } from './context.js'
import type { Decoded } from './decode.js'
import { GuestFault } from './fault.js'
import type { PhysicalMemory } from './memory.js'
import { operandRegister, operandValue, readRegister, writeRegister } from './operands.js'
import { loadDataSegment, loadTaskRegister } from './segments.js'
import { simdMove } from './simd.js'
import { enter, leave, pushPop } from './stack.js'
import { segmentName } from './string.js'
import { stringOp } from './strings.js'

export type { MmioAccess, MmioMachine } from './context.js'

/** A handler: completes the instruction; returns whether RIP advances past it. */
type Handler = (a: MmioAccess, m: MmioMachine) => boolean

/**
 * Emulates `access.ins`; returns whether RIP advances past it (false while a REP string
 * instruction has iterations left, after a branch, and when the instruction faults: the
 * exception is then injected and the vCPU takes it at the instruction).
 */
export function emulateMmio(access: MmioAccess, m: MmioMachine): boolean {
  try {
    const handler = handlers().get(access.ins.mnemonic)
    if (!handler) throw unsupported(access)
    return handler(access, m)
  } catch (e) {
    if (e instanceof GuestFault) {
      m.inject(e.vector, e.errorCode)
      return false
    }
    // Name the instruction's place in every refusal, however deep it was found.
    if (e instanceof MshvError && e.code === 'EUNSUPPORTED_INSTRUCTION' && !e.message.includes(' at rip ')) {
      throw new MshvError(e.code, `MMIO emulation of '${access.ins.text}' at rip ${hex(access.rip)} (GPA ${hex(access.gpa)}): ${e.message}; the vCPU was not resumed`)
    }
    throw e
  }
}

/**
 * A device's plain load or store ({@link Decoded.move}: MOV between memory and a general
 * register or an immediate), the operands read at decode: RIP is the caller's to advance.
 */
export function plainMove(ins: Decoded, gpa: bigint, regs: RegisterCache, device: PhysicalMemory): void {
  const mv = ins.move
  if (!mv) throw new MshvError('EUNSUPPORTED_INSTRUCTION', `'${ins.text}' is not a plain MOV`)
  const size = ins.memorySize
  if (!mv.store) writeRegister(regs, mv.register as NonNullable<typeof mv.register>, device.read(gpa, size))
  else device.write(gpa, size, (mv.register === undefined ? mv.immediate : readRegister(regs, mv.register)) & mask(size))
}

/** The handler of each mnemonic the emulator completes on device memory. */
const handlers = lazy(({ Mnemonic: M }) => {
  const map = new Map<Mnemonic, Handler>()
  const each = (mnemonics: Mnemonic[], h: Handler) => mnemonics.forEach((x) => map.set(x, h))
  each([M.Mov], move)
  each([M.Movzx, M.Movsx, M.Movsxd], extend)
  each([M.Xchg], exchange)
  each([M.Add, M.Adc, M.Sub, M.Sbb, M.And, M.Or, M.Xor, M.Cmp, M.Test], binary)
  each([M.Inc, M.Dec, M.Neg, M.Not], unary)
  each([M.Xadd], xadd)
  each([M.Cmpxchg], cmpxchg)
  each([M.Cmpxchg8b, M.Cmpxchg16b], cmpxchgWide)
  each([M.Mul, M.Imul], mulImul)
  each([M.Div, M.Idiv], divIdiv)
  each([M.Bt, M.Bts, M.Btr, M.Btc], bitTest)
  each([M.Bsf, M.Bsr], bitScan)
  each([M.Movbe], movbe)
  each([M.Rol, M.Ror, M.Rcl, M.Rcr, M.Shl, M.Sal, M.Shr, M.Sar], shiftMemory)
  each([M.Shld, M.Shrd], shiftDouble)
  each([M.Seto, M.Setno, M.Setb, M.Setae, M.Sete, M.Setne, M.Setbe, M.Seta, M.Sets, M.Setns, M.Setp, M.Setnp, M.Setl, M.Setge, M.Setle, M.Setg], setcc)
  each([M.Cmovo, M.Cmovno, M.Cmovb, M.Cmovae, M.Cmove, M.Cmovne, M.Cmovbe, M.Cmova, M.Cmovs, M.Cmovns, M.Cmovp, M.Cmovnp, M.Cmovl, M.Cmovge, M.Cmovle, M.Cmovg], cmov)
  each(
    [M.Movsb, M.Movsw, M.Movsq, M.Stosb, M.Stosw, M.Stosd, M.Stosq, M.Lodsb, M.Lodsw, M.Lodsd, M.Lodsq],
    stringOp,
  )
  each([M.Cmpsb, M.Cmpsw, M.Cmpsq, M.Scasb, M.Scasw, M.Scasd, M.Scasq], stringOp)
  // MOVSD and CMPSD are two instructions each: the string one and SSE2's (register operands).
  each([M.Movsd], (a, m) => (a.ins.stringOp ? stringOp(a, m) : simdMove(a, m)))
  each([M.Cmpsd], (a, m) => (a.ins.stringOp ? stringOp(a, m) : unsupported(a)))
  each(
    [M.Movd, M.Movq, M.Movdqa, M.Movdqu, M.Movaps, M.Movups, M.Movapd, M.Movupd, M.Movss, M.Movlps, M.Movlpd, M.Movhps, M.Movhpd, M.Movntdq, M.Movntps, M.Movntpd, M.Movntq],
    simdMove,
  )
  each([M.Push, M.Pop], pushPop)
  each([M.Enter], enter)
  each([M.Leave], leave)
  each([M.Call], (a, m) => (isFar(a) ? far(a, m, true) : callNear(a, m)))
  each([M.Ret], returnNear)
  each([M.Jmp], (a, m) => (isFar(a) ? far(a, m, false) : jumpNear(a, m)))
  each([M.Smsw], storeMachineStatus)
  each([M.Ltr], (a, m) => (loadTaskRegister(m, Number(new MemoryOperand(a, m, 0n, false).read(2))), true))
  return map
})

/** The refusal of an instruction the emulator does not complete, naming it and where it ran. */
function unsupported(a: MmioAccess): never {
  throw new MshvError('EUNSUPPORTED_INSTRUCTION', `MMIO emulation does not support '${a.ins.text}' at rip ${hex(a.rip)} (GPA ${hex(a.gpa)}); the vCPU was not resumed`)
}

/** Whether a JMP or CALL takes a far pointer from memory (m16:16/32/64). */
function isFar(a: MmioAccess): boolean {
  return farCodes().has(a.ins.code)
}

const farCodes = lazy(({ Code }) => new Set([Code.Jmp_m1616, Code.Jmp_m1632, Code.Jmp_m1664, Code.Call_m1616, Code.Call_m1632, Code.Call_m1664]))

/**
 * MOV between memory and a register, an immediate or a segment register. MOV Sreg, m16
 * is a segment load; MOV SS also holds off interrupts for one instruction (vol 3 6.8.3).
 */
function move(a: MmioAccess, m: MmioMachine): boolean {
  const { OpKind } = iced()
  const { ins } = a
  const size = ins.memorySize
  if (ins.opKinds[0] === OpKind.Memory) {
    new MemoryOperand(a, m).write(size, operandValue(ins, 1, size, m.regs))
    return true
  }
  if (ins.opKinds[1] !== OpKind.Memory) throw unsupported(a)
  const r = operandRegister(ins, 0)
  const segment = segmentName(r)
  if (!segment) {
    writeRegister(m.regs, r, new MemoryOperand(a, m).read(size))
    return true
  }
  if (segment === 'cs') throw new MshvError('EUNSUPPORTED_INSTRUCTION', 'MOV to CS is #UD, not an instruction')
  loadDataSegment(m, segment, Number(new MemoryOperand(a, m, 0n, false).read(2)), a.bitness)
  if (segment === 'ss') m.regs.set('interruptState', m.regs.get('interruptState') | 1n)
  return true
}

/** MOVZX, MOVSX, MOVSXD r, m: the memory operand zero- or sign-extended. */
function extend(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic } = iced()
  const { ins } = a
  const v = new MemoryOperand(a, m).read(ins.memorySize)
  writeRegister(m.regs, operandRegister(ins, 0), ins.mnemonic === Mnemonic.Movzx ? v : signExtend(v, ins.memorySize))
  return true
}

/** XCHG m, r (either order): one read and one write of the device. */
function exchange(a: MmioAccess, m: MmioMachine): boolean {
  const { OpKind } = iced()
  const { ins } = a
  const r = operandRegister(ins, ins.opKinds[0] === OpKind.Memory ? 1 : 0)
  const op = new MemoryOperand(a, m)
  const old = op.read(ins.memorySize)
  op.write(ins.memorySize, readRegister(m.regs, r))
  writeRegister(m.regs, r, old)
  return true
}

/** SETcc m8: 1 if the condition holds, else 0 (SDM vol 2 SETcc). */
function setcc(a: MmioAccess, m: MmioMachine): boolean {
  new MemoryOperand(a, m).write(1, holds(a.ins.condition, m.regs.get('rflags')) ? 1n : 0n)
  return true
}

/**
 * CMOVcc r, m: the source is read whatever the condition, and a 32-bit destination is
 * written (its upper half cleared) even when the condition fails (SDM vol 2 CMOVcc).
 */
function cmov(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const v = new MemoryOperand(a, m).read(ins.memorySize)
  const r = operandRegister(ins, 0)
  if (holds(ins.condition, m.regs.get('rflags'))) writeRegister(m.regs, r, v)
  else if (ins.memorySize === 4) writeRegister(m.regs, r, readRegister(m.regs, r))
  return true
}

/** SMSW m16: CR0's low 16 bits (the memory form is always 16 bits, SDM vol 2 SMSW). */
function storeMachineStatus(a: MmioAccess, m: MmioMachine): boolean {
  new MemoryOperand(a, m).write(2, m.regs.get('cr0') & 0xffffn)
  return true
}
