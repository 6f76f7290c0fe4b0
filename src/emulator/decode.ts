/**
 * Decoding the instruction bytes of an exit with iced-x86 (WASM), into plain records
 * cached by their bytes, so a device hammered by the same instruction decodes it once.
 * @module
 */
import type { Code, ConditionCode, Formatter, Instruction, Mnemonic, OpKind, Register } from 'iced-x86'
import { iced, lazy } from '../iced.js'
import { MshvError, hex } from '../errors.js'
import { segmentName, type SegmentName } from './string.js'
import { GPR } from './operands.js'

/**
 * How the explicit memory operand's effective address is made (SDM vol 1 3.7.5): base +
 * index * scale + displacement, wrapped to the address size. Kept as parts, not an
 * address: the decode is cached by bytes, and the registers differ at each exit.
 */
export interface AddressParts {
  /** Register cache index of the base register; -1 when none. */
  readonly base: number
  /** Register cache index of the index register; -1 when none. */
  readonly index: number
  readonly scale: bigint
  /** {@link scale} as a number, and {@link displacement}'s low 12 bits: the plain MOV's page check makes no BigInt. */
  readonly scaleNumber: number
  readonly displacementLow: number
  /** The displacement as a u64; RIP-relative: the offset from the next instruction's RIP. */
  readonly displacement: bigint
  /** RIP- (or EIP-) relative: the address is RIP past the instruction + displacement. */
  readonly ripRelative: boolean
  /** Address size in bytes: 2, 4 or 8. */
  readonly size: number
}

/** What the emulators need of one instruction. */
export interface Decoded {
  readonly mnemonic: Mnemonic
  readonly length: number
  readonly opKinds: readonly OpKind[]
  readonly registers: readonly Register[]
  readonly immediates: readonly bigint[]
  /** Size in bytes of the memory operand (0 when none). */
  readonly memorySize: number
  /** REP/REPE (F3) or REPNE (F2) prefix. */
  readonly rep: boolean
  /** The REPNE (F2) prefix: CMPS and SCAS repeat while ZF is clear. */
  readonly repne: boolean
  /** Whether an operand is a string instruction's (`[rsi]`, `es:[rdi]` and their narrower forms). */
  readonly stringOp: boolean
  /** Address size in bytes of string operands (from RSI/ESI/SI). */
  readonly addressSize: number
  /** Segment of the memory operand (`ds`, `es`, `fs`, ...), overrides applied; '' when none. */
  readonly segment: SegmentName | ''
  /** Intel syntax, for messages. */
  readonly text: string
  /** iced's code: the form (operand sizes, far pointer widths) where the mnemonic leaves it open. */
  readonly code: Code
  /** The condition of Jcc, SETcc and CMOVcc (iced's ConditionCode; 0 when none). */
  readonly condition: ConditionCode
  /** How much RSP changes (iced's stackPointerIncrement): push -8, pop 8, ret 8 + imm16. */
  readonly stackIncrement: number
  /** The explicit memory operand's address, when the instruction has one (kind Memory). */
  readonly address?: AddressParts
  /** A relative near branch's (CALL rel, JMP rel) target as an offset from the next instruction's RIP. */
  readonly branchOffset?: bigint
  /**
   * For `MOV` between memory and a general register or an immediate (a device's load or
   * store, most MMIO exits): the operands, read once at decode so the emulator goes
   * straight to the access. Undefined for everything else.
   */
  readonly move?: { readonly store: boolean; readonly register: Register | undefined; readonly immediate: bigint }
}

const CACHE_LIMIT = 4096

/** A cached decode: the bytes it came from, compared in full on every hit. */
interface CacheEntry {
  readonly bitness: number
  readonly bytes: Uint8Array
  readonly decoded: Decoded
}

/**
 * Decodes by an FNV-1a hash of the mode and bytes. A hash, not a string key: making a
 * string of the bytes costs more than the rest of a cached MMIO exit's handling. A
 * collision only costs a decode, since a hit must match the bytes exactly.
 */
const cache = new Map<number, CacheEntry>()

/**
 * The cache key of `bytes` decoded in `bitness`-bit mode.
 * @internal
 */
export function decodeCacheKey(bytes: Uint8Array, bitness: number): number {
  let h = Math.imul(0x811c9dc5 ^ bitness, 0x01000193)
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ (bytes[i] as number), 0x01000193)
  return h
}

function sameBytes(e: CacheEntry, bytes: Uint8Array, bitness: number): boolean {
  if (e.bitness !== bitness || e.bytes.length !== bytes.length) return false
  for (let i = 0; i < bytes.length; i++) if (e.bytes[i] !== bytes[i]) return false
  return true
}
let formatter: Formatter | undefined

const stringOperands = lazy(({ OpKind }) => ({
  source: new Set<OpKind>([OpKind.MemorySegRSI, OpKind.MemorySegESI, OpKind.MemorySegSI]),
  dest: new Set<OpKind>([OpKind.MemoryESRDI, OpKind.MemoryESEDI, OpKind.MemoryESDI]),
}))

function addressSizeOf(kinds: readonly OpKind[], bitness: number): number {
  const { OpKind } = iced()
  for (const k of kinds) {
    if (k === OpKind.MemorySegRSI || k === OpKind.MemoryESRDI) return 8
    if (k === OpKind.MemorySegESI || k === OpKind.MemoryESEDI) return 4
    if (k === OpKind.MemorySegSI || k === OpKind.MemoryESDI) return 2
  }
  return bitness / 8
}

/** Whether an operand kind is a string instruction's source or destination. */
export function isStringOperand(k: OpKind): 'source' | 'dest' | undefined {
  const { source, dest } = stringOperands()
  return source.has(k) ? 'source' : dest.has(k) ? 'dest' : undefined
}

/**
 * Decodes the first instruction of `bytes` for a CPU in `bitness`-bit mode at `rip`.
 *
 * An exit's bytes may stop short of the instruction's end (the message carries none, or
 * the instruction crosses a page boundary): then `refetch` is asked for the bytes at
 * RIP from guest memory and those are decoded, as Cloud Hypervisor's emulator does on
 * iced's `NoMoreBytes` (`hypervisor/src/arch/x86/emulator/mod.rs`, `fetch` in
 * `hypervisor/src/mshv/x86_64/emulator.rs`). An undecodable instruction is a clear
 * error naming the bytes and RIP.
 */
export function decode(bytes: Uint8Array, bitness: 16 | 32 | 64, rip: bigint, refetch?: () => Uint8Array): Decoded {
  const key = decodeCacheKey(bytes, bitness)
  const hit = cache.get(key)
  if (hit && sameBytes(hit, bytes, bitness)) return hit.decoded
  const { Decoder, DecoderError, DecoderOptions, Formatter, FormatterSyntax, MemorySizeExt, OpKind, Register } = iced()
  const decoder = new Decoder(bitness, bytes, DecoderOptions.None)
  decoder.ip = rip
  const ins = decoder.decode()
  const truncated = ins.isInvalid && decoder.lastError === DecoderError.NoMoreBytes
  try {
    if (truncated && refetch) {
      const fetched = refetch()
      if (fetched.length <= bytes.length) {
        throw new MshvError(
          'EUNSUPPORTED_INSTRUCTION',
          `the instruction at rip ${hex(rip)} is cut short: bytes ${Buffer.from(fetched).toString('hex') || '(none)'} and the rest is not readable guest RAM`,
        )
      }
      return decode(fetched, bitness, rip)
    }
    if (ins.isInvalid) {
      const what = truncated ? 'is cut short' : 'cannot be decoded'
      throw new MshvError('EUNSUPPORTED_INSTRUCTION', `the instruction at rip ${hex(rip)} ${what}: bytes ${Buffer.from(bytes).toString('hex') || '(none)'}`)
    }
    formatter ??= new Formatter(FormatterSyntax.Intel)
    const opKinds: OpKind[] = []
    const registers: Register[] = []
    const immediates: bigint[] = []
    for (let i = 0; i < ins.opCount; i++) {
      const k = ins.opKind(i)
      opKinds.push(k)
      registers.push(k === OpKind.Register ? ins.opRegister(i) : Register.None)
      immediates.push(isImmediate(k) ? ins.immediate(i) : 0n)
    }
    const d: Decoded = {
      mnemonic: ins.mnemonic,
      length: ins.length,
      opKinds,
      registers,
      immediates,
      memorySize: ins.memorySize ? MemorySizeExt.size(ins.memorySize) : 0,
      rep: ins.hasRepPrefix || ins.hasRepePrefix || ins.hasRepnePrefix,
      repne: ins.hasRepnePrefix,
      stringOp: opKinds.some((k) => isStringOperand(k) !== undefined),
      addressSize: addressSizeOf(opKinds, bitness),
      segment: segmentName(ins.memorySegment) ?? '',
      text: formatter.format(ins),
      code: ins.code,
      condition: ins.conditionCode,
      stackIncrement: ins.stackPointerIncrement,
      ...(opKinds.includes(OpKind.Memory) ? { address: addressParts(ins, bitness) } : {}),
      ...(nearBranch(opKinds) ? { branchOffset: BigInt.asUintN(64, ins.nearBranchTarget - ins.nextIP) } : {}),
      move: plainMove(ins.mnemonic, opKinds, registers, immediates),
    }
    if (cache.size >= CACHE_LIMIT) cache.clear()
    // A copy: `bytes` may be a view over the exit message, rewritten by the next exit.
    cache.set(key, { bitness, bytes: bytes.slice(), decoded: d })
    return d
  } finally {
    ins.free()
    decoder.free()
  }
}

/** Whether an operand is a relative near branch target (iced keeps it absolute, for the decoder's IP). */
function nearBranch(kinds: readonly OpKind[]): boolean {
  const { OpKind } = iced()
  return kinds.some((k) => k === OpKind.NearBranch16 || k === OpKind.NearBranch32 || k === OpKind.NearBranch64)
}

/** A general register's cache index (its full 64-bit register), or -1 for none. */
function gprIndex(r: Register): number {
  const { Register, RegisterExt } = iced()
  if (r === Register.None) return -1
  return GPR[RegisterExt.number(RegisterExt.fullRegister(r))] ?? -1
}

/**
 * {@link AddressParts} of a decoded memory operand. The address size is the base's or
 * index's width; with neither, iced's displacement size says it (8 in 64-bit addressing,
 * 4 with 0x67 there or in 32-bit code, 2 in 16-bit addressing).
 */
function addressParts(ins: Instruction, bitness: number): AddressParts {
  const { Register, RegisterExt } = iced()
  const base = ins.memoryBase
  const index = ins.memoryIndex
  const ripRelative = base === Register.RIP || base === Register.EIP
  const sized = base !== Register.None ? base : index
  const size = sized !== Register.None ? RegisterExt.size(sized) : ins.memoryDisplSize > 1 ? ins.memoryDisplSize : bitness / 8
  // iced gives a RIP-relative operand's absolute address for the decoder's IP; the cache
  // serves these bytes at any RIP, so keep the offset from the next instruction instead.
  const displacement = ripRelative ? BigInt.asUintN(64, ins.memoryDisplacementU64 - ins.nextIP) : ins.memoryDisplacementU64
  return {
    base: ripRelative ? -1 : gprIndex(base),
    index: gprIndex(index),
    scale: BigInt(ins.memoryIndexScale),
    scaleNumber: ins.memoryIndexScale,
    displacementLow: Number(displacement & 0xfffn),
    displacement,
    ripRelative,
    size,
  }
}

/** {@link Decoded.move} of an instruction: MOV m, r/imm (a store) or MOV r, m (a load), general registers only. */
function plainMove(mnemonic: Mnemonic, kinds: readonly OpKind[], registers: readonly Register[], immediates: readonly bigint[]): Decoded['move'] {
  const { Mnemonic, OpKind, RegisterExt } = iced()
  if (mnemonic !== Mnemonic.Mov || kinds.length !== 2) return undefined
  const gpr = (i: number): boolean => kinds[i] === OpKind.Register && RegisterExt.isGPR(registers[i] as Register)
  if (kinds[0] === OpKind.Memory && gpr(1)) return { store: true, register: registers[1], immediate: 0n }
  if (kinds[0] === OpKind.Memory && isImmediate(kinds[1] as OpKind)) return { store: true, register: undefined, immediate: immediates[1] ?? 0n }
  if (kinds[1] === OpKind.Memory && gpr(0)) return { store: false, register: registers[0], immediate: 0n }
  return undefined
}

function isImmediate(k: OpKind): boolean {
  const { OpKind } = iced()
  return (
    k === OpKind.Immediate8 ||
    k === OpKind.Immediate16 ||
    k === OpKind.Immediate32 ||
    k === OpKind.Immediate64 ||
    k === OpKind.Immediate8to16 ||
    k === OpKind.Immediate8to32 ||
    k === OpKind.Immediate8to64 ||
    k === OpKind.Immediate32to64 ||
    k === OpKind.Immediate8_2nd
  )
}

