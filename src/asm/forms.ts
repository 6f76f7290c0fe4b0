/**
 * Choosing an encoding: every legacy-encoded iced-x86 `Code` of a mnemonic is a form
 * with typed operands (its `OpCodeInfo`); the forms whose operands accept what was
 * written are built and encoded, and the shortest encoding wins, as assemblers do.
 * @module
 */
import type { Code, Instruction, MemoryOperand, Mnemonic, OpCodeOperandKind as K, Register } from 'iced-x86'
import { iced, lazy } from '../iced.js'
import type { Expr, MemoryText, OperandText, Prefix } from './syntax.js'

/** An operand with its expressions evaluated. */
export type Operand =
  | { readonly kind: 'reg'; readonly reg: Register }
  | { readonly kind: 'mem'; readonly text: MemoryText; readonly disp: bigint }
  | { readonly kind: 'imm'; readonly value: bigint }
  | { readonly kind: 'far'; readonly selector: bigint; readonly offset: bigint }

interface Form {
  readonly code: Code
  readonly mnemonic: Mnemonic
  readonly kinds: readonly K[]
  /** Bytes of the memory operand; 0 when it has none or any size fits (`lea`). */
  readonly memorySize: number
  /** The form as the manuals write it (`ADD r/m32, imm8`), for error messages. */
  readonly text: string
  readonly modes: readonly number[]
}

/** Mnemonic spellings iced names differently (iced: `je`, `cmove`, `sete`, ...). */
const ALIASES: Readonly<Record<string, string>> = (() => {
  const cc: Record<string, string> = {
    z: 'e',
    nz: 'ne',
    c: 'b',
    nae: 'b',
    nc: 'ae',
    nb: 'ae',
    na: 'be',
    nbe: 'a',
    pe: 'p',
    po: 'np',
    nge: 'l',
    nl: 'ge',
    ng: 'le',
    nle: 'g',
  }
  // The 16-bit spellings name iced's base mnemonics, which are the 16-bit forms.
  const out: Record<string, string> = { sal: 'shl', retn: 'ret', xlat: 'xlatb', pushaw: 'pusha', popaw: 'popa', pushfw: 'pushf', popfw: 'popf', iretw: 'iret' }
  for (const [from, to] of Object.entries(cc)) for (const p of ['j', 'cmov', 'set']) out[p + from] = p + to
  return out
})()

const mnemonics = lazy(
  ({ Mnemonic }): ReadonlyMap<string, Mnemonic> =>
    new Map(Object.entries(Mnemonic).flatMap(([name, v]) => (typeof v === 'number' ? [[name.toLowerCase(), v] as const] : []))),
)

const mnemonicNames = lazy((): ReadonlyMap<Mnemonic, string> => new Map([...mnemonics()].map(([name, m]) => [m, name])))

/** String instructions, written without operands; built by iced's own constructors. */
const stringOps = lazy(
  (): ReadonlyMap<Mnemonic, { create: string; segment: boolean }> =>
    new Map(
  (
    [
      ['movs', true],
      ['lods', true],
      ['outs', true],
      ['cmps', true],
      ['stos', false],
      ['scas', false],
      ['ins', false],
    ] as const
  ).flatMap(([op, segment]) =>
    ['b', 'w', 'd', 'q'].flatMap((s) => {
      const m = mnemonics().get(op + s)
      const create = `create${op[0]?.toUpperCase()}${op.slice(1)}${s}`
      return m === undefined ? [] : [[m, { create, segment }] as const]
    }),
  ),
    ),
)

/** Operands may be written in either order (`xchg al, [bx]`, `test [rbx], eax`), as NASM allows. */
const commutative = lazy(({ Mnemonic }) => new Set([Mnemonic.Xchg, Mnemonic.Test]))

let table: Map<Mnemonic, Form[]> | undefined

/** Every legacy-encoded form, by mnemonic (built once, on first use). */
function forms(): Map<Mnemonic, Form[]> {
  if (table) return table
  const { Code, CodeExt, EncodingKind, MemorySizeExt } = iced()
  table = new Map()
  for (const v of Object.values(Code)) {
    if (typeof v !== 'number') continue
    const oc = CodeExt.opCode(v)
    try {
      if (!oc.isInstruction || oc.encoding !== EncodingKind.Legacy || oc.decoderOption !== 0) continue
      const kinds = Array.from({ length: oc.opCount }, (_, k) => oc.opKind(k))
      const form: Form = {
        code: v,
        mnemonic: oc.mnemonic,
        kinds,
        memorySize: MemorySizeExt.size(oc.memorySize),
        text: oc.instructionString,
        modes: [16, 32, 64].filter((b) => oc.isAvailableInMode(b)),
      }
      const list = table.get(oc.mnemonic) ?? []
      list.push(form)
      table.set(oc.mnemonic, list)
    } finally {
      oc.free()
    }
  }
  return table
}

/**
 * Mnemonics that mean the default operand size's variant, as in NASM: `pushf` is
 * `pushfq` in 64-bit code (stack operations default to 64 bits), `iret` is `iretd`.
 */
const SIZED_BY_MODE: ReadonlyMap<string, readonly [string, string]> = new Map([
  ['pusha', ['pushad', 'pushad']],
  ['popa', ['popad', 'popad']],
  ['pushf', ['pushfd', 'pushfq']],
  ['popf', ['popfd', 'popfq']],
  ['iret', ['iretd', 'iretd']],
])

/** The iced mnemonic for a written one in `bitness`-bit code, aliases included. */
export function mnemonicNamed(name: string, bitness: number): Mnemonic | undefined {
  const variants = SIZED_BY_MODE.get(name)
  const sized = variants && bitness !== 16 ? variants[bitness === 32 ? 0 : 1] : name
  return mnemonics().get(ALIASES[sized] ?? sized)
}

/**
 * Relative branches at the code size only: `66`-prefixed ones are shorter but truncate
 * the instruction pointer (a `jmp` in 64-bit code would land below 64 KiB).
 */
const branchSize = lazy(
  ({ OpCodeOperandKind: K }): ReadonlyMap<K, number> =>
    new Map([
      [K.br16_1, 16],
      [K.br16_2, 16],
      [K.br32_1, 32],
      [K.br32_4, 32],
      [K.br64_1, 64],
      [K.br64_4, 64],
    ]),
)

/** Mnemonics whose plain `mem` forms take far pointers (`m16:32`), written `far [...]`. */
const farMemory = lazy(({ Mnemonic }) => new Set([Mnemonic.Jmp, Mnemonic.Call]))

/**
 * The values an immediate of `kind` can hold, as [min, max] over what may be written: a
 * byte takes -128..255, a sign-extended byte of a 32-bit operand -128..127 or
 * 0xffffff80..0xffffffff (both read as -128..-1), and so on (Intel SDM vol. 2, 3.1.1.1).
 */
export function immediateFits(kind: K, value: bigint): boolean {
  const { OpCodeOperandKind: K } = iced()
  const within = (bits: number) => value >= -(1n << BigInt(bits - 1)) && value < 1n << BigInt(bits)
  const sext = (from: number, to: number) => {
    if (!within(to)) return false
    const v = BigInt.asIntN(to, value)
    return v >= -(1n << BigInt(from - 1)) && v < 1n << BigInt(from - 1)
  }
  switch (kind) {
    case K.imm8:
      return within(8)
    case K.imm16:
      return within(16)
    case K.imm32:
      return within(32)
    case K.imm64:
      return within(64)
    case K.imm8sex16:
      return sext(8, 16)
    case K.imm8sex32:
      return sext(8, 32)
    case K.imm8sex64:
      return sext(8, 64)
    case K.imm32sex64:
      return sext(32, 64)
    default:
      return true
  }
}

/** The bits of an immediate of `kind`, for messages. */
const immediateBits = lazy(
  ({ OpCodeOperandKind: K }) =>
    new Map<K, string>([
      [K.imm8, 'imm8 (-128..255)'],
      [K.imm16, 'imm16 (-32768..65535)'],
      [K.imm32, 'imm32 (-2^31..2^32-1)'],
      [K.imm64, 'imm64'],
      [K.imm8sex16, 'imm8 sign-extended to 16 bits'],
      [K.imm8sex32, 'imm8 sign-extended to 32 bits'],
      [K.imm8sex64, 'imm8 sign-extended to 64 bits'],
      [K.imm32sex64, 'imm32 sign-extended to 64 bits (-2^31..2^31-1)'],
    ]),
)

/** Whether operand kind `kind` of `form` takes the written operand `op`. */
function accepts(kind: K, op: Operand, form: Form, bitness: number, anyImmediate = false): boolean {
  const { OpCodeOperandKind: K, Register, RegisterExt } = iced()
  const reg = op.kind === 'reg' ? op.reg : Register.None
  const mem = op.kind === 'mem' ? op.text : undefined
  if (mem && farMemory().has(form.mnemonic) && mem.far !== (kind === K.mem)) return false
  const memFits = (bytes: number) =>
    mem !== undefined && (mem.size === undefined || form.memorySize === 0 || mem.size === form.memorySize || mem.size === bytes)
  switch (kind) {
    case K.r8_or_mem:
      return RegisterExt.isGPR8(reg) || memFits(1)
    case K.r16_or_mem:
      return RegisterExt.isGPR16(reg) || memFits(2)
    case K.r32_or_mem:
    case K.r32_or_mem_mpx:
      return RegisterExt.isGPR32(reg) || memFits(4)
    case K.r64_or_mem:
    case K.r64_or_mem_mpx:
      return RegisterExt.isGPR64(reg) || memFits(8)
    case K.mm_or_mem:
      return RegisterExt.isMM(reg) || memFits(8)
    case K.xmm_or_mem:
      return RegisterExt.isXMM(reg) || memFits(16)
    case K.r8_reg:
    case K.r8_opcode:
      return RegisterExt.isGPR8(reg)
    case K.r16_reg:
    case K.r16_reg_mem:
    case K.r16_rm:
    case K.r16_opcode:
      return RegisterExt.isGPR16(reg)
    case K.r32_reg:
    case K.r32_reg_mem:
    case K.r32_rm:
    case K.r32_opcode:
      return RegisterExt.isGPR32(reg)
    case K.r64_reg:
    case K.r64_reg_mem:
    case K.r64_rm:
    case K.r64_opcode:
      return RegisterExt.isGPR64(reg)
    case K.seg_reg:
      return RegisterExt.isSegmentRegister(reg)
    case K.cr_reg:
      return RegisterExt.isCR(reg)
    case K.dr_reg:
      return RegisterExt.isDR(reg)
    case K.tr_reg:
      return RegisterExt.isTR(reg)
    case K.mm_reg:
    case K.mm_rm:
      return RegisterExt.isMM(reg)
    case K.xmm_reg:
    case K.xmm_rm:
      return RegisterExt.isXMM(reg)
    case K.st0:
      return reg === Register.ST0
    case K.sti_opcode:
      return RegisterExt.isST(reg)
    case K.es:
      return reg === Register.ES
    case K.cs:
      return reg === Register.CS
    case K.ss:
      return reg === Register.SS
    case K.ds:
      return reg === Register.DS
    case K.fs:
      return reg === Register.FS
    case K.gs:
      return reg === Register.GS
    case K.al:
      return reg === Register.AL
    case K.cl:
      return reg === Register.CL
    case K.ax:
      return reg === Register.AX
    case K.dx:
      return reg === Register.DX
    case K.eax:
      return reg === Register.EAX
    case K.rax:
      return reg === Register.RAX
    case K.mem:
    case K.sibmem:
    case K.mem_mpx:
    case K.mem_mib:
      return memFits(form.memorySize)
    case K.mem_offs:
      return memFits(form.memorySize) && mem?.base === Register.None && mem.index === Register.None
    case K.imm8:
    case K.imm8sex16:
    case K.imm8sex32:
    case K.imm8sex64:
    case K.imm16:
    case K.imm32:
    case K.imm32sex64:
    case K.imm64:
      return op.kind === 'imm' && (anyImmediate || immediateFits(kind, op.value))
    case K.br16_1:
    case K.br32_1:
    case K.br64_1:
    case K.br16_2:
    case K.br32_4:
    case K.br64_4:
      return op.kind === 'imm' && branchSize().get(kind) === bitness
    case K.imm8_const_1:
      return op.kind === 'imm' && op.value === 1n
    case K.xbegin_2:
      return op.kind === 'imm' && bitness === 16
    case K.xbegin_4:
      return op.kind === 'imm' && bitness !== 16
    case K.farbr2_2:
      return op.kind === 'far' && bitness === 16
    case K.farbr4_2:
      return op.kind === 'far' && bitness === 32
    default:
      return false
  }
}

const U64 = (1n << 64n) - 1n

function memoryOperand(m: MemoryText, disp: bigint, bitness: number): MemoryOperand {
  const { MemoryOperand, Register, RegisterExt } = iced()
  const noRegisters = m.base === Register.None && m.index === Register.None
  const wide = disp > 0xffffn && disp < U64 - 0x7fffn
  // No base: the displacement is the whole address, as wide as the address size.
  let displSize = disp === 0n ? 0 : 1
  if (m.base === Register.None) displSize = bitness === 64 ? 8 : bitness === 32 || wide || !noRegisters ? 4 : 2
  if (m.base === Register.None && !noRegisters && RegisterExt.isGPR16(m.index)) displSize = 2
  if (m.base === Register.RIP || m.base === Register.EIP) displSize = 8
  return new MemoryOperand(m.base, m.index, m.scale, disp & U64, displSize, false, m.segment)
}

/** The `create...` constructor of iced's `Instruction` for an operand shape. */
type Create = (code: Code, ...args: (Register | MemoryOperand | number | bigint)[]) => Instruction

function constructor(name: string): Create | undefined {
  const { Instruction } = iced()
  const f: unknown = Reflect.get(Instruction, name)
  return typeof f === 'function' ? (f.bind(Instruction) as Create) : undefined
}

/** Builds `form` from the operands, or undefined if iced refuses them (an immediate out of range). */
function build(form: Form, ops: readonly Operand[], bitness: number): Instruction | undefined {
  const { Instruction, OpCodeOperandKind: K } = iced()
  try {
    const first = form.kinds[0]
    if (ops.length === 1 && first !== undefined && branchSize().has(first) && ops[0]?.kind === 'imm') {
      return Instruction.createBranch(form.code, ops[0].value & U64)
    }
    if (ops.length === 1 && ops[0]?.kind === 'imm' && (first === K.xbegin_2 || first === K.xbegin_4)) {
      return Instruction.createXbegin(bitness, ops[0].value & U64)
    }
    if (ops.length === 1 && ops[0]?.kind === 'far') {
      return Instruction.createFarBranch(form.code, Number(ops[0].selector), Number(ops[0].offset & 0xffff_ffffn))
    }
    let name = 'create'
    const args: (Register | MemoryOperand | number | bigint)[] = []
    for (const op of ops) {
      if (op.kind === 'reg') {
        name += 'Reg'
        args.push(op.reg)
      } else if (op.kind === 'mem') {
        name += 'Mem'
        args.push(memoryOperand(op.text, op.disp, bitness))
      } else if (op.kind === 'imm') {
        // 0xffffffff80000000 is -0x80000000 to a sign-extended imm32.
        const v = op.value >= 1n << 63n ? BigInt.asIntN(64, op.value) : op.value
        if (v >= -(1n << 31n) && v < 1n << 31n) {
          name += 'I32'
          args.push(Number(v))
        } else if (v >= 0n && v < 1n << 32n) {
          name += 'U32'
          args.push(Number(v))
        } else {
          name += v < 0n ? 'I64' : 'U64'
          args.push(v)
        }
      } else {
        return undefined
      }
    }
    return constructor(name)?.(form.code, ...args)
  } catch {
    return undefined
  }
}

/** A chosen encoding. */
export interface Encoded {
  readonly bytes: Uint8Array
}

function applyPrefixes(ins: Instruction, prefixes: readonly Prefix[]): void {
  for (const p of prefixes) {
    if (p === 'lock') ins.hasLockPrefix = true
    else if (p === 'rep' || p === 'repe') ins.hasRepePrefix = true
    else ins.hasRepnePrefix = true
  }
}

function encodeOne(ins: Instruction, bitness: number, address: bigint): Uint8Array | undefined {
  const { Encoder } = iced()
  const enc = new Encoder(bitness)
  try {
    enc.encode(ins, address)
    return enc.takeBuffer()
  } catch {
    return undefined
  } finally {
    enc.free()
  }
}

/** `xlatb`: its only operand, `[rBX + AL]`, is implicit. */
function xlat(bitness: number): Instruction {
  const { Code, Instruction, MemoryOperand, Register } = iced()
  const base = bitness === 64 ? Register.RBX : bitness === 32 ? Register.EBX : Register.BX
  // createMem takes ownership of the operand (wasm-bindgen moves it): no free() here.
  return Instruction.createMem(Code.Xlat_m8, new MemoryOperand(base, Register.AL, 1, 0n, 0, false, Register.None))
}

/** A string instruction written without operands (`rep movsb`): no segment override. */
function stringInstruction(mnemonic: Mnemonic, prefixes: readonly Prefix[], bitness: number): Instruction | undefined {
  const { Instruction, Register, RepPrefixKind } = iced()
  const op = stringOps().get(mnemonic)
  if (!op) return undefined
  const rep = prefixes.includes('repne') ? RepPrefixKind.Repne : prefixes.some((p) => p === 'rep' || p === 'repe') ? RepPrefixKind.Repe : RepPrefixKind.None
  const create: unknown = Reflect.get(Instruction, op.create)
  if (typeof create !== 'function') return undefined
  const ins: unknown = op.segment ? create.call(Instruction, bitness, Register.None, rep) : create.call(Instruction, bitness, rep)
  return ins instanceof Instruction ? ins : undefined
}

/**
 * NASM's shorthands, tried when the operands as written fit no form: `aam` is `aam 10`,
 * `imul ax, 5` is `imul ax, ax, 5`, x87 `fsubrp` is `fsubrp st1, st0` and `fucom` is
 * `fucom st0, st1`, `fadd st1` is `fadd st0, st1` and `faddp st2` is `faddp st2, st0`,
 * and `xchg`/`test` take their operands in either order.
 */
function shorthands(mnemonic: Mnemonic, ops: readonly Operand[]): readonly (readonly Operand[])[] {
  const { Mnemonic, Register, RegisterExt } = iced()
  const st0: Operand = { kind: 'reg', reg: Register.ST0 }
  const st1: Operand = { kind: 'reg', reg: Register.ST1 }
  const [a, b] = ops
  if (ops.length === 0 && (mnemonic === Mnemonic.Aam || mnemonic === Mnemonic.Aad)) return [[{ kind: 'imm', value: 10n }]]
  if (ops.length === 0 && mnemonicNames().get(mnemonic)?.startsWith('f')) return [[st1, st0], [st0, st1], [st1]]
  if (ops.length === 1 && a?.kind === 'reg' && RegisterExt.isST(a.reg)) return [[st0, a], [a, st0]]
  if (ops.length === 2 && a && b) {
    if (mnemonic === Mnemonic.Imul && a.kind === 'reg' && b.kind === 'imm') return [[a, a, b]]
    if (commutative().has(mnemonic)) return [[b, a]]
  }
  return []
}

/** The shortest encoding of `ops` among `candidates` at least `minLength` bytes long. */
function shortest(
  candidates: readonly Form[],
  prefixes: readonly Prefix[],
  ops: readonly Operand[],
  bitness: number,
  address: bigint,
  minLength: number,
): Encoded | undefined {
  let best: Encoded | undefined
  for (const form of candidates) {
    if (form.kinds.length !== ops.length || !form.kinds.every((k, i) => accepts(k, ops[i] as Operand, form, bitness))) continue
    const ins = build(form, ops, bitness)
    if (!ins) continue
    try {
      applyPrefixes(ins, prefixes)
      const bytes = encodeOne(ins, bitness, address)
      if (bytes && bytes.length >= minLength && (!best || bytes.length < best.bytes.length)) best = { bytes }
    } finally {
      ins.free()
    }
  }
  return best
}

/**
 * Encodes one instruction at `address`: the shortest form at least `minLength` bytes long
 * (so that label passes only ever grow instructions and converge), trying NASM's
 * shorthands when the operands as written fit no form. When nothing fits, `forms` lists
 * what the mnemonic takes.
 */
export function encodeInstruction(
  mnemonic: Mnemonic,
  prefixes: readonly Prefix[],
  ops: readonly Operand[],
  bitness: number,
  address: bigint,
  minLength: number,
): Encoded | { readonly forms: readonly string[]; readonly outOfRange?: string } {
  const { Mnemonic } = iced()
  if (ops.length === 0) {
    const s = mnemonic === Mnemonic.Xlatb ? xlat(bitness) : stringInstruction(mnemonic, prefixes, bitness)
    if (s) {
      try {
        const bytes = encodeOne(s, bitness, address)
        if (bytes) return { bytes }
      } finally {
        s.free()
      }
    }
  }
  const all = (forms().get(mnemonic) ?? []).filter((f) => f.modes.includes(bitness))
  for (const written of [ops, ...shorthands(mnemonic, ops)]) {
    const best = shortest(all, prefixes, written, bitness, address, minLength)
    if (best) return best
  }
  // A form that takes these operands but for the immediate's value: say so.
  for (const form of all) {
    if (form.kinds.length !== ops.length || !form.kinds.every((k, i) => accepts(k, ops[i] as Operand, form, bitness, true))) continue
    const at = form.kinds.findIndex((k, i) => ops[i]?.kind === 'imm' && !immediateFits(k, (ops[i] as { value: bigint }).value))
    const kind = form.kinds[at]
    const op = ops[at]
    if (kind !== undefined && op?.kind === 'imm') {
      return { forms: [...new Set(all.map((f) => f.text))], outOfRange: `the immediate ${op.value} is out of range for ${form.text}: it takes an ${immediateBits().get(kind) ?? 'immediate'}` }
    }
  }
  return { forms: [...new Set(all.map((f) => f.text))] }
}

/**
 * Memory sizes the forms accepting `ops` would use: more than one means the size must
 * be written, except for `jmp`/`call`, where the shortest (the code size's) is meant.
 */
export function memorySizesOf(mnemonic: Mnemonic, ops: readonly Operand[], bitness: number): Set<number> {
  const sizes = new Set<number>()
  if (farMemory().has(mnemonic)) return sizes
  for (const form of forms().get(mnemonic) ?? []) {
    if (!form.modes.includes(bitness) || form.kinds.length !== ops.length) continue
    if (form.kinds.every((k, i) => accepts(k, ops[i] as Operand, form, bitness)) && form.memorySize !== 0) sizes.add(form.memorySize)
  }
  return sizes
}

/** Converts a parsed operand, its expressions evaluated by `value`. */
export function evaluateOperand(op: OperandText, value: (e: Expr) => bigint): Operand {
  switch (op.kind) {
    case 'reg':
      return { kind: 'reg', reg: op.reg }
    case 'mem':
      return { kind: 'mem', text: op, disp: op.disp ? value(op.disp) : 0n }
    case 'imm':
      return { kind: 'imm', value: value(op.value) }
    case 'far':
      return { kind: 'far', selector: value(op.selector), offset: value(op.offset) }
  }
}
