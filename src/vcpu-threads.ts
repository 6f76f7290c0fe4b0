/**
 * A VM's vCPUs each on a native thread of its own (`VcpuThreads`,
 * `crates/mshv-napi/src/threads.rs`), their exits handled on this thread exactly as
 * {@link Vcpu.run} handles them: what {@link Vm.run} runs on mshv, and on the sim when
 * more than one vCPU runs (see `src/scheduler.ts`).
 * @module
 */
import { GuestFatalError } from './exits/triple-fault.js'
import type { RunResult, Vcpu } from './vcpu.js'
import type { VmRunResult } from './scheduler.js'
import { MshvError, coded, describe } from './errors.js'
import { native } from './native.js'
import { exitCode } from './layout.js'

/** A vCPU thread's run threw: its error is taken from the group. */
const EXIT_FAILED = exitCode('failed')
/** A native run's slice ended (a progress redraw): not an exit. */
const EXIT_SLICE = exitCode('slice')

/** How long a turn waits for its vCPU's next exit before it looks again (its budget ends the run). */
const TURN_WAIT_MS = 1000

/** The limits of one deterministic or real-time turn. */
export type TurnLimits = { maxInstructions?: number; maxExits?: number; timeoutMs?: number; yieldOnPause?: boolean; idleSleeps?: boolean }

/** An exit a vCPU's thread posted, handled: the vCPU, its place in the group, and what the exit ends with. */
export interface TakenExit {
  readonly v: Vcpu
  readonly i: number
  readonly result: RunResult | undefined
  /** Whether it was an exit, not the end of a slice. */
  readonly exit: boolean
}

/**
 * The open vCPUs of one run, each on its thread. `begin` claims them for the run (an
 * exit one left unhandled in an earlier run is handled there: `leftover`); `take`
 * hands the last vCPU back and handles the next posted exit; `end` stops every thread
 * and leaves the exits posted meanwhile with their vCPUs for their next runs.
 */
export class VcpuThreadGroup {
  private readonly group: InstanceType<typeof native.VcpuThreads>
  private readonly next: (resume: number, timeoutMs: number) => number
  private pending: VmRunResult | undefined

  private constructor(
    readonly cpus: readonly Vcpu[],
    budget: InstanceType<typeof native.RunBudget> | undefined,
  ) {
    this.group = new native.VcpuThreads(
      cpus.map((v) => v.native),
      budget,
    )
    this.next = this.group.nextFunction()
  }

  /** Claims the open vCPUs of `all` for the run and starts their threads, each run limited by `budget`. */
  static begin(all: readonly Vcpu[], budget?: InstanceType<typeof native.RunBudget>): VcpuThreadGroup {
    const cpus = all.filter((v) => !v.closed)
    const begun: Vcpu[] = []
    let left: VmRunResult | undefined
    try {
      for (const v of cpus) {
        const r = v.threadedBegin()
        begun.push(v)
        if (r && !left) left = { ...r, vcpu: v.index }
      }
      const g = new VcpuThreadGroup(cpus, budget)
      g.pending = left
      return g
    } catch (e) {
      for (const v of begun) v.threadedEnd()
      throw e
    }
  }

  /** The result of an exit left from an earlier run, handled at the begin, if it ends this one. */
  leftover(): VmRunResult | undefined {
    const r = this.pending
    this.pending = undefined
    return r
  }

  /** Hands vCPU `i` to its thread (under `budget`, when given, instead of the group's). */
  resume(i: number, budget?: InstanceType<typeof native.RunBudget>): void {
    ;(this.cpus[i] as Vcpu).threadedResume()
    this.group.resume(i, budget)
  }

  /**
   * Hands vCPU `resume` (-1: none) back to its thread, then waits up to `timeoutMs`
   * for a posted exit and handles it: undefined when none came. A run or an exit
   * handler that threw throws, naming the vCPU.
   */
  take(resume: number, timeoutMs: number): TakenExit | undefined {
    if (resume >= 0) (this.cpus[resume] as Vcpu).threadedResume()
    let r: number
    try {
      r = this.next(resume, timeoutMs)
    } catch (e) {
      throw coded(e)
    }
    if (r < 0) return undefined
    const i = r % 256
    const code = (r - i) / 256
    const v = this.cpus[i] as Vcpu
    if (code === EXIT_FAILED) throw named(this.group.takeError(i), v)
    try {
      return { v, i, result: v.threadedExit(code), exit: code !== EXIT_SLICE }
    } catch (e) {
      throw named(e, v)
    }
  }

  /**
   * One turn of `v` within `limits`, the other vCPUs waiting: what {@link Vcpu.run}
   * with them would return. The same native runs under the same budget as a
   * synchronous turn, so a deterministic replay makes the same exits.
   */
  turn(v: Vcpu, limits: TurnLimits): RunResult {
    const i = this.cpus.indexOf(v)
    if (i < 0) return { reason: 'cancelled' }
    let budget: InstanceType<typeof native.RunBudget>
    try {
      budget = new native.RunBudget({ maxInstructions: limits.maxInstructions, timeoutMs: limits.timeoutMs, yieldOnPause: limits.yieldOnPause, idleSleeps: limits.idleSleeps })
    } catch (e) {
      throw coded(e)
    }
    this.resume(i, budget)
    const maxExits = limits.maxExits ?? Number.POSITIVE_INFINITY
    let resume = -1
    for (let exits = 0; ; ) {
      // The turn's budget ends its runs; the wait only bounds one hand-over.
      const t = this.take(resume, TURN_WAIT_MS)
      resume = -1
      if (!t) continue
      if (t.exit) exits++
      if (t.result) return t.result
      if (exits >= maxExits) return { reason: 'exits' }
      resume = i
    }
  }

  /** Ends the threads; an exit posted and not handled stays with its vCPU for its next run. */
  end(): void {
    this.group.end()
    const posted = new Map<Vcpu, number>()
    for (let r = this.next(-1, 0); r >= 0; r = this.next(-1, 0)) {
      const i = r % 256
      const code = (r - i) / 256
      const v = this.cpus[i]
      if (v && code !== EXIT_FAILED) posted.set(v, code)
    }
    for (const v of this.cpus) v.threadedEnd(posted.get(v))
  }
}

/** `e` (an error a vCPU's run or exit threw) with the vCPU named, its code kept. */
function named(e: unknown, v: Vcpu): Error {
  const c = coded(e)
  // A triple fault keeps its class and what it says of the exceptions.
  if (c instanceof GuestFatalError) return new GuestFatalError(`vCPU ${v.index}: ${c.message}`, c, { cause: e })
  if (c instanceof MshvError) return new MshvError(c.code, `vCPU ${v.index}: ${c.message}`, { cause: e })
  return c instanceof Error ? c : new MshvError('EINTERNAL', `vCPU ${v.index}: ${describe(c)}`)
}
