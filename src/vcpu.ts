/**
 * A vCPU as the user scripts it: run until something the script cares about, with the
 * exit handlers and the register cache in between.
 * @module
 */
import type { NativeVcpu } from './native.js'
import type { AccessContext, IoBus } from './bus.js'
import { exitCode, message, messageType, messageTypeName } from './layout.js'
import { MshvError, hex } from './errors.js'
import { RegisterCache, type SyncPolicy, type SyncCounters } from './registers.js'
import { handleIo, seedIo } from './exits/pio.js'
import type { DebugExit } from './devices/debug-exit.js'
import { GuestPhysical, LinearMemory, type RamLookup } from './emulator/memory.js'
import { handleMmio } from './exits/mmio.js'

const T_IO = messageType('ioPort')
const T_HALT = messageType('halt')
const T_UNMAPPED = messageType('unmappedGpa')
const T_GPA = messageType('gpaIntercept')
const T_FATAL = messageType('unrecoverableException')
const T_CPUID = messageType('cpuid')
const T_MSR = messageType('msr')
const EXIT_CANCELLED = exitCode('cancelled')
const EXIT_BUDGET = exitCode('budget')
const MSG_RIP = message('rip')

/** Why `run()` returned. */
export type RunResult =
  | { reason: 'debug-exit'; code: number }
  | { reason: 'halt' }
  | { reason: 'cancelled' }
  | { reason: 'budget' }

/** Limits for {@link Vcpu.run}. */
export interface RunOptions {
  /** Stop after this many guest instructions in one native run (sim). */
  maxInstructions?: number
  /** Stop a native run after this many milliseconds. */
  timeoutMs?: number
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

/** Devices and settings a vCPU's exit handlers use. */
export interface VcpuEnvironment {
  readonly bus: IoBus
  readonly debugExit: DebugExit
  /** Guest RAM, for the emulators' memory accesses. */
  readonly ram: RamLookup
}

/** A virtual processor driven from TypeScript. */
export class Vcpu {
  /** The register cache and sync policy. */
  readonly regs: RegisterCache
  /** The exit message of the last run, read in place. */
  readonly message: DataView
  private readonly ctx: AccessContext
  private exits = 0

  /** @internal */
  constructor(
    /** The native vCPU. */
    readonly native: NativeVcpu,
    private readonly env: VcpuEnvironment,
    policy: SyncPolicy,
  ) {
    this.regs = new RegisterCache(native, native.registerPage()?.buffer() ?? null, policy)
    this.message = new DataView(native.messageBuffer())
    this.ctx = { regs: this.regs, vcpuIndex: native.index }
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
    for (;;) {
      this.regs.flush()
      const result = this.afterRun(this.native.runSync(options))
      if (result) return result
    }
  }

  /**
   * Like {@link run}, but each native run happens on a worker thread, so the event
   * loop stays free (timers, I/O, `cancel()` from a callback).
   */
  async runAsync(options: RunOptions = {}): Promise<RunResult> {
    for (;;) {
      this.regs.flush()
      const result = this.afterRun(await this.native.run(options))
      if (result) return result
    }
  }

  /** Everything cached is stale once the vCPU ran; then the exit is handled. */
  private afterRun(code: number): RunResult | undefined {
    this.regs.reset()
    if (code === EXIT_CANCELLED) return { reason: 'cancelled' }
    if (code === EXIT_BUDGET) return { reason: 'budget' }
    this.exits++
    this.regs.beginExit()
    return this.handle(code)
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
        seedIo(msg, this.regs)
        handleIo(msg, this.regs, this.env.bus, this.ctx)
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
      case T_MSR:
        throw new MshvError('EUNHANDLED_EXIT', `no handler for exit type ${hex(code)} at rip ${hex(msg.getBigUint64(MSG_RIP, true))}`)
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

  /** Asks a running vCPU to stop (from a timer or another thread). */
  cancel(): void {
    this.native.cancel()
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
