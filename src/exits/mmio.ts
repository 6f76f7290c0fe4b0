/**
 * Memory intercepts (unmapped or intercepted GPAs): decode the faulting instruction
 * from the message and complete it against the MMIO bus and guest RAM.
 * @module
 */
import { executionStateBit, message, registerIndex } from '../layout.js'
import { MshvError, hex } from '../errors.js'
import type { RegisterCache } from '../registers.js'
import { decode, type Decoded } from '../emulator/decode.js'
import { emulateMmio, plainMove } from '../emulator/mmio.js'
import { startsPage } from '../emulator/address.js'
import type { LinearMemory, PhysicalMemory } from '../emulator/memory.js'

const GPA = message('memGpa')
const GVA = message('memGva')
const ACCESS_INFO = message('memAccessInfo')
/** The message's GVA and its translation to the GPA are both valid. */
const GVA_GPA_KNOWN = message('memGvaValid') | message('memGvaGpaValid')
const WRITE = message('accessWrite')
const RIP = message('rip')
const RFLAGS = message('rflags')
const ACCESS_TYPE = message('interceptAccessType')
const EXECUTE = message('accessExecute')
const COUNT = message('memInstructionByteCount')
const BYTES = message('memInstructionBytes')
const CS = message('csSegment')
const EXEC_STATE = message('executionState')
const RIP_REG = registerIndex('rip')
const RFLAGS_REG = registerIndex('rflags')
/** `hv_x64_segment_register`: base u64, limit u32, selector u16, attributes u16. */
const SEGMENT_ATTRIBUTES = 14
const EFER_LMA = executionStateBit('eferLma')
const INTERRUPTION_PENDING = executionStateBit('interruptionPending')
const CS_L = 1 << 13
const CS_DB = 1 << 14

/** The CPU mode of the intercepted instruction, from the message header. */
export function bitness(msg: DataView): 16 | 32 | 64 {
  const attributes = msg.getUint16(CS + SEGMENT_ATTRIBUTES, true)
  if ((msg.getUint16(EXEC_STATE, true) & EFER_LMA) !== 0 && (attributes & CS_L) !== 0) return 64
  return (attributes & CS_DB) !== 0 ? 32 : 16
}

/** The most bytes an x86 instruction has (SDM vol 2 2.3.11). */
const MAX_INSTRUCTION = 15

/**
 * The code bytes at the intercepted RIP, read from guest RAM through CS: for an exit
 * whose message carries fewer bytes than the instruction has. In 64-bit mode CS's base
 * is 0; elsewhere the linear address wraps at 4 GiB (SDM vol 3 3.4.4, 5.3).
 */
export function codeFetcher(msg: DataView, mode: 16 | 32 | 64, rip: bigint, memory: () => LinearMemory): () => Uint8Array {
  return () => {
    if (mode === 64) return memory().fetch(rip, MAX_INSTRUCTION, 0xffff_ffff_ffff_ffffn)
    const base = msg.getBigUint64(CS, true)
    return memory().fetch(base + (rip & 0xffff_ffffn), MAX_INSTRUCTION, 0xffff_ffffn)
  }
}

/**
 * The instruction bytes the message carries (a view: the decoder copies what it keeps,
 * and the message is not rewritten before it runs).
 */
function messageBytes(msg: DataView, countAt: number, bytesAt: number): Uint8Array {
  return new Uint8Array(msg.buffer, msg.byteOffset + bytesAt, Math.min(msg.getUint8(countAt), 16))
}

/**
 * Decodes the intercepted instruction from the message's bytes, re-fetching them from
 * guest memory when they stop short of its end.
 */
export function decodeIntercepted(msg: DataView, countAt: number, bytesAt: number, memory: () => LinearMemory, mode: 16 | 32 | 64 = bitness(msg)): Decoded {
  // The message's 16 byte slots as four words: a driver's loop exits on the same
  // instruction again and again, and four compares find it without hashing or a view.
  const count = msg.getUint8(countAt)
  const w0 = msg.getUint32(bytesAt, true)
  const w1 = msg.getUint32(bytesAt + 4, true)
  const w2 = msg.getUint32(bytesAt + 8, true)
  const w3 = msg.getUint32(bytesAt + 12, true)
  const m = lastDecoded
  if (m.decoded && m.mode === mode && m.count === count && m.w0 === w0 && m.w1 === w1 && m.w2 === w2 && m.w3 === w3) return m.decoded
  const rip = msg.getBigUint64(RIP, true)
  const d = decode(messageBytes(msg, countAt, bytesAt), mode, rip, codeFetcher(msg, mode, rip, memory))
  // Only what the message's bytes hold: an instruction completed from guest memory may change there.
  if (d.length <= count) lastDecoded = { mode, count, w0, w1, w2, w3, decoded: d }
  return d
}

/** The instruction the last memory intercept decoded from its message's bytes. */
let lastDecoded: { mode: number; count: number; w0: number; w1: number; w2: number; w3: number; decoded: Decoded | undefined } = { mode: 0, count: -1, w0: 0, w1: 0, w2: 0, w3: 0, decoded: undefined }

/**
 * Handles a memory intercept: emulates the access and advances RIP. `unmapped`, for an
 * unmapped-GPA exit, is the device side of the page: an access wholly inside it goes there
 * directly. `inject` makes the vCPU take an exception the instruction raises.
 */
export function handleMmio(msg: DataView, regs: RegisterCache, memory: LinearMemory, inject: (vector: number, errorCode?: number) => void, unmapped?: PhysicalMemory): void {
  const gpa = msg.getBigUint64(GPA, true)
  const rip = msg.getBigUint64(RIP, true)
  const access = msg.getUint8(ACCESS_TYPE)
  if (access === EXECUTE) {
    throw new MshvError('EUNHANDLED_EXIT', `the guest executes from GPA ${hex(gpa)} (rip ${hex(rip)}), which is not RAM`)
  }
  if ((msg.getUint16(EXEC_STATE, true) & INTERRUPTION_PENDING) !== 0) {
    // The access was the processor's own, delivering an event (its IDT, a descriptor
    // table or the stack outside RAM): the instruction at RIP did not make it, so there
    // is nothing to emulate, and a fault injected would come back the same way.
    // OpenVMM's emulator refuses it as fatal (virt_support_x86emu emulate_core:
    // EmulationError::InterruptionPending, "an interrupt caused the memory access exit").
    throw new MshvError('EEVENT_DELIVERY', `the guest's processor accessed GPA ${hex(gpa)}, which is not RAM, while delivering an event (its IDT, a descriptor table or the stack is there; rip ${hex(rip)}): nothing to emulate`)
  }
  const mode = bitness(msg)
  const ins = decodeIntercepted(msg, COUNT, BYTES, () => memory, mode)
  const offset = msg.getUint32(GPA, true) & 0xfff
  const size = Math.max(ins.memorySize, 1)
  const inPage = offset + size <= 0x1000
  const device = unmapped && inPage ? unmapped : memory.phys
  // A plain load or store (most exits): no flags, no other memory operand. At page offset
  // 0 the operand may have begun on the page before (its RAM bytes reached first): then
  // it is not the GPA's alone, and the emulator below splits it.
  if (ins.move && inPage && (offset !== 0 || size === 1 || startsPage(ins, regs, rip, mode))) {
    plainMove(ins, gpa, regs, device)
    regs.setAt(RIP_REG, rip + BigInt(ins.length))
    return
  }
  regs.seed(RIP_REG, rip)
  regs.seed(RFLAGS_REG, msg.getBigUint64(RFLAGS, true))
  // The hypervisor walked the guest's page tables for this access: the emulator's
  // accesses to its page need no translation hypercall (Cloud Hypervisor's
  // MshvEmulatorContext does the same), and name the exit's own bytes. A GVA at another
  // page offset than the GPA is not the GPA's translation (the start of an access split
  // across pages, say) and is not used.
  let gva: bigint | undefined
  if ((msg.getUint8(ACCESS_INFO) & GVA_GPA_KNOWN) === GVA_GPA_KNOWN && (msg.getUint32(GVA, true) & 0xfff) === offset) {
    gva = msg.getBigUint64(GVA, true)
    memory.learn(gva, gpa, access === WRITE)
  }
  if (emulateMmio({ ins, gpa, rip, bitness: mode, gva }, { regs, memory, device, inject })) regs.setAt(RIP_REG, rip + BigInt(ins.length))
}
