/**
 * A vCPU as the user scripts it: run until something the script cares about, with the
 * exit handlers and the register cache in between.
 * @module
 */
import type { NativeVcpu } from './native.js'
import type { AccessContext, IoBus } from './bus.js'
import { exitCode, message, messageType, messageTypeName } from './layout.js'
import { MshvError, checkU32, hex } from './errors.js'
import { RegisterCache, type SyncPolicy, type SyncCounters } from './registers.js'
import { handleIo, seedIo } from './exits/pio.js'
import type { DebugExit } from './devices/debug-exit.js'
import { GuestPhysical, LinearMemory, type RamLookup } from './emulator/memory.js'
import { handleMmio } from './exits/mmio.js'
import { handleCpuid, type CpuidTable } from './exits/cpuid.js'
import { handleMsr, type MsrHandler } from './exits/msr.js'
import { native as binding } from './native.js'
import { ExitTrace, type ChromeTrace } from './trace.js'
import { ProgressLine, type ProgressStream } from './progress.js'

const T_IO = messageType('ioPort')
const T_HALT = messageType('halt')
const T_UNMAPPED = messageType('unmappedGpa')
const T_GPA = messageType('gpaIntercept')
const T_FATAL = messageType('unrecoverableException')
const T_CPUID = messageType('cpuid')
const T_MSR = messageType('msr')
const EXIT_CANCELLED = exitCode('cancelled')
const EXIT_BUDGET = exitCode('budget')
const GP = 13
const MSG_RIP = message('rip')

/** Why `run()` returned. */
export type RunResult =
  | { reason: 'debug-exit'; code: number }
  | { reason: 'halt' }
  | { reason: 'cancelled' }
  | { reason: 'budget' }

/** Why {@link Vcpu.step} returned: the instruction ran (`stepped`), or the run would have stopped there. */
export type StepResult = RunResult | { reason: 'stepped' }

/** Limits for {@link Vcpu.run}. */
export interface RunOptions {
  /** Stop after this many guest instructions in one native run (sim; mshv refuses it with `ENOTSUP`). */
  maxInstructions?: number
  /** Stop a native run after this many milliseconds (sim; mshv refuses it with `ENOTSUP`: use `cancel()` from a timer). */
  timeoutMs?: number
  /**
   * On HLT: `'return'` (default) ends the run with `{ reason: 'halt' }`; `'wait'`
   * (runAsync only) sleeps until {@link Vcpu.wake} and then resumes after the HLT, as
   * an interrupt would wake the processor.
   */
  onHalt?: 'return' | 'wait'
  /**
   * Show a live line with exits per second and the exit mix while the run lasts (after
   * half a second), redrawn in place: `true` for `process.stdout`, or a stream. Drawn
   * only when the stream is a terminal (`isTTY`).
   */
  progress?: boolean | ProgressStream | ProgressLine
  /**
   * Return `{ reason: 'budget' }` after this many exits, so a caller can run in slices
   * (and let the event loop in between) without giving up the synchronous loop's speed.
   */
  maxExits?: number
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
}

/** The exit budget of `options`, checked. */
function exitBudget(options: RunOptions): number {
  const n = options.maxExits
  if (n === undefined) return Number.POSITIVE_INFINITY
  if (!Number.isInteger(n) || n < 1) throw new MshvError('EINVAL', `maxExits must be a positive integer, got ${String(n)}`)
  return n
}

/** Devices and settings a vCPU's exit handlers use. */
export interface VcpuEnvironment {
  readonly bus: IoBus
  readonly debugExit: DebugExit
  /** Guest RAM, for the emulators' memory accesses. */
  readonly ram: RamLookup
  /** Answers to intercepted CPUID. */
  readonly cpuid: CpuidTable
  /** Handlers of intercepted MSRs. */
  readonly msrs: ReadonlyMap<number, MsrHandler>
}

/** A virtual processor driven from TypeScript. */
export class Vcpu {
  /** The register cache and sync policy. */
  readonly regs: RegisterCache
  /** The exit message of the last run, read in place. */
  readonly message: DataView
  /** The same message as u32 words, for the per-exit reads that need no BigInt. */
  private readonly messageWords: Uint32Array
  private readonly ctx: AccessContext
  private exits = 0
  /** A wake that arrived before the HLT it ends (latched, like a pending interrupt). */
  private wakePending = false
  private waiter: ((how: 'wake' | 'cancel') => void) | undefined
  private tracer: ExitTrace | undefined
  /** Runs the native vCPU for at most one instruction: {@link step}'s call, made on first use. */
  private stepOnce: (() => number) | undefined
  /** The progress line of the run in progress, if it asked for one. */
  private progress: ProgressLine | undefined
  /** When the current native run began (trace time), while tracing. */
  private runStart = 0
  /** Runs the native vCPU to its next exit without limits: the per-exit call of {@link run}. */
  private readonly runUnlimited: () => number

  /** @internal */
  constructor(
    /** The native vCPU. */
    readonly native: NativeVcpu,
    private readonly env: VcpuEnvironment,
    policy: SyncPolicy,
  ) {
    this.regs = new RegisterCache(native, native.registerPage()?.buffer() ?? null, policy)
    this.message = new DataView(native.messageBuffer())
    this.messageWords = new Uint32Array(this.message.buffer)
    this.ctx = { regs: this.regs, vcpuIndex: native.index }
    this.runUnlimited = native.runner()
  }

  /** Index of the vCPU in its VM. */
  get index(): number {
    return this.native.index
  }

  /**
   * Runs the guest, handling exits, until a debug-exit write, HLT, a cancel or the
   * budget. Register writes made before the call reach the guest first.
   */
  run(options: RunOptions = {}): RunResult {
    if (options.onHalt === 'wait') {
      throw new MshvError('EINVAL', "onHalt 'wait' needs runAsync(): a synchronous run cannot wait for wake()")
    }
    const limited = options.maxInstructions !== undefined || options.timeoutMs !== undefined
    const runNative = limited ? this.native.runner(options) : this.runUnlimited
    const exitLimit = exitBudget(options)
    const ownLine = this.startProgress(options)
    try {
      for (let exits = 0; exits < exitLimit; exits++) {
        this.beforeResume()
        const result = this.afterRun(runNative())
        if (result) return result
      }
      return { reason: 'budget' }
    } finally {
      this.endProgress(ownLine)
    }
  }

  /** Attaches the run's progress line; returns whether this run made it (and so ends it). */
  private startProgress(options: RunOptions): boolean {
    const p = options.progress
    if (p instanceof ProgressLine) {
      this.progress = p
      return false
    }
    this.progress = p ? new ProgressLine(p === true ? process.stdout : p) : undefined
    return true
  }

  private endProgress(own: boolean): void {
    if (own) this.progress?.finish()
    this.progress = undefined
  }

  /**
   * Like {@link run}, but each native run happens on a worker thread, so the event
   * loop stays free (timers, I/O, `cancel()` from a callback).
   */
  async runAsync(options: RunOptions = {}): Promise<RunResult> {
    const exitLimit = exitBudget(options)
    const ownLine = this.startProgress(options)
    try {
      for (let exits = 0; exits < exitLimit; exits++) {
        this.beforeResume()
        const result = this.afterRun(await this.native.run(options))
        if (result?.reason === 'halt' && options.onHalt === 'wait') {
          if ((await this.sleep()) === 'cancel') return { reason: 'cancelled' }
          continue
        }
        if (result) return result
      }
      return { reason: 'budget' }
    } finally {
      this.endProgress(ownLine)
    }
  }

  /**
   * Runs one guest instruction: an instruction that exits (a port or MMIO access) is
   * completed by its handler, as {@link run} would. Needs an instruction budget, so
   * the sim backend; mshv refuses it with `ENOTSUP`.
   */
  step(): StepResult {
    this.stepOnce ??= this.native.runner({ maxInstructions: 1 })
    this.beforeResume()
    const result = this.afterRun(this.stepOnce())
    return result === undefined || result.reason === 'budget' ? { reason: 'stepped' } : result
  }

  /** Waits for {@link wake} (or a cancel) unless one is already latched. */
  private sleep(): Promise<'wake' | 'cancel'> {
    if (this.wakePending) {
      this.wakePending = false
      return Promise.resolve('wake')
    }
    return new Promise((resolve) => {
      this.waiter = resolve
    })
  }

  /**
   * Wakes a vCPU halted in `runAsync({ onHalt: 'wait' })`: it resumes after its HLT.
   * A wake before the HLT is latched and ends the next one at once.
   */
  wake(): void {
    if (!this.endHaltWait('wake')) this.wakePending = true
  }

  /** Ends a halt wait with `how`; returns whether there was one. */
  private endHaltWait(how: 'wake' | 'cancel'): boolean {
    const w = this.waiter
    this.waiter = undefined
    w?.(how)
    return w !== undefined
  }

  /** Whether the vCPU is asleep in HLT, waiting for {@link wake}. */
  get halted(): boolean {
    return this.waiter !== undefined
  }

  /**
   * Makes the vCPU take exception `vector` (0..31) when it next resumes, pushing
   * `errorCode` when given: written to the `pendingEvent0` register (a hypercall).
   */
  injectException(vector: number, errorCode?: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector > 31) {
      throw new MshvError('EINVAL', `exception vector must be an integer in 0..31, got ${String(vector)}`)
    }
    if (errorCode !== undefined) checkU32('exception error code', errorCode)
    const [lo, hi] = binding.pendingException(vector, errorCode) as [bigint, bigint]
    this.regs.setRaw('pendingEvent0', lo, hi)
  }

  /** Register writes reach the vCPU; the trace marks where its run begins. */
  private beforeResume(): void {
    this.regs.flush()
    if (this.tracer) this.runStart = this.tracer.now()
  }

  /** Everything cached is stale once the vCPU ran; then the exit is handled. */
  private afterRun(code: number): RunResult | undefined {
    this.regs.reset()
    if (code === EXIT_CANCELLED) return { reason: 'cancelled' }
    if (code === EXIT_BUDGET) return { reason: 'budget' }
    this.exits++
    this.progress?.exit(code)
    this.regs.beginExit()
    const tracer = this.tracer
    if (!tracer) return this.handle(code)
    const handled = tracer.now()
    tracer.record('guest', 'guest', this.runStart)
    const rip = this.message.getBigUint64(MSG_RIP, true)
    try {
      return this.handle(code)
    } finally {
      tracer.record(messageTypeName(code), 'exit', handled, { rip: hex(rip) })
    }
  }

  /**
   * Starts recording each guest run and each exit's handling as Chrome trace events
   * (at most `limit`; later ones are counted as dropped). Restarting clears the trace.
   */
  startTrace(limit = 100_000): void {
    if (!Number.isInteger(limit) || limit < 1) throw new MshvError('EINVAL', `trace limit must be a positive integer, got ${String(limit)}`)
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
    return new LinearMemory(this.regs, this.native, new GuestPhysical(this.env.ram, this.env.bus, this.ctx))
  }

  /** Handles one exit; returns a result when the run should stop. */
  private handle(code: number): RunResult | undefined {
    const msg = this.message
    switch (code) {
      case T_IO: {
        seedIo(this.messageWords, this.regs)
        handleIo(msg, this.regs, this.env.bus, this.ctx, () => this.memory())
        const pending = this.env.debugExit.pending
        if (pending !== undefined) {
          this.env.debugExit.pending = undefined
          return { reason: 'debug-exit', code: pending }
        }
        return undefined
      }
      case T_HALT:
        return { reason: 'halt' }
      case T_UNMAPPED:
      case T_GPA:
        handleMmio(msg, this.regs, this.memory())
        return undefined
      case T_CPUID:
        handleCpuid(msg, this.regs, this.env.cpuid)
        return undefined
      case T_MSR:
        if (handleMsr(msg, this.regs, this.env.msrs, this.index, () => this.describe()) === 'gp') this.injectException(GP, 0)
        return undefined
      case T_FATAL:
        throw new MshvError('EGUEST_FATAL', `the guest hit an unrecoverable exception (triple fault): ${this.describe()}`)
      default:
        throw new MshvError('EUNHANDLED_EXIT', `unknown exit type ${hex(code)}`)
    }
  }

  /** The main registers as text, for error messages and the REPL. */
  describe(): string {
    this.regs.synchronize()
    return ['rip', 'rflags', 'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'cr0', 'cr3', 'cr4', 'efer']
      .map((n) => `${n}=${hex(this.regs.get(n))}`)
      .join(' ')
  }

  /** Asks a running vCPU to stop (from a timer or another thread), or ends a halt wait. */
  cancel(): void {
    // A halted vCPU is not in the native run: a native cancel would stop the next one.
    if (!this.endHaltWait('cancel')) this.native.cancel()
  }

  /** Exit, hypercall and register traffic counters. */
  stats(): VcpuStats {
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
    }
  }

  /** Zeroes the counters. */
  resetStats(): void {
    this.native.resetStats()
    this.exits = 0
    Object.assign(this.regs.counters, { pageReads: 0, hypercallReads: 0, pageWrites: 0, hypercallWrites: 0 })
  }

  /** Releases the vCPU; later use throws a clear error. */
  close(): void {
    this.native.close()
  }
}
