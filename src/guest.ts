/**
 * Helpers that put a vCPU into a known CPU mode, through the register cache.
 * @module
 */
import { Vcpu } from './vcpu.js'
import { MshvError, describe } from './errors.js'
import { checkFunction, checkInstance, checkInteger, checkObject, checkUnsignedBigint } from './check.js'

/** Packs a segment register value: [base, limit | selector << 32 | attributes << 48]. */
export function segment(base: bigint, limit: number, selector: number, attributes: number): [bigint, bigint] {
  checkUnsignedBigint('segment: base', base)
  checkInteger('segment: limit', limit, 0, 0xffff_ffff)
  checkInteger('segment: selector', selector, 0, 0xffff)
  checkInteger('segment: attributes', attributes, 0, 0xffff)
  return [base, BigInt(limit >>> 0) | (BigInt(selector) << 32n) | (BigInt(attributes) << 48n)]
}

const DATA_SEGMENTS = ['ds', 'es', 'ss', 'fs', 'gs'] as const

/** `v` as a u64 bigint: an integer number or bigint in 0..2^64-1. */
function u64(what: string, v: unknown): bigint {
  const ok = (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) || (typeof v === 'bigint' && BigInt.asUintN(64, v) === v)
  if (!ok) throw new MshvError('EINVAL', `${what} must be an integer in 0..2^64-1, got ${describe(v)}`)
  return BigInt(v as number | bigint)
}

/**
 * Real mode with the data segments at 0 and code at physical `ip` (below 1 MiB): CS is
 * 0 when `ip` fits in 64 KiB, else the 64 KiB-aligned segment holding it, so CS:IP
 * always reaches `ip`. `sp` is SS:SP with SS 0. The vCPU runs from there: a halt or a
 * wait for a start-up IPI it was in ends (`internalActivityState` 0).
 */
export function enterRealMode(vcpu: Vcpu, ip: number, sp = 0x7000): void {
  checkInstance('enterRealMode: vcpu', vcpu, Vcpu)
  if (!Number.isInteger(ip) || ip < 0 || ip > 0xf_ffff) {
    throw new MshvError('EINVAL', `a real-mode start address must be an integer below 1 MiB (0x100000), got ${describe(ip)}`)
  }
  if (!Number.isInteger(sp) || sp < 0 || sp > 0xffff) {
    throw new MshvError('EINVAL', `a real-mode stack pointer must be an integer in 0..0xffff (SS is 0), got ${describe(sp)}`)
  }
  const cs = (ip >>> 4) & 0xf000
  const r = vcpu.regs
  for (const s of DATA_SEGMENTS) r.setRaw(s, ...segment(0n, 0xffff, 0, 0x93))
  r.setRaw('cs', ...segment(BigInt(cs << 4), 0xffff, cs, 0x9b))
  r.set('rip', BigInt(ip - (cs << 4)))
  r.set('rsp', BigInt(sp))
  r.set('rflags', 2n)
  vcpu.leaveSuspend()
}


/** Where {@link enterLongMode} puts its page tables unless told otherwise. */
export const LONG_MODE_TABLES = 0x1000

/**
 * 64-bit long mode with the first 4 GiB identity-mapped (1 GiB pages), flat segments
 * and code at `ip`. The two page-table pages are written at `tables` (8 KiB of RAM).
 * The x87 and SSE are enabled as an operating system enables them (CR0.MP and NE,
 * CR4.OSFXSR and OSXMMEXCPT; Intel SDM vol. 3 13.1), so compiled code runs as is. The
 * vCPU runs from there, as {@link enterRealMode}'s does.
 */
export function enterLongMode(
  vcpu: Vcpu,
  ram: GuestWriter,
  ip: number | bigint,
  options: { tables?: number; sp?: number | bigint } = {},
): void {
  checkInstance('enterLongMode: vcpu', vcpu, Vcpu)
  if (typeof options !== 'object' || options === null) throw new MshvError('EINVAL', `enterLongMode: options must be an object, got ${describe(options)}`)
  const rip = u64('enterLongMode: ip', ip)
  const sp = u64('enterLongMode: sp', options.sp ?? 0x8_0000)
  const tables = options.tables ?? LONG_MODE_TABLES
  if (typeof tables !== 'number' || !Number.isSafeInteger(tables) || tables < 0 || tables % 0x1000 !== 0) {
    throw new MshvError('EINVAL', `enterLongMode: tables must be a 4 KiB-aligned guest physical address, got ${describe(tables)}`)
  }
  identityMap4G(ram, tables)
  const r = vcpu.regs
  r.setRaw('cs', ...segment(0n, 0xffffffff, 8, 0xa09b))
  for (const s of DATA_SEGMENTS) r.setRaw(s, ...segment(0n, 0xffffffff, 16, 0xc093))
  r.set('cr3', BigInt(tables))
  r.set('cr4', (1n << 5n) | (1n << 9n) | (1n << 10n)) // PAE, OSFXSR, OSXMMEXCPT
  r.set('efer', (1n << 8n) | (1n << 10n))
  r.set('cr0', 0x8000_0033n) // PG, NE, ET, MP, PE
  r.set('rip', rip)
  r.set('rsp', sp)
  r.set('rflags', 2n)
  vcpu.leaveSuspend()
}

/** Guest memory to write set-up tables into (a {@link Vm} is one). */
export interface GuestWriter {
  write(gpa: number | bigint, data: Uint8Array | readonly number[]): void
}

/** `ram` as a {@link GuestWriter}: an object with a `write` method. */
function checkWriter(what: string, ram: unknown): GuestWriter {
  checkFunction(`${what}.write`, checkObject<GuestWriter>(what, ram).write)
  return ram as GuestWriter
}

/**
 * Writes the two page-table pages at `tables` (a PML4 and a PDPT, 8 KiB) that
 * identity-map the first 4 GiB with 1 GiB pages; their address is CR3.
 */
export function identityMap4G(ram: GuestWriter, tables: number): void {
  checkWriter('identityMap4G: ram', ram)
  if (checkInteger('identityMap4G: tables', tables, 0, Number.MAX_SAFE_INTEGER - 0x2000) % 0x1000 !== 0) {
    throw new MshvError('EINVAL', `identityMap4G: tables must be 4 KiB-aligned, got ${describe(tables)}`)
  }
  const entries = new BigUint64Array(1024)
  entries[0] = BigInt(tables + 0x1000) | 3n // PML4[0] -> PDPT
  for (let i = 0; i < 4; i++) entries[512 + i] = (BigInt(i) << 30n) | 0x83n // 1 GiB pages
  ram.write(tables, new Uint8Array(entries.buffer))
}

/** The flat GDT whose selectors {@link enterLongMode} loads: null, 64-bit code (0x08), data (0x10). */
const LONG_MODE_GDT = new BigUint64Array([0n, 0x00af_9b00_0000_ffffn, 0x00cf_9300_0000_ffffn])

/**
 * For a vCPU in {@link enterLongMode}'s 64-bit mode that takes interrupts: writes its
 * GDT at `gdt` and a 256-entry IDT at `idt` (4 KiB) whose 64-bit interrupt gates
 * (Intel SDM vol 3 6.14.1) send each vector of `handlers` to its address, and loads
 * GDTR and IDTR. Vectors without a handler get a not-present gate.
 */
export function loadInterruptTables(
  vcpu: Vcpu,
  ram: GuestWriter,
  handlers: Readonly<Record<number, number | bigint>>,
  options: { gdt?: number; idt?: number } = {},
): void {
  checkInstance('loadInterruptTables: vcpu', vcpu, Vcpu)
  checkWriter('loadInterruptTables: ram', ram)
  checkObject('loadInterruptTables: handlers', handlers)
  const { gdt = 0x500, idt = 0x3000 } = checkObject<{ gdt?: number; idt?: number }>('loadInterruptTables: options', options)
  checkInteger('loadInterruptTables: gdt', gdt, 0, Number.MAX_SAFE_INTEGER)
  checkInteger('loadInterruptTables: idt', idt, 0, Number.MAX_SAFE_INTEGER)
  const gates = new BigUint64Array(512)
  for (const [vector, at] of Object.entries(handlers)) {
    const v = Number(vector)
    if (!Number.isInteger(v) || v < 0 || v > 255) throw new MshvError('EINVAL', `loadInterruptTables: vector must be 0..255, got ${describe(vector)}`)
    const h = u64(`loadInterruptTables: the handler of vector ${v}`, at)
    gates[v * 2] = (h & 0xffffn) | (8n << 16n) | (0x8e00n << 32n) | (((h >> 16n) & 0xffffn) << 48n)
    gates[v * 2 + 1] = h >> 32n
  }
  ram.write(gdt, new Uint8Array(LONG_MODE_GDT.buffer))
  ram.write(idt, new Uint8Array(gates.buffer))
  vcpu.regs.setRaw('gdtr', BigInt(LONG_MODE_GDT.byteLength - 1) << 48n, BigInt(gdt))
  vcpu.regs.setRaw('idtr', 0xfffn << 48n, BigInt(idt))
}
