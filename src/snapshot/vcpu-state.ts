/**
 * A vCPU's whole state as data (issue #29): what {@link Vcpu.state} returns and
 * {@link Vcpu.setState} takes. Plain JSON — 64-bit and wider values as `0x` hex
 * strings, bytes as hex — so a snapshot writes it as it is, like the devices' states.
 *
 * The native seam is hv-core's `VcpuState` (crates/hv-core/src/state.rs): every
 * register of the register table by name, the MTRRs and IA32_MISC_ENABLE by number,
 * the local APIC's 1 KiB register page, the XSAVE image (mshv; empty on the sim, whose
 * x87/SSE state the registers carry), and the backend's exact extras by name (the
 * sim's APIC timer deadline in guest nanoseconds, latched interrupts, PAE PDPTEs).
 * @module
 */
import type { NativeVcpuState } from '../native.js'
import { registers } from '../layout.js'
import { invalid } from '../check.js'
import { hex } from '../errors.js'

/** A {@link VcpuState}'s format version. */
export const VCPU_STATE_VERSION = 1

/** A vCPU's whole state, as plain JSON data. */
export interface VcpuState {
  readonly version: typeof VCPU_STATE_VERSION
  /** The backend that took it: a state goes back only into a vCPU of the same backend. */
  readonly backend: 'sim' | 'mshv'
  /** Every register by its name in {@link registers}: its value as `0x` hex (128-bit ones whole, high half first). */
  readonly registers: Readonly<Record<string, string>>
  /** MSRs by number (`0x2ff`), values as `0x` hex. */
  readonly msrs: Readonly<Record<string, string>>
  /** The local APIC's register page (1,024 bytes), as hex. */
  readonly lapic: string
  /** The XSAVE image as hex (mshv); empty on the sim. */
  readonly xsave: string
  /** The backend's exact extras by name, values as `0x` hex. */
  readonly internal: Readonly<Record<string, string>>
}

const MASK64 = (1n << 64n) - 1n
const HEX = /^0x[0-9a-f]{1,32}$/
const BYTES = /^(?:[0-9a-f]{2})*$/

/** A `0x` hex string of at most `bits` bits, checked. */
function value(what: string, v: unknown, bits: 64 | 128): bigint {
  if (typeof v !== 'string' || !HEX.test(v) || BigInt(v) >> BigInt(bits) !== 0n) {
    throw invalid(what, `a 0x hex string of at most ${bits} bits`, v)
  }
  return BigInt(v)
}

function bytes(what: string, v: unknown): Uint8Array {
  if (typeof v !== 'string' || !BYTES.test(v)) throw invalid(what, 'a string of hex bytes', v)
  return Uint8Array.from(Buffer.from(v, 'hex'))
}

function record(what: string, v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(what, 'an object', v)
  return v as Record<string, unknown>
}

/** The native state as {@link VcpuState}. */
export function fromNative(s: NativeVcpuState, backend: 'sim' | 'mshv'): VcpuState {
  const regs: Record<string, string> = {}
  s.registerIds.forEach((id, i) => {
    const r = registers.find((d) => d.id === id)
    const lo = s.registerValues[2 * i] ?? 0n
    const hi = s.registerValues[2 * i + 1] ?? 0n
    regs[r?.name ?? hex(BigInt(id))] = hex((hi << 64n) | lo)
  })
  const msrs: Record<string, string> = {}
  s.msrs.forEach((m, i) => (msrs[hex(BigInt(m))] = hex(s.msrValues[i] ?? 0n)))
  const internal: Record<string, string> = {}
  s.internalNames.forEach((n, i) => (internal[n] = hex(s.internalValues[i] ?? 0n)))
  return {
    version: VCPU_STATE_VERSION,
    backend,
    registers: regs,
    msrs,
    lapic: Buffer.from(s.lapic).toString('hex'),
    xsave: Buffer.from(s.xsave).toString('hex'),
    internal,
  }
}

/** {@link VcpuState} checked and made native, for a vCPU of `backend`. */
export function toNative(state: unknown, backend: 'sim' | 'mshv'): NativeVcpuState {
  const s = record('vCPU state', state)
  if (s['version'] !== VCPU_STATE_VERSION) throw invalid('vCPU state version', `${VCPU_STATE_VERSION}`, s['version'])
  if (s['backend'] !== backend) throw invalid('vCPU state backend', `'${backend}' (this vCPU's backend)`, s['backend'])
  const regs = Object.entries(record('vCPU state registers', s['registers']))
  const ids = new Uint32Array(regs.length)
  const values = new BigUint64Array(2 * regs.length)
  regs.forEach(([name, v], i) => {
    const r = registers.find((d) => d.name === name)
    if (!r) throw invalid('a vCPU state register name', 'one of the register table', name)
    const x = value(`vCPU state register ${name}`, v, 128)
    ids[i] = r.id
    values[2 * i] = x & MASK64
    values[2 * i + 1] = x >> 64n
  })
  const msrEntries = Object.entries(record('vCPU state msrs', s['msrs']))
  const msrs = new Uint32Array(msrEntries.length)
  const msrValues = new BigUint64Array(msrEntries.length)
  msrEntries.forEach(([m, v], i) => {
    msrs[i] = Number(value(`vCPU state MSR number ${m}`, m, 64) & 0xffff_ffffn)
    msrValues[i] = value(`vCPU state MSR ${m}`, v, 64)
  })
  const internalEntries = Object.entries(record('vCPU state internal', s['internal']))
  return {
    registerIds: ids,
    registerValues: values,
    msrs,
    msrValues,
    lapic: bytes('vCPU state lapic', s['lapic']),
    xsave: bytes('vCPU state xsave', s['xsave']),
    internalNames: internalEntries.map(([n]) => n),
    internalValues: BigUint64Array.from(internalEntries.map(([n, v]) => value(`vCPU state internal ${n}`, v, 64))),
  }
}
