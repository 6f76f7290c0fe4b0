/**
 * Device timers on guest time: what a PIT, an RTC or a UART schedules, kept on the
 * VM's guest clock ({@link Vm.guestTimeNs}) so that on the deterministic sim they fire
 * at the same guest instant run after run, and in real time when the host's clock says.
 * @module
 */
import { MshvError, describe } from '../errors.js'

/** A scheduled callback; {@link cancel} it to stop it. */
export interface GuestTimer {
  /** The guest time (ns) it fires at (a series: its next edge). */
  readonly at: number
  /**
   * Whether it is still to fire: neither fired nor cancelled (a series until it is
   * cancelled). What a device saves of a timer is this and {@link at}: on restore it arms
   * the same timer at the same guest time (the callback is the device's, not data).
   */
  readonly armed: boolean
  /** Stops it firing; harmless once fired. */
  cancel(): void
}

interface Entry {
  at: number
  /** Tie-break: timers due at the same instant fire in the order they were set. */
  seq: number
  fn: (at: number) => void
  live: boolean
}

/** The VM's device timers, due by guest time. */
export class GuestTimers {
  private readonly queue: Entry[] = []
  private seq = 0

  constructor(
    /** Guest time now, in nanoseconds. */
    readonly now: () => number,
    /** Hears when the earliest timer changes (the VM tells the hypervisor: runs end then). */
    private readonly onNext: (next: number | undefined) => void = () => {},
  ) {}

  /**
   * Calls `fn(at)` once guest time reaches `at` (ns): it gets its own due time, so a
   * periodic device schedules its next edge from it and never drifts.
   */
  at(at: number, fn: (at: number) => void): GuestTimer {
    if (typeof at !== 'number' || !Number.isSafeInteger(at) || at < 0) {
      throw new MshvError('EINVAL', `a timer's time must be an integer number of nanoseconds from 0, got ${describe(at)}`)
    }
    if (typeof fn !== 'function') throw new MshvError('EINVAL', `a timer needs a function, got ${describe(fn)}`)
    const e: Entry = { at, seq: this.seq++, fn, live: true }
    // Few timers are ever pending (one per device channel): a sorted insert is enough.
    let i = this.queue.length
    while (i > 0 && this.later(this.queue[i - 1] as Entry, e)) i--
    this.queue.splice(i, 0, e)
    if (i === 0) this.onNext(at)
    return {
      at,
      get armed() {
        return e.live
      },
      cancel: () => this.cancel(e),
    }
  }

  /**
   * Takes `e` out of the queue at once: a guest that rewrites a timer register at every
   * exit cancels as fast as it sets, and dead entries waiting for their due time grew the
   * queue without bound (tens of MiB a second).
   */
  private cancel(e: Entry): void {
    if (!e.live) return
    e.live = false
    const i = this.queue.indexOf(e)
    if (i === -1) return
    this.queue.splice(i, 1)
    if (i === 0) this.onNext(this.queue[0]?.at)
  }

  /** Timers pending (for tests and the REPL). */
  get pending(): number {
    return this.queue.length
  }

  /** Calls `fn(at)` after `delay` nanoseconds of guest time. */
  after(delay: number, fn: (at: number) => void): GuestTimer {
    if (typeof delay !== 'number' || !Number.isSafeInteger(delay) || delay < 0) {
      throw new MshvError('EINVAL', `a timer's delay must be an integer number of nanoseconds from 0, got ${describe(delay)}`)
    }
    return this.at(this.now() + delay, fn)
  }

  /**
   * Calls `fn(at)` at `at(1)`, `at(2)`, ... — a periodic device's edges, each computed
   * from its own number so none drifts. One timer stands for the whole series.
   */
  every(at: (n: number) => number, fn: (at: number) => void): GuestTimer {
    if (typeof at !== 'function') throw new MshvError('EINVAL', `every() takes a function of the edge's number, got ${describe(at)}`)
    if (typeof fn !== 'function') throw new MshvError('EINVAL', `a timer needs a function, got ${describe(fn)}`)
    let current: GuestTimer | undefined
    let cancelled = false
    let n = 1
    const tick = (t: number): void => {
      n++
      current = this.at(at(n), tick)
      fn(t)
    }
    current = this.at(at(1), tick)
    return {
      get at() {
        return current?.at ?? 0
      },
      get armed() {
        return !cancelled
      },
      cancel: () => {
        cancelled = true
        current?.cancel()
      },
    }
  }

  private later(a: Entry, b: Entry): boolean {
    return a.at > b.at || (a.at === b.at && a.seq > b.seq)
  }

  /** When the next live timer is due (ns), if any. */
  next(): number | undefined {
    while (this.queue.length > 0 && !(this.queue[0] as Entry).live) this.queue.shift()
    return this.queue[0]?.at
  }

  /** Fires every timer due at `now`, in time order (those they set that are due, too). */
  fire(at?: number): number {
    const head = this.queue[0]
    // Nothing queued: no clock read (a run's loop calls this at every exit).
    if (head === undefined) return 0
    const now = at ?? this.now()
    let fired = 0
    for (;;) {
      const e = this.queue[0]
      if (!e || e.at > now) break
      this.queue.shift()
      if (!e.live) continue
      e.live = false
      fired++
      e.fn(e.at)
    }
    if (this.queue[0] !== head) this.onNext(this.next())
    return fired
  }
}
