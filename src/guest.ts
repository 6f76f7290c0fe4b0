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

/** Where {@link enterLongMode} puts its page tables unless told otherwise. */
export const LONG_MODE_TABLES = 0x1000

/**
 * 64-bit long mode with the first 4 GiB identity-mapped (1 GiB pages), flat segments
 * and code at `ip`. The two page-table pages are written at `tables` (8 KiB of RAM).
 */
export function enterLongMode(
  vcpu: Vcpu,
  ram: { write(gpa: number | bigint, data: Uint8Array | readonly number[]): void },
  ip: number | bigint,
  options: { tables?: number; sp?: number | bigint } = {},
): void {
  const tables = options.tables ?? LONG_MODE_TABLES
  const entries = new BigUint64Array(1024)
  entries[0] = BigInt(tables + 0x1000) | 3n // PML4[0] -> PDPT
  for (let i = 0; i < 4; i++) entries[512 + i] = (BigInt(i) << 30n) | 0x83n // 1 GiB pages
  ram.write(tables, new Uint8Array(entries.buffer))
  const r = vcpu.regs
  r.setRaw('cs', ...segment(0n, 0xffffffff, 8, 0xa09b))
  for (const s of ['ds', 'es', 'ss', 'fs', 'gs']) r.setRaw(s, ...segment(0n, 0xffffffff, 16, 0xc093))
  r.set('cr3', BigInt(tables))
  r.set('cr4', 1n << 5n)
  r.set('efer', (1n << 8n) | (1n << 10n))
  r.set('cr0', 0x8000_0011n)
  r.set('rip', BigInt(ip))
  r.set('rsp', BigInt(options.sp ?? 0x8_0000))
  r.set('rflags', 2n)
}
