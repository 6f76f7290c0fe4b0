/**
 * The MMIO instruction emulator: completes the instruction that touched device memory,
 * on the synced register state, the way a VMM's instruction emulator does (QEMU's
 * target/i386/emulate, Cloud Hypervisor's x86 emulator).
 * @module
 */
import { iced } from '../iced.js'
import type { RegisterCache } from '../registers.js'
import { MshvError, hex } from '../errors.js'
import { add, logic, mask, mergeFlags, signExtend, sub, CF, STATUS, type AluResult } from './alu.js'
import { isStringOperand, type Decoded } from './decode.js'
import { readRegister, writeRegister, GPR } from './operands.js'
import type { RegisterName } from '../generated/register-names.js'
import type { LinearMemory, PhysicalMemory } from './memory.js'
import { advanceIndex, segmentBase, setAddressSized, stringStep, segmentName } from './string.js'

const RCX = GPR[1] as number
const RSI = GPR[6] as number
const RDI = GPR[7] as number

/** One MMIO access to complete. */
export interface MmioAccess {
  /** The decoded faulting instruction. */
  readonly ins: Decoded
  /** The GPA the guest accessed (the exit message's). */
  readonly gpa: bigint
  /** RIP of the instruction. */
  readonly rip: bigint
  /** The CPU mode it ran in. */
  readonly bitness: 16 | 32 | 64
}

/** Where the emulator reads and writes. */
export interface MmioMachine {
  readonly regs: RegisterCache
  /** Guest memory by linear address (string instructions' other operand). */
  readonly memory: LinearMemory
  /** The physical memory at the exit's GPA: the device itself when the access is all inside the unmapped page. */
  readonly device: PhysicalMemory
}

/**
 * Emulates `access.ins`; returns whether RIP advances past it (false only while a
 * REP string instruction has iterations left: the guest re-executes it).
 */
export function emulateMmio(access: MmioAccess, m: MmioMachine): boolean {
  try {
    return emulate(access, m)
  } catch (e) {
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

function emulate(access: MmioAccess, m: MmioMachine): boolean {
  const { ins } = access
  const { Mnemonic, OpKind } = iced()
  switch (ins.mnemonic) {
    case Mnemonic.Mov:
      return move(access, m)
    case Mnemonic.Movzx:
    case Mnemonic.Movsx:
    case Mnemonic.Movsxd: {
      const v = m.device.read(access.gpa, ins.memorySize)
      const ext = ins.mnemonic === Mnemonic.Movzx ? v : signExtend(v, ins.memorySize)
      writeRegister(m.regs, reg(ins, 0), ext)
      return true
    }
    case Mnemonic.Xchg: {
      const r = ins.opKinds[0] === OpKind.Memory ? reg(ins, 1) : reg(ins, 0)
      const old = m.device.read(access.gpa, ins.memorySize)
      m.device.write(access.gpa, ins.memorySize, readRegister(m.regs, r))
      writeRegister(m.regs, r, old)
      return true
    }
    case Mnemonic.Add:
    case Mnemonic.Adc:
    case Mnemonic.Sub:
    case Mnemonic.Sbb:
    case Mnemonic.And:
    case Mnemonic.Or:
    case Mnemonic.Xor:
    case Mnemonic.Cmp:
    case Mnemonic.Test:
      return arithmetic(access, m)
    case Mnemonic.Bt:
    case Mnemonic.Bts:
    case Mnemonic.Btr:
    case Mnemonic.Btc:
      return bitTest(access, m)
    case Mnemonic.Movd:
    case Mnemonic.Movq:
    case Mnemonic.Movdqa:
    case Mnemonic.Movdqu:
    case Mnemonic.Movaps:
    case Mnemonic.Movups:
    case Mnemonic.Movapd:
    case Mnemonic.Movupd:
    case Mnemonic.Movss:
    case Mnemonic.Movlps:
    case Mnemonic.Movlpd:
    case Mnemonic.Movhps:
    case Mnemonic.Movhpd:
    case Mnemonic.Movntdq:
    case Mnemonic.Movntps:
    case Mnemonic.Movntpd:
    case Mnemonic.Movntq:
      return simdMove(access, m)
    case Mnemonic.Movsd:
      // MOVSD is two instructions: the SSE2 scalar move (a register operand) and the string one.
      if (ins.opKinds.some((k) => k === OpKind.Register)) return simdMove(access, m)
      return stringOp(access, m)
    case Mnemonic.Movsb:
    case Mnemonic.Movsw:
    case Mnemonic.Movsq:
    case Mnemonic.Stosb:
    case Mnemonic.Stosw:
    case Mnemonic.Stosd:
    case Mnemonic.Stosq:
      return stringOp(access, m)
    default:
      throw unsupported(access)
  }
}

/**
 * The SSE and MMX moves guests make to device memory: MOVD, MOVQ, MOVDQA/U, MOVAPS/UPS,
 * MOVAPD/UPD, MOVSS, MOVSD, MOVLPS/HPS/LPD/HPD and the non-temporal stores (Intel SDM
 * vol. 2 for each). A 16-byte access reaches the device as two 8-byte ones, low first.
 * A load into an XMM register clears the bytes it does not write, except MOVLPx/MOVHPx,
 * which keep the other half; an MMX register's exponent bits become all ones, and MMX
 * instructions leave TOP 0 with every register valid (vol. 1 9.5.1).
 */
function simdMove(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic, OpKind, Register } = iced()
  const { ins } = a
  const store = ins.opKinds[0] === OpKind.Memory
  const r = reg(ins, store ? 1 : 0)
  const size = ins.memorySize
  const high = ins.mnemonic === Mnemonic.Movhps || ins.mnemonic === Mnemonic.Movhpd
  const keep = high || ins.mnemonic === Mnemonic.Movlps || ins.mnemonic === Mnemonic.Movlpd
  const bytes = (v: bigint, n: number) => (n >= 16 ? v : v & ((1n << BigInt(8 * n)) - 1n))
  const readMem = (): bigint =>
    size === 16 ? m.device.read(a.gpa, 8) | (m.device.read(a.gpa + 8n, 8) << 64n) : m.device.read(a.gpa, size)
  const writeMem = (v: bigint): void => {
    if (size === 16) {
      m.device.write(a.gpa, 8, v & 0xffffffffffffffffn)
      m.device.write(a.gpa + 8n, 8, v >> 64n)
    } else {
      m.device.write(a.gpa, size, bytes(v, size))
    }
  }
  if (r >= Register.XMM0 && r <= Register.XMM15) {
    const name = `xmm${r - Register.XMM0}` as RegisterName
    const [lo, hi] = m.regs.getRaw(name)
    const value = lo | (hi << 64n)
    if (store) {
      writeMem(high ? value >> 64n : value)
      return true
    }
    const v = readMem()
    let next: bigint
    if (high) next = (value & 0xffffffffffffffffn) | (v << 64n)
    else if (keep) next = (value & ~0xffffffffffffffffn) | v
    else next = bytes(v, size)
    m.regs.setRaw(name, next & 0xffffffffffffffffn, next >> 64n)
    return true
  }
  if (r >= Register.MM0 && r <= Register.MM7) {
    // MMi is the low 64 bits of physical register i: ST((i - TOP) mod 8). The instruction
    // makes TOP 0 and every register valid, so afterwards MMi is ST(i).
    const [ctl, ip] = m.regs.getRaw('fpControlStatus')
    const top = Number((ctl >> 27n) & 7n)
    const st = (i: number) => `fpMmx${(i - top + 8) % 8}` as RegisterName
    const i = r - Register.MM0
    const regsNow = Array.from({ length: 8 }, (_, k) => m.regs.getRaw(st(k)))
    const status = (ctl >> 16n) & 0xffffn
    const newCtl = (ctl & ~(0xffffn << 16n) & ~(0xffn << 32n)) | ((status & ~(7n << 11n)) << 16n) | (0xffn << 32n)
    m.regs.setRaw('fpControlStatus', newCtl, ip)
    for (let k = 0; k < 8; k++) {
      const v = regsNow[k] as [bigint, bigint]
      m.regs.setRaw(`fpMmx${k}` as RegisterName, v[0], v[1])
    }
    if (store) {
      writeMem((regsNow[i] as [bigint, bigint])[0])
    } else {
      m.regs.setRaw(`fpMmx${i}` as RegisterName, readMem(), 0xffffn)
    }
    return true
  }
  // MOVD/MOVQ between a general register and memory are never MMIO moves of ours.
  throw unsupported(a)
}

function unsupported(a: MmioAccess): MshvError {
  return new MshvError(
    'EUNSUPPORTED_INSTRUCTION',
    `MMIO emulation does not support '${a.ins.text}' at rip ${hex(a.rip)} (GPA ${hex(a.gpa)}); the vCPU was not resumed`,
  )
}

function reg(ins: Decoded, i: number) {
  const { OpKind } = iced()
  const r = ins.registers[i]
  if (r === undefined || ins.opKinds[i] !== OpKind.Register) {
    throw new MshvError('EUNSUPPORTED_INSTRUCTION', `operand ${i} of '${ins.text}' is not a register`)
  }
  return r
}

/** The value of a register or immediate source operand, masked to `size`. */
function source(ins: Decoded, i: number, size: number, m: MmioMachine): bigint {
  const { OpKind } = iced()
  const k = ins.opKinds[i]
  if (k === OpKind.Register) {
    const r = reg(ins, i)
    // MOV m16, Sreg stores the selector (Intel SDM vol. 2B, MOV: "Move Segment Register").
    // The cache's segment value: base, then limit | selector << 32 | attributes << 48.
    const segment = segmentName(r)
    if (segment) return (m.regs.getRaw(segment)[1] >> 32n) & 0xffffn & mask(size)
    return readRegister(m.regs, r) & mask(size)
  }
  return (ins.immediates[i] ?? 0n) & mask(size)
}

function move(a: MmioAccess, m: MmioMachine): boolean {
  const { OpKind } = iced()
  const { ins } = a
  const size = ins.memorySize
  if (ins.opKinds[0] === OpKind.Memory) {
    m.device.write(a.gpa, size, source(ins, 1, size, m))
  } else if (ins.opKinds[1] === OpKind.Memory) {
    writeRegister(m.regs, reg(ins, 0), m.device.read(a.gpa, size))
  } else {
    throw unsupported(a)
  }
  return true
}

function arithmetic(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic, OpKind } = iced()
  const { ins } = a
  const size = ins.memorySize
  const memFirst = ins.opKinds[0] === OpKind.Memory
  const mem = m.device.read(a.gpa, size)
  const other = memFirst ? source(ins, 1, size, m) : readRegister(m.regs, reg(ins, 0))
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
  if (memFirst) m.device.write(a.gpa, size, r.value)
  else writeRegister(m.regs, reg(ins, 0), r.value)
  return true
}

function bitTest(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic } = iced()
  const { ins } = a
  const size = ins.memorySize
  const bits = BigInt(size * 8)
  // The GPA is the operand-sized word the hardware accessed; the bit is within it.
  const offset = source(ins, 1, 8, m)
  const bit = offset & (bits - 1n)
  const v = m.device.read(a.gpa, size)
  const set = (v >> bit) & 1n
  const rflags = m.regs.get('rflags')
  m.regs.set('rflags', (rflags & ~CF) | (set ? CF : 0n))
  let nv = v
  if (ins.mnemonic === Mnemonic.Bts) nv = v | (1n << bit)
  else if (ins.mnemonic === Mnemonic.Btr) nv = v & ~(1n << bit)
  else if (ins.mnemonic === Mnemonic.Btc) nv = v ^ (1n << bit)
  if (ins.mnemonic !== Mnemonic.Bt) m.device.write(a.gpa, size, nv)
  return true
}

/** One iteration of MOVS/STOS; REP repeats by re-executing the instruction. */
function stringOp(a: MmioAccess, m: MmioMachine): boolean {
  const { ins } = a
  const size = ins.memorySize
  const am = mask(ins.addressSize)
  const regs = m.regs
  if (ins.rep && (regs.getAt(RCX) & am) === 0n) return true
  const step = stringStep(regs, size)
  const dest = segmentBase(regs, 'es', a.bitness) + (regs.getAt(RDI) & am)
  let value: bigint
  const isMovs = ins.opKinds.some((k) => isStringOperand(k) === 'source')
  if (isMovs) {
    // MOVS reads through DS or its override; ES for the destination is fixed.
    value = m.memory.read(segmentBase(regs, ins.segment || 'ds', a.bitness) + (regs.getAt(RSI) & am), size)
    advanceIndex(regs, RSI, step, ins, a.bitness)
  } else {
    value = readRegister(regs, ins.registers[1] ?? 0)
  }
  m.memory.write(dest, size, value)
  advanceIndex(regs, RDI, step, ins, a.bitness)
  if (!ins.rep) return true
  const rcx = (regs.getAt(RCX) & am) - 1n
  setAddressSized(regs, RCX, rcx, ins, a.bitness)
  return rcx === 0n
}
