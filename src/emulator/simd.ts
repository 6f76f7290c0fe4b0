/**
 * The SSE and MMX moves guests make to device memory: MOVD, MOVQ, MOVDQA/U, MOVAPS/UPS,
 * MOVAPD/UPD, MOVSS, MOVSD, MOVLPS/HPS/LPD/HPD and the non-temporal stores (Intel SDM
 * vol. 2 for each). A 16-byte access reaches the device as two 8-byte ones, low first.
 * A load into an XMM register clears the bytes it does not write, except MOVLPx/MOVHPx,
 * which keep the other half; an MMX register's exponent bits become all ones, and MMX
 * instructions leave TOP 0 with every register valid (vol. 1 9.5.1).
 * @module
 */
import { iced } from '../iced.js'
import { MshvError } from '../errors.js'
import type { RegisterName } from '../generated/register-names.js'
import { MemoryOperand, type MmioAccess, type MmioMachine } from './context.js'
import { operandRegister } from './operands.js'

const LOW64 = 0xffff_ffff_ffff_ffffn

/** One SSE or MMX move between memory and an XMM or MMX register. */
export function simdMove(a: MmioAccess, m: MmioMachine): boolean {
  const { Mnemonic, OpKind, Register } = iced()
  const { ins } = a
  const store = ins.opKinds[0] === OpKind.Memory
  const r = operandRegister(ins, store ? 1 : 0)
  const size = ins.memorySize
  const high = ins.mnemonic === Mnemonic.Movhps || ins.mnemonic === Mnemonic.Movhpd
  const keep = high || ins.mnemonic === Mnemonic.Movlps || ins.mnemonic === Mnemonic.Movlpd
  const op = new MemoryOperand(a, m)
  if (r >= Register.XMM0 && r <= Register.XMM15) {
    const name = `xmm${r - Register.XMM0}` as RegisterName
    const [lo, hi] = m.regs.getRaw(name)
    const value = lo | (hi << 64n)
    if (store) {
      op.write(size, high ? value >> 64n : value)
      return true
    }
    const v = op.read(size)
    let next: bigint
    if (high) next = (value & LOW64) | (v << 64n)
    else if (keep) next = (value & ~LOW64) | v
    else next = v
    m.regs.setRaw(name, next & LOW64, next >> 64n)
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
    if (store) op.write(size, (regsNow[i] as [bigint, bigint])[0])
    else m.regs.setRaw(`fpMmx${i}` as RegisterName, op.read(size), 0xffffn)
    return true
  }
  // MOVD/MOVQ between a general register and memory are never MMIO moves of ours.
  throw new MshvError('EUNSUPPORTED_INSTRUCTION', `'${ins.text}' moves a register that is neither XMM nor MMX`)
}
