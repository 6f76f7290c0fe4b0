/**
 * Intel-syntax assembly text to statements: labels, `bits`, `db`/`dw`/`dd`/`dq`,
 * NASM's `equ`, `times`, `align`, `org` and `resb`..`resq`, prefixes and instructions
 * with register, memory, immediate and far-pointer operands.
 *
 * Statements end at a newline or `;` (as in GAS and Keystone one-liners, so a REPL line
 * can hold several); comments start with `#` or `//`.
 * @module
 */
import type { Register } from 'iced-x86'
import { iced, lazy } from '../iced.js'
import { MshvError } from '../errors.js'

/** A constant expression; labels resolve at assembly time. */
export type Expr =
  | { readonly kind: 'num'; readonly value: bigint }
  | { readonly kind: 'label'; readonly name: string }
  | { readonly kind: 'neg'; readonly a: Expr }
  | { readonly kind: 'bin'; readonly op: '+' | '-' | '*'; readonly a: Expr; readonly b: Expr }

/** A memory operand: `[seg:base + index*scale + disp]`, optionally sized. */
export interface MemoryText {
  readonly kind: 'mem'
  /** Bytes from `byte/word/dword/qword/tword/oword/xmmword [ptr]`, when given. */
  readonly size: number | undefined
  /** Written `far [...]`: a far pointer in memory, for `jmp`/`call`. */
  readonly far: boolean
  readonly segment: Register
  readonly base: Register
  readonly index: Register
  readonly scale: number
  readonly disp: Expr | undefined
}

/** One operand as written. */
export type OperandText =
  | { readonly kind: 'reg'; readonly reg: Register; readonly name: string }
  | MemoryText
  | { readonly kind: 'imm'; readonly value: Expr }
  | { readonly kind: 'far'; readonly selector: Expr; readonly offset: Expr }

/** Prefixes written before a mnemonic. */
export type Prefix = 'rep' | 'repe' | 'repne' | 'lock'

/** One statement with the 1-based line it came from and its text. */
export type Statement = { readonly line: number; readonly text: string } & (
  | { readonly kind: 'label'; readonly name: string }
  | { readonly kind: 'bits'; readonly bitness: 16 | 32 | 64 }
  | { readonly kind: 'data'; readonly unit: 1 | 2 | 4 | 8; readonly items: readonly (Expr | Uint8Array)[] }
  | {
      readonly kind: 'insn'
      readonly prefixes: readonly Prefix[]
      readonly mnemonic: string
      readonly operands: readonly OperandText[]
    }
  /** `name equ expr`: a constant. */
  | { readonly kind: 'equ'; readonly name: string; readonly value: Expr }
  /** `times n statement`: the statement's bytes `n` times. */
  | { readonly kind: 'times'; readonly count: Expr; readonly body: Statement }
  /** `align n` (NOP fill) or `align n, db v`: pad to a multiple of `n`. */
  | { readonly kind: 'align'; readonly to: Expr; readonly fill: Expr | undefined }
  /** `org address`: where the first byte goes (before any bytes). */
  | { readonly kind: 'org'; readonly address: Expr }
  /** `resb n` .. `resq n`: `n` zeroed units. */
  | { readonly kind: 'res'; readonly unit: 1 | 2 | 4 | 8; readonly count: Expr }
)

const PREFIXES: Readonly<Record<string, Prefix>> = {
  rep: 'rep',
  repe: 'repe',
  repz: 'repe',
  repne: 'repne',
  repnz: 'repne',
  lock: 'lock',
}
const SEGMENTS = new Set(['es', 'cs', 'ss', 'ds', 'fs', 'gs'])
const DATA: Readonly<Record<string, 1 | 2 | 4 | 8>> = { db: 1, dw: 2, dd: 4, dq: 8 }
const RESERVE: Readonly<Record<string, 1 | 2 | 4 | 8>> = { resb: 1, resw: 2, resd: 4, resq: 8 }
const SIZES: Readonly<Record<string, number>> = {
  byte: 1,
  word: 2,
  dword: 4,
  fword: 6,
  qword: 8,
  tword: 10,
  tbyte: 10,
  oword: 16,
  xmmword: 16,
}

/** Register names (lower case) to iced registers, with the usual aliases iced spells differently. */
const registersByName = lazy(({ Register }): ReadonlyMap<string, Register> => {
  const m = new Map<string, Register>()
  for (const [name, v] of Object.entries(Register)) {
    if (typeof v === 'number' && v !== Register.None && !name.startsWith('DontUse')) m.set(name.toLowerCase(), v)
  }
  for (let i = 8; i < 16; i++) {
    const r = m.get(`r${i}l`)
    if (r !== undefined) m.set(`r${i}b`, r)
  }
  const st0 = m.get('st0')
  if (st0 !== undefined) m.set('st', st0)
  return m
})

/** The iced register named `name` (any case), if it is one. */
export function registerNamed(name: string): Register | undefined {
  return registersByName().get(name.toLowerCase())
}

type Token =
  | { readonly t: 'id'; readonly s: string }
  | { readonly t: 'num'; readonly v: bigint }
  | { readonly t: 'str'; readonly bytes: Uint8Array }
  | { readonly t: 'p'; readonly s: string }

/** An assembly error naming the line and what is wrong. */
export function asmError(line: number, what: string): MshvError {
  return new MshvError('EASM', `line ${line}: ${what}`)
}

function parseNumber(text: string, line: number): bigint {
  const t = text.toLowerCase().replaceAll('_', '')
  try {
    if (/^0[xob][0-9a-f]+$/.test(t)) return BigInt(t)
    if (/^[0-9][0-9a-f]*h$/.test(t)) return BigInt(`0x${t.slice(0, -1)}`)
    if (/^[0-9]+$/.test(t)) return BigInt(t)
  } catch {
    // falls through to the error below
  }
  throw asmError(line, `'${text}' is not a number`)
}

function tokenize(text: string, line: number): Token[] {
  const out: Token[] = []
  let i = 0
  while (i < text.length) {
    const c = text[i] as string
    if (/\s/.test(c)) {
      i++
    } else if (/[A-Za-z_.$@]/.test(c)) {
      const m = /^[A-Za-z0-9_.$@]+/.exec(text.slice(i)) as RegExpExecArray
      out.push({ t: 'id', s: m[0] })
      i += m[0].length
    } else if (/[0-9]/.test(c)) {
      const m = /^[0-9A-Za-z_]+/.exec(text.slice(i)) as RegExpExecArray
      out.push({ t: 'num', v: parseNumber(m[0], line) })
      i += m[0].length
    } else if (c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1)
      if (end < 0) throw asmError(line, `unterminated ${c === '"' ? 'string' : 'character'} literal`)
      out.push({ t: 'str', bytes: new TextEncoder().encode(text.slice(i + 1, end)) })
      i = end + 1
    } else if ('[]+-*:,()'.includes(c)) {
      out.push({ t: 'p', s: c })
      i++
    } else {
      throw asmError(line, `unexpected '${c}'`)
    }
  }
  return out
}

/** A character literal as a little-endian number ('AB' = 0x4241), as NASM reads it. */
function charValue(bytes: Uint8Array, line: number): bigint {
  if (bytes.length < 1 || bytes.length > 8) throw asmError(line, 'a character constant holds 1 to 8 characters')
  let v = 0n
  for (let k = bytes.length - 1; k >= 0; k--) v = (v << 8n) | BigInt(bytes[k] as number)
  return v
}

class Parser {
  private pos = 0
  constructor(
    private readonly tokens: readonly Token[],
    private readonly line: number,
  ) {}

  peek(): Token | undefined {
    return this.tokens[this.pos]
  }
  done(): boolean {
    return this.pos >= this.tokens.length
  }
  next(): Token {
    const t = this.tokens[this.pos++]
    if (!t) throw asmError(this.line, 'unexpected end of statement')
    return t
  }
  isP(s: string): boolean {
    const t = this.peek()
    return t?.t === 'p' && t.s === s
  }
  expectP(s: string): void {
    const t = this.next()
    if (t.t !== 'p' || t.s !== s) throw asmError(this.line, `expected '${s}'`)
  }
  isId(...names: string[]): string | undefined {
    const t = this.peek()
    return t?.t === 'id' && names.includes(t.s.toLowerCase()) ? t.s.toLowerCase() : undefined
  }

  /** sum := term (('+' | '-') term)* */
  expr(): Expr {
    let e = this.term()
    while (this.isP('+') || this.isP('-')) {
      const op = (this.next() as { s: '+' | '-' }).s
      e = { kind: 'bin', op, a: e, b: this.term() }
    }
    return e
  }
  term(): Expr {
    let e = this.factor()
    while (this.isP('*')) {
      this.next()
      e = { kind: 'bin', op: '*', a: e, b: this.factor() }
    }
    return e
  }
  factor(): Expr {
    const t = this.next()
    if (t.t === 'num') return { kind: 'num', value: t.v }
    if (t.t === 'str') return { kind: 'num', value: charValue(t.bytes, this.line) }
    if (t.t === 'id') {
      if (registerNamed(t.s) !== undefined) throw asmError(this.line, `register '${t.s}' cannot be used in a constant expression`)
      return { kind: 'label', name: t.s }
    }
    if (t.s === '-') return { kind: 'neg', a: this.factor() }
    if (t.s === '+') return this.factor()
    if (t.s === '(') {
      const e = this.expr()
      this.expectP(')')
      return e
    }
    throw asmError(this.line, `unexpected '${t.s}' in an expression`)
  }

  operand(): OperandText {
    const { Register } = iced()
    const sized = this.isId(...Object.keys(SIZES))
    if (sized) {
      this.next()
      if (this.isId('ptr')) this.next()
      const far = this.isId('far') !== undefined
      if (far) this.next()
      // `dword far [...]` names the offset's size: the pointer in memory has 2 more bytes
      const size = SIZES[sized] as number
      return this.memory(far ? size + 2 : size, Register.None, far)
    }
    if (this.isId('far')) {
      this.next()
      return this.memory(undefined, Register.None, true)
    }
    if (this.isP('[')) return this.memory(undefined)
    const t = this.peek()
    if (t?.t === 'id') {
      const reg = registerNamed(t.s)
      if (reg !== undefined) {
        this.next()
        if (this.isP(':')) {
          // seg:[...] override written before the bracket
          this.next()
          return this.memory(undefined, reg)
        }
        return { kind: 'reg', reg, name: t.s.toLowerCase() }
      }
      if (this.isId('short', 'near')) this.next() // branch distance is chosen by size anyway
    }
    const value = this.expr()
    if (this.isP(':')) {
      this.next()
      return { kind: 'far', selector: value, offset: this.expr() }
    }
    return { kind: 'imm', value }
  }

  /** `[seg: base + index*scale + disp]`, the segment also allowed before the bracket. */
  memory(size: number | undefined, outerSegment?: Register, far = false): MemoryText {
    const { Register } = iced()
    let segment = outerSegment ?? Register.None
    const t = this.peek()
    if (t?.t === 'id' && segment === Register.None) {
      const seg = registerNamed(t.s)
      if (seg !== undefined && this.tokens[this.pos + 1]?.t === 'p') {
        const after = this.tokens[this.pos + 1] as { s: string }
        if (after.s === ':') {
          this.pos += 2
          segment = seg
        }
      }
    }
    this.expectP('[')
    let base = Register.None
    // `rel` (NASM's RIP-relative: the displacement is the target) and `seg:`, in either order
    for (let k = 0; k < 2; k++) {
      const inner = this.peek()
      const after = this.tokens[this.pos + 1]
      if (this.isId('rel')) {
        this.next()
        base = Register.RIP
      } else if (inner?.t === 'id' && after?.t === 'p' && after.s === ':') {
        const seg = registerNamed(inner.s)
        if (seg === undefined || !SEGMENTS.has(inner.s.toLowerCase())) throw asmError(this.line, `'${inner.s}' is not a segment register`)
        this.pos += 2
        segment = seg
      }
    }
    let index = Register.None
    let scale = 1
    let disp: Expr | undefined
    let sign: '+' | '-' = '+'
    for (;;) {
      const reg = this.registerTerm()
      if (reg) {
        if (sign === '-') throw asmError(this.line, 'a register cannot be subtracted in an address')
        if (reg.scale === 1 && base === Register.None) base = reg.reg
        else if (index === Register.None) {
          index = reg.reg
          scale = reg.scale
        } else throw asmError(this.line, 'an address has at most a base and an index register')
      } else {
        const term = this.term()
        const signed: Expr = sign === '-' ? { kind: 'neg', a: term } : term
        disp = disp ? { kind: 'bin', op: '+', a: disp, b: signed } : signed
      }
      if (this.isP(']')) break
      const op = this.next()
      if (op.t !== 'p' || (op.s !== '+' && op.s !== '-')) throw asmError(this.line, "expected '+', '-' or ']' in an address")
      sign = op.s
    }
    this.expectP(']')
    if (![1, 2, 4, 8].includes(scale)) throw asmError(this.line, `scale must be 1, 2, 4 or 8, got ${scale}`)
    return { kind: 'mem', size, far, segment, base, index, scale, disp }
  }

  /** `reg`, `reg*n` or `n*reg` at the cursor, consumed; undefined (nothing consumed) otherwise. */
  private registerTerm(): { reg: Register; scale: number } | undefined {
    const a = this.tokens[this.pos]
    const b = this.tokens[this.pos + 1]
    const c = this.tokens[this.pos + 2]
    const regOf = (t: Token | undefined) => (t?.t === 'id' ? registerNamed(t.s) : undefined)
    const ra = regOf(a)
    if (ra !== undefined) {
      if (b?.t === 'p' && b.s === '*' && c?.t === 'num') {
        this.pos += 3
        return { reg: ra, scale: Number(c.v) }
      }
      this.pos += 1
      return { reg: ra, scale: 1 }
    }
    const rc = regOf(c)
    if (a?.t === 'num' && b?.t === 'p' && b.s === '*' && rc !== undefined) {
      this.pos += 3
      return { reg: rc, scale: Number(a.v) }
    }
    return undefined
  }
}

/** Splits at newlines and `;` and drops comments, leaving quoted text alone. */
function splitStatements(source: string): { text: string; line: number }[] {
  const out: { text: string; line: number }[] = []
  source.split('\n').forEach((raw, k) => {
    let quote = ''
    let start = 0
    const push = (end: number) => {
      const text = raw.slice(start, end).trim()
      if (text !== '') out.push({ text, line: k + 1 })
    }
    for (let i = 0; i < raw.length; i++) {
      const c = raw[i] as string
      if (quote) {
        if (c === quote) quote = ''
      } else if (c === '"' || c === "'") {
        quote = c
      } else if (c === '#' || (c === '/' && raw[i + 1] === '/')) {
        push(i)
        return
      } else if (c === ';') {
        push(i)
        start = i + 1
      }
    }
    push(raw.length)
  })
  return out
}

/** A whole expression from `text`, or undefined when `text` is not exactly one. */
function wholeExpression(text: string, line: number): Expr | undefined {
  try {
    const p = new Parser(tokenize(text, line), line)
    const e = p.expr()
    return p.done() ? e : undefined
  } catch {
    return undefined
  }
}

/** `times n stmt`: the shortest prefix of `rest` that is a whole expression, then the statement. */
function timesStatement(rest: string, line: number, text: string): Statement {
  for (let i = rest.indexOf(' '); i !== -1; i = rest.indexOf(' ', i + 1)) {
    const count = wholeExpression(rest.slice(0, i), line)
    const body = rest.slice(i).trim()
    if (count === undefined || body === '') continue
    const parsed = parseStatement(body, line)
    const [only] = parsed
    if (parsed.length !== 1 || only === undefined || only.kind === 'label' || only.kind === 'equ' || only.kind === 'org' || only.kind === 'bits') {
      throw asmError(line, "'times' repeats one instruction or data statement")
    }
    return { kind: 'times', count, body: only, line, text }
  }
  throw asmError(line, "'times' takes a count and a statement: times 4 nop")
}

function parseStatement(text: string, line: number): Statement[] {
  const out: Statement[] = []
  let rest = text
  const constant = /^([A-Za-z_.$@][A-Za-z0-9_.$@]*):?\s+equ\b\s*(.*)$/i.exec(rest)
  if (constant) {
    const value = wholeExpression(constant[2] as string, line)
    if (value === undefined) throw asmError(line, `'equ' needs an expression, got '${constant[2] as string}'`)
    return [{ kind: 'equ', name: constant[1] as string, value, line, text }]
  }
  const label = /^([A-Za-z_.$@][A-Za-z0-9_.$@]*):/.exec(rest)
  if (label && registerNamed(label[1] as string) === undefined) {
    out.push({ kind: 'label', name: label[1] as string, line, text: label[0] })
    rest = rest.slice(label[0].length).trim()
    if (rest === '') return out
  }
  const directive = /^(times|align|org|resb|resw|resd|resq)\s+(.*)$/i.exec(rest)
  if (directive) {
    const word = (directive[1] as string).toLowerCase()
    const args = directive[2] as string
    if (word === 'times') {
      out.push(timesStatement(args, line, rest))
      return out
    }
    const [first, ...others] = args.split(',')
    const value = wholeExpression(first ?? '', line)
    if (value === undefined) throw asmError(line, `'${word}' needs an expression, got '${first ?? ''}'`)
    if (word === 'align') {
      const fill = others.join(',').trim()
      const m = /^db\s+(.+)$/i.exec(fill)
      const fillValue = m ? wholeExpression(m[1] as string, line) : undefined
      if (fill !== '' && fillValue === undefined) throw asmError(line, `'align' pads with NOPs, or with 'db value': got '${fill}'`)
      out.push({ kind: 'align', to: value, fill: fillValue, line, text: rest })
    } else if (others.length > 0) {
      throw asmError(line, `'${word}' takes one expression`)
    } else if (word === 'org') {
      out.push({ kind: 'org', address: value, line, text: rest })
    } else {
      out.push({ kind: 'res', unit: RESERVE[word] as 1 | 2 | 4 | 8, count: value, line, text: rest })
    }
    return out
  }
  const p = new Parser(tokenize(rest, line), line)
  const prefixes: Prefix[] = []
  let head = p.next()
  while (head.t === 'id' && PREFIXES[head.s.toLowerCase()] && !p.done()) {
    prefixes.push(PREFIXES[head.s.toLowerCase()] as Prefix)
    head = p.next()
  }
  if (head.t !== 'id') throw asmError(line, `expected a mnemonic, got '${rest}'`)
  const word = head.s.toLowerCase()
  if (word === 'bits') {
    const n = p.next()
    if (n.t !== 'num' || ![16n, 32n, 64n].includes(n.v) || !p.done()) throw asmError(line, "'bits' takes 16, 32 or 64")
    out.push({ kind: 'bits', bitness: Number(n.v) as 16 | 32 | 64, line, text: rest })
    return out
  }
  const unit = DATA[word]
  if (unit !== undefined) {
    const items: (Expr | Uint8Array)[] = []
    do {
      const t = p.peek()
      if (t?.t === 'str' && unit === 1) {
        p.next()
        items.push(t.bytes)
      } else items.push(p.expr())
    } while (p.isP(',') && p.next())
    if (!p.done()) throw asmError(line, `unexpected text after the values of '${word}'`)
    out.push({ kind: 'data', unit, items, line, text: rest })
    return out
  }
  const operands: OperandText[] = []
  if (!p.done()) {
    operands.push(p.operand())
    while (p.isP(',')) {
      p.next()
      operands.push(p.operand())
    }
  }
  if (!p.done()) throw asmError(line, `unexpected text in '${rest}'`)
  out.push({ kind: 'insn', prefixes, mnemonic: word, operands, text: rest, line })
  return out
}

/** Parses assembly source into statements; syntax errors are `EASM` errors naming the line. */
export function parse(source: string): Statement[] {
  return splitStatements(source).flatMap(({ text, line }) => parseStatement(text, line))
}
