/**
 * The exit path of an interrupt-capable run: the same port-exit guest driven by
 * `vcpu.run()` (synchronous, the event loop blocked), by `vm.run()` on each clock (the
 * event loop gets a turn every millisecond), by `vm.run()`'s threaded path (the vCPU
 * on a native thread of its own, each exit handed to the JavaScript thread: what mshv
 * runs) and by `vcpu.runAsync()` (a promise per native run), side by side; and two
 * vCPUs on the threaded path.
 * @module
 */
import { EXIT_CASES, EXIT_LOOPS, exitCaseGuest, type ExitCase } from '../src/doctor/experiment.js'
import { assemble, createVm, enterRealMode, type Vcpu } from '../index.js'
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
  ['vm.run({ threads: true }), the vCPU on a thread of its own (mshv\'s path)', 'realtime', (g) => g.vm.run({ threads: true })],
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
 * Two vCPUs on `vm.run()`'s threaded path, each looping over port exits to a
 * TypeScript device until it has made `loops`, then halting with interrupts off (a HLT
 * ends no run: the vCPU waits in it, as on MSHV); the device ends the run at the last
 * exit of the pair (`vm.requestStop`): exits per second in all and per vCPU. Neither
 * spins, which on the sim would hold its execution lock from the other.
 */
export async function threadedPairRate(ms: number): Promise<Row[]> {
  const loops = 100_000
  const vm = createVm({ backend: 'sim', clock: 'realtime' })
  try {
    vm.addRam(0, 1 << 20)
    const entries = [0x1000, 0x2000]
    for (const [i, at] of entries.entries()) {
      const code = assemble(
        `
        mov ecx, ${loops}
      again:
        out 0x80, al
        dec ecx
        jnz again
        cli
        hlt
      `,
        { bitness: 16, address: at },
      )
      vm.write(at, code.bytes)
      vm.createVcpu(i)
    }
    let seen = 0
    vm.bus.register(0x80, 1, { ioWrite: () => void (++seen === 2 * loops && vm.requestStop({ reason: 'debug-exit', code: 0 })) }, 'sink')
    const t = await timeForAsync(ms, async () => {
      seen = 0
      for (const [i, at] of entries.entries()) enterRealMode(vm.cpus[i] as Vcpu, at)
      const r = await vm.run({ timeoutMs: 60_000 })
      if (r.reason !== 'debug-exit') throw new Error(`the pair ended with ${JSON.stringify(r)}`)
      return 2 * loops
    })
    const rate = t.units / t.seconds
    return [
      {
        group: 'run driver',
        case: 'PIO OUT, 2 vCPUs, vm.run() threaded (real-time clock), both vCPUs together',
        value: rate,
        unit: 'exits/s',
        notes: `${(rate / 2 / 1e6).toFixed(2)} M exits/s per vCPU`,
      },
    ]
  } finally {
    vm.close()
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
