/**
 * CPUID exits: answers from a configurable table, falling back to the hypervisor's own
 * answer (the message's default results), then RIP past the instruction.
 * @module
 */
import { message, registerIndex } from '../layout.js'
import { MshvError, checkU32, describe, hex } from '../errors.js'
import type { RegisterCache } from '../registers.js'

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
 * get the hypervisor's answer, which on the sim is a plain x86-64 CPU's.
 */
export class CpuidTable {
  private readonly entries = new Map<string, CpuidEntry>()

  constructor(entries: readonly CpuidEntry[] = []) {
    for (const e of entries) this.set(e)
  }

  /** Adds or replaces the entry for its leaf (and subleaf). */
  set(entry: CpuidEntry): void {
    if (typeof entry !== 'object' || entry === null) throw new MshvError('EINVAL', `a CPUID entry must be an object with a leaf, got ${describe(entry)}`)
    checkField('leaf', entry.leaf)
    if (entry.subleaf !== undefined) checkField('subleaf', entry.subleaf)
    for (const r of ['eax', 'ebx', 'ecx', 'edx'] as const) if (entry[r] !== undefined) checkField(r, entry[r])
    this.entries.set(key(entry.leaf, entry.subleaf), { ...entry })
  }

  /** Removes an entry; returns whether there was one. */
  delete(leaf: number, subleaf?: number): boolean {
    return this.entries.delete(key(leaf, subleaf))
  }

  /** Number of entries. */
  get size(): number {
    return this.entries.size
  }

  /** The answer for `leaf`/`subleaf`: the exact entry, else the leaf-wide one, over `defaults`. */
  lookup(leaf: number, subleaf: number, defaults: CpuidResult): CpuidResult {
    const e = this.entries.get(key(leaf, subleaf)) ?? this.entries.get(key(leaf))
    if (!e) return defaults
    return { eax: e.eax ?? defaults.eax, ebx: e.ebx ?? defaults.ebx, ecx: e.ecx ?? defaults.ecx, edx: e.edx ?? defaults.edx }
  }
}

const RIP = message('rip')
const LEN = message('instructionLengthCr8')
const IN_RAX = message('cpuidRax')
const IN_RCX = message('cpuidRcx')
const DEFAULTS = ['cpuidDefaultRax', 'cpuidDefaultRbx', 'cpuidDefaultRcx', 'cpuidDefaultRdx'].map(message)
const OUT = (['rax', 'rbx', 'rcx', 'rdx'] as const).map(registerIndex)
const RIP_REG = registerIndex('rip')

/** Completes an intercepted CPUID: EAX..EDX from `table`, RIP past the instruction. */
export function handleCpuid(msg: DataView, regs: RegisterCache, table: CpuidTable): void {
  const rip = msg.getBigUint64(RIP, true)
  const len = msg.getUint8(LEN) & 0xf
  if (len === 0) throw new MshvError('EUNHANDLED_EXIT', `CPUID exit at rip ${hex(rip)} carries no instruction length`)
  const [a, b, c, d] = DEFAULTS.map((o) => Number(msg.getBigUint64(o, true) & 0xffff_ffffn)) as [number, number, number, number]
  const leaf = Number(msg.getBigUint64(IN_RAX, true) & 0xffff_ffffn)
  const subleaf = Number(msg.getBigUint64(IN_RCX, true) & 0xffff_ffffn)
  const r = table.lookup(leaf, subleaf, { eax: a, ebx: b, ecx: c, edx: d })
  // CPUID writes the 32-bit registers, which zero-extends them.
  ;[r.eax, r.ebx, r.ecx, r.edx].forEach((v, i) => regs.setAt(OUT[i] as number, BigInt(v >>> 0)))
  regs.setAt(RIP_REG, rip + BigInt(len))
}
