/**
 * Runs all of a VM's vCPUs with its device timers while the event loop stays free:
 * the run behind {@link Vm.run}.
 *
 * On the sim with one vCPU, it takes turns on the JavaScript thread, each turn a synchronous
 * run of many exits (the exit path stays as fast as {@link Vcpu.run}'s), ended by a
 * quantum of guest instructions (deterministic clock: the same guest and inputs give
 * the same interleaving and exits) or a slice of host time (real time); between turns
 * the due device timers fire and, every slice, the event loop gets a turn, so stdin,
 * timers and promises run and an interrupt raised from JavaScript reaches the guest
 * within a slice. A vCPU halted with interrupts enabled never blocks the thread for
 * long: one whose APIC timer is armed waits for it a slice at a time (real time);
 * when every vCPU waits for an interrupt only JavaScript can raise, the event loop
 * runs until it does.
 *
 * On mshv, and on the sim whenever more than one vCPU runs, each vCPU runs on a native
 * thread of its own, as a VMM's vCPU threads do, and this thread handles the exits they
 * hand it (see {@link VmRunOptions.threads}): the code path CI runs on the sim is the
 * one a host runs. HLT waits on the vCPU's thread (in the hypervisor on mshv); the
 * device timers fire on this thread. On the deterministic clock the threads take the
 * turns described above one at a time, so that a replay is exact.
 * @module
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import type { Vm } from './vm.js'
import type { RunResult, Vcpu } from './vcpu.js'
import { MshvError, describe } from './errors.js'
import { native } from './native.js'
import { VcpuThreadGroup, type TurnLimits } from './vcpu-threads.js'
import { codeAddress, type CodeAddress } from './debug/breakpoints.js'

/** Options for {@link Vm.run}. */
export interface VmRunOptions {
  /** End with `{ reason: 'timeout' }` after this many milliseconds of host time. */
  timeoutMs?: number
  /** How long a vCPU runs before the event loop gets a turn (ms, default 1). */
  sliceMs?: number
  /** Deterministic clock: guest instructions per vCPU turn (default 100,000). */
  quantum?: number
  /**
   * Stop when any vCPU reaches the instruction at this linear address (CS base + RIP),
   * before running it: `{ reason: 'breakpoint', address, vcpu }`.
   */
  until?: CodeAddress
  /**
   * Stop with `{ reason: 'instructions' }` once the vCPUs have retired this many guest
   * instructions in all (sim, deterministic clock: where a replay goes to a point).
   */
  maxInstructions?: number
  /**
   * Run each vCPU on a native thread of its own, its exits handed to this thread, as a
   * VMM's vCPU threads run. The default: always on mshv; on the sim whenever more than
   * one vCPU runs. On the sim's real-time clock the threads run at once (the sim's
   * execution lock takes them by turns); on its deterministic clock they take turns
   * of a quantum each, so that a replay is exact. `true` asks for threads with one vCPU
   * too; `false` runs every vCPU on this thread (sim); on mshv it is `ENOTSUP`.
   */
  threads?: boolean
  /**
   * What the deterministic clock does when every vCPU waits in a halt: `'leap'`
   * (default) moves guest time at once to the next timer, so an idle guest costs no
   * host time; `'sleep'` lets that time pass on the host's clock first (QEMU's `-icount
   * sleep=on`), so an idle guest's clock keeps pace with the user's, `sleep 5` takes
   * five seconds and the host core rests, while a busy guest's exits and instructions
   * stay those of every replay. An interrupt raised meanwhile (input) ends the wait:
   * guest time then moves on by the host time that passed.
   */
  idle?: 'leap' | 'sleep'
}

/** Why {@link Vm.run} returned, and which vCPU's exit ended it (none for a timeout or a cancel). */
export type VmRunResult = RunResult & { vcpu?: number }

const OPTIONS = ['timeoutMs', 'sliceMs', 'quantum', 'until', 'maxInstructions', 'threads', 'idle'] as const


/**
 * Exits a deterministic turn takes at most, beside its quantum of instructions: a
 * `rep outsb` batch is one instruction and up to STRING_IO_BATCH port writes (~0.2 ms
 * in TypeScript), and a quantum of them held the thread ~100 s. The bound is guest work,
 * not host time, so a replay ends its turns where the original did. (Cutting turns at
 * host-time points changed a Linux boot's exit count, 39,739 against 39,705: not done.)
 */
const TURN_EXITS = 256

function check(options: unknown): Required<Pick<VmRunOptions, 'sliceMs' | 'quantum'>> & VmRunOptions {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new MshvError('EINVAL', `vm.run(): options must be an object, got ${describe(options)}`)
  }
  const o = options as Record<string, unknown>
  for (const key of Object.keys(o)) {
    if (!(OPTIONS as readonly string[]).includes(key)) throw new MshvError('EINVAL', `vm.run(): unknown option '${key}' (options: ${OPTIONS.join(', ')})`)
  }
  const positive = (key: string, integer: boolean): void => {
    const v = o[key]
    if (v !== undefined && !(typeof v === 'number' && v > 0 && v <= Number.MAX_SAFE_INTEGER && (!integer || Number.isInteger(v)))) {
      throw new MshvError('EINVAL', `vm.run(): ${key} must be a positive ${integer ? 'integer' : 'number'}, got ${describe(v)}`)
    }
  }
  positive('sliceMs', false)
  positive('quantum', true)
  const t = o['timeoutMs']
  if (t !== undefined && !(typeof t === 'number' && t >= 0 && t <= Number.MAX_SAFE_INTEGER)) {
    throw new MshvError('EINVAL', `vm.run(): timeoutMs must be a number of milliseconds from 0, got ${describe(t)}`)
  }
  if (o['until'] !== undefined) codeAddress('vm.run(): until', o['until'])
  const th = o['threads']
  if (th !== undefined && typeof th !== 'boolean') throw new MshvError('EINVAL', `vm.run(): threads must be true or false, got ${describe(th)}`)
  const idle = o['idle']
  if (idle !== undefined && idle !== 'leap' && idle !== 'sleep') throw new MshvError('EINVAL', `vm.run(): idle must be 'leap' or 'sleep', got ${describe(idle)}`)
  const n = o['maxInstructions']
  if (n !== undefined && !(typeof n === 'number' && Number.isSafeInteger(n) && n >= 0)) {
    throw new MshvError('EINVAL', `vm.run(): maxInstructions must be an integer from 0 to 2^53-1, got ${describe(n)}`)
  }
  return { sliceMs: 1, quantum: 100_000, ...(o as VmRunOptions) }
}

/** Guest instructions the open vCPUs have retired. */
export function retired(cpus: readonly Vcpu[]): number {
  let n = 0
  for (const v of cpus) if (!v.closed) n += v.stats().instructions
  return n
}

/** Whether a vCPU's run result only ends its turn (the VM run goes on). */
function turnOver(r: RunResult): boolean {
  return r.reason === 'instructions' || r.reason === 'timeout' || r.reason === 'clock' || r.reason === 'exits'
}

/** A VM run in progress: its cancel and its wake-up for waits. */
export class VmRun {
  private cancelled = false
  private wakeWait: (() => void) | undefined
  private readonly stopListening: () => void
  /** vCPUs halted with interrupts disabled: they no longer run. */
  private readonly stopped = new Set<Vcpu>()
  /** vCPUs that reported idle this round: they wait for an interrupt. */
  private readonly idle = new Set<Vcpu>()

  constructor(private readonly vm: Vm) {
    this.stopListening = vm.onInterrupt(() => this.wake())
  }

  private wake(): void {
    const w = this.wakeWait
    this.wakeWait = undefined
    w?.()
  }

  /** Ends the run: it returns `{ reason: 'cancelled' }` at its next turn, running vCPUs stopped. */
  cancel(): void {
    this.cancelled = true
    for (const v of this.vm.cpus) if (!v.closed) v.cancel()
    this.wake()
  }

  async run(options: VmRunOptions): Promise<VmRunResult> {
    const o = check(options)
    const cpus = this.vm.cpus
    if (cpus.length === 0) throw new MshvError('EINVAL', 'vm.run(): the VM has no vCPUs (createVcpu first)')
    const end = o.timeoutMs === undefined ? Number.POSITIVE_INFINITY : performance.now() + o.timeoutMs
    if (o.maxInstructions !== undefined && (this.vm.backend !== 'sim' || this.vm.clock !== 'deterministic')) {
      throw new MshvError('ENOTSUP', 'vm.run(): maxInstructions needs the sim on the deterministic clock (guest instructions are its time)')
    }
    try {
      // One breakpoint for the whole run on every vCPU, not one per turn.
      if (o.until !== undefined) for (const v of cpus) if (!v.closed) v.holdUntil(codeAddress('until', o.until))
      const how = this.threading(o)
      return how === 'parallel' ? await this.threads(o, end) : await this.turns(o, end, how === 'serial')
    } finally {
      if (o.until !== undefined) for (const v of cpus) v.releaseUntil()
      this.stopListening()
      // A cancel that found a vCPU between turns is still latched in it: left there, it
      // would end the next vm.run() at once, as `{ reason: 'cancelled', vcpu }`.
      if (this.cancelled) for (const v of cpus) if (!v.closed) v.native.takeCancel()
    }
  }

  /**
   * How this run's vCPUs run (see {@link VmRunOptions.threads}): each on a thread of its
   * own, all at once (`parallel`: mshv, and the sim's real-time clock) or one at a time
   * (`serial`: the deterministic clock, whose replay must be exact), or all on this
   * thread (`none`).
   */
  private threading(o: VmRunOptions): 'parallel' | 'serial' | 'none' {
    const vm = this.vm
    if (vm.backend !== 'sim') {
      if (o.threads === false) throw new MshvError('ENOTSUP', 'vm.run(): threads: false needs the sim (on mshv every vCPU runs on a thread of its own)')
      return 'parallel'
    }
    const threads = o.threads ?? vm.cpus.filter((v) => !v.closed).length > 1
    if (!threads) return 'none'
    return vm.clock === 'deterministic' ? 'serial' : 'parallel'
  }

  /**
   * The sim: vCPUs take turns on this thread. A vCPU that reported idle is asked again
   * each round (a cheap call when nothing changed): another vCPU's IPI may have woken it.
   */
  private async turns(o: ReturnType<typeof check>, end: number, threaded: boolean): Promise<VmRunResult> {
    const vm = this.vm
    // Threaded (more than one vCPU, by default): each vCPU on its thread, the turns one
    // at a time (the path a host runs, serialized so that the deterministic replay
    // stays exact). Otherwise every turn runs on this thread.
    const serial = threaded ? VcpuThreadGroup.begin(vm.cpus) : undefined
    try {
      return await this.turnRounds(o, end, serial)
    } finally {
      serial?.end()
    }
  }

  private async turnRounds(o: ReturnType<typeof check>, end: number, serial: VcpuThreadGroup | undefined): Promise<VmRunResult> {
    const vm = this.vm
    const deterministic = vm.clock === 'deterministic'
    if (serial) {
      const left = serial.leftover()
      if (left) return left
    }
    let yieldAt = performance.now() + o.sliceMs
    const limit = o.maxInstructions === undefined ? Number.POSITIVE_INFINITY : retired(vm.cpus) + o.maxInstructions
    const spinners = vm.cpus.filter((c) => !c.closed).length > 1
    const sleeps = deterministic && o.idle === 'sleep'
    for (;;) {
      if (this.cancelled) return { reason: 'cancelled' }
      vm.timers.fire()
      this.idle.clear()
      let open = 0
      const before = retired(vm.cpus)
      if (before >= limit) return { reason: 'instructions' }
      const timeBefore = vm.guestTimeNs()
      for (const v of vm.cpus) {
        if (v.closed || this.stopped.has(v)) continue
        open++
        // Runs end by themselves when the next device timer is due (the VM keeps the
        // hypervisor told of it), so a timer set during the turn is on time too.
        // Each turn ends by the run's deadline too: a quantum of 2e9 instructions, or a
        // slice longer than the time left, would overrun `timeoutMs` (a deadline reached
        // ends the run, so the deterministic replay of what came before is unchanged).
        // A deterministic turn also ends after TURN_EXITS exits, at the same point in
        // every replay, so exits that each do much (string I/O batches) cannot hold the
        // thread for a whole quantum.
        const left = end - performance.now()
        // (Counting the vCPUs' instructions costs a stats() call each: only a run with a limit pays it.)
        const budget = Number.isFinite(limit) ? Math.min(o.quantum, limit - retired(vm.cpus)) : o.quantum
        if (budget <= 0) return { reason: 'instructions' }
        // A vCPU spinning (PAUSE) on what another executing vCPU will do gives its turn
        // to that one (deterministic: where the spin is in the instruction stream).
        const turn: TurnLimits = deterministic
          ? { maxInstructions: budget, maxExits: TURN_EXITS, yieldOnPause: spinners, idleSleeps: sleeps, ...(Number.isFinite(left) ? { timeoutMs: Math.max(0, left) } : {}) }
          : { timeoutMs: Math.max(0, Math.min(o.sliceMs, left)) }
        const r = serial ? serial.turn(v, turn) : v.run(turn)
        // A device closed the VM during the turn (a power-off device): what it asked for ends the run.
        if (vm.closed) return r.reason === 'cancelled' || r.reason === 'idle' || turnOver(r) ? { reason: 'cancelled' } : { ...r, vcpu: v.index }
        vm.timers.fire()
        if (r.reason === 'idle') this.idle.add(v)
        else if (r.reason === 'cancelled' && this.cancelled) return r
        else if (r.reason === 'halt') {
          // HLT with interrupts disabled: this processor stops (until NMI or INIT, SDM
          // vol 3 6.7.1), as Linux's `stop_this_cpu` stops the others at poweroff; the
          // VM runs on while any vCPU does.
          this.stopped.add(v)
          if (vm.cpus.every((c) => c.closed || this.stopped.has(c))) return { ...r, vcpu: v.index }
        } else if (!turnOver(r)) return { ...r, vcpu: v.index }
      }
      // Every vCPU closed under the run: nothing is left to run (this spun at 100 % CPU).
      if (open === 0) return { reason: 'cancelled' }
      const now = performance.now()
      if (now >= end) return { reason: 'timeout' }
      // All idle, and none ran this round nor (deterministic) leapt the clock to
      // another's timer: no vCPU woke another since it halted. (In real time a vCPU
      // with a timer armed waits for it inside its run and is not idle.)
      const leapt = deterministic && vm.guestTimeNs() !== timeBefore
      if (open > 0 && this.idle.size === open && retired(vm.cpus) === before && !leapt) {
        await (sleeps ? this.sleepIdle(end) : this.allIdle(end))
        yieldAt = performance.now() + o.sliceMs
      } else if (now >= yieldAt) {
        await yieldToEventLoop()
        yieldAt = performance.now() + o.sliceMs
      }
    }
  }

  /**
   * Every vCPU waits for an interrupt. With a device timer pending, the next round's
   * runs leap to it (deterministic) or wait for it inside the run, a slice at a time
   * (real time). With none, only an interrupt raised from JavaScript can wake the VM,
   * so the event loop runs until one is.
   */
  private async allIdle(end: number): Promise<void> {
    if (this.vm.timers.next() === undefined) await this.waitForInterrupt(end)
  }

  /**
   * Every vCPU waits in a halt, on the deterministic clock with `idle: 'sleep'`: the
   * guest time to the next wake (an APIC timer, a device timer) passes on the host's
   * clock, then guest time is set to it; an interrupt raised meanwhile ends the wait
   * early, guest time moving on by the host time that passed.
   */
  private async sleepIdle(end: number): Promise<void> {
    const vm = this.vm
    const now = vm.guestTimeNs()
    const wake = Math.min(vm.native.nextWakeNs() ?? Number.POSITIVE_INFINITY, vm.timers.next() ?? Number.POSITIVE_INFINITY)
    if (!Number.isFinite(wake)) return this.waitForInterrupt(end)
    if (wake <= now) return
    const started = performance.now()
    await this.waitForInterrupt(Math.min(end, started + (wake - now) / 1e6))
    const slept = Math.floor((performance.now() - started) * 1e6)
    vm.native.setGuestTimeNs(Math.min(wake, now + slept))
  }

  private waitForInterrupt(end: number): Promise<void> {
    return new Promise((resolve) => {
      const ms = end - performance.now()
      const timer = Number.isFinite(ms) ? setTimeout(() => this.wake(), Math.max(0, ms)) : undefined
      this.wakeWait = () => {
        if (timer) clearTimeout(timer)
        resolve()
      }
    })
  }

  /**
   * Each vCPU on a native thread of its own (`VcpuThreads`), as a VMM's vCPU threads
   * run: a thread runs its vCPU until an exit and posts it; this thread takes the
   * posted exits one at a time, handles each as {@link Vcpu.run} would, and hands the
   * vCPU back. It waits for exits a slice at a time, fires the device timers as they
   * come due, and lets the event loop in every slice. A halted vCPU waits on its own
   * thread (in the hypervisor on mshv; in the sim's halt, its execution lock let go).
   * Whatever ends the run (a result, an error, a cancel, the deadline) ends every
   * thread's run before this returns, once.
   */
  private async threads(o: ReturnType<typeof check>, end: number): Promise<VmRunResult> {
    const vm = this.vm
    if (vm.cpus.every((v) => v.closed)) return { reason: 'cancelled' }
    // The sim's halts wait on the vCPU's thread, as MSHV's do in the hypervisor.
    const budget = vm.backend === 'sim' ? new native.RunBudget({ blockOnHalt: true }) : undefined
    const g = VcpuThreadGroup.begin(vm.cpus, budget)
    try {
      const left = g.leftover()
      if (left) return left
      const cpus = g.cpus
      cpus.forEach((_, i) => g.resume(i))
      /** vCPUs halted with interrupts disabled: they no longer run (as in turns()). */
      const stopped = new Set<Vcpu>()
      let resume = -1
      let yieldAt = performance.now() + o.sliceMs
      for (;;) {
        if (this.cancelled) return { reason: 'cancelled' }
        let now = performance.now()
        if (now >= end) return { reason: 'timeout' }
        if (now >= yieldAt) {
          await yieldToEventLoop()
          if (this.cancelled) return { reason: 'cancelled' }
          now = performance.now()
          yieldAt = now + o.sliceMs
        }
        vm.timers.fire()
        const due = vm.timers.next()
        let wait = Math.min(yieldAt, end) - now
        if (due !== undefined) wait = Math.min(wait, (due - vm.guestTimeNs()) / 1e6)
        const t = g.take(resume, wait > 0 ? wait : 0)
        resume = -1
        if (!t) continue
        const { v, i, result } = t
        if (vm.closed) return result === undefined || result.reason === 'cancelled' || turnOver(result) ? { reason: 'cancelled' } : { ...result, vcpu: v.index }
        if (result === undefined || turnOver(result)) {
          if (this.cancelled) return { reason: 'cancelled' }
          resume = i
        } else if (result.reason === 'halt') {
          stopped.add(v)
          if (cpus.every((c) => c.closed || stopped.has(c))) return { ...result, vcpu: v.index }
        } else if (result.reason === 'cancelled' && this.cancelled) {
          return result
        } else {
          return { ...result, vcpu: v.index }
        }
      }
    } finally {
      g.end()
    }
  }
}
