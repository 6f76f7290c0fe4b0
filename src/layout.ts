/**
 * Register page offsets, message offsets, message types and register ids, read once
 * from the Rust side (their single source of truth).
 * @module
 */
import { native } from './native.js'
import { MshvError, describe } from './errors.js'
import { REGISTER_NAMES, type RegisterName } from './generated/register-names.js'

export type { RegisterName } from './generated/register-names.js'

const raw = native.layout()

function table(t: Record<string, number>, what: string): (name: string) => number {
  return (name: string): number => {
    const v = t[name]
    if (v === undefined) throw new Error(`mshv: no ${what} named '${name}' in the native layout`)
    return v
  }
}

/** Register page offsets, sizes and dirty bits (`hv_vp_register_page`). */
export const page = table(raw.page, 'register page field')
/** Offsets into the 256-byte `hv_message`. */
export const message = table(raw.message, 'message field')
/** `hv_message_type` values by name. */
export const messageType = table(raw.messageTypes, 'message type')
/** The name of a `hv_message_type` value, or its hex form when the layout has no name for it. */
export function messageTypeName(type: number): string {
  for (const [name, v] of Object.entries(raw.messageTypes)) if (v === type) return name
  return `0x${type.toString(16)}`
}
/** `HV_TRANSLATE_GVA_*` flags for `translateGva` by name (`validateRead`, ...). */
export const translateFlag = table(raw.translateFlags, 'translate flag')
/** `hv_translate_gva_result_code` values by name (`success`, `gpaUnmapped`, ...). */
export const translateResult = table(raw.translateResults, 'translate result')
/** The sim processor's TSC and APIC timer frequencies (Hz), as its CPUID leaves 0x15/0x16 give them. */
export const simClocks: { readonly tscHz: number; readonly apicTimerHz: number } = {
  tscHz: raw.simClocks['tscHz'] ?? 0,
  apicTimerHz: raw.simClocks['apicTimerHz'] ?? 0,
}
/** Bits of an intercept header's `executionState` by name (`eferLma`, `interruptionPending`, ...), from mshv-bindings. */
export const executionStateBit = table(raw.executionState, 'execution state bit')
/** Synthetic native run results: `cancelled`, `budget`. */
export const exitCode = table(raw.exits, 'exit code')

/** One register's description. */
export interface RegisterDescriptor {
  /** Name used by the API (`rax`, `cs`, `gdtr`, ...). */
  readonly name: RegisterName
  /** `hv_register_name` id. */
  readonly id: number
  /** Value shape. */
  readonly kind: 'u64' | 'u128' | 'segment' | 'table'
  /** Registers fetched together by one batched hypercall. */
  readonly group: string
  /** Offset on the register page, when the page carries it. */
  readonly pageOffset: number | undefined
  /** Dirty bit for writes through the page; undefined = not writable there. */
  readonly dirtyBit: number | undefined
}

const KINDS: readonly RegisterDescriptor['kind'][] = ['u64', 'u128', 'segment', 'table']

/**
 * The kind as this module's own string literal: strings that come from native code are
 * not interned, and comparing them costs a call on every register write.
 */
function kindOf(name: string, kind: string): RegisterDescriptor['kind'] {
  const k = KINDS.find((x) => x === kind)
  if (k === undefined) throw new Error(`mshv: register '${name}' has unknown kind '${kind}' in the native layout`)
  return k
}

/** The name as the generated union's member; a binding built from other sources fails here. */
function nameOf(name: string, i: number): RegisterName {
  const generated = REGISTER_NAMES[i]
  if (generated !== name) {
    throw new Error(`mshv: register ${i} is '${name}' in the native layout but '${String(generated)}' in src/generated/register-names.ts: rebuild (npm run build)`)
  }
  return generated
}

if (raw.registers.length !== REGISTER_NAMES.length) {
  throw new Error(`mshv: the native layout has ${raw.registers.length} registers, src/generated/register-names.ts ${REGISTER_NAMES.length}: rebuild (npm run build)`)
}

/** Every register the API exposes, in the native table's order. */
export const registers: readonly RegisterDescriptor[] = raw.registers.map((r, i) => ({
  name: nameOf(r.name, i),
  id: r.id,
  kind: kindOf(r.name, r.kind),
  group: r.group,
  pageOffset: r.pageOffset ?? undefined,
  dirtyBit: r.dirtyBit ?? undefined,
}))

const byName = new Map<string, number>(registers.map((r, i) => [r.name, i]))

/** Index of a register in {@link registers}; an `EINVAL_REGISTER` error for unknown names. */
export function registerIndex(name: RegisterName): number {
  const i = typeof name === 'string' ? byName.get(name) : undefined
  if (i === undefined) throw new MshvError('EINVAL_REGISTER', `unknown register ${describe(name)}`)
  return i
}
