/**
 * CPUID answers: a table of entries the hypervisor answers the guest's CPUID from,
 * without an exit (registered per vCPU: HVCALL_REGISTER_INTERCEPT_RESULT on MSHV, as
 * QEMU, OpenVMM and Cloud Hypervisor register theirs; the same model in the sim).
 * @module
 */
import { MshvError, describe } from '../errors.js'
import { checkU32 } from '../check.js'

/** The four output registers of CPUID. */
export interface CpuidResult {
  eax: number
  ebx: number
  ecx: number
  edx: number
}

/** One table entry: a leaf, optionally one subleaf, and the registers it overrides. */
export interface CpuidEntry extends Partial<CpuidResult> {
  /** EAX on input. */
  leaf: number
  /** ECX on input; omitted, the entry answers every subleaf of its leaf. */
  subleaf?: number
}

const checkField = (what: string, v: unknown): number => checkU32(`CPUID ${what}`, v)

const key = (leaf: number, subleaf?: number): string => (subleaf === undefined ? `${leaf}` : `${leaf}.${subleaf}`)

/**
 * What the guest's CPUID returns. Registers an entry leaves out, and leaves with no entry,
 * get the hypervisor's answer, which on the sim is a plain x86-64 CPU's. Edits take
 * effect at each vCPU's next run.
 */
export class CpuidTable {
  private readonly entries = new Map<string, CpuidEntry>()
  /** Bumped by every edit: a vCPU registers the table again when it sees a new one. */
  private edits = 0

  constructor(entries: readonly CpuidEntry[] = []) {
    if (!Array.isArray(entries) || entries.length > 4096) throw new MshvError('EINVAL', `CpuidTable takes an array of at most 4096 entries, got ${describe(entries)}`)
    for (const e of entries) this.set(e)
  }

  /** Adds or replaces the entry for its leaf (and subleaf). */
  set(entry: CpuidEntry): void {
    if (typeof entry !== 'object' || entry === null) throw new MshvError('EINVAL', `a CPUID entry must be an object with a leaf, got ${describe(entry)}`)
    checkField('leaf', entry.leaf)
    if (entry.subleaf !== undefined) checkField('subleaf', entry.subleaf)
    for (const r of ['eax', 'ebx', 'ecx', 'edx'] as const) if (entry[r] !== undefined) checkField(r, entry[r])
    this.entries.set(key(entry.leaf, entry.subleaf), { ...entry })
    this.edits++
  }

  /** Removes an entry; returns whether there was one. */
  delete(leaf: number, subleaf?: number): boolean {
    checkField('leaf', leaf)
    if (subleaf !== undefined) checkField('subleaf', subleaf)
    const had = this.entries.delete(key(leaf, subleaf))
    if (had) this.edits++
    return had
  }

  /** Changes each time the table is edited. @internal */
  get version(): number {
    return this.edits
  }

  /** Every entry, as registered with the hypervisor. @internal */
  list(): CpuidEntry[] {
    return [...this.entries.values()]
  }

  /** Number of entries. */
  get size(): number {
    return this.entries.size
  }

  /** The answer for `leaf`/`subleaf`: the exact entry, else the leaf-wide one, over `defaults`. */
  lookup(leaf: number, subleaf: number, defaults: CpuidResult): CpuidResult {
    checkField('leaf', leaf)
    checkField('subleaf', subleaf)
    if (typeof defaults !== 'object' || defaults === null) throw new MshvError('EINVAL', `CPUID defaults must be an object with eax, ebx, ecx and edx, got ${describe(defaults)}`)
    const e = this.entries.get(key(leaf, subleaf)) ?? this.entries.get(key(leaf))
    if (!e) return defaults
    return { eax: e.eax ?? defaults.eax, ebx: e.ebx ?? defaults.ebx, ecx: e.ecx ?? defaults.ecx, edx: e.edx ?? defaults.edx }
  }
}
