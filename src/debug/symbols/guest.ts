/**
 * A VM's symbols for labels: a table the user gave (`--symbols FILE`), else, for a Linux
 * guest, its kernel's own kallsyms read from guest memory the first time a label is
 * wanted, and kept. Not finding them is no error: addresses then stay hex.
 * @module
 */
import { checkInstance } from '../../check.js'
import { hex } from '../../errors.js'
import { Vm } from '../../vm.js'
import { findKallsyms, type KallsymsFound } from './kallsyms.js'
import { SymbolTable, toAddress } from './table.js'

/**
 * Instructions the guest runs after a search that found nothing before the next: a REPL
 * stepping through a kernel that has not unpacked itself yet (Debian's decompressor runs
 * 4.5 billion) would otherwise search all of memory at every step.
 */
const RETRY_AFTER = 50_000_000

/** What a {@link GuestSymbols} search of guest memory found, and what it cost. */
export interface KallsymsSearch {
  /** The tables, or `undefined` when none were found. */
  readonly found: KallsymsFound | undefined
  /** Milliseconds the search took. */
  readonly ms: number
}

/** The symbols of one VM: given, or its kernel's kallsyms, found lazily. */
export class GuestSymbols {
  private found: SymbolTable | undefined
  /** The guest's instruction count at the last search that found nothing: no new search until it ran on (see {@link RETRY_AFTER}). */
  private missedAt: number | undefined
  /** The last search of guest memory, for reports. */
  lastSearch: KallsymsSearch | undefined

  /**
   * `table`: symbols from a file (used as they are); without it, `kallsyms` (default
   * true) searches guest memory for the kernel's when first asked.
   */
  constructor(
    private readonly vm: Vm,
    table?: SymbolTable,
    private readonly kallsyms = true,
  ) {
    checkInstance('GuestSymbols: vm', vm, Vm)
    if (table !== undefined) checkInstance('GuestSymbols: table', table, SymbolTable)
    this.found = table
  }

  /** The table: the one given, or the kernel's kallsyms once found; `undefined` while there are none. */
  table(): SymbolTable | undefined {
    if (this.found || !this.kallsyms || this.vm.closed) return this.found
    const ran = this.vm.cpus.reduce((n, v) => n + (v.closed ? 0 : v.stats().instructions), 0)
    if (this.missedAt !== undefined && ran - this.missedAt < RETRY_AFTER) return undefined
    const start = performance.now()
    const found = findKallsyms(this.vm.memory.list())
    this.lastSearch = { found, ms: performance.now() - start }
    if (found) this.found = found.table
    else this.missedAt = ran
    return this.found
  }

  /** `address` as `name+0xoff` where a symbol covers it, else `undefined`. */
  label(address: bigint | number): string | undefined {
    toAddress('GuestSymbols.label: address', address)
    const table = this.table()
    return table?.lookup(address) ? table.format(address) : undefined
  }

  /** `address` as `name+0xoff` where a symbol covers it, else in hex. */
  format(address: bigint | number): string {
    return this.label(address) ?? hex(toAddress('GuestSymbols.format: address', address))
  }
}
