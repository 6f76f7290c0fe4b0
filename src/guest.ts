/**
 * Helpers that put a vCPU into a known CPU mode, through the register cache.
 * @module
 */
import type { Vcpu } from './vcpu.js'

/** Packs a segment register value: [base, limit | selector << 32 | attributes << 48]. */
export function segment(base: bigint, limit: number, selector: number, attributes: number): [bigint, bigint] {
  return [base, BigInt(limit >>> 0) | (BigInt(selector) << 32n) | (BigInt(attributes) << 48n)]
}

/** Real mode with all segments at 0 and code at `ip`. */
export function enterRealMode(vcpu: Vcpu, ip: number, sp = 0x7000): void {
  const r = vcpu.regs
  for (const s of ['ds', 'es', 'ss', 'fs', 'gs']) r.setRaw(s, ...segment(0n, 0xffff, 0, 0x93))
  r.setRaw('cs', ...segment(0n, 0xffff, 0, 0x9b))
  r.set('rip', BigInt(ip))
  r.set('rsp', BigInt(sp))
  r.set('rflags', 2n)
}
