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

/**
 * Adds `args.symbol` (`start_kernel+0x1a`) to each event whose `args.rip` `symbols`
 * label (`GuestSymbols`: a file's table or the kernel's kallsyms); how many it named. @internal
 */
export function nameRips(events: readonly TraceEvent[], symbols: { label(address: bigint): string | undefined }): number {
  if (!events.some((e) => e.args?.['rip'] !== undefined)) return 0
  const labels = new Map<string, string | undefined>()
  let named = 0
  for (const e of events) {
    const rip = e.args?.['rip']
    if (typeof rip !== 'string') continue
    let l = labels.get(rip)
    if (!labels.has(rip)) {
      l = /^0x[0-9a-f]+$/.test(rip) ? symbols.label(BigInt(rip)) : undefined
      labels.set(rip, l)
    }
    if (l !== undefined && e.args) {
      e.args['symbol'] = l
      named++
    }
  }
  return named
}
