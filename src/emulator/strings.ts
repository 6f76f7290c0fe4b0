/**
 * String instructions on device memory: MOVS, STOS, LODS, CMPS and SCAS, each size,
 * either direction, with REP, REPE and REPNE (SDM vol 2 for each, and "REP/REPE/REPZ/
 * REPNE/REPNZ"). One iteration per exit: RIP stays on a repeated instruction while it
 * has iterations left, and the guest re-executes it, as the processor may between
 * iterations (an interrupt can come in between, vol 2 REP).
 * @module
 */
import { iced } from '../iced.js'
import { STATUS, ZF, mask, mergeFlags, sub } from './alu.js'
import type { MmioAccess, MmioMachine } from './context.js'
import { isStringOperand } from './decode.js'
import { GPR, operandRegister, readRegister, writeRegister } from './operands.js'
import { advanceIndex, segmentBase, setAddressSized, stringStep } from './string.js'

const RAX = GPR[0] as number
const RCX = GPR[1] as number
const RSI = GPR[6] as number
const RDI = GPR[7] as number

/**
 * One iteration of a string instruction; returns whether RIP advances past it: when it
 * is not repeated, its count ran out, or (CMPS, SCAS) REPE found a difference or REPNE
 * a match. A repeat with RCX already 0 does nothing.
 */
export function stringOp(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic } = iced()
  const { ins } = a
  const size = ins.memorySize
  const am = mask(ins.addressSize)
  const regs = m.regs
  if (ins.rep && (regs.getAt(RCX) & am) === 0n) return true
  const step = stringStep(regs, size)
  const reads = ins.opKinds.some((k) => isStringOperand(k) === 'source')
  const writes = ins.opKinds.some((k) => isStringOperand(k) === 'dest')
  // DS:rSI (or its override) is read; ES:rDI is fixed (vol 1 3.7.5: no override for ES).
  const source = reads ? m.memory.read(segmentBase(regs, ins.segment || 'ds', a.bitness) + (regs.getAt(RSI) & am), size) : 0n
  const dest = segmentBase(regs, 'es', a.bitness) + (regs.getAt(RDI) & am)
  let compared: boolean
  switch (ins.mnemonic) {
    case Mnemonic.Cmpsb:
    case Mnemonic.Cmpsw:
    case Mnemonic.Cmpsd:
    case Mnemonic.Cmpsq:
      // CMPS compares DS:rSI with ES:rDI: the flags of [rSI] - [rDI].
      setCompareFlags(m, size, source, m.memory.read(dest, size))
      compared = true
      break
    case Mnemonic.Scasb:
    case Mnemonic.Scasw:
    case Mnemonic.Scasd:
    case Mnemonic.Scasq:
      // SCAS compares the accumulator with ES:rDI: the flags of rAX - [rDI].
      setCompareFlags(m, size, regs.getAt(RAX), m.memory.read(dest, size))
      compared = true
      break
    case Mnemonic.Lodsb:
    case Mnemonic.Lodsw:
    case Mnemonic.Lodsd:
    case Mnemonic.Lodsq:
      writeRegister(regs, operandRegister(ins, 0), source)
      compared = false
      break
    default:
      // MOVS copies DS:rSI to ES:rDI; STOS stores the accumulator there.
      m.memory.write(dest, size, reads ? source : readRegister(regs, ins.registers[1] ?? 0))
      compared = false
  }
  if (reads) advanceIndex(regs, RSI, step, ins, a.bitness)
  if (writes) advanceIndex(regs, RDI, step, ins, a.bitness)
  if (!ins.rep) return true
  const rcx = (regs.getAt(RCX) & am) - 1n
  setAddressSized(regs, RCX, rcx, ins, a.bitness)
  if (rcx === 0n) return true
  // REPE/REPZ stops at the first difference, REPNE/REPNZ at the first match.
  if (compared) return ((regs.get('rflags') & ZF) !== 0n) === ins.repne
  return false
}

function setCompareFlags(m: MmioMachine, size: number, x: bigint, y: bigint): void {
  const r = sub(size, x, y)
  m.regs.set('rflags', mergeFlags(m.regs.get('rflags'), r.flags, STATUS))
}

