/**
 * A VM's whole state in one file (issue #29): `vm.snapshot(path)` writes it,
 * `vm.restore(path)` puts a VM built the same way (the same RAM and ROM regions, vCPUs
 * and devices: QEMU's rule for `loadvm` and `-incoming`) back where it was.
 *
 * The format, version 1 (all numbers little-endian):
 *
 * | offset | bytes | what |
 * | --- | --- | --- |
 * | 0 | 8 | magic `MSHVSNAP` |
 * | 8 | 4 | format version (1) |
 * | 12 | 4 | zero |
 * | 16 | 8 | the header's offset |
 * | 24 | 8 | the header's length |
 * | 4096 | ... | memory: each region's runs of non-zero pages, back to back, 4 KiB aligned |
 * | header offset | header length | the header, JSON ({@link SnapshotHeader}) |
 *
 * Zero pages are not written. Restore maps each run of the file into the region
 * private (copy-on-write): it copies nothing, and VMs restored from one file share its
 * pages until they write them (`machine.fork()`).
 *
 * An incremental snapshot (`vm.snapshot(path, { parent })`) names its parent (path and
 * id) and holds only the pages written since the parent was written or restored — the
 * hypervisor's dirty log for the guest's writes, the VM's own note of its DMA — each
 * non-zero one in a run, each now zero in `zero`. Restore maps the chain from the full
 * snapshot on, each over the ones before.
 * @module
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs'
import { randomUUID } from 'node:crypto'
import { resolve } from 'node:path'
import type { Vm, GuestRam } from '../vm.js'
import type { VcpuState } from './vcpu-state.js'
import type { VmmWrites } from './vmm-writes.js'
import { MshvError, describe, hex } from '../errors.js'
import { checkString } from '../check.js'

/** The file's first eight bytes. */
export const SNAPSHOT_MAGIC = 'MSHVSNAP'
/** The format this code writes and reads. */
export const SNAPSHOT_VERSION = 1
const PAGE = 4096
const PREAMBLE = 32
/** A header larger than this is not one we wrote. */
const MAX_HEADER = 256 << 20

/** A device whose state a snapshot carries: what {@link Vm.addState} takes. */
export interface StatefulDevice {
  /** The state now, as JSON data. */
  save(): unknown
  /** Puts the device in `state` (what {@link save} gave, through JSON); a bad one throws and changes nothing. */
  restore(state: never): void
}

/** One RAM or ROM region in a snapshot: its pages, where they are in the file. */
export interface SnapshotRegion {
  readonly gpa: string
  readonly size: number
  readonly rom: boolean
  /** `[first page, page count, byte offset in the file]` of each run of non-zero pages. */
  readonly runs: readonly (readonly [number, number, number])[]
  /** `[first page, page count]` of pages zero now that the parent had otherwise (incremental snapshots). */
  readonly zero: readonly (readonly [number, number])[]
}

/** Where a VM's dirty log runs since: the snapshot an incremental one names as its parent. */
export interface SnapshotBase {
  /** The snapshot's absolute path. */
  readonly path: string
  /** Its header's `id`. */
  readonly id: string
}

/** Options for {@link Vm.snapshot}. */
export interface SnapshotOptions {
  /** What the machine was built from, kept for whoever builds it again. */
  machine?: unknown
  /**
   * Write only what changed since this snapshot — the one the VM last wrote or
   * restored (`EINVAL` otherwise) — which a restore then needs beside this one.
   */
  parent?: string
}

/** The header: everything but the pages. */
export interface SnapshotHeader {
  readonly format: 'mshv-snapshot'
  readonly version: typeof SNAPSHOT_VERSION
  /** This snapshot's id (an incremental child names it). */
  readonly id: string
  /** An incremental snapshot's parent. */
  readonly parent?: SnapshotBase
  readonly backend: 'sim' | 'mshv'
  readonly clock: 'deterministic' | 'realtime'
  /** Guest time when it was taken (ns). */
  readonly guestTimeNs: number
  readonly vcpus: readonly VcpuState[]
  readonly memory: readonly SnapshotRegion[]
  /** Each device's state, by the name {@link Vm.addState} gave it. */
  readonly devices: Readonly<Record<string, unknown>>
  /** What the machine was built from, for whoever builds it again (`mshv restore`). */
  readonly machine?: unknown
}

/** What a snapshot cost: for reports and benchmarks. */
export interface SnapshotInfo {
  /** Bytes of the file. */
  readonly bytes: number
  /** Pages written (the non-zero ones) and pages of RAM and ROM in all. */
  readonly pagesWritten: number
  readonly pages: number
}

/** The parts of a VM a snapshot reads and writes. @internal */
export interface SnapshotSubject {
  readonly vm: Vm
  readonly regions: readonly GuestRam[]
  readonly devices: ReadonlyMap<string, StatefulDevice>
  /** The VMM's own writes since the base (with the hypervisor's log, what changed). */
  readonly vmmWrites: VmmWrites | undefined
}

function fail(path: string, why: string): never {
  throw new MshvError('EINVAL', `snapshot '${path}': ${why}`)
}

/** Whether the 4 KiB page at `at` of `bytes` is all zero. */
function zeroPage(bytes: Uint8Array, at: number): boolean {
  const words = new BigUint64Array(bytes.buffer, bytes.byteOffset + at, PAGE / 8)
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false
  return true
}

/**
 * The pages of region `r` to write: every non-zero one, or (incremental) those written
 * since the base, split into runs of non-zero ones and runs of zero ones.
 */
function pagesToWrite(s: SnapshotSubject, r: GuestRam, incremental: boolean): { data: [number, number][]; zero: [number, number][] } {
  const data: [number, number][] = []
  const zero: [number, number][] = []
  if (!incremental) {
    const pairs = r.native.nonzeroRuns()
    for (let i = 0; i < pairs.length; i += 2) data.push([pairs[i] as number, pairs[i + 1] as number])
    return { data, zero }
  }
  const written = s.vmmWrites?.take(r.start) ?? new Uint8Array(r.size / PAGE)
  const guest = s.vm.native.takeDirtyLog(r.native)
  for (let i = 0; i < guest.length; i += 2) written.fill(1, guest[i] as number, (guest[i] as number) + (guest[i + 1] as number))
  const push = (list: [number, number][], page: number): void => {
    const last = list.at(-1)
    if (last && last[0] + last[1] === page) last[1]++
    else list.push([page, 1])
  }
  const bytes = r.bytes
  for (let page = 0; page < written.length; page++) {
    if (written[page]) push(zeroPage(bytes, page * PAGE) ? zero : data, page)
  }
  return { data, zero }
}

/** Writes the VM's state to `path` (between runs); `parent`: an incremental snapshot over it. */
export function writeSnapshot(s: SnapshotSubject, path: string, machine?: unknown, parent?: SnapshotBase): { info: SnapshotInfo; base: SnapshotBase } {
  checkString('snapshot: path', path, 4096)
  const vm = s.vm
  const vcpus = vm.cpus.filter((v) => !v.closed).map((v) => v.state())
  const devices: Record<string, unknown> = {}
  for (const [name, d] of s.devices) devices[name] = d.save()
  const fd = openSync(path, 'w', 0o600)
  try {
    let at = PAGE
    let pagesWritten = 0
    let pages = 0
    const memory: SnapshotRegion[] = s.regions.map((r) => {
      const { data, zero } = pagesToWrite(s, r, parent !== undefined)
      const runs: [number, number, number][] = []
      const bytes = r.bytes
      for (const [first, count] of data) {
        const len = count * PAGE
        writeAll(fd, bytes.subarray(first * PAGE, first * PAGE + len), at)
        runs.push([first, count, at])
        at += len
        pagesWritten += count
      }
      pages += r.size / PAGE
      return { gpa: hex(r.gpa), size: r.size, rom: r.rom !== undefined, runs, zero }
    })
    const id = randomUUID()
    const header: SnapshotHeader = {
      format: 'mshv-snapshot',
      version: SNAPSHOT_VERSION,
      id,
      ...(parent === undefined ? {} : { parent }),
      backend: vm.backend === 'mshv' ? 'mshv' : 'sim',
      clock: vm.clock,
      guestTimeNs: vm.guestTimeNs(),
      vcpus,
      memory,
      devices,
      ...(machine === undefined ? {} : { machine }),
    }
    const json = Buffer.from(JSON.stringify(header))
    writeAll(fd, json, at)
    const pre = Buffer.alloc(PREAMBLE)
    pre.write(SNAPSHOT_MAGIC, 0, 'latin1')
    pre.writeUInt32LE(SNAPSHOT_VERSION, 8)
    pre.writeBigUInt64LE(BigInt(at), 16)
    pre.writeBigUInt64LE(BigInt(json.length), 24)
    writeAll(fd, pre, 0)
    return { info: { bytes: at + json.length, pagesWritten, pages }, base: { path: resolve(path), id } }
  } finally {
    closeSync(fd)
  }
}

function writeAll(fd: number, data: Uint8Array, position: number): void {
  let done = 0
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done)
}

/** The header of the snapshot at `path`, checked as far as its shape goes. */
export function readSnapshotHeader(path: string): SnapshotHeader {
  checkString('restore: path', path, 4096)
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch (e) {
    throw new MshvError((e as NodeJS.ErrnoException).code ?? 'ENOENT', `snapshot '${path}': ${(e as Error).message}`)
  }
  try {
    const size = fstatSync(fd).size
    const pre = Buffer.alloc(PREAMBLE)
    if (readSync(fd, pre, 0, PREAMBLE, 0) !== PREAMBLE || pre.toString('latin1', 0, 8) !== SNAPSHOT_MAGIC) fail(path, `not a snapshot (no ${SNAPSHOT_MAGIC} at its start)`)
    const version = pre.readUInt32LE(8)
    if (version !== SNAPSHOT_VERSION) fail(path, `format version ${version}; this mshv reads version ${SNAPSHOT_VERSION}`)
    const offset = Number(pre.readBigUInt64LE(16))
    const length = Number(pre.readBigUInt64LE(24))
    if (length > MAX_HEADER || offset < PAGE || offset + length !== size) fail(path, `its header (${length} bytes at ${offset}) does not end the ${size}-byte file: truncated or not ours`)
    const json = Buffer.alloc(length)
    if (readSync(fd, json, 0, length, offset) !== length) fail(path, 'its header could not be read whole')
    let header: unknown
    try {
      header = JSON.parse(json.toString('utf8'))
    } catch (e) {
      fail(path, `its header is not JSON: ${(e as Error).message}`)
    }
    return checkHeader(path, header, offset)
  } finally {
    closeSync(fd)
  }
}

function checkHeader(path: string, h: unknown, pagesEnd: number): SnapshotHeader {
  if (typeof h !== 'object' || h === null) fail(path, `its header is ${describe(h)}`)
  const o = h as Record<string, unknown>
  if (o['format'] !== 'mshv-snapshot' || o['version'] !== SNAPSHOT_VERSION) fail(path, `its header says format ${describe(o['format'])} version ${describe(o['version'])}`)
  if (typeof o['id'] !== 'string' || o['id'] === '') fail(path, `its id is ${describe(o['id'])}`)
  const p = o['parent'] as Record<string, unknown> | undefined
  if (p !== undefined && (typeof p !== 'object' || p === null || typeof p['path'] !== 'string' || typeof p['id'] !== 'string')) fail(path, `its parent is ${describe(p)}`)
  if (o['backend'] !== 'sim' && o['backend'] !== 'mshv') fail(path, `backend ${describe(o['backend'])}`)
  if (o['clock'] !== 'deterministic' && o['clock'] !== 'realtime') fail(path, `clock ${describe(o['clock'])}`)
  if (typeof o['guestTimeNs'] !== 'number' || !Number.isSafeInteger(o['guestTimeNs']) || o['guestTimeNs'] < 0) fail(path, `guestTimeNs ${describe(o['guestTimeNs'])}`)
  if (!Array.isArray(o['vcpus'])) fail(path, 'vcpus is not a list')
  if (typeof o['devices'] !== 'object' || o['devices'] === null || Array.isArray(o['devices'])) fail(path, 'devices is not an object')
  if (!Array.isArray(o['memory'])) fail(path, 'memory is not a list')
  for (const [i, r] of (o['memory'] as unknown[]).entries()) {
    const m = r as Record<string, unknown>
    const ok =
      typeof m === 'object' &&
      m !== null &&
      typeof m['gpa'] === 'string' &&
      /^0x[0-9a-f]+$/.test(m['gpa']) &&
      Number.isSafeInteger(m['size']) &&
      typeof m['rom'] === 'boolean' &&
      Array.isArray(m['runs']) &&
      (m['runs'] as unknown[]).every(
        (run) =>
          Array.isArray(run) &&
          run.length === 3 &&
          run.every((n) => Number.isSafeInteger(n) && (n as number) >= 0) &&
          (run[2] as number) % PAGE === 0 &&
          (run[2] as number) + (run[1] as number) * PAGE <= pagesEnd,
      ) &&
      Array.isArray(m['zero']) &&
      (m['zero'] as unknown[]).every((z) => Array.isArray(z) && z.length === 2 && z.every((n) => Number.isSafeInteger(n) && (n as number) >= 0))
    if (!ok) fail(path, `memory region ${i} is malformed or its pages lie outside the file`)
  }
  return o as unknown as SnapshotHeader
}

/** The chain of snapshots `path` needs, the full one first, each checked against its child's note of it. */
function chainOf(path: string): { path: string; header: SnapshotHeader }[] {
  checkString('restore: path', path, 4096)
  const chain = [{ path: resolve(path), header: readSnapshotHeader(path) }]
  for (let h = chain[0]?.header; h?.parent; ) {
    const p = h.parent
    if (chain.length > 1024) fail(path, 'its chain of parents is longer than 1,024')
    const parent = readSnapshotHeader(p.path)
    if (parent.id !== p.id) fail(path, `its parent '${p.path}' is another snapshot now (id ${parent.id}, not ${p.id})`)
    chain.push({ path: p.path, header: parent })
    h = parent
  }
  return chain.reverse()
}

/** Puts the VM in the state of the snapshot at `path` (see the module's rule). */
export function restoreSnapshot(s: SnapshotSubject, path: string): { header: SnapshotHeader; base: SnapshotBase } {
  const chain = chainOf(path)
  const h = (chain.at(-1) as (typeof chain)[number]).header
  for (const link of chain) {
    const same = link.header.memory.length === h.memory.length && link.header.memory.every((m, i) => m.gpa === h.memory[i]?.gpa && m.size === h.memory[i]?.size)
    if (!same) fail(path, `its parent '${link.path}' has other memory regions`)
  }
  const vm = s.vm
  const backend = vm.backend === 'mshv' ? 'mshv' : 'sim'
  if (h.backend !== backend) fail(path, `taken on ${h.backend}; this VM is on ${backend}`)
  if (h.clock !== vm.clock) fail(path, `taken with the ${h.clock} clock; this VM's is ${vm.clock}`)
  const cpus = vm.cpus.filter((v) => !v.closed)
  if (cpus.length !== h.vcpus.length) fail(path, `it has ${h.vcpus.length} vCPUs; this VM has ${cpus.length}`)
  // Regions: the same ones, by address, size and kind.
  const regions = h.memory.map((m) => {
    const r = s.regions.find((x) => hex(x.gpa) === m.gpa)
    if (!r || r.size !== m.size || (r.rom !== undefined) !== m.rom) {
      fail(path, `its ${m.rom ? 'ROM' : 'RAM'} at ${m.gpa} (${hex(m.size)} bytes) is not this VM's${r ? ` (${hex(r.size)} bytes${r.rom ? ', ROM' : ''} there)` : ''}`)
    }
    return r
  })
  if (s.regions.length !== h.memory.length) fail(path, `it has ${h.memory.length} memory regions; this VM has ${s.regions.length}`)
  const names = Object.keys(h.devices)
  for (const name of s.devices.keys()) if (!names.includes(name)) fail(path, `it has no state for device '${name}'`)
  for (const name of names) if (!s.devices.has(name)) fail(path, `its device '${name}' is not in this VM`)
  // Checked as far as can be without changing anything; then the state goes in. The
  // devices first: each checks its state before it changes, so a refused one (the
  // first to be) leaves memory and the vCPUs as they were.
  // In reverse order of addition: a bus after what was added to it (the PCI host after
  // the functions on its bus, whose BAR windows it maps again).
  for (const [name, d] of [...s.devices].reverse()) {
    try {
      d.restore(h.devices[name] as never)
    } catch (e) {
      throw new MshvError((e as { code?: string }).code ?? 'EINVAL', `snapshot '${path}': device '${name}': ${(e as Error).message}`)
    }
  }
  h.vcpus.forEach((state, i) => (cpus[i] as (typeof cpus)[number]).setState(state))
  h.memory.forEach((_, i) => {
    const r = regions[i] as GuestRam
    const layers = chain.map(({ path: file, header }) => {
      const m = header.memory[i] as SnapshotRegion
      return {
        path: file,
        runs: BigUint64Array.from(m.runs.flatMap((run) => run.map(BigInt))),
        zero: BigUint64Array.from(m.zero.flatMap((z) => z.map(BigInt))),
      }
    })
    vm.native.loadSnapshot(r.native, layers)
  })
  vm.native.setGuestTimeNs(h.guestTimeNs)
  return { header: h, base: { path: resolve(path), id: h.id } }
}
