/**
 * Exit costs: exits per second and hypercalls per exit for port and MMIO exits under
 * each sync policy, the TypeScript exit loop against a Rust one, and the cost of one
 * register read by each path. Every comparison runs side by side in one process.
 * @module
 */
import { page, registers, registerIndex, POLICIES, type SyncPolicy } from '../index.js'
import { EXIT_CASES, EXIT_LOOPS, LONG_PIO_OUT, exitCaseGuest, measureExitCost, timeFor, type ExitCase } from '../src/doctor/experiment.js'
import type { Row } from './report.js'

/** A bench row of one measured case. */
function row(c: ExitCase, policy: SyncPolicy, ms: number): Row {
  const m = measureExitCost(c, policy, ms)
  return {
    group: 'exits',
    case: `${c.name} [${policy}]`,
    value: m.exitsPerSecond,
    unit: 'exits/s',
    notes: `${m.hypercallsPerExit.toFixed(3)} hypercalls/exit (${m.getRegisterCalls} get, ${m.setRegisterCalls} set, ${m.translateCalls} translate over ${m.exits} exits)`,
  }
}

const setUp = (c: ExitCase, policy: SyncPolicy) => exitCaseGuest(c, policy, 'sim')

/** The same PIO guest driven by the TypeScript handlers and by the Rust loop in the binding. */
function typescriptVersusRust(ms: number): Row[] {
  const c = EXIT_CASES[0] as ExitCase
  const { vm, vcpu, restart } = setUp(c, 'page')
  try {
    const ts = () => {
      restart()
      vcpu.run()
      return EXIT_LOOPS + 1
    }
    const rust = () => {
      restart()
      vcpu.regs.flush()
      return vcpu.native.runRustPioLoop(0xf4)
    }
    ts()
    rust()
    // Interleaved halves, so drift in machine speed hits both sides alike.
    let tsExits = 0
    let tsSeconds = 0
    let rustExits = 0
    let rustSeconds = 0
    for (let i = 0; i < 4; i++) {
      const a = timeFor(ms / 4, ts)
      const b = timeFor(ms / 4, rust)
      tsExits += a.units
      tsSeconds += a.seconds
      rustExits += b.units
      rustSeconds += b.seconds
    }
    const tsRate = tsExits / tsSeconds
    const rustRate = rustExits / rustSeconds
    return [
      { group: 'exit loop', case: 'PIO OUT, Rust loop in the binding', value: rustRate, unit: 'exits/s' },
      {
        group: 'exit loop',
        case: 'PIO OUT, TypeScript handlers',
        value: tsRate,
        unit: 'exits/s',
        notes: `${((100 * tsRate) / rustRate).toFixed(1)}% of the Rust loop (target >= 50%)`,
      },
    ]
  } finally {
    vm.close()
  }
}

/** Turns each tier takes in {@link exitPathByTier}: many short ones, so that drift in the machine's speed (a fifth between hours here) falls on both alike. */
const TIER_TURNS = 6

/**
 * The exit path under each of the sim's tiers (issue #31: the translator within 5 % of
 * the interpreter): port and MMIO exits from 64-bit code with TypeScript handlers,
 * the tiers taking turns.
 */
function exitPathByTier(ms: number): Row[] {
  const rows: Row[] = []
  const mmio = EXIT_CASES.find((c) => c.name === 'MMIO store') as ExitCase
  for (const c of [LONG_PIO_OUT, mmio]) {
    const exits = { interpreter: 0, translator: 0 }
    const seconds = { interpreter: 0, translator: 0 }
    for (let i = 0; i < TIER_TURNS; i++) {
      for (const cpu of ['interpreter', 'translator'] as const) {
        const m = measureExitCost(c, 'page', ms / (2 * TIER_TURNS), 'sim', cpu)
        exits[cpu] += m.exits
        seconds[cpu] += m.exits / m.exitsPerSecond
      }
    }
    const a = exits.interpreter / seconds.interpreter
    const b = exits.translator / seconds.translator
    rows.push(
      { group: 'exit path by tier', case: `${c.name}, interpreter [page]`, value: a, unit: 'exits/s' },
      { group: 'exit path by tier', case: `${c.name}, translator [page]`, value: b, unit: 'exits/s', notes: `${((100 * b) / a).toFixed(1)}% of the interpreter's (goal >= 95%)` },
    )
  }
  return rows
}

/** Nanoseconds per read of RAX: the page through a DataView, the native getter, a get-register call. */
function registerAccess(ms: number): Row[] {
  const { vm, vcpu } = setUp(EXIT_CASES[0] as ExitCase, 'page')
  try {
    vcpu.run() // an exit, so the page is valid
    const rp = vcpu.native.registerPage()
    if (!rp) throw new Error('the sim vCPU has no register page')
    const view = new DataView(rp.buffer())
    const rax = page('gpRegisters')
    const ids = Uint32Array.of(registers[registerIndex('rax')]?.id ?? 0)
    const out = new BigUint64Array(2)
    const N = 100_000
    let sink = 0n
    const paths: [string, () => void][] = [
      ['page view (DataView)', () => (sink ^= view.getBigUint64(rax, true))],
      ['RegisterPage.readU64 (native)', () => (sink ^= rp.readU64(rax))],
      ['getRegisters (hypercall path)', () => vcpu.native.getRegisters(ids, out)],
    ]
    const rows = paths.map(([name, read]): Row => {
      const { seconds, units } = timeFor(ms, () => {
        for (let i = 0; i < N; i++) read()
        return N
      })
      return { group: 'register read', case: name, value: (seconds * 1e9) / units, unit: 'ns/read' }
    })
    if (sink === -1n) console.log('unreachable')
    return rows
  } finally {
    vm.close()
  }
}

/** All exit-cost rows. */
export function exitCosts(ms: number): Row[] {
  const rows: Row[] = []
  for (const c of EXIT_CASES) for (const p of POLICIES) rows.push(row(c, p, ms))
  // virtio-pci's notify is an MMIO store: its rate beside the port exit's, both under the page policy.
  const pio = rows.find((r) => r.case === 'PIO OUT [page]')
  const mmio = rows.find((r) => r.case === 'MMIO store [page]')
  if (pio && mmio) rows.push({ group: 'exits', case: 'MMIO store / PIO OUT [page]', value: (100 * mmio.value) / pio.value, unit: '%', notes: 'virtio notify rate against port I/O (goal >= 50%)' })
  return [...rows, ...typescriptVersusRust(ms), ...exitPathByTier(ms), ...registerAccess(ms)]
}
