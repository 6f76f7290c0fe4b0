/**
 * A vCPU as the user scripts it: run until something the script cares about, with the
 * exit handlers and the register cache in between.
 * @module
 */
import { runOnce, runnerHandle, type NativeVcpu, type RunnerHandle } from './native.js'
import type { AccessContext, IoBus } from './bus.js'
import { exitCode, message, messageType, messageTypeName } from './layout.js'
import { MshvError, coded, describe, hex, oneOf } from './errors.js'
import { checkU32 } from './check.js'
import { RegisterCache, type SyncPolicy, type SyncCounters } from './registers.js'
import { handleIo, seedIo } from './exits/pio.js'
import type { DebugExit } from './devices/debug-exit.js'
import { DevicePhysical, GuestPhysical, LinearMemory, type RamLookup } from './emulator/memory.js'
import { handleMmio } from './exits/mmio.js'
import type { CpuidTable } from './exits/cpuid.js'
import { handleMsr, type MsrHandler } from './exits/msr.js'
import { native as binding } from './native.js'
import { ExitTrace, type ChromeTrace } from './trace.js'
import { exitArgs } from './exits/describe.js'
import { GuestFatalError } from './exits/triple-fault.js'
import { ProgressLine, type ProgressStream } from './progress.js'
import { fromNative, toNative, type VcpuState } from './snapshot/vcpu-state.js'
import { VcpuDebug, codeAddress, type BreakpointHook, type CodeAddress, type Watchpoint, type WatchKind } from './debug/breakpoints.js'

const T_IO = messageType('ioPort')
const T_HALT = messageType('halt')
const T_UNMAPPED = messageType('unmappedGpa')
const T_GPA = messageType('gpaIntercept')
const T_FATAL = messageType('unrecoverableException')
const T_MSR = messageType('msr')
const T_APIC_EOI = messageType('apicEoi')
const T_EXCEPTION = messageType('exception')
const MSG_EXCEPTION_VECTOR = message('exceptionVector')
const MSG_EXCEPTION_PARAMETER = message('exceptionParameter')
const MSG_CS_BASE = message('csSegment')
/** #DB, the vector of the debugger's stops; DR6.BS says a step (SDM vol 3 18.2.3). */
const DB = 1
const DR6_BS = 1n << 14n
const MSG_EOI_VECTOR = message('eoiVector')
const EXIT_CANCELLED = exitCode('cancelled')
const EXIT_INSTRUCTIONS = exitCode('instructions')
const EXIT_TIMEOUT = exitCode('timeout')
const EXIT_SLICE = exitCode('slice')
const EXIT_CLOCK = exitCode('clock')
const EXIT_IDLE = exitCode('idle')
const EXIT_HALTED = exitCode('halted')
/** `HvInternalActivityRegister` bit 1, halt suspend (OpenVMM hvdef). */
const HALT_SUSPEND = 2n
const GP = 13
const MSG_RIP = message('rip')
/** How often a run with a progress line hands control back to redraw it, at most. */
const PROGRESS_SLICE_MS = 100

/** Why `run()` returned. */
export type RunResult =
  | { reason: 'debug-exit'; code: number }
  /**
   * The vCPU is halted with interrupts disabled: only an NMI, INIT or SIPI, or
   * {@link Vcpu.wake}, ends the halt (sim; on mshv, which has no HLT intercept in a
   * partition with a local APIC, the run waits in the hypervisor instead).
   */
  | { reason: 'halt' }
  /** `cancel()`, or the vCPU was closed during the run. */
  | { reason: 'cancelled' }
  /** `timeoutMs` passed. */
  | { reason: 'timeout' }
  /** `maxInstructions` guest instructions retired. */
  | { reason: 'instructions' }
  /** `maxExits` exits were handled. */
  | { reason: 'exits' }
  /** The guest reset the machine (the i8042's reset line, say): {@link Vm.requestStop}. */
  | { reason: 'reset' }
  /** The guest powered the machine off (ACPI S5). */
  | { reason: 'poweroff' }
  /** The guest rebooted through the ACPI reset register. */
  | { reason: 'reboot' }
  /**
   * The guest's kernel panicked: its console printed Linux's `Kernel panic - not
   * syncing: ...` line, which `message` is (a Linux machine watches for it, unless its
   * command line's `panic=N` has the kernel reboot itself).
   */
  | { reason: 'panic'; message: string }
  /** Guest time reached `guestDeadlineNs`: a device timer is due (sim). */
  | { reason: 'clock' }
  /**
   * The vCPU is halted with interrupts enabled and nothing the hypervisor keeps (its
   * local APIC timer) will wake it: only an interrupt the VMM requests can (sim; on
   * mshv the run waits in the hypervisor instead).
   */
  | { reason: 'idle' }
  /**
   * The vCPU stopped before the instruction at a breakpoint ({@link Vcpu.addBreakpoint},
   * or {@link RunOptions.until}) at linear address `address`; the next run executes it.
   */
  | { reason: 'breakpoint'; address: bigint }
  /** Single-stepping ({@link Vcpu.singleStep}): one instruction ran; the next is at `address`. */
  | { reason: 'step'; address: bigint }
  /**
   * An instruction accessed a range {@link Vcpu.addWatchpoint} watches: it ran, and the
   * next is at `address`; `watch` is the watchpoint.
   */
  | { reason: 'watchpoint'; address: bigint; watch: Watchpoint }

/** Why {@link Vcpu.step} returned: the instruction ran (`stepped`), or the run would have stopped there. */
export type StepResult = RunResult | { reason: 'stepped' }

/** Limits for {@link Vcpu.run}: each bounds the whole call, however many exits it takes. */
export interface RunOptions {
  /** Stop after this many guest instructions in all (sim; mshv refuses it with `ENOTSUP`). */
  maxInstructions?: number
  /** Stop this many milliseconds after the run starts (both backends: on mshv a per-thread timer interrupts the run ioctl). */
  timeoutMs?: number
  /**
   * On HLT: `'return'` (default) ends the sim's run with `{ reason: 'halt' }` (interrupts
   * disabled) or `{ reason: 'idle' }` (enabled: only an interrupt can wake it);
   * `'wait'` (runAsync only) waits on the vCPU's thread, as MSHV waits in the
   * hypervisor (there, always): with interrupts enabled for an interrupt
   * ({@link Vm.requestInterrupt}, the APIC timer); with them disabled for an NMI, INIT
   * or SIPI, or {@link Vcpu.wake}; the vCPU then resumes after the HLT.
   */
  onHalt?: 'return' | 'wait'
  /**
   * Show a live line with exits per second and the exit mix while the run lasts (after
   * half a second), redrawn in place: `true` for `process.stdout`, or a stream. Drawn
   * only when the stream is a terminal (`isTTY`).
   */
  progress?: boolean | ProgressStream | ProgressLine
  /**
   * Return `{ reason: 'exits' }` after this many exits, so a caller can run in slices
   * (and let the event loop in between) without giving up the synchronous loop's speed.
   */
  maxExits?: number
  /**
   * Return `{ reason: 'clock' }` once guest time ({@link Vm.guestTimeNs}) reaches this
   * many nanoseconds, so device timers kept on guest time run on time (sim; mshv
   * refuses it with `ENOTSUP`: its guest time is the host's).
   */
  guestDeadlineNs?: number
  /**
   * `runAsync` only: a vCPU halted with interrupts enabled waits on its own thread
   * until an interrupt wakes it (its APIC timer, {@link Vm.requestInterrupt}), as MSHV
   * waits in the hypervisor, instead of ending the run with `{ reason: 'idle' }`.
   */
  blockOnHalt?: boolean
  /**
   * Stop before the instruction at this linear address (CS base + RIP), with `{ reason:
   * 'breakpoint', address }`: a breakpoint for this run only. A run that starts there
   * runs that instruction first.
   */
  until?: CodeAddress
  /**
   * End the run with `{ reason: 'instructions' }` soon after the guest executes PAUSE (a
   * spin-wait) while another vCPU of the VM is executing (sim): a scheduler that runs
   * vCPUs by turns hands the turn to the vCPU the spinner waits for instead of letting
   * it spin out its quantum. {@link Vm.run} does so on the deterministic clock.
   */
  yieldOnPause?: boolean
  /**
   * Deterministic clock: when every vCPU waits in a halt, end with `{ reason: 'idle' }`
   * rather than move guest time to the next timer: the caller lets that time pass on
   * the host's clock, then sets guest time ({@link Vm.run}'s `idle: 'sleep'`) (sim).
   */
  idleSleeps?: boolean
}

const RUN_OPTIONS = ['maxInstructions', 'timeoutMs', 'onHalt', 'progress', 'maxExits', 'guestDeadlineNs', 'blockOnHalt', 'until', 'yieldOnPause', 'idleSleeps'] as const

/** `options` checked as {@link RunOptions}: an object of known keys with values of the right kind. */
function checkRunOptions(options: unknown, what: string): RunOptions {
  if (options === undefined) return {}
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new MshvError('EINVAL', `${what}: options must be an object, got ${describe(options)}`)
  }
  const o = options as Record<string, unknown>
  for (const key of Object.keys(o)) {
    if (!(RUN_OPTIONS as readonly string[]).includes(key)) {
      throw new MshvError('EINVAL', `${what}: unknown option '${key}' (options: ${RUN_OPTIONS.join(', ')})`)
    }
  }
  const count = (key: 'maxInstructions' | 'maxExits', min: number): void => {
    const v = o[key]
    if (v !== undefined && !(typeof v === 'number' && Number.isSafeInteger(v) && v >= min)) {
      throw new MshvError('EINVAL', `${what}: ${key} must be an integer from ${min} to 2^53-1, got ${describe(v)}`)
    }
  }
  count('maxInstructions', 0)
  count('maxExits', 1)
  const d = o['guestDeadlineNs']
  if (d !== undefined && !(typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
    throw new MshvError('EINVAL', `${what}: guestDeadlineNs must be an integer number of nanoseconds from 0 to 2^53-1, got ${describe(d)}`)
  }
  const t = o['timeoutMs']
  if (t !== undefined && !(typeof t === 'number' && t >= 0 && t <= Number.MAX_SAFE_INTEGER)) {
    throw new MshvError('EINVAL', `${what}: timeoutMs must be a number of milliseconds from 0 to 2^53-1, got ${describe(t)}`)
  }
  const b = o['blockOnHalt']
  if (b !== undefined && typeof b !== 'boolean') throw new MshvError('EINVAL', `${what}: blockOnHalt must be a boolean, got ${describe(b)}`)
  if (o['until'] !== undefined) codeAddress(`${what}: until`, o['until'])
  const h = o['onHalt']
  if (h !== undefined && h !== 'return' && h !== 'wait') {
    throw new MshvError('EINVAL', `${what}: onHalt must be ${oneOf(['return', 'wait'])}, got ${describe(h)}`)
  }
  const p = o['progress']
  if (p !== undefined && typeof p !== 'boolean' && !(p instanceof ProgressLine) && !isStream(p)) {
    throw new MshvError('EINVAL', `${what}: progress must be a boolean, a stream with write() or a ProgressLine, got ${describe(p)}`)
  }
  return o as RunOptions
}

function isStream(v: unknown): v is ProgressStream {
  return typeof v === 'object' && v !== null && typeof (v as { write?: unknown }).write === 'function'
}

/** Statistics of one vCPU. */
export interface VcpuStats extends SyncCounters {
  /** Exits handled. */
  exits: number
  /** Get-register hypercalls. */
  getRegisterCalls: number
  /** Set-register hypercalls. */
  setRegisterCalls: number
  /** GVA translation hypercalls. */
  translateCalls: number
  /** All hypercalls. */
  hypercalls: number
  /** Guest instructions retired (sim). */
  instructions: number
  /** Exits counted by the backend, by message type name (`ioPort`, `halt`, ...). */
  exitsByType: Record<string, number>
  /** What the sim's translating tier did on this vCPU (`createVm({ cpu: 'translator' })`); absent on mshv. */
  translator?: TranslatorStats
}

/** The sim's translating tier on one vCPU: what it compiled, and what that cost. */
export interface TranslatorStats {
  /** Blocks compiled to host code. */
  blocks: number
  /** Guest instructions their compiled code covers (a block's leading covered instructions). */
  instructions: number
  /** Host code bytes emitted. */
  bytes: number
  /** Host time spent compiling, in milliseconds. */
  compileMs: number
  /** Hot blocks left to the interpreter: fewer than two leading instructions covered. */
  uncovered: number
  /** Compilations that failed (no executable memory): those blocks stay interpreted. */
  failed: number
  /** Times the vCPU's code area (64 MiB) filled up and all its compiled code was dropped, to be compiled again as it runs. */
  flushes: number
}

/** The result of a native run that ended without an exit, or undefined for an exit. */
function runEnd(code: number): RunResult | undefined {
  switch (code) {
    case EXIT_CANCELLED:
      return { reason: 'cancelled' }
    case EXIT_INSTRUCTIONS:
      return { reason: 'instructions' }
    case EXIT_TIMEOUT:
      return { reason: 'timeout' }
    case EXIT_CLOCK:
      return { reason: 'clock' }
    case EXIT_IDLE:
      return { reason: 'idle' }
    case EXIT_HALTED:
      return { reason: 'halt' }
    default:
      return undefined
  }
}

/** The native budget of a run's limits, or undefined when it has none. */
function nativeBudget(o: RunOptions, slice: boolean): InstanceType<typeof binding.RunBudget> | undefined {
  if (o.maxInstructions === undefined && o.timeoutMs === undefined && o.guestDeadlineNs === undefined && !o.blockOnHalt && !o.yieldOnPause && !o.idleSleeps && !slice) return undefined
  try {
    return new binding.RunBudget({
      maxInstructions: o.maxInstructions,
      timeoutMs: o.timeoutMs,
      sliceMs: slice ? PROGRESS_SLICE_MS : undefined,
      guestDeadlineNs: o.guestDeadlineNs,
      blockOnHalt: o.blockOnHalt,
      yieldOnPause: o.yieldOnPause,
      idleSleeps: o.idleSleeps,
    })
  } catch (e) {
    throw coded(e)
  }
}

/** Devices and settings a vCPU's exit handlers use. */
export interface VcpuEnvironment {
  readonly bus: IoBus
  readonly debugExit: DebugExit
  /** Guest RAM, for the emulators' memory accesses. */
  readonly ram: RamLookup
  /** The CPUID answers registered with the hypervisor. */
  readonly cpuid: CpuidTable
  /** Handlers of intercepted MSRs. */
  readonly msrs: ReadonlyMap<number, MsrHandler>
  /** Hears the EOI of a level-triggered vector (an `apicEoi` exit): the I/O APIC. */
  eoi(vector: number, vcpuIndex: number): void
  /**
   * A result a device asked the run to end with ({@link Vm.requestStop}), taken once.
   * A method (not a closure per VM), as every exit calls it: one target keeps the
   * call inlined however many VMs a process makes.
   */
  takeStop(): RunResult | undefined
  /** This vCPU was closed: a VM run waiting for its vCPUs must look again. */
  closed(vcpuIndex: number): void
  /** The backend the vCPU runs on (a state goes back only into the same one). */
  readonly backend: 'sim' | 'mshv'
}

/** A virtual processor driven from TypeScript. */
export class Vcpu {
  /** The register cache and sync policy. */
  readonly regs: RegisterCache
  /** The exit message of the last run, read in place (use {@link message}). */
  private readonly msg: DataView
  /** The same message as u32 words, for the per-exit reads that need no BigInt. */
  private readonly messageWords: Uint32Array
  private readonly ctx: AccessContext
  private exits = 0
  /** A wake that arrived before the HLT it ends (latched, like a pending interrupt). */
  /**
   * Whether the vCPU may be halted or waiting for a start-up IPI (an AP at creation;
   * after any run that did not end on an intercept): what {@link leaveSuspend} looks at
   * to spare a register write.
   */
  private maybeSuspended: boolean
  /** A runAsync({ onHalt: 'wait' }) is in progress: {@link wake} ends its halt. */
  private haltWaits = false
  /** {@link wake} asked the waiting run's halt to end (it cancelled the native run for it). */
  private wakeRequested = false
  private tracer: ExitTrace | undefined
  /** The progress line of the run in progress, if it asked for one. */
  private progress: ProgressLine | undefined
  /** When the current native run began (trace time), while tracing. */
  private runStart = 0
  /** The native runner without limits: what {@link run} runs when it has none. */
  private readonly unlimited: RunnerHandle
  /** {@link memory}, made once: port exits hand it over on every exit. */
  private readonly memoryOnDemand = (): LinearMemory => this.memory()
  /** Whether a run (of any kind) is in progress: a second one is refused. */
  private running = false
  /** An exit a threaded run's thread posted after the run ended: the next run handles it first. */
  private pendingExit: number | undefined
  private isClosed = false
  /** The CPUID table version this vCPU registered last (-1: none yet). */
  private cpuidVersion = -1
  /** Breakpoints and single-step (made at the first use). */
  private debugState: VcpuDebug | undefined

  /** @internal */
  constructor(
    /** The native vCPU. */
    readonly native: NativeVcpu,
    private readonly env: VcpuEnvironment,
    policy: SyncPolicy,
  ) {
    this.regs = new RegisterCache(native, native.registerPage()?.buffer() ?? null, policy)
    this.msg = new DataView(native.messageBuffer())
    this.messageWords = new Uint32Array(this.msg.buffer)
    this.ctx = { regs: this.regs, vcpuIndex: native.index }
    this.maybeSuspended = native.index !== 0
    this.unlimited = runnerHandle(native)
    this.registerCpuid()
  }

  /** Registers the VM's CPUID table with this vCPU (at creation and after each edit). */
  private registerCpuid(): void {
    this.native.setCpuid(this.env.cpuid.list())
    this.cpuidVersion = this.env.cpuid.version
  }

  /** Index of the vCPU in its VM. */
  get index(): number {
    return this.native.index
  }

  /** The exit message of the last run (256 bytes), read in place; `ECLOSED` once closed. */
  get message(): DataView {
    this.checkOpen()
    return this.msg
  }

  /** `running` while a run of this vCPU is in progress, `paused` between runs, `closed` once closed. */
  get runState(): 'running' | 'paused' | 'closed' {
    return this.isClosed ? 'closed' : this.running ? 'running' : 'paused'
  }

  /** Whether {@link close} was called (directly or by closing the VM). */
  get closed(): boolean {
    return this.isClosed
  }

  private checkOpen(): void {
    if (this.isClosed) throw new MshvError('ECLOSED', `vCPU ${this.native.index} is closed`)
  }

  /** Claims the vCPU for one run: `EBUSY` while another is in progress, `ECLOSED` once closed. */
  private enter(what: string): void {
    this.checkOpen()
    if (this.running) throw new MshvError('EBUSY', `${what}: vCPU ${this.native.index} is already running`)
    this.running = true
  }

  /**
   * Runs the guest, handling exits, until a debug-exit write, HLT, a cancel or one of
   * the limits. Register writes made before the call reach the guest first.
   */
  run(options: RunOptions = {}): RunResult {
    const o = checkRunOptions(options, 'run()')
    if (o.onHalt === 'wait') {
      throw new MshvError('EINVAL', "onHalt 'wait' needs runAsync(): a synchronous run cannot wait for wake()")
    }
    if (o.blockOnHalt) {
      throw new MshvError('EINVAL', 'blockOnHalt needs runAsync(): a synchronous run would block the event loop until an interrupt that only it could raise')
    }
    this.enter('run()')
    const ownLine = this.startProgress(o)
    try {
      this.startUntil(o)
      const budget = nativeBudget(o, this.progress !== undefined)
      const runner = budget ? runnerHandle(this.native, budget) : this.unlimited
      const exitLimit = o.maxExits ?? Number.POSITIVE_INFINITY
      const left = this.handlePending()
      if (left) return left
      for (let exits = 0; exits < exitLimit; ) {
        this.beforeResume()
        const code = runOnce(runner)
        if (code === EXIT_SLICE) {
          this.regs.reset()
          this.progress?.tick()
          continue
        }
        exits++
        const result = this.afterRun(code)
        if (result) return result
      }
      return { reason: 'exits' }
    } finally {
      this.running = false
      this.endProgress(ownLine)
      if (o.until !== undefined) this.releaseUntil()
    }
  }

  /** Attaches the run's progress line; returns whether this run made it (and so ends it). */
  private startProgress(options: RunOptions): boolean {
    const p = options.progress
    if (p instanceof ProgressLine) {
      this.progress = p
      return false
    }
    this.progress = p ? new ProgressLine(p === true ? process.stdout : p, undefined, () => this.native.stats().instructions) : undefined
    return true
  }

  private endProgress(own: boolean): void {
    if (own) this.progress?.finish()
    this.progress = undefined
  }

  /**
   * Like {@link run}, but each native run happens on the vCPU's own thread, so the event
   * loop stays free (timers, I/O, `cancel()` from a callback). Errors carry the same
   * codes as {@link run}'s.
   */
  async runAsync(options: RunOptions = {}): Promise<RunResult> {
    const o = checkRunOptions(options, 'runAsync()')
    this.enter('runAsync()')
    const ownLine = this.startProgress(o)
    try {
      this.startUntil(o)
      // Waiting on HLT: natively (on this run's thread), as MSHV waits in the
      // hypervisor: for an interrupt with interrupts enabled; for an NMI, INIT, SIPI or
      // wake() (which cancels the native run and clears the halt) with them disabled.
      const budget = nativeBudget(o.onHalt === 'wait' ? { ...o, blockOnHalt: true } : o, this.progress !== undefined)
      this.haltWaits = o.onHalt === 'wait'
      const exitLimit = o.maxExits ?? Number.POSITIVE_INFINITY
      const left = this.handlePending()
      if (left) return left
      for (let exits = 0; exits < exitLimit; ) {
        // Closed between two native runs (by an exit handler): the run ends as cancelled.
        if (this.isClosed) return { reason: 'cancelled' }
        this.beforeResume()
        this.regs.busy = true
        let code: number
        try {
          // The binding's wrapper (native.ts) rejects with the coded error, so a number.
          code = (await this.native.run(budget)) as number
        } finally {
          this.regs.busy = false
        }
        if (code === EXIT_SLICE) {
          this.regs.reset()
          this.progress?.tick()
          continue
        }
        if (code === EXIT_CANCELLED && this.wakeRequested) {
          // wake() cancelled the native run to end the halt it waits in.
          this.wakeRequested = false
          this.regs.reset()
          this.leaveHalt()
          continue
        }
        exits++
        const result = this.afterRun(code)
        if (result) return result
      }
      return { reason: 'exits' }
    } finally {
      // A wake whose cancel came after the run had ended is spent: no cancel is left for the next run.
      if (this.wakeRequested && !this.isClosed) this.native.takeCancel()
      this.haltWaits = false
      this.wakeRequested = false
      this.running = false
      this.endProgress(ownLine)
      if (o.until !== undefined) this.releaseUntil()
    }
  }

  /**
   * Runs one guest instruction: an instruction that exits (a port or MMIO access) is
   * completed by its handler, as {@link run} would. Needs an instruction budget, so
   * the sim backend; mshv refuses it with `ENOTSUP`.
   */
  step(): StepResult {
    const result = this.run({ maxInstructions: 1 })
    return result.reason === 'instructions' ? { reason: 'stepped' } : result
  }

  private get debug(): VcpuDebug {
    return (this.debugState ??= new VcpuDebug(this.native))
  }

  /**
   * Stops the vCPU before the instruction at linear address `address` (CS base + RIP;
   * RIP itself in 64-bit code), invisibly to the guest: a run ends there with `{ reason:
   * 'breakpoint', address }`, or, with `hook`, calls it and goes on unless it returns
   * `'stop'`. A run that starts at a breakpoint runs its instruction first. On the sim
   * any number; on mshv four (DR0-DR3; a fifth is `EINVAL`).
   */
  addBreakpoint(address: CodeAddress, hook?: BreakpointHook): void {
    this.checkOpen()
    const a = codeAddress('addBreakpoint: address', address)
    if (hook !== undefined && typeof hook !== 'function') throw new MshvError('EINVAL', `addBreakpoint: hook must be a function, got ${describe(hook)}`)
    this.debug.add(a, hook)
  }

  /**
   * Stops the vCPU after any instruction that makes a `kind` access ('write' by
   * default; 'access' for reads and writes; 'read', reads alone, on the sim only) to
   * `[address, address + length)`: `{ reason: 'watchpoint', address, watch }`, the
   * instruction done (a data breakpoint is a trap, SDM vol 3 18.2.4). Four at most; on
   * mshv they share DR0-DR3 with the breakpoints, and a range is 1, 2, 4 or 8 bytes,
   * aligned. A `rep` string instruction stops when it has finished.
   */
  addWatchpoint(address: CodeAddress, length = 1, kind: WatchKind = 'write'): Watchpoint {
    this.checkOpen()
    const a = codeAddress('addWatchpoint: address', address)
    if (!Number.isSafeInteger(length) || length < 1) throw new MshvError('EINVAL', `addWatchpoint: length must be a whole number of bytes from 1, got ${describe(length)}`)
    if (kind !== 'write' && kind !== 'read' && kind !== 'access') throw new MshvError('EINVAL', `addWatchpoint: kind must be ${oneOf(['write', 'read', 'access'])}, got ${describe(kind)}`)
    const w: Watchpoint = { address: a, length, kind }
    this.debug.watch(w)
    return w
  }

  /** Removes a watchpoint {@link addWatchpoint} returned (or one equal to it); whether there was one. */
  removeWatchpoint(watch: Watchpoint): boolean {
    this.checkOpen()
    if (typeof watch !== 'object' || watch === null) throw new MshvError('EINVAL', `removeWatchpoint: watch must be what addWatchpoint returned, got ${describe(watch)}`)
    return this.debug.unwatch(watch)
  }

  /** The watchpoints, in the order they were added. */
  get watchpoints(): readonly Watchpoint[] {
    return this.debugState?.watchpoints() ?? []
  }

  /** Removes the breakpoint at `address`; returns whether there was one. */
  removeBreakpoint(address: CodeAddress): boolean {
    this.checkOpen()
    return this.debug.remove(codeAddress('removeBreakpoint: address', address))
  }

  /** The breakpoints' addresses, in the order they were added. */
  get breakpoints(): bigint[] {
    return this.debugState?.list() ?? []
  }

  /** While true, every run ends after one instruction with `{ reason: 'step', address }` (both backends). */
  get singleStep(): boolean {
    return this.debugState?.singleStep ?? false
  }

  set singleStep(on: boolean) {
    this.checkOpen()
    this.debug.singleStep = on
  }

  /**
   * The vCPU's whole state, as plain JSON data (see {@link VcpuState}): every register,
   * the MTRRs, the local APIC, XSAVE (mshv) and the backend's exact extras. Register
   * writes made in this exit are in it. Between runs only.
   */
  state(): VcpuState {
    this.checkOpen()
    this.regs.commit()
    return fromNative(this.native.state(), this.env.backend)
  }

  /**
   * Replaces the vCPU's whole state with one {@link state} returned (on the same
   * backend): the guest resumes from it. A state that does not fit is `EINVAL` and
   * changes nothing. Between runs only.
   */
  setState(state: VcpuState): void {
    this.checkOpen()
    this.native.setState(toNative(state, this.env.backend))
    this.regs.replaced()
    this.maybeSuspended = true
  }

  private startUntil(o: RunOptions): void {
    if (o.until !== undefined) this.holdUntil(codeAddress('until', o.until))
  }

  /** A stop at `address` until {@link releaseUntil} (`run({ until })`, `vm.run({ until })`). @internal */
  holdUntil(address: bigint): void {
    this.debug.addTemporary(address)
  }

  /** Ends {@link holdUntil}'s stops. @internal */
  releaseUntil(): void {
    if (!this.isClosed) this.debugState?.endTemporary()
  }

  /** A #DB exception intercept: the debugger's stop (a breakpoint or a step). */
  private debugStop(): RunResult | undefined {
    const msg = this.msg
    const vector = msg.getUint16(MSG_EXCEPTION_VECTOR, true)
    if (vector !== DB) throw new MshvError('EUNHANDLED_EXIT', `exception intercept for vector ${vector}: ${this.describe()}`)
    const address = msg.getBigUint64(MSG_CS_BASE, true) + msg.getBigUint64(MSG_RIP, true)
    const dr6 = msg.getBigUint64(MSG_EXCEPTION_PARAMETER, true)
    // Slots 0.. are the watchpoints (DR6's B0..B3 say which), the breakpoints after them.
    const watches = this.debugState?.watchpoints() ?? []
    for (let i = 0; i < watches.length; i++) {
      const watch = watches[i] as Watchpoint
      if ((dr6 >> BigInt(i)) & 1n) return { reason: 'watchpoint', address, watch }
    }
    if ((dr6 & DR6_BS) !== 0n) return { reason: 'step', address }
    if (this.debugState?.isTemporary(address) !== true) {
      const hook = this.debugState?.hook(address)
      if (hook && hook(address) !== 'stop') return undefined
    }
    return { reason: 'breakpoint', address }
  }

  /**
   * Ends the vCPU's halt: it resumes after its HLT (its halt suspend cleared in
   * `internalActivityState`, as OpenVMM's WHP backend clears it to wake a halted
   * processor). In a `runAsync({ onHalt: 'wait' })` the native run waiting in the halt
   * is cancelled for it and goes on; between runs the state is changed at once. A
   * vCPU that is not halted is not affected. With interrupts enabled an interrupt
   * wakes a halt by itself; with them disabled, an NMI ({@link Vm.requestInterrupt}
   * kind `'nmi'`), an INIT or a SIPI, or this.
   */
  wake(): void {
    this.checkOpen()
    if (this.haltWaits) {
      this.wakeRequested = true
      this.native.cancel()
    } else if (!this.running) {
      this.leaveHalt()
    }
  }

  /**
   * Puts the vCPU to running from a new entry state (`enterRealMode`, `enterLongMode`):
   * out of a halt or a wait for a start-up IPI (`internalActivityState` 0), which a
   * register write alone leaves as they were. Written only where the vCPU may be in
   * one: its last run ended on an intercept, or it never ran (the BSP), it is not.
   * @internal
   */
  leaveSuspend(): void {
    if (!this.maybeSuspended) return
    this.regs.set('internalActivityState', 0n)
    this.maybeSuspended = false
  }

  /** Clears halt suspend (bit 1 of `internalActivityState`), if set. */
  private leaveHalt(): void {
    const activity = this.regs.get('internalActivityState')
    if ((activity & HALT_SUSPEND) !== 0n) this.regs.set('internalActivityState', activity & ~HALT_SUSPEND)
  }

  /**
   * Makes the vCPU take exception `vector` (0..31) when it next resumes, as the
   * processor takes it in the current mode: in protected and long mode the vectors
   * that push an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP) push `errorCode`
   * (default 0); real mode pushes none, so there it is dropped (SDM vol 3 6.13, 20.1.4).
   * An error code for a vector that never has one is `EINVAL`. Written to the
   * `pendingEvent0` register (a hypercall).
   */
  injectException(vector: number, errorCode?: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector > 31) {
      throw new MshvError('EINVAL', `exception vector must be an integer in 0..31, got ${describe(vector)}`)
    }
    if (errorCode !== undefined) checkU32('exception error code', errorCode)
    const protectedMode = (this.regs.get('cr0') & 1n) !== 0n
    const [lo, hi] = binding.pendingException(vector, errorCode, protectedMode) as [bigint, bigint]
    this.regs.setRaw('pendingEvent0', lo, hi)
  }

  /**
   * {@link Vm.run}'s threaded path (`src/scheduler.ts`): claims the vCPU for the run;
   * an exit its thread posted in an earlier run and nobody handled yet comes first.
   * @internal
   */
  threadedBegin(): RunResult | undefined {
    this.enter('vm.run()')
    return this.handlePending()
  }

  /** Hands the vCPU to its thread: register writes reach it; reads wait for its next exit. @internal */
  threadedResume(): void {
    this.beforeResume()
    this.regs.busy = true
  }

  /** An exit its thread posted: handled here, as {@link run} handles it; a result ends this vCPU's part. @internal */
  threadedExit(code: number): RunResult | undefined {
    this.regs.busy = false
    if (code === EXIT_SLICE) {
      this.regs.reset()
      return undefined
    }
    return this.afterRun(code)
  }

  /**
   * Ends the threaded run; `posted`: an exit the thread posted after the run was
   * decided, kept for the vCPU's next run (a run of any kind handles it first, as a
   * VMM completes an exit before it re-enters the vCPU).
   * @internal
   */
  threadedEnd(posted?: number): void {
    this.regs.busy = false
    this.running = false
    // The run was ended under it (its thread's last native run cancelled, or its exit
    // left for later): it may be waiting in a halt.
    this.maybeSuspended = true
    if (posted !== undefined && posted !== EXIT_CANCELLED) this.pendingExit = posted
  }

  /** The exit left from a threaded run, handled now: its result, if it ends the run. */
  private handlePending(): RunResult | undefined {
    const code = this.pendingExit
    if (code === undefined) return undefined
    this.pendingExit = undefined
    return this.threadedExit(code)
  }

  /** Register writes reach the vCPU; the trace marks where its run begins. */
  private beforeResume(): void {
    if (this.env.cpuid.version !== this.cpuidVersion) this.registerCpuid()
    this.regs.flush()
    if (this.tracer) this.runStart = this.tracer.now()
  }

  /**
   * Everything cached is stale once the vCPU ran; then the exit is handled. Kept
   * small, with the rare paths in functions of their own, so V8 inlines it into the
   * run loops: it runs on every exit.
   */
  private afterRun(code: number): RunResult | undefined {
    this.regs.reset()
    // A VP that left the hypervisor on an intercept was running; after any other end
    // it may wait in a halt.
    this.maybeSuspended = code >= EXIT_CANCELLED
    // Every run-end code is at or above EXIT_CANCELLED; message types are below.
    if (code >= EXIT_CANCELLED) {
      const end = this.runEnded(code)
      if (end) return end
    }
    this.exits++
    this.progress?.exit(code)
    this.regs.beginExit()
    let result: RunResult | undefined
    try {
      result = this.tracer ? this.handleTraced(code, this.tracer) : this.handle(code)
    } catch (e) {
      // A device closed the VM (or this vCPU) during the exit, as a power-off device
      // does: the rest of the exit cannot complete, and the run ends, not with an error.
      if (this.isClosed) return this.env.takeStop() ?? { reason: 'cancelled' }
      throw e
    }
    if (this.isClosed) return this.env.takeStop() ?? { reason: 'cancelled' }
    return result ?? this.env.takeStop() ?? (this.debugState?.singleStep === true && code !== T_EXCEPTION ? this.steppedByExit() : undefined)
  }

  /**
   * Single-stepping, an instruction the VMM completed (a port or MMIO access) is the
   * step: the hypervisor's trap would come only after the next instruction, as the
   * VMM moved RIP past this one (KVM's `kvm_skip_emulated_instruction` owes the same).
   */
  private steppedByExit(): RunResult {
    return { reason: 'step', address: this.regs.getRaw('cs')[0] + this.regs.get('rip') }
  }

  /** A run that ended without an exit: its result (undefined for a code that is not one). */
  private runEnded(code: number): RunResult | undefined {
    const end = runEnd(code)
    // A run that ends without an exit may be one slice of a longer one (the REPL's):
    // its progress line is redrawn on the clock.
    if (end) this.progress?.tick()
    return end
  }

  /** {@link handle} with the guest slice and the exit's handling recorded in the trace. */
  private handleTraced(code: number, tracer: ExitTrace): RunResult | undefined {
    // One clock reading ends the guest slice and starts the exit's: slices on one
    // track must not overlap.
    const handled = tracer.now()
    tracer.record('guest', 'guest', this.runStart, handled)
    const args = exitArgs(code, this.msg)
    try {
      return this.handle(code)
    } finally {
      tracer.record(messageTypeName(code), 'exit', handled, tracer.now(), args)
    }
  }

  /**
   * Starts recording each guest run and each exit's handling as Chrome trace events
   * (at most `limit`; later ones are counted as dropped). Restarting clears the trace.
   */
  startTrace(limit = 100_000): void {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new MshvError('EINVAL', `trace limit must be a positive integer, got ${describe(limit)}`)
    this.tracer = new ExitTrace(this.index, limit)
  }

  /** Stops recording; returns what was recorded. */
  stopTrace(): ChromeTrace | undefined {
    const t = this.tracer?.export()
    this.tracer = undefined
    return t
  }

  /**
   * The exits recorded since {@link startTrace}, as a Chrome trace document: write
   * `JSON.stringify(vcpu.trace())` to a file and open it in ui.perfetto.dev.
   */
  trace(): ChromeTrace {
    if (!this.tracer) throw new MshvError('EINVAL', 'no trace is being recorded: call startTrace() first')
    return this.tracer.export()
  }

  /** Guest memory as this vCPU sees it at the current exit. */
  memory(): LinearMemory {
    this.checkOpen()
    return new LinearMemory(this.regs, this.native, (this.physical ??= new GuestPhysical(this.env.ram, this.env.bus, this.ctx)))
  }

  /** Physical memory as this vCPU's emulators reach it (it holds no state of an exit). */
  private physical: GuestPhysical | undefined
  /** The MMIO bus as an unmapped-GPA exit's device side. */
  private device: DevicePhysical | undefined
  /** {@link injectException} for the MMIO emulator: an instruction it completes may fault. */
  private readonly inject = (vector: number, errorCode?: number): void => this.injectException(vector, errorCode)

  /** Handles one exit; returns a result when the run should stop. */
  private handle(code: number): RunResult | undefined {
    const msg = this.msg
    switch (code) {
      case T_IO: {
        seedIo(this.messageWords, this.regs)
        handleIo(msg, this.regs, this.env.bus, this.ctx, this.memoryOnDemand)
        const pending = this.env.debugExit.pending
        if (pending !== undefined) {
          this.env.debugExit.pending = undefined
          return { reason: 'debug-exit', code: pending }
        }
        return undefined
      }
      case T_HALT:
        return { reason: 'halt' }
      case T_APIC_EOI:
        // The guest EOI'd a level-triggered vector; its instruction has retired.
        this.env.eoi(this.messageWords[MSG_EOI_VECTOR >> 2] ?? 0, this.index)
        return undefined
      case T_UNMAPPED:
        handleMmio(msg, this.regs, this.memory(), this.inject, (this.device ??= new DevicePhysical(this.env.bus, this.ctx)))
        return undefined
      case T_GPA:
        handleMmio(msg, this.regs, this.memory(), this.inject)
        return undefined
      case T_MSR:
        if (handleMsr(msg, this.regs, this.env.msrs, this.index, () => this.describe()) === 'gp') this.injectException(GP)
        return undefined
      case T_EXCEPTION:
        return this.debugStop()
      case T_FATAL:
        throw GuestFatalError.fromExit(this.native.tripleFault(), this.regs.get('cr2'), this.regs.get('rip'), this.describe())
      default:
        throw new MshvError('EUNHANDLED_EXIT', `unknown exit type ${hex(code)}`)
    }
  }

  /** The main registers as text, for error messages and the REPL. */
  describe(): string {
    this.regs.synchronize()
    return (['rip', 'rflags', 'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'cr0', 'cr2', 'cr3', 'cr4', 'efer'] as const)
      .map((n) => `${n}=${hex(this.regs.get(n))}`)
      .join(' ')
  }

  /** Asks a running vCPU to stop (from a timer or another thread), or ends a halt wait. */
  cancel(): void {
    if (!this.isClosed) this.native.cancel()
  }

  /** Exit, hypercall and register traffic counters. */
  stats(): VcpuStats {
    this.checkOpen()
    const s = this.native.stats()
    return {
      ...this.regs.counters,
      exits: this.exits,
      getRegisterCalls: s.getRegisters,
      setRegisterCalls: s.setRegisters,
      translateCalls: s.translateGva,
      hypercalls: s.getRegisters + s.setRegisters + s.translateGva,
      instructions: s.instructions,
      exitsByType: Object.fromEntries(s.exits.map(([type, count]) => [messageTypeName(type ?? 0), count ?? 0])),
      ...(s.translator
        ? {
            translator: {
              blocks: s.translator.blocks,
              instructions: s.translator.instructions,
              bytes: s.translator.bytes,
              compileMs: s.translator.nanos / 1e6,
              uncovered: s.translator.uncovered,
              failed: s.translator.failed,
              flushes: s.translator.flushes,
            },
          }
        : {}),
    }
  }

  /**
   * Starts recording a digest of each run's end (sim only; `ENOTSUP` on mshv), or
   * stops with `false`; starting again clears what was recorded. The judge of the
   * sim's execution tiers: the same guest on the same deterministic inputs must end
   * every run with the same instruction count, message and registers under
   * `cpu: 'interpreter'` and `cpu: 'translator'`.
   */
  recordExits(on = true): void {
    this.checkOpen()
    this.native.recordExits(on)
  }

  /**
   * The digests recorded since {@link recordExits}, one per run's end (an exit, or a
   * run that ended on the clock, a halt or a limit): the guest instructions retired
   * then, and a 64-bit hash of how the run ended, the exit message and the registers
   * (general, RIP, RFLAGS, segments, control registers, EFER, the TSC, XMM).
   */
  exitDigests(): { instructions: bigint; hash: bigint }[] {
    this.checkOpen()
    const flat = this.native.exitDigests()
    const out: { instructions: bigint; hash: bigint }[] = []
    for (let i = 0; i + 1 < flat.length; i += 2) out.push({ instructions: flat[i] as bigint, hash: flat[i + 1] as bigint })
    return out
  }

  /** Zeroes the counters. */
  resetStats(): void {
    this.checkOpen()
    this.native.resetStats()
    this.exits = 0
    Object.assign(this.regs.counters, { pageReads: 0, hypercallReads: 0, pageWrites: 0, hypercallWrites: 0 })
  }

  /**
   * Releases the vCPU: a run in progress is cancelled (and ends `cancelled`), its
   * views are detached, and later use throws `ECLOSED`. Calling it twice is harmless.
   */
  close(): void {
    if (this.isClosed) return
    this.isClosed = true
    this.regs.close()
    this.native.close()
    this.env.closed(this.index)
  }
}
