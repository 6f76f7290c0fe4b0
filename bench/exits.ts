/**
 * Exit costs: exits per second and hypercalls per exit for port and MMIO exits under
 * each sync policy, the TypeScript exit loop against a Rust one, and the cost of one
 * register read by each path. Every comparison runs side by side in one process.
 * @module
 */
import { createVm, enterLongMode, enterRealMode, page, registers, registerIndex, type SyncPolicy, type Vcpu, type Vm, type MmioDevice } from '../index.js'
import { timeFor, type Row } from './report.js'

const POLICIES: readonly SyncPolicy[] = ['page', 'hypercall', 'eager']
const LOOPS = 10_000
/** Real-mode code sits in the first 64 KiB; long-mode code above enterLongMode's page tables. */
const REAL_CODE = 0x8000
const LONG_CODE = 0x10000
const MMIO = 0xc000_0000n
const u32le = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24]
const u64le = (n: bigint) => [...u32le(Number(n & 0xffff_ffffn)), ...u32le(Number(n >> 32n))]

/** Real mode: `mov ecx, LOOPS; l: <op>; dec ecx; jnz l; out 0xf4, al`. */
const pioLoop = (op: number[]) => [0x66, 0xb9, ...u32le(LOOPS), ...op, 0x66, 0x49, 0x75, 0xfa, 0xe6, 0xf4, 0xf4]
/** Long mode: `mov rbx, MMIO; mov ecx, LOOPS; l: <op>; dec ecx; jnz l; hlt`. */
const mmioLoop = (op: number[]) => [0x48, 0xbb, ...u64le(MMIO), 0xb9, ...u32le(LOOPS), ...op, 0xff, 0xc9, 0x75, 0xfa, 0xf4]

interface Case {
  name: string
  code: number[]
  longMode: boolean
  /** What one pass must end with. */
  end: 'debug-exit' | 'halt'
}

const CASES: readonly Case[] = [
  { name: 'PIO OUT', code: pioLoop([0xe6, 0x80]), longMode: false, end: 'debug-exit' },
  { name: 'PIO IN', code: pioLoop([0xe4, 0x80]), longMode: false, end: 'debug-exit' },
  { name: 'MMIO load', code: mmioLoop([0x8b, 0x03]), longMode: true, end: 'halt' },
  { name: 'MMIO store', code: mmioLoop([0x89, 0x03]), longMode: true, end: 'halt' },
  // mov rdi, MMIO; mov ecx, LOOPS; rep stosd; hlt: one exit per element.
  { name: 'string MMIO (rep stosd)', code: [0x48, 0xbf, ...u64le(MMIO), 0xb9, ...u32le(LOOPS), 0xf3, 0xab, 0xf4], longMode: true, end: 'halt' },
]

const sink: MmioDevice = { mmioRead: () => 0n, mmioWrite: () => undefined }

function setUp(c: Case, policy: SyncPolicy): { vm: Vm; vcpu: Vcpu; restart: () => void } {
  const vm = createVm({ backend: 'sim', policy })
  vm.addRam(0, 1 << 20)
  vm.bus.registerMmio(MMIO, LOOPS * 4, sink, 'sink')
  const code = c.longMode ? LONG_CODE : REAL_CODE
  vm.write(code, c.code)
  const vcpu = vm.createVcpu(0)
  const restart = () => {
    if (c.longMode) enterLongMode(vcpu, vm, code)
    else enterRealMode(vcpu, code)
  }
  restart()
  return { vm, vcpu, restart }
}

/** Exits per second and hypercalls per exit of `c` under `policy`. */
function measure(c: Case, policy: SyncPolicy, ms: number): Row {
  const { vm, vcpu, restart } = setUp(c, policy)
  try {
    const pass = () => {
      restart()
      const r = vcpu.run()
      if (r.reason !== c.end) throw new Error(`${c.name}: the guest ended with ${JSON.stringify(r)}`)
    }
    pass() // warm up: decode caches, JIT
    vcpu.resetStats()
    const { seconds } = timeFor(ms, () => {
      pass()
      return 1
    })
    const s = vcpu.stats()
    // The restart's register writes are set-up, not exit cost: one flush per pass.
    return {
      group: 'exits',
      case: `${c.name} [${policy}]`,
      value: s.exits / seconds,
      unit: 'exits/s',
      notes: `${(s.hypercalls / s.exits).toFixed(3)} hypercalls/exit (${s.getRegisterCalls} get, ${s.setRegisterCalls} set, ${s.translateCalls} translate over ${s.exits} exits)`,
    }
  } finally {
    vm.close()
  }
}

/** The same PIO guest driven by the TypeScript handlers and by the Rust loop in the binding. */
function typescriptVersusRust(ms: number): Row[] {
  const c = CASES[0] as Case
  const { vm, vcpu, restart } = setUp(c, 'page')
  try {
    const ts = () => {
      restart()
      vcpu.run()
      return LOOPS + 1
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

/** Nanoseconds per read of RAX: the page through a DataView, the native getter, a get-register call. */
function registerAccess(ms: number): Row[] {
  const { vm, vcpu } = setUp(CASES[0] as Case, 'page')
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
  for (const c of CASES) for (const p of POLICIES) rows.push(measure(c, p, ms))
  return [...rows, ...typescriptVersusRust(ms), ...registerAccess(ms)]
}
