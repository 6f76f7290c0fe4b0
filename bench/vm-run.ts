/**
 * The exit path of an interrupt-capable run: the same port-exit guest driven by
 * `vcpu.run()` (synchronous, the event loop blocked), by `vm.run()` on each clock (the
 * event loop gets a turn every millisecond) and by `vcpu.runAsync()` (a worker thread
 * per native run), side by side.
 * @module
 */
import { EXIT_CASES, EXIT_LOOPS, exitCaseGuest, type ExitCase } from '../src/doctor/experiment.js'
import { assemble, createVm, enterRealMode } from '../index.js'
import type { Row } from './report.js'

/** Runs `f` for at least `ms` milliseconds; `f` resolves to the exits it made. */
async function timeForAsync(ms: number, f: () => Promise<number>): Promise<{ seconds: number; units: number }> {
  const start = process.hrtime.bigint()
  let units = 0
  let elapsed = 0n
  do {
    units += await f()
    elapsed = process.hrtime.bigint() - start
  } while (elapsed < BigInt(Math.ceil(ms * 1e6)))
  return { seconds: Number(elapsed) / 1e9, units }
}

type Driver = [name: string, clock: 'deterministic' | 'realtime', run: (g: ReturnType<typeof exitCaseGuest>) => Promise<unknown>]

const DRIVERS: readonly Driver[] = [
  ['vcpu.run() (synchronous)', 'deterministic', async (g) => g.vcpu.run()],
  ['vm.run(), deterministic clock', 'deterministic', (g) => g.vm.run()],
  ['vm.run(), real-time clock', 'realtime', (g) => g.vm.run()],
  ['vcpu.runAsync() (a thread hop per exit)', 'deterministic', (g) => g.vcpu.runAsync()],
]

/** Port exits per second under each driver, interleaved in quarters so drift hits all alike. */
export async function vmRunRates(ms: number): Promise<Row[]> {
  const c = EXIT_CASES[0] as ExitCase
  const guests = DRIVERS.map(([, clock]) => exitCaseGuest(c, 'page', 'sim', clock))
  try {
    const totals = DRIVERS.map(() => ({ seconds: 0, units: 0 }))
    for (let q = 0; q < 4; q++) {
      for (const [i, [, , run]] of DRIVERS.entries()) {
        const g = guests[i] as ReturnType<typeof exitCaseGuest>
        const t = await timeForAsync(ms / 4, async () => {
          g.restart()
          await run(g)
          return EXIT_LOOPS + 1
        })
        const total = totals[i] as { seconds: number; units: number }
        total.seconds += t.seconds
        total.units += t.units
      }
    }
    const rates = totals.map((t) => t.units / t.seconds)
    const sync = rates[0] as number
    return DRIVERS.map(([name], i) => ({
      group: 'run driver',
      case: `PIO OUT, ${name}`,
      value: rates[i] as number,
      unit: 'exits/s',
      notes: i === 0 ? undefined : `${((100 * (rates[i] as number)) / sync).toFixed(1)}% of vcpu.run()`,
    }))
  } finally {
    for (const g of guests) g.vm.close()
  }
}

/**
 * How long an interrupt raised from JavaScript takes to reach the guest's handler under
 * `vm.run()`: from the request, made in a 2 ms interval timer's callback, to the
 * handler's port write, for a halted vCPU and for one spinning, on each clock. (While a
 * vCPU spins, the callback itself runs at the end of the current slice: up to 1 ms
 * after the timer was due.)
 */
export async function interruptLatency(samples = 50): Promise<Row[]> {
  const rows: Row[] = []
  for (const clock of ['deterministic', 'realtime'] as const) {
    for (const spin of [false, true]) {
      const vm = createVm({ backend: 'sim', clock })
      vm.addRam(0, 1 << 20)
      const code = assemble(
        `
        xor ax, ax
        mov ds, ax
        mov word [0x2*4], nmi
        mov word [0x2*4+2], 0
        sti
      idle:
        ${spin ? 'jmp idle' : 'hlt\n        jmp idle'}
      nmi:
        out 0x90, al
        iret
      `,
        { bitness: 16, address: 0x1000 },
      )
      vm.write(0x1000, code.bytes)
      enterRealMode(vm.createVcpu(0), 0x1000)
      const latencies: number[] = []
      let raised = 0
      vm.bus.register(0x90, 1, {
        ioWrite: () => {
          latencies.push(performance.now() - raised)
          if (latencies.length >= samples) vm.cancel()
        },
      })
      const timer = setInterval(() => {
        raised = performance.now()
        vm.requestInterrupt({ kind: 'nmi' })
      }, 2)
      await vm.run({ timeoutMs: 30_000 })
      clearInterval(timer)
      vm.close()
      const mean = latencies.reduce((a, b) => a + b, 0) / latencies.length
      rows.push({
        group: 'interrupt latency',
        case: `JS timer -> guest handler, ${spin ? 'spinning' : 'halted'} vCPU, ${clock} clock`,
        value: mean * 1000,
        unit: 'us (mean)',
        notes: `max ${(Math.max(...latencies) * 1000).toFixed(0)} us over ${latencies.length}`,
      })
    }
  }
  return rows
}
