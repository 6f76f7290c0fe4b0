/**
 * A symbol table: names by address, sorted once, for `name+0xoff` labels (the form of
 * the kernel's `%pS` without its `/size`, and of GDB's `<name+off>` in hex) and for
 * looking a name's address up.
 * @module
 */
import { inspect } from 'node:util'
import { checkString, checkUnsignedBigint, invalid } from '../../check.js'
import { MshvError, hex } from '../../errors.js'

/** One symbol, as `nm` and `/proc/kallsyms` list it. */
export interface KernelSymbol {
  /** Its name (`start_kernel`). */
  readonly name: string
  /** Its address (a kernel's are 64-bit virtual addresses, past a number's 53 bits). */
  readonly address: bigint
  /**
   * Its `nm` type letter: `T`/`t` text, `D`/`d` data, `B`/`b` bss, `R`/`r` read-only
   * data, `W`/`V` weak, `A`/`a` absolute (upper case: global, lower case: local).
   */
  readonly type: string
}

/** What an address is, by the symbol at or below it. */
export interface SymbolHit {
  /** The symbol's name. */
  readonly name: string
  /** How far past the symbol's address the address lies. */
  readonly offset: bigint
  /** The symbol. */
  readonly symbol: KernelSymbol
}

/**
 * Whether a symbol labels addresses: absolute symbols (`A`, e.g. the kernel's per-CPU
 * offsets from 0, `/proc/kallsyms` lists them so) are numbers, not places, and would
 * name every small address. Name lookups still find them.
 */
function labels(s: KernelSymbol): boolean {
  return s.type !== 'A' && s.type !== 'a'
}

/**
 * Which of two symbols at one address names it: a strong one over a weak one, a global
 * over a local, the one with fewer leading underscores, then the first listed. The
 * order follows scripts/kallsyms.c's compare_symbols (torvalds/linux at 010a0aad: weak
 * last, then fewer leading underscores, then the order given), with globals first added.
 */
function better(a: KernelSymbol, b: KernelSymbol): boolean {
  const weak = (s: KernelSymbol): number => (s.type === 'W' || s.type === 'w' || s.type === 'V' || s.type === 'v' ? 1 : 0)
  if (weak(a) !== weak(b)) return weak(a) < weak(b)
  const local = (s: KernelSymbol): number => (s.type === s.type.toLowerCase() ? 1 : 0)
  if (local(a) !== local(b)) return local(a) < local(b)
  const underscores = (s: KernelSymbol): number => /^_*/.exec(s.name)?.[0].length ?? 0
  return underscores(a) < underscores(b)
}

/** The most symbols one table holds (a distribution kernel has about 200,000). */
const MAX_SYMBOLS = 1 << 24

/** Symbols sorted by address: {@link lookup} by address, {@link address} by name. */
export class SymbolTable {
  /** Where the symbols came from (`System.map FILE`, `kallsyms in guest RAM at 0x...`), for reports. */
  readonly source: string
  /** Addresses of the labelling symbols, ascending; one per address (the best name for it). */
  private readonly starts: BigUint64Array
  private readonly atStart: KernelSymbol[]
  private readonly byName = new Map<string, KernelSymbol>()
  private readonly all: readonly KernelSymbol[]

  /**
   * A table of `symbols` (in any order; several may share an address, and one name
   * several addresses: {@link address} gives the first listed). `source` says where they came from.
   */
  constructor(symbols: readonly KernelSymbol[], source: string) {
    if (!Array.isArray(symbols) || symbols.length > MAX_SYMBOLS) throw invalid('SymbolTable: symbols', `an array of at most ${MAX_SYMBOLS} symbols`, symbols)
    this.source = checkString('SymbolTable: source', source, 4096)
    symbols.forEach((s: unknown, i) => {
      const sym = s as Partial<KernelSymbol> | null
      if (typeof sym !== 'object' || sym === null || typeof sym.name !== 'string' || typeof sym.type !== 'string' || sym.type.length !== 1) {
        throw invalid(`SymbolTable: symbols[${i}]`, 'a { name, address, type } with a one-letter type', s)
      }
      checkUnsignedBigint(`SymbolTable: symbols[${i}].address`, sym.address)
    })
    this.all = symbols.slice()
    for (const s of symbols) if (!this.byName.has(s.name)) this.byName.set(s.name, s)
    const sorted = symbols.filter(labels).sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0))
    const starts: bigint[] = []
    this.atStart = []
    for (const s of sorted) {
      const last = this.atStart.length - 1
      if (last >= 0 && starts[last] === s.address) {
        if (better(s, this.atStart[last] as KernelSymbol)) this.atStart[last] = s
      } else {
        starts.push(s.address)
        this.atStart.push(s)
      }
    }
    this.starts = BigUint64Array.from(starts)
  }

  /** How many symbols the table holds. */
  get size(): number {
    return this.all.length
  }

  /** Every symbol, as given. */
  symbols(): readonly KernelSymbol[] {
    return this.all
  }

  /**
   * The symbol at or below `address`, and how far past it the address is; `undefined`
   * below the first symbol and past the last (there is no knowing where it ends).
   */
  lookup(address: bigint | number): SymbolHit | undefined {
    const a = toAddress('SymbolTable.lookup: address', address)
    const starts = this.starts
    let lo = 0
    let hi = starts.length - 1
    if (hi < 0 || a < (starts[0] as bigint)) return undefined
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if ((starts[mid] as bigint) <= a) lo = mid
      else hi = mid - 1
    }
    const symbol = this.atStart[lo] as KernelSymbol
    const offset = a - symbol.address
    if (lo === starts.length - 1 && offset > 0n) return undefined
    return { name: symbol.name, offset, symbol }
  }

  /** `address` as `name+0xoff` (`name` at offset 0), or in hex (`0xffffffff81000000`) where no symbol covers it. */
  format(address: bigint | number): string {
    const hit = this.lookup(address)
    if (!hit) return hex(toAddress('SymbolTable.format: address', address))
    return hit.offset === 0n ? hit.name : `${hit.name}+${hex(hit.offset)}`
  }

  /** The address of the symbol called `name` (the first listed of that name), or `undefined`. */
  address(name: string): bigint | undefined {
    return this.byName.get(checkString('SymbolTable.address: name', name, 4096))?.address
  }

  /** How `console.log` and the REPL show a table: where it came from and its size, not every symbol. */
  [inspect.custom](): string {
    return `SymbolTable { ${this.all.length} symbols from ${this.source} }`
  }

  /** The symbol called `name`, or `undefined`. */
  symbol(name: string): KernelSymbol | undefined {
    return this.byName.get(checkString('SymbolTable.symbol: name', name, 4096))
  }
}

/** An address argument: a bigint or a non-negative safe integer, in 0..2^64-1. @internal */
export function toAddress(what: string, v: unknown): bigint {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) throw new MshvError('EINVAL', `${what} must be a non-negative integer or a bigint, got ${v}`)
    return BigInt(v)
  }
  return checkUnsignedBigint(what, v)
}
