/**
 * A VM as the user scripts it: a backend, guest RAM and ROM, a device bus and vCPUs.
 * @module
 */
import { constants as bufferConstants } from 'node:buffer'
import { native, nativeVcpu, type NativeGuestMemory, type NativeVm } from './native.js'
import { IoBus } from './bus.js'
import { DebugExit, DEBUG_EXIT_PORT } from './devices/debug-exit.js'
import { MshvError, coded, describe, hex, oneOf } from './errors.js'
import { checkFunction, checkObject, checkString, checkU32 } from './check.js'
import { POLICIES, type SyncPolicy } from './registers.js'
import { Vcpu, type RunResult, type VcpuEnvironment } from './vcpu.js'
import { CpuidTable, type CpuidEntry } from './exits/cpuid.js'
import type { MsrHandler, UnknownMsrPolicy } from './exits/msr.js'
import type { RamLookup, RamRegion, RomWriteHandler } from './emulator/memory.js'
import { GuestTimers } from './platform/timers.js'
import { GdbServer, type GdbOptions } from './debug/gdb/server.js'
import { restoreSnapshot, writeSnapshot, type SnapshotBase, type SnapshotHeader, type SnapshotInfo, type SnapshotOptions, type SnapshotSubject, type StatefulDevice } from './snapshot/vm-snapshot.js'
import { VmmWrites } from './snapshot/vmm-writes.js'
import { join, resolve } from 'node:path'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { VmRun, type VmRunOptions, type VmRunResult } from './scheduler.js'
import { GuestMemory } from './guest-memory.js'

/** Options for {@link createVm}. */
export interface VmOptions {
  /** 'auto' (default: mshv when /dev/mshv opens, else sim), 'mshv' or 'sim'. */
  backend?: 'auto' | 'mshv' | 'sim'
  /** 'on' (default), 'off', or 'invalid' (sim: mapped but never valid). */
  registerPage?: 'on' | 'off' | 'invalid'
  /** Register sync policy for new vCPUs (default 'page'). */
  policy?: SyncPolicy
  /**
   * CPUID answers (entries or a {@link CpuidTable}): the hypervisor answers the guest's
   * CPUID from them, without an exit; leaves and registers left out keep its own answer.
   */
  cpuid?: readonly CpuidEntry[] | CpuidTable
  /**
   * Offer the guest the Hyper-V enlightenments (SynIC, synthetic timers, hypercalls):
   * mshv only, default off (as Hyperlight advises); the sim refuses it with `ENOTSUP`.
   */
  hyperv?: boolean
  /** Handlers of MSRs by number; each is intercepted. */
  msrs?: Readonly<Record<number, MsrHandler>> | ReadonlyMap<number, MsrHandler>
  /** What MSRs nobody implements do (default `'gp'`); see {@link UnknownMsrPolicy}. */
  unknownMsr?: UnknownMsrPolicy
  /**
   * The most guest RAM (and ROM) this VM may map, in bytes: `addRam` beyond it fails
   * with `ENOMEM`. Default: the host's physical memory. The process as a whole is
   * bounded too (`setProcessMemoryLimit`, same default).
   */
  memoryLimit?: number
  /**
   * Commit each region's memory when it is added, so a host that cannot back it fails
   * `addRam` with `ENOMEM` now instead of the OOM killer ending the process mid-run.
   * Default false: pages are committed as the guest touches them.
   */
  reserveMemory?: boolean
  /**
   * How guest time passes: `'deterministic'` (the sim's default: one nanosecond per
   * guest instruction, halts leap to the next timer, so a guest with the same inputs
   * makes the same exits run after run, as QEMU's icount does) or `'realtime'` (the
   * host's clock; mshv's only one).
   */
  clock?: 'deterministic' | 'realtime'
  /**
   * Which of the sim's tiers executes guest code: `'translator'` (the default: blocks
   * of 64-bit code that ran often are compiled to host code, the interpreter runs the
   * rest; exits, instruction counts, registers and memory are the interpreter's, bit for
   * bit) or `'interpreter'` (every instruction through its handler). The environment
   * variable `MSHV_SIM_CPU` (`interpreter` or `translator`) sets the default. Sim only:
   * the mshv backend runs guest code on the processor and refuses either with
   * `ENOTSUP`.
   */
  cpu?: 'interpreter' | 'translator'
}

const VM_OPTIONS = ['backend', 'registerPage', 'policy', 'cpuid', 'hyperv', 'msrs', 'unknownMsr', 'memoryLimit', 'reserveMemory', 'clock', 'cpu'] as const

/** How an interrupt is delivered (`hv_interrupt_type`). */
export type InterruptKind = 'fixed' | 'lowest-priority' | 'nmi' | 'init' | 'sipi' | 'extint'

/** One interrupt for {@link Vm.requestInterrupt}: MSHV's `HVCALL_ASSERT_VIRTUAL_INTERRUPT`. */
export interface InterruptRequest {
  /** Default `'fixed'`. */
  kind?: InterruptKind
  /** 16..255 for fixed, lowest-priority and extint; the start page for sipi; unused for nmi and init. */
  vector?: number
  /** The destination APIC id (default 0), or a logical destination when `logical`. */
  destination?: number
  /** Logical destination mode (default physical). */
  logical?: boolean
  /** Level-triggered: its EOI comes back to the VM's EOI listeners (the I/O APIC). */
  level?: boolean
}

const INTERRUPT_KEYS = ['kind', 'vector', 'destination', 'logical', 'level'] as const
const UNKNOWN_MSR = { gp: 'fault', ignore: 'ignore', error: 'exit' } as const

function msrMap(msrs: VmOptions['msrs']): Map<number, MsrHandler> {
  if (msrs !== undefined && (typeof msrs !== 'object' || msrs === null)) {
    throw new MshvError('EINVAL', `msrs must be an object or a Map of MSR number to handler, got ${describe(msrs)}`)
  }
  const entries: [number | string, MsrHandler][] = msrs instanceof Map ? [...msrs] : Object.entries(msrs ?? {})
  return new Map(
    entries.map(([k, h]) => {
      // Record keys arrive as strings; the message names the key as given.
      const n = typeof k === 'number' ? k : Number(k)
      if (!Number.isInteger(n) || n < 0 || n > 0xffff_ffff) checkU32('MSR number', k)
      if (typeof h !== 'object' || h === null) throw new MshvError('EINVAL', `the handler of MSR ${hex(n)} must be an object with read/write`)
      return [n, h]
    }),
  )
}

/** A guest physical address as a bigint: a non-negative integer number or bigint below 2^52. */
function checkGpa(what: string, gpa: unknown): bigint {
  const ok = (typeof gpa === 'number' && Number.isSafeInteger(gpa) && gpa >= 0) || (typeof gpa === 'bigint' && gpa >= 0n && gpa < 1n << 52n)
  if (!ok) {
    const shown = typeof gpa === 'bigint' || (typeof gpa === 'number' && Number.isInteger(gpa)) ? hex(gpa) : describe(gpa)
    throw new MshvError('EINVAL', `${what} must be a non-negative integer (number or bigint) below 2^52, got ${shown}`)
  }
  return BigInt(gpa as number | bigint)
}

/**
 * The range a RAM lookup takes: a bigint GPA and a byte count. Only the types are
 * checked (every MMIO access is looked up; a range outside RAM is simply not found).
 */
function checkRange(what: string, gpa: unknown, length: unknown): void {
  if (typeof gpa !== 'bigint') throw new MshvError('EINVAL', `${what}: gpa must be a bigint, got ${describe(gpa)}`)
  if (typeof length !== 'number' || !(length >= 0)) throw new MshvError('EINVAL', `${what}: length must be a number of bytes from 0, got ${describe(length)}`)
}

/** A region size: a positive whole number of 4 KiB pages, as a number. */
function checkRegionSize(what: string, size: unknown): number {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0 || size % 0x1000 !== 0) {
    throw new MshvError('EINVAL', `${what} must be a positive multiple of 4096 bytes (a number), got ${describe(size)}`)
  }
  return size
}

/** A byte count for read(): an integer from 0. */
function checkLength(length: unknown): number {
  if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) {
    throw new MshvError('EINVAL', `length must be a non-negative integer, got ${describe(length)}`)
  }
  return length
}

/** Bytes to write: a Uint8Array, or an array of integers 0..255. */
function checkBytes(data: unknown): Uint8Array | readonly number[] {
  if (data instanceof Uint8Array) return data
  if (Array.isArray(data)) {
    const bad = data.findIndex((b) => typeof b !== 'number' || !Number.isInteger(b) || b < 0 || b > 255)
    if (bad !== -1) throw new MshvError('EINVAL', `data[${bad}] must be a byte (an integer 0..255), got ${describe(data[bad])}`)
    return data as readonly number[]
  }
  throw new MshvError('EINVAL', `data must be a Uint8Array or an array of bytes, got ${describe(data)}`)
}

/**
 * The largest region one typed array can view on this Node.js (`buffer.constants.MAX_LENGTH`:
 * 4 GiB on Node 20, 2^53 - 1 from Node 22): larger ones are refused before anything is mapped.
 */
const MAX_VIEW = bufferConstants.MAX_LENGTH

/**
 * The most RAM and ROM regions one VM may have (KVM caps a VM's memory slots the same
 * way, KVM_USER_MEM_SLOTS); the process as a whole is capped by the binding.
 */
const MAX_REGIONS_PER_VM = 4096

/** A region of guest RAM with zero-copy access. */
export class GuestRam {
  private view: Uint8Array | undefined
  /**
   * First guest physical address. Kept here: RAM lookups run on every emulated access,
   * and a native getter costs a napi-rs borrow check (about 220 ns) per read.
   */
  readonly gpa: bigint
  /** Size in bytes. */
  readonly size: number
  /** {@link gpa} as a number, for lookups. @internal */
  readonly start: number

  /** @internal */
  constructor(
    readonly native: NativeGuestMemory,
    /** Writes by the guest go to this handler (or are dropped), not to memory: ROM. */
    readonly rom?: RomWriteHandler,
  ) {
    this.gpa = native.gpa
    this.start = Number(native.gpa)
    this.size = native.size
    this.view = new Uint8Array(native.buffer())
  }

  /** The region's bytes (a view over the host memory the guest uses); `ECLOSED` once unmapped or its VM closed. */
  get bytes(): Uint8Array {
    if (!this.view) throw new MshvError('ECLOSED', `guest RAM at ${hex(this.gpa)} is unmapped (its VM closed, or removeRam)`)
    return this.view
  }

  /** Whether the region is still mapped. */
  get mapped(): boolean {
    return this.view !== undefined
  }

  /** @internal */
  release(): void {
    this.view = undefined
  }
}

/** Options for {@link Vm.addRom}. */
export interface RomOptions {
  /**
   * Receives the guest's writes (offset from the ROM's start, size 1..8, value), as an
   * MMIO device would; without it they are dropped, as a real ROM drops them.
   */
  onWrite?: RomWriteHandler
}

/** A VM as its vCPUs see it ({@link VcpuEnvironment}): one class, so the calls made on every exit have one target. */
class VmEnvironment implements VcpuEnvironment {
  readonly bus: IoBus
  readonly debugExit: DebugExit
  readonly ram: RamLookup
  readonly cpuid: CpuidTable
  readonly msrs: ReadonlyMap<number, MsrHandler>
  readonly backend: 'sim' | 'mshv'
  constructor(private readonly vm: Vm) {
    this.backend = vm.backend === 'mshv' ? 'mshv' : 'sim'
    this.bus = vm.bus
    this.debugExit = vm.debugExit
    this.ram = vm
    this.cpuid = vm.cpuid
    this.msrs = vm.msrs
  }
  eoi(vector: number, vcpuIndex: number): void {
    this.vm.notifyEoi(vector, vcpuIndex)
  }
  takeStop(): RunResult | undefined {
    return this.vm.takeStopResult()
  }
  closed(): void {
    this.vm.vcpuClosed()
  }
}

/** A virtual machine. */
export class Vm {
  /** Port I/O and MMIO devices. */
  readonly bus = new IoBus()
  /** The debug-exit port device (port 0xf4). */
  readonly debugExit = new DebugExit()
  /** Guest RAM for devices that do DMA: bounds-checked reads, writes and zero-copy views by GPA. */
  readonly memory = new GuestMemory(
    () => this.isClosed,
    (gpa, length) => this.vmmWrites?.note(gpa, length),
  )
  /** While dirty pages are logged (since {@link snapshotBase}): the pages the VMM wrote. */
  private vmmWrites: VmmWrites | undefined
  /** The snapshot the dirty log runs since (the last one written or restored): an incremental snapshot's parent. */
  private snapshotBase: SnapshotBase | undefined
  private readonly ram: GuestRam[] = []
  /** Devices whose state snapshots carry, by name. */
  private readonly states = new Map<string, StatefulDevice>()
  private readonly vcpus: Vcpu[] = []
  private isClosed = false
  private readonly eoiListeners: ((vector: number, vcpuIndex: number) => void)[] = []
  private stopResult: RunResult | undefined
  private current: VmRun | undefined
  /** Settles when the run in progress ends (for {@link pause}). */
  private runEnded: Promise<void> = Promise.resolve()
  private readonly interruptListeners: (() => void)[] = []
  /** Device timers on guest time ({@link guestTimeNs}); {@link run} fires them when due. */
  readonly timers: GuestTimers = new GuestTimers(
    () => this.guestTimeNs(),
    (next) => {
      if (!this.isClosed) this.native.setDeviceDeadline(next)
    },
  )

  /** What its vCPUs reach of the VM. */
  private readonly vcpuEnvironment: VcpuEnvironment

  /** @internal */
  constructor(
    /** The native VM. */
    readonly native: NativeVm,
    /** 'mshv' or 'sim'. */
    readonly backend: string,
    private readonly policy: SyncPolicy,
    /** The CPUID answers; edits reach each vCPU at its next run. */
    readonly cpuid: CpuidTable = new CpuidTable(),
    /** The MSR handlers (the intercepted MSRs are fixed when the VM is created). */
    readonly msrs: ReadonlyMap<number, MsrHandler> = new Map(),
    /** How guest time passes (see {@link VmOptions.clock}). */
    readonly clock: 'deterministic' | 'realtime' = backend === 'sim' ? 'deterministic' : 'realtime',
  ) {
    this.vcpuEnvironment = new VmEnvironment(this)
    this.bus.register(DEBUG_EXIT_PORT, 1, this.debugExit, 'debug-exit')
    // MMIO over RAM would never be called: the guest's accesses go to memory.
    this.bus.ramOverlap = (start, end) => this.ramOverlap(start, end)
  }

  private checkOpen(): void {
    if (this.isClosed) throw new MshvError('ECLOSED', 'the VM is closed')
  }

  /** The RAM region overlapping `[start, end)`, described, if any. */
  private ramOverlap(start: bigint, end: bigint): string | undefined {
    const r = this.ram.find((x) => start < x.gpa + BigInt(x.size) && x.gpa < end)
    return r && `${r.rom ? 'ROM' : 'RAM'} at ${hex(r.gpa)}..${hex(r.gpa + BigInt(r.size) - 1n)}`
  }

  private map(gpa: unknown, size: unknown, what: string, rom?: RomWriteHandler): GuestRam {
    this.checkOpen()
    if (this.ram.length >= MAX_REGIONS_PER_VM) {
      throw new MshvError('ENOMEM', `${what}: this VM holds ${MAX_REGIONS_PER_VM} RAM and ROM regions already (the most one may): use fewer, larger regions`)
    }
    const start = checkGpa(`${what}: gpa`, gpa)
    const bytes = checkRegionSize(`${what}: size`, size)
    if (bytes > MAX_VIEW) {
      throw new MshvError('EINVAL', `${what}: a region of ${hex(bytes)} bytes is larger than one typed array can view on Node ${process.version} (${hex(MAX_VIEW)}); add several regions`)
    }
    const clash = this.bus.mmioOverlap(start, start + BigInt(bytes))
    if (clash) throw new MshvError('EOVERLAP', `${what} at ${hex(start)} (+${hex(bytes)}) overlaps MMIO device ${clash}`)
    const m = this.native.mapMemory(start, bytes, rom ? { writable: false } : undefined)
    let r: GuestRam
    try {
      r = new GuestRam(m, rom)
    } catch (e) {
      // No view over it, no region: undo the mapping rather than leave it half made.
      this.native.unmapMemory(m)
      throw coded(e)
    }
    this.ram.push(r)
    this.regionsChanged()
    return r
  }

  /** Tells {@link memory} of the regions now mapped. */
  private regionsChanged(): void {
    this.memory.setRegions(this.ram.map((r) => ({ start: r.start, bytes: r.bytes, readOnly: r.rom !== undefined })))
  }

  /** Maps `size` bytes (a multiple of 4 KiB) of zeroed RAM at `gpa`. */
  addRam(gpa: number | bigint, size: number): GuestRam {
    return this.map(gpa, size, 'addRam')
  }

  /**
   * Maps a read-only copy of `bytes` at `gpa` (padded with zeros to whole 4 KiB pages):
   * the guest reads and executes it at RAM speed, and its writes exit and go to
   * `options.onWrite`, or are dropped.
   */
  addRom(gpa: number | bigint, bytes: Uint8Array | readonly number[], options: RomOptions = {}): GuestRam {
    const data = checkBytes(bytes)
    if (data.length === 0) throw new MshvError('EINVAL', 'addRom: bytes must not be empty')
    const onWrite = options.onWrite
    if (onWrite !== undefined && typeof onWrite !== 'function') {
      throw new MshvError('EINVAL', `addRom: onWrite must be a function, got ${describe(onWrite)}`)
    }
    const r = this.map(gpa, Math.ceil(data.length / 0x1000) * 0x1000, 'addRom', onWrite ?? dropWrite)
    r.bytes.set(data)
    return r
  }

  /** Unmaps a region added by {@link addRam} or {@link addRom}; its memory goes back to the host at once. */
  removeRam(region: GuestRam): void {
    this.checkOpen()
    if (!(region instanceof GuestRam)) throw new MshvError('EINVAL', `removeRam takes a region addRam or addRom returned, got ${describe(region)}`)
    const i = this.ram.indexOf(region)
    if (i === -1) throw new MshvError('ENOTMAPPED', `the region at ${hex(region.gpa)} is not mapped in this VM`)
    this.native.unmapMemory(region.native)
    this.ram.splice(i, 1)
    region.release()
    this.regionsChanged()
  }

  /** Total RAM and ROM mapped, in bytes. */
  ramSize(): number {
    return this.ram.reduce((n, r) => n + r.size, 0)
  }

  /** The RAM (or ROM) region holding `[gpa, gpa + length)`, or undefined when that is not all one region. */
  findRam(gpa: bigint, length: number): RamRegion | undefined {
    checkRange('findRam', gpa, length)
    // Number arithmetic (GPAs are below 2^52): the emulators look up every access, and
    // most MMIO accesses miss every region.
    const at = Number(gpa)
    for (const r of this.ram) {
      const off = at - r.start
      if (off >= 0 && off + length <= r.size) return { bytes: r.bytes, offset: off, rom: r.rom }
    }
    return undefined
  }

  /** Whether any byte of `[gpa, gpa + length)` is RAM or ROM. */
  touchesRam(gpa: bigint, length: number): boolean {
    checkRange('touchesRam', gpa, length)
    const at = Number(gpa)
    for (const r of this.ram) if (at < r.start + r.size && r.start < at + length) return true
    return false
  }

  private locate(gpa: unknown, length: number): RamRegion {
    this.checkOpen()
    const start = checkGpa('gpa', gpa)
    const found = this.findRam(start, length)
    if (!found) throw new MshvError('ENOTMAPPED', `guest range ${hex(start)} (+${length}) is not inside one RAM region`)
    return found
  }

  /** Copies `data` (bytes) into guest RAM or ROM at `gpa`. */
  write(gpa: number | bigint, data: Uint8Array | readonly number[]): void {
    const bytes = checkBytes(data)
    const { bytes: ram, offset } = this.locate(gpa, bytes.length)
    this.vmmWrites?.note(Number(gpa), bytes.length)
    ram.set(bytes, offset)
  }

  /** The emulator wrote `[gpa, gpa + length)` of RAM. @internal */
  noteWrite(gpa: bigint, length: number): void {
    this.vmmWrites?.note(Number(gpa), length)
  }

  /** Copies `length` bytes of guest RAM at `gpa`. */
  read(gpa: number | bigint, length: number): Uint8Array {
    const n = checkLength(length)
    const { bytes, offset } = this.locate(gpa, n)
    return bytes.slice(offset, offset + n)
  }

  /** Creates vCPU `index` (0..255) with the VM's (or the given) sync policy. */
  createVcpu(index = 0, policy: SyncPolicy = this.policy): Vcpu {
    this.checkOpen()
    if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index > 255) {
      throw new MshvError('EINVAL', `createVcpu: index must be an integer in 0..255, got ${describe(index)}`)
    }
    checkPolicy(policy, 'createVcpu: policy')
    const v = new Vcpu(nativeVcpu(this.native.createVcpu(index)), this.vcpuEnvironment, policy)
    this.vcpus.push(v)
    return v
  }

  /** The vCPUs created so far, by creation order. */
  get cpus(): readonly Vcpu[] {
    return this.vcpus
  }

  /**
   * Asks the hypervisor's local APICs for an interrupt (MSHV's
   * `HVCALL_ASSERT_VIRTUAL_INTERRUPT`): a halted vCPU wakes, a running one takes it at
   * an instruction boundary with interrupts enabled. A vector 0..15 for a fixed
   * interrupt, an APIC id no vCPU has or an unknown kind is `EINVAL`.
   */
  requestInterrupt(request: InterruptRequest): void {
    this.deliverInterrupt(request, false)
  }

  /**
   * Delivers a message-signalled interrupt by the address (0xFEExxxxx) and data a PCI
   * device writes (Intel SDM vol 3 11.11).
   */
  signalMsi(address: number | bigint, data: number): void {
    this.deliverMsi(address, data, false)
  }

  /**
   * An interrupt a device model raises (an IRQ line through the PIC or I/O APIC): as
   * {@link requestInterrupt}, except that the hypervisor's refusal does not reach the
   * device. Devices raise interrupts from timers and I/O callbacks, where a throw is an
   * uncaught exception that ends the process: the interrupt is dropped instead,
   * counted in {@link interruptsRefused}, and the first refusal of the VM is a process
   * warning (`MSHV_INTERRUPT_REFUSED`), as OpenVMM's `request_msi` logs the failure and
   * goes on. Once the VM is closed the interrupt is dropped quietly (a timer that
   * raced the close). A request malformed in TypeScript's checks is still `EINVAL`.
   */
  deviceInterrupt(request: InterruptRequest): void {
    this.deliverInterrupt(request, true)
  }

  /** {@link signalMsi} for a device model: a refusal is dropped and counted, as {@link deviceInterrupt} says. */
  deviceMsi(address: number | bigint, data: number): void {
    this.deliverMsi(address, data, true)
  }

  /** Interrupts from device models ({@link deviceInterrupt}, {@link deviceMsi}) the hypervisor refused. */
  get interruptsRefused(): number {
    return this.refusedInterrupts
  }

  private refusedInterrupts = 0

  private deliverInterrupt(request: InterruptRequest, fromDevice: boolean): void {
    if (fromDevice && this.isClosed) return
    this.checkOpen()
    if (typeof request !== 'object' || request === null || Array.isArray(request)) {
      throw new MshvError('EINVAL', `requestInterrupt: the request must be an object, got ${describe(request)}`)
    }
    for (const key of Object.keys(request)) {
      if (!(INTERRUPT_KEYS as readonly string[]).includes(key)) {
        throw new MshvError('EINVAL', `requestInterrupt: unknown field '${key}' (fields: ${INTERRUPT_KEYS.join(', ')})`)
      }
    }
    const { kind, vector, destination = 0, logical, level } = request
    if (vector !== undefined) checkU32('requestInterrupt: vector', vector)
    checkU32('requestInterrupt: destination', destination)
    for (const [name, v] of [['logical', logical], ['level', level]] as const) {
      if (v !== undefined && typeof v !== 'boolean') throw new MshvError('EINVAL', `requestInterrupt: ${name} must be a boolean, got ${describe(v)}`)
    }
    if (kind !== undefined && typeof kind !== 'string') throw new MshvError('EINVAL', `requestInterrupt: kind must be a string, got ${describe(kind)}`)
    try {
      this.native.requestInterrupt({ kind, vector, destination, logical, level })
    } catch (e) {
      if (fromDevice && this.refused(coded(e), `requestInterrupt(${JSON.stringify(request)})`)) return
      throw coded(e)
    }
    for (const l of this.interruptListeners) l()
  }

  private deliverMsi(address: number | bigint, data: number, fromDevice: boolean): void {
    if (fromDevice && this.isClosed) return
    this.checkOpen()
    const a = checkGpa('signalMsi: address', address)
    checkU32('signalMsi: data', data)
    try {
      this.native.signalMsi(a, data)
    } catch (e) {
      if (fromDevice && this.refused(coded(e), `signalMsi(${hex(a)}, ${hex(data)})`)) return
      throw coded(e)
    }
    for (const l of this.interruptListeners) l()
  }

  /**
   * Counts a device's interrupt the hypervisor refused, warning at the first. Every
   * refusal counts: the guest can cause one (an I/O APIC entry routed to an APIC id no
   * vCPU has is `EINVAL` on the sim, an invalid VP index on MSHV), which on hardware
   * is an interrupt lost, not a machine stopped.
   */
  private refused(e: unknown, what: string): true {
    if (this.refusedInterrupts++ === 0) {
      const why = e instanceof Error ? e.message : describe(e)
      process.emitWarning(`mshv: the hypervisor refused a device's interrupt, ${what}: ${why}; the interrupt is dropped and the VM goes on (vm.interruptsRefused counts them)`, { code: 'MSHV_INTERRUPT_REFUSED' })
    }
    return true
  }

  /**
   * Guest time in nanoseconds since the VM was made: the clock of the guest's TSC and
   * APIC timer. On the deterministic sim it moves only as the guest runs.
   */
  guestTimeNs(): number {
    this.checkOpen()
    try {
      return this.native.guestTimeNs()
    } catch (e) {
      throw coded(e)
    }
  }

  /**
   * Calls `listener(vector, vcpuIndex)` when a guest EOIs a level-triggered vector
   * (an `apicEoi` exit): how an I/O APIC learns it may deliver that line again.
   */
  onEoi(listener: (vector: number, vcpuIndex: number) => void): void {
    if (typeof listener !== 'function') throw new MshvError('EINVAL', `onEoi takes a function, got ${describe(listener)}`)
    this.eoiListeners.push(listener)
  }

  /** Calls `listener()` after each interrupt requested of this VM (a halted run waits for one). @internal */
  onInterrupt(listener: () => void): () => void {
    this.interruptListeners.push(listener)
    return () => {
      const i = this.interruptListeners.indexOf(listener)
      if (i !== -1) this.interruptListeners.splice(i, 1)
    }
  }

  /**
   * Runs every vCPU, with the device timers ({@link timers}), until a vCPU's run ends
   * with something the VMM must see (a debug-exit, a HLT with interrupts off, a
   * reset, an error), {@link cancel} or `timeoutMs`. The event loop stays free: the
   * sim's vCPUs take turns of at most `sliceMs` on this thread (a `quantum` of guest
   * instructions on the deterministic clock, so runs replay exactly), mshv's run on
   * worker threads. A vCPU halted with interrupts enabled waits without blocking.
   */
  async run(options: VmRunOptions = {}): Promise<VmRunResult> {
    this.checkOpen()
    if (this.current) throw new MshvError('EBUSY', 'vm.run(): the VM is already running')
    const run = new VmRun(this)
    this.current = run
    const ended = run.run(options)
    this.runEnded = ended.then(
      () => {},
      () => {},
    )
    try {
      return await ended
    } finally {
      this.current = undefined
    }
  }

  /**
   * Where the VM is (Firecracker's explicit run states): `running` while {@link run}
   * is in progress, `paused` between runs (its state can be read, saved, restored),
   * `closed` once closed.
   */
  get runState(): 'running' | 'paused' | 'closed' {
    return this.isClosed ? 'closed' : this.current ? 'running' : 'paused'
  }

  /**
   * Stops {@link run} in progress and resolves once it has ended: every vCPU is out of
   * the guest and the exit each was in is completed (Cloud Hypervisor's rule: no port
   * or MMIO access is left half done), so the state is whole. The run resolves with
   * `{ reason: 'cancelled' }`. Resolves at once when the VM is not running.
   */
  async pause(): Promise<void> {
    if (!this.current) return
    this.current.cancel()
    await this.runEnded
  }

  /**
   * Makes `device`'s state part of the VM's snapshots, under `name` (unique in the VM;
   * restore matches states to devices by it). Machine builders (the PC platform, PCI,
   * virtio) add theirs.
   */
  addState(name: string, device: StatefulDevice): void {
    this.checkOpen()
    checkString('addState: name', name, 256)
    if (name === '') throw new MshvError('EINVAL', 'addState: name must not be empty')
    if (this.states.has(name)) throw new MshvError('EEXIST', `addState: a device state named '${name}' is in this VM already`)
    checkObject('addState: device', device)
    checkFunction('addState: device.save', device.save)
    checkFunction('addState: device.restore', device.restore)
    this.states.set(name, device)
  }

  /**
   * Writes the VM's whole state to `path` between runs: every vCPU, every device added
   * with {@link addState}, guest time and the non-zero pages of RAM and ROM (see
   * `src/snapshot/vm-snapshot.ts` for the format). `machine`: what it was built from,
   * kept for whoever builds it again.
   */
  snapshot(path: string, options: SnapshotOptions = {}): SnapshotInfo {
    this.checkOpen()
    if (this.current) throw new MshvError('EBUSY', 'snapshot(): the VM is running (take it between runs)')
    checkObject('snapshot: options', options)
    const parent = options.parent === undefined ? undefined : this.parentOf(checkString('snapshot: parent', options.parent, 4096))
    const written = writeSnapshot(this.snapshotSubject(), path, options.machine, parent)
    this.logSince(written.base)
    return written.info
  }

  /**
   * `count` VMs in this process from this one's state now: `build(i)` makes each the
   * way this one was made (RAM, vCPUs, the devices and their `addState` names), and
   * each is restored from one snapshot of this VM, sharing its pages copy-on-write until
   * it writes them (boot once, fork per test). Between runs.
   */
  fork(count: number, build: (i: number) => Vm): Vm[] {
    this.checkOpen()
    if (this.current) throw new MshvError('EBUSY', 'fork(): the VM is running (fork it between runs)')
    if (!Number.isSafeInteger(count) || count < 1 || count > 4096) throw new MshvError('EINVAL', `fork: count must be an integer from 1 to 4096, got ${describe(count)}`)
    checkFunction('fork: build', build)
    const dir = mkdtempSync(join(tmpdir(), 'mshv-fork-'))
    const path = join(dir, 'fork.snap')
    const forks: Vm[] = []
    try {
      writeSnapshot(this.snapshotSubject(), path)
      for (let i = 0; i < count; i++) {
        const v = build(i)
        if (!(v instanceof Vm)) throw new MshvError('EINVAL', `fork: build(${i}) must return a Vm, got ${describe(v)}`)
        forks.push(v)
        v.restore(path)
      }
      return forks
    } catch (e) {
      for (const v of forks) v.close()
      throw e
    } finally {
      // The forks' mappings keep the pages: the file's name is not needed.
      rmSync(dir, { recursive: true, force: true })
    }
  }

  /** The parent an incremental snapshot names: the base the dirty log runs since. */
  private parentOf(path: string): SnapshotBase {
    const base = this.snapshotBase
    if (!base || resolve(path) !== base.path) {
      throw new MshvError('EINVAL', `snapshot: parent '${path}' is not the snapshot this VM last wrote or restored${base ? ` ('${base.path}')` : ' (there is none)'}: its dirty pages are logged since that one only`)
    }
    return base
  }

  /** Dirty pages are logged from here on, since `base` (cleared: a new log). */
  private logSince(base: SnapshotBase): void {
    this.native.startDirtyLog()
    this.vmmWrites = new VmmWrites(this.ram.map((r) => ({ start: r.start, size: r.size })))
    this.snapshotBase = base
  }

  /**
   * Puts this VM, built as the one that took the snapshot was (the same RAM and ROM,
   * vCPUs and device names), in the snapshot's state: devices, vCPUs, guest time, and
   * memory mapped from the file copy-on-write (nothing copied). Returns the snapshot's
   * header. A snapshot that does not fit this VM is `EINVAL` naming what differs.
   */
  restore(path: string): SnapshotHeader {
    this.checkOpen()
    if (this.current) throw new MshvError('EBUSY', 'restore(): the VM is running')
    const { header, base } = restoreSnapshot(this.snapshotSubject(), path)
    this.logSince(base)
    return header
  }

  private snapshotSubject(): SnapshotSubject {
    return { vm: this, regions: this.ram, devices: this.states, vmmWrites: this.vmmWrites }
  }

  /**
   * Serves the VM to GDB (`target remote :1234`): vCPUs as threads, registers, memory by
   * linear address, breakpoints, single-step, Ctrl+C, detach. With `wait` (the default)
   * the VM stays stopped until GDB continues it; without, it runs at once. Resolves
   * once listening; `server.done` resolves when the guest ends the machine.
   */
  gdb(options: GdbOptions = {}): Promise<GdbServer> {
    this.checkOpen()
    return GdbServer.start(this, options)
  }

  /** Ends {@link run} in progress with `{ reason: 'cancelled' }` (its vCPUs stop at once). */
  cancel(): void {
    this.current?.cancel()
  }

  /**
   * Ends the run in progress (a vCPU's, or {@link run}'s) after the current exit with
   * `result`: what a device does when the guest resets or powers off the machine.
   */
  requestStop(result: RunResult): void {
    this.stopResult = result
  }

  /** The result {@link requestStop} left, taken once. @internal */
  takeStopResult(): RunResult | undefined {
    const r = this.stopResult
    this.stopResult = undefined
    return r
  }

  /** A vCPU was closed: a run waiting for an interrupt looks at its vCPUs again. @internal */
  vcpuClosed(): void {
    for (const l of this.interruptListeners) l()
  }

  /** Tells the EOI listeners of a level-triggered vector's EOI. @internal */
  notifyEoi(vector: number, vcpuIndex: number): void {
    for (const l of this.eoiListeners) l(vector, vcpuIndex)
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.isClosed
  }

  /**
   * Closes every vCPU (a run in progress is cancelled and waited for) and the VM, and
   * gives its RAM back to the host at once: views over it are detached, so a script
   * that kept one gets `ECLOSED` (or, through a detached array, nothing), never stale
   * memory. Calling it twice is harmless.
   */
  close(): void {
    if (this.isClosed) return
    // A vm.run() waiting for an interrupt would wait forever: it ends, cancelled.
    this.current?.cancel()
    this.isClosed = true
    for (const v of this.vcpus) v.close()
    this.native.close()
    for (const r of this.ram) r.release()
    this.memory.setRegions([])
  }
}

const dropWrite: RomWriteHandler = () => {}

function checkPolicy(policy: unknown, what: string): SyncPolicy {
  if (!(POLICIES as readonly unknown[]).includes(policy)) {
    throw new MshvError('EINVAL', `${what} must be ${oneOf(POLICIES)}, got ${describe(policy)}`)
  }
  return policy as SyncPolicy
}

function checkChoice<T extends string>(what: string, v: unknown, choices: readonly T[]): T | undefined {
  if (v === undefined) return undefined
  if (!(choices as readonly unknown[]).includes(v)) {
    throw new MshvError('EINVAL', `${what} must be ${oneOf(choices)}, got ${describe(v)}`)
  }
  return v as T
}

/** Creates a VM on the chosen backend. */
export function createVm(options: VmOptions = {}): Vm {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new MshvError('EINVAL', `createVm: options must be an object, got ${describe(options)}`)
  }
  for (const key of Object.keys(options)) {
    if (!(VM_OPTIONS as readonly string[]).includes(key)) {
      throw new MshvError('EINVAL', `createVm: unknown option '${key}' (options: ${VM_OPTIONS.join(', ')})`)
    }
  }
  const backend = checkChoice('backend', options.backend, ['auto', 'mshv', 'sim'] as const) ?? 'auto'
  const registerPage = checkChoice('registerPage', options.registerPage, ['on', 'off', 'invalid'] as const) ?? 'on'
  const unknown = checkChoice('unknownMsr', options.unknownMsr, ['gp', 'ignore', 'error'] as const) ?? 'gp'
  const clock = checkChoice('clock', options.clock, ['deterministic', 'realtime'] as const)
  const cpu = checkChoice('cpu', options.cpu, ['interpreter', 'translator'] as const)
  const policy = options.policy === undefined ? 'page' : checkPolicy(options.policy, 'policy')
  const { cpuid: entries, memoryLimit, reserveMemory, hyperv } = options
  if (hyperv !== undefined && typeof hyperv !== 'boolean') throw new MshvError('EINVAL', `hyperv must be a boolean, got ${describe(hyperv)}`)
  if (entries !== undefined && !(entries instanceof CpuidTable) && !Array.isArray(entries)) {
    throw new MshvError('EINVAL', `cpuid must be an array of entries or a CpuidTable, got ${describe(entries)}`)
  }
  if (memoryLimit !== undefined && (typeof memoryLimit !== 'number' || !Number.isSafeInteger(memoryLimit) || memoryLimit < 0)) {
    throw new MshvError('EINVAL', `memoryLimit must be a non-negative integer number of bytes, got ${describe(memoryLimit)}`)
  }
  if (reserveMemory !== undefined && typeof reserveMemory !== 'boolean') {
    throw new MshvError('EINVAL', `reserveMemory must be a boolean, got ${describe(reserveMemory)}`)
  }
  const msrs = msrMap(options.msrs)
  const cpuid = entries instanceof CpuidTable ? entries : new CpuidTable(entries ?? [])
  const hv = native.Hypervisor.open(backend)
  const vm = hv.createVm({
    registerPage,
    hyperv,
    interceptMsrs: [...msrs.keys()],
    unknownMsr: UNKNOWN_MSR[unknown],
    memoryLimit,
    reserveMemory,
    clock,
    cpu,
  })
  return new Vm(vm, hv.backend, policy, cpuid, msrs, clock ?? (hv.backend === 'sim' ? 'deterministic' : 'realtime'))
}

/**
 * Sets the most guest RAM this process may hold at once, over all its VMs (bytes, a
 * multiple of 4 KiB). The default is the host's physical memory; regions already
 * mapped stay. `liveResources()` shows what is in use.
 */
export function setProcessMemoryLimit(bytes: number): void {
  native.setProcessMemoryLimit(bytes)
}
