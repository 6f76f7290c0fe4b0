/**
 * `assemble()`: Intel-syntax text to machine code with iced-x86's encoder, labels
 * resolved by repeated passes in which instructions may only grow, so they converge.
 * @module
 */
import { inspect } from 'node:util'
import { iced } from '../iced.js'
import { MshvError, describe as describeValue } from '../errors.js'
import { encodeInstruction, evaluateOperand, memorySizesOf, mnemonicNamed, type Operand } from './forms.js'
import { asmError, parse, type Expr, type Statement } from './syntax.js'

/** Where and how to assemble. */
export interface AssembleOptions {
  /** Code size at the start: 16, 32 or 64 (default 64); `bits` lines change it. */
  readonly bitness?: 16 | 32 | 64
  /** Address of the first byte (default 0): labels and relative branches use it. */
  readonly address?: number | bigint
}

/** One statement's bytes. */
export interface AssembledLine {
  readonly address: bigint
  readonly bytes: Uint8Array
  /** The statement as written. */
  readonly text: string
  /** Its 1-based line in the source. */
  readonly line: number
}

const MAX_PASSES = 16
const DATA_WIDTHS = new Set([1, 2, 4, 8])
const U64 = (1n << 64n) - 1n

/** Machine code with its labels and a listing. */
export class Assembly {
  /** @internal */
  constructor(
    /** All bytes, from {@link address} on. */
    readonly bytes: Uint8Array,
    /** Address of the first byte. */
    readonly address: bigint,
    /** Label addresses. */
    readonly labels: ReadonlyMap<string, bigint>,
    /** Each statement that produced bytes. */
    readonly lines: readonly AssembledLine[],
  ) {}

  /** Address, bytes and source of each statement, one per line. */
  listing(): string {
    return this.lines
      .map((l) => {
        const hex = Array.from(l.bytes, (b) => b.toString(16).padStart(2, '0')).join(' ')
        return `${l.address.toString(16).padStart(8, '0')}  ${hex.padEnd(30)} ${l.text}`
      })
      .join('\n')
  }

  /** The REPL and console.log show the listing. */
  [inspect.custom](): string {
    return `Assembly (${this.bytes.length} bytes at 0x${this.address.toString(16)})\n${this.listing()}`
  }
}

function describe(op: Operand): string {
  const { Register, RegisterExt } = iced()
  switch (op.kind) {
    case 'reg': {
      const r = op.reg
      if (RegisterExt.isGPR(r)) return `r${RegisterExt.size(r) * 8}`
      if (RegisterExt.isSegmentRegister(r)) return 'sreg'
      if (RegisterExt.isCR(r)) return 'cr'
      if (RegisterExt.isDR(r)) return 'dr'
      return Register[r]?.toLowerCase() ?? 'reg'
    }
    case 'mem':
      return op.text.size === undefined ? 'mem' : `m${op.text.size * 8}`
    case 'imm':
      return 'imm'
    case 'far':
      return 'ptr16:off'
  }
}

function dataBytes(value: bigint, unit: number, line: number): Uint8Array {
  const bits = BigInt(unit * 8)
  if (value < -(1n << (bits - 1n)) || value >= 1n << bits) {
    throw asmError(line, `${value} does not fit in ${unit} byte${unit > 1 ? 's' : ''}`)
  }
  const out = new Uint8Array(unit)
  let v = BigInt.asUintN(unit * 8, value)
  for (let k = 0; k < unit; k++, v >>= 8n) out[k] = Number(v & 0xffn)
  return out
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

interface Pass {
  readonly labels: Map<string, bigint>
  readonly lines: AssembledLine[]
  /** The first byte's address: the start, or what `org` said. */
  readonly origin: bigint
}

/** The most bytes one `times`, `align` or `res` statement may make. */
const MAX_REPEAT = 1 << 24
/** The most bytes a whole program may make (a few statements of MAX_REPEAT each asked for gigabytes). */
const MAX_PROGRAM = 1 << 26

/**
 * Assembles Intel-syntax source (NASM-like): one statement per line or `;`, comments
 * after `#` or `//`, `label:`, `$` for the current address and `$$` for the first's,
 * `bits 16|32|64`, `db`/`dw`/`dd`/`dq` (strings in `db`), `name equ expr`,
 * `times n statement`, `align n[, db v]`, `org address`, `resb`..`resq n`,
 * `rep`/`repe`/`repne`/`lock` prefixes,
 * `byte`/`word`/`dword`/`qword [ptr]` sizes, `seg:[...]` overrides, `jmp sel:offset`.
 * Every legacy-encoded instruction iced-x86 knows is available (not VEX/EVEX); the
 * shortest encoding is chosen. Errors are `EASM` naming the line.
 */
export function assemble(source: string, options: AssembleOptions = {}): Assembly {
  try {
    return assembleSource(source, options)
  } catch (e) {
    // The parser and the expression evaluator recurse: a source nested deeper than the
    // stack allows (100,000 parentheses, 10,000 terms) is the source's fault, said so.
    if (e instanceof RangeError && /call stack/i.test(e.message)) throw new MshvError('EASM', 'the source nests too deeply to assemble (an expression of thousands of nested terms or parentheses)')
    throw withSemicolonHint(e, source)
  }
}

/**
 * An `EASM` error on a line that holds a `;` outside quotes, with a hint: here `;`
 * separates statements, so text a NASM user meant as a `;` comment is read as an
 * instruction. The other errors as they are.
 */
function withSemicolonHint(e: unknown, source: string): unknown {
  if (!(e instanceof MshvError) || e.code !== 'EASM') return e
  const m = /^line (\d+):/.exec(e.message)
  const line = m ? source.split('\n')[Number(m[1]) - 1] : undefined
  if (line === undefined || !/;/.test(line.replace(/"[^"]*"|'[^']*'/g, ''))) return e
  return new MshvError('EASM', `${e.message} (on this line ';' separates statements: comments start with '#' or '//', not NASM's ';')`, { cause: e })
}

function assembleSource(source: string, options: AssembleOptions): Assembly {
  if (typeof source !== 'string') throw new MshvError('EINVAL', `assemble: source must be a string, got ${describeValue(source)}`)
  if (typeof options !== 'object' || options === null) throw new MshvError('EINVAL', `assemble: options must be an object, got ${describeValue(options)}`)
  const address = options.address ?? 0
  const integral = typeof address === 'bigint' || (typeof address === 'number' && Number.isSafeInteger(address))
  const start = integral ? BigInt(address) : -1n
  if (start < 0n || start > U64) throw new MshvError('EINVAL', `address must be an integer in 0..2^64-1, got ${describeValue(address)}`)
  const first = options.bitness ?? 64
  if (![16, 32, 64].includes(first)) throw new MshvError('EINVAL', `bitness must be 16, 32 or 64, got ${describeValue(first)}`)
  const statements = parse(source)
  const defined = new Set<string>()
  for (const s of statements) {
    if (s.kind !== 'label' && s.kind !== 'equ') continue
    if (defined.has(s.name)) throw asmError(s.line, `label '${s.name}' is defined twice`)
    defined.add(s.name)
  }
  const minLength: number[] = []
  let known = new Map<string, bigint>()
  for (let pass = 0; pass < MAX_PASSES; pass++) {
    const result = runPass(statements, known, defined, start, first, minLength)
    const stable = pass > 0 && [...result.labels].every(([k, v]) => known.get(k) === v)
    known = result.labels
    if (stable || defined.size === 0) {
      return new Assembly(concat(result.lines.map((l) => l.bytes)), result.origin, result.labels, result.lines)
    }
  }
  throw new MshvError('EASM', `label addresses did not settle after ${MAX_PASSES} passes`)
}

function runPass(
  statements: readonly Statement[],
  known: ReadonlyMap<string, bigint>,
  defined: ReadonlySet<string>,
  start: bigint,
  firstBitness: number,
  minLength: number[],
): Pass {
  const labels = new Map<string, bigint>()
  const lines: AssembledLine[] = []
  let origin = start
  let address = start
  let bitness = firstBitness
  let total = 0
  statements.forEach((s, k) => {
    const value = (e: Expr): bigint => {
      switch (e.kind) {
        case 'num':
          return e.value
        case 'label':
          if (e.name === '$') return address
          if (e.name === '$$') return origin
          if (!defined.has(e.name)) throw asmError(s.line, `undefined label '${e.name}'`)
          // Not placed yet in the first pass: any address in range will do until the next.
          return known.get(e.name) ?? start
        case 'neg':
          return -value(e.a)
        case 'bin': {
          const a = value(e.a)
          const b = value(e.b)
          return e.op === '+' ? a + b : e.op === '-' ? a - b : a * b
        }
      }
    }
    /** A count for `times`/`align`/`res`: 0..MAX_REPEAT. */
    const count = (e: Expr, what: string): number => {
      const n = value(e)
      if (n < 0n || n > BigInt(MAX_REPEAT)) throw asmError(s.line, `${what} must be in 0..${MAX_REPEAT}, got ${n}`)
      return Number(n)
    }
    const encode = (st: Statement): Uint8Array | undefined => {
      switch (st.kind) {
        case 'data':
          return concat(st.items.map((item) => (item instanceof Uint8Array ? item : dataBytes(value(item), st.unit, st.line))))
        case 'insn': {
          const b = instruction(st, value, bitness, address, minLength[k] ?? 0)
          minLength[k] = b.length
          return b
        }
        case 'res':
          return new Uint8Array(count(st.count, `the count of '${st.text}'`) * st.unit)
        case 'times': {
          const n = count(st.count, "the count of 'times'")
          const one = encode(st.body) ?? new Uint8Array(0)
          if (n * one.length > MAX_REPEAT) throw asmError(s.line, `'times' would make ${n * one.length} bytes (at most ${MAX_REPEAT})`)
          const out = new Uint8Array(n * one.length)
          for (let i = 0; i < n; i++) out.set(one, i * one.length)
          return out
        }
        case 'align': {
          const to = value(st.to)
          if (to < 1n || to > BigInt(MAX_REPEAT) || (to & (to - 1n)) !== 0n) throw asmError(s.line, `'align' takes a power of two, got ${to}`)
          const pad = Number((to - (address % to)) % to)
          return new Uint8Array(pad).fill(st.fill === undefined ? 0x90 : Number(dataBytes(value(st.fill), 1, s.line)[0]))
        }
        default:
          return undefined
      }
    }
    switch (s.kind) {
      case 'label':
        labels.set(s.name, address)
        return
      case 'equ':
        labels.set(s.name, value(s.value))
        return
      case 'bits':
        bitness = s.bitness
        return
      case 'org':
        if (lines.length > 0) throw asmError(s.line, "'org' must come before the first byte")
        origin = value(s.address) & U64
        address = origin
        return
    }
    const bytes = encode(s) ?? new Uint8Array(0)
    total += bytes.length
    if (total > MAX_PROGRAM) throw asmError(s.line, `the program would make more than ${MAX_PROGRAM} bytes`)
    lines.push({ address, bytes, text: s.text, line: s.line })
    address = (address + BigInt(bytes.length)) & U64
  })
  return { labels, lines, origin }
}

function instruction(
  s: Extract<Statement, { kind: 'insn' }>,
  value: (e: Expr) => bigint,
  bitness: number,
  address: bigint,
  minLength: number,
): Uint8Array {
  const mnemonic = mnemonicNamed(s.mnemonic, bitness)
  if (mnemonic === undefined) throw asmError(s.line, `unknown instruction '${s.mnemonic}'`)
  const ops = s.operands.map((o) => evaluateOperand(o, value))
  if (ops.some((o) => o.kind === 'mem' && o.text.size === undefined)) {
    // Only a choice between data widths needs the size written: structures whose size
    // follows the operand size (`fldenv`, `lgdt`) take the code size's, as in NASM.
    const sizes = [...memorySizesOf(mnemonic, ops, bitness)].filter((n) => DATA_WIDTHS.has(n))
    if (sizes.length > 1) {
      const names = sizes.sort((a, b) => a - b).map((n) => ({ 1: 'byte', 2: 'word', 4: 'dword', 8: 'qword', 10: 'tword' })[n] ?? `${n}-byte`)
      throw asmError(s.line, `the operand size of '${s.text}' is ambiguous: write ${names.join(', ')} before the memory operand`)
    }
  }
  const r = encodeInstruction(mnemonic, s.prefixes, ops, bitness, address, minLength)
  if ('bytes' in r) return r.bytes
  if (r.outOfRange) throw asmError(s.line, `'${s.text}': ${r.outOfRange}`)
  const shape = ops.map(describe).join(', ')
  const forms = r.forms.length === 0 ? `it has no form in ${bitness}-bit code` : `its forms in ${bitness}-bit code: ${r.forms.slice(0, 12).join(' | ')}${r.forms.length > 12 ? ' | ...' : ''}`
  throw asmError(s.line, `no encoding of '${s.text}' (${s.mnemonic} ${shape}); ${forms}`)
}

/**
 * Joins a tagged template into source text: numbers and bigints become hex literals,
 * anything else its string form. `` asm`mov eax, ${0x1000}` `` reads `mov eax, 0x1000`.
 */
export function templateSource(strings: TemplateStringsArray, values: readonly unknown[]): string {
  return strings.reduce((acc, s, k) => {
    if (k === 0) return s
    const v = values[k - 1]
    if (typeof v === 'number' && !Number.isInteger(v)) throw new MshvError('EINVAL', `asm template value must be an integer, got ${v}`)
    const text = typeof v === 'number' || typeof v === 'bigint' ? (v < 0 ? `-0x${(-BigInt(v)).toString(16)}` : `0x${BigInt(v).toString(16)}`) : String(v)
    return acc + text + s
  }, '')
}
