/**
 * Exit traces in the Chrome trace event format (`chrome://tracing`, ui.perfetto.dev):
 * one slice per guest run and one per exit handled in TypeScript.
 * @module
 */
import { performance } from 'node:perf_hooks'

/** One Chrome trace "complete" event. */
export interface TraceEvent {
  name: string
  cat: 'guest' | 'exit'
  ph: 'X'
  /** Start, in microseconds since the trace began. */
  ts: number
  /** Duration in microseconds. */
  dur: number
  pid: number
  tid: number
  args?: Record<string, string | number>
}

/** A Chrome trace document. */
export interface ChromeTrace {
  traceEvents: TraceEvent[]
  displayTimeUnit: 'ns' | 'ms'
  /** Events not recorded because the limit was reached. */
  otherData: { dropped: number; vcpu: number }
}

/** Records run and exit slices of one vCPU, up to a limit. */
export class ExitTrace {
  private readonly events: TraceEvent[] = []
  private readonly origin = performance.now()
  private dropped = 0

  constructor(
    private readonly vcpu: number,
    private readonly limit: number,
  ) {}

  /** Microseconds since the trace began. */
  now(): number {
    return (performance.now() - this.origin) * 1000
  }

  /** Records a slice from `start` to `end` (times from {@link now}). */
  record(name: string, cat: TraceEvent['cat'], start: number, end: number, args?: Record<string, string | number>): void {
    if (this.events.length >= this.limit) {
      this.dropped++
      return
    }
    const e: TraceEvent = { name, cat, ph: 'X', ts: start, dur: end - start, pid: 1, tid: this.vcpu }
    if (args) e.args = args
    this.events.push(e)
  }

  /** The trace so far, ready for `JSON.stringify`. */
  export(): ChromeTrace {
    return { traceEvents: [...this.events], displayTimeUnit: 'ns', otherData: { dropped: this.dropped, vcpu: this.vcpu } }
  }
}
