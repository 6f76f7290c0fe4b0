/**
 * The exit-cost experiment: exits per second and hypercalls per exit of port and MMIO
 * loops under each register sync policy. `npm run bench` runs it on the sim and
 * `mshv doctor` on the backend it checks.
 * @module
 */
import { MshvError } from '../errors.js'
import { checkNumber, checkObject, checkString, invalid } from '../check.js'
import { createVm, type VmOptions } from '../vm.js'
import { enterLongMode, enterRealMode } from '../guest.js'
import { POLICIES, type SyncPolicy } from '../registers.js'
import type { MmioDevice } from '../bus.js'
import type { Vcpu } from '../vcpu.js'
import type { Vm } from '../vm.js'

/** Iterations of each case's guest loop: one exit each. */
export const EXIT_LOOPS = 10_000
/** Real-mode code sits in the first 64 KiB; long-mode code above enterLongMode's page tables. */
const REAL_CODE = 0x8000
const LONG_CODE = 0x10000
const MMIO = 0xc000_0000n
const u32le = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24]
const u64le = (n: bigint) => [...u32le(Number(n & 0xffff_ffffn)), ...u32le(Number(n >> 32n))]

/** Real mode: `mov ecx, LOOPS; l: <op>; dec ecx; jnz l; out 0xf4, al`. */
const pioLoop = (op: number[]) => [0x66, 0xb9, ...u32le(EXIT_LOOPS), ...op, 0x66, 0x49, 0x75, 0xfa, 0xe6, 0xf4, 0xf4]
/**
 * Long mode: `mov rbx, MMIO; mov ecx, LOOPS; l: <op>; dec ecx; jnz l; out 0xf4, al`. Every
 * case ends at the debug-exit port, not at a HLT: MSHV has no HLT intercept in a
 * partition with a local APIC, so a HLT would end a pass only at its timeout there.
 */
const mmioLoop = (op: number[]) => [0x48, 0xbb, ...u64le(MMIO), 0xb9, ...u32le(EXIT_LOOPS), ...op, 0xff, 0xc9, 0x75, 0xfa, 0xe6, 0xf4]

/** Long mode: `out 0x80, al` in {@link mmioLoop}'s loop (a port exit from 64-bit code, where the translator runs). */
export const LONG_PIO_OUT: ExitCase = { name: 'PIO OUT, 64-bit code', code: mmioLoop([0xe6, 0x80]), longMode: true, end: 'debug-exit' }

/** One guest loop of the experiment. */
export interface ExitCase {
  readonly name: string
  readonly code: readonly number[]
  readonly longMode: boolean
  /** What one pass must end with. */
  readonly end: 'debug-exit' | 'halt'
}

/** The experiment's loops: each iteration is one exit of the named kind. */
export const EXIT_CASES: readonly ExitCase[] = [
  { name: 'PIO OUT', code: pioLoop([0xe6, 0x80]), longMode: false, end: 'debug-exit' },
  { name: 'PIO IN', code: pioLoop([0xe4, 0x80]), longMode: false, end: 'debug-exit' },
  { name: 'MMIO load', code: mmioLoop([0x8b, 0x03]), longMode: true, end: 'debug-exit' },
  { name: 'MMIO store', code: mmioLoop([0x89, 0x03]), longMode: true, end: 'debug-exit' },
  // mov rdi, MMIO; mov ecx, LOOPS; rep stosd; out 0xf4, al: one exit per element.
  { name: 'string MMIO (rep stosd)', code: [0x48, 0xbf, ...u64le(MMIO), 0xb9, ...u32le(EXIT_LOOPS), 0xf3, 0xab, 0xe6, 0xf4], longMode: true, end: 'debug-exit' },
]

const sink: MmioDevice = { mmioRead: () => 0n, mmioWrite: () => undefined }

/** `c` as an {@link ExitCase}, each field checked. */
function checkExitCase(c: unknown): ExitCase {
  const o = checkObject<ExitCase>('the exit case', c)
  checkString('the exit case: name', o.name, 200)
  if (!Array.isArray(o.code) || o.code.length > 4096 || o.code.some((b) => !Number.isInteger(b) || b < 0 || b > 255)) throw invalid('the exit case: code', 'an array of at most 4096 bytes', o.code)
  if (typeof o.longMode !== 'boolean') throw invalid('the exit case: longMode', 'a boolean', o.longMode)
  if (o.end !== 'debug-exit' && o.end !== 'halt') throw invalid('the exit case: end', "'debug-exit' or 'halt'", o.end)
  return o
}

/** A VM running `c`, and how to put its vCPU back at the start. */
export function exitCaseGuest(
  c: ExitCase,
  policy: SyncPolicy,
  backend: VmOptions['backend'],
  clock?: VmOptions['clock'],
  cpu?: VmOptions['cpu'],
): { vm: Vm; vcpu: Vcpu; restart: () => void } {
  checkExitCase(c)
  const vm = createVm({ backend, policy, clock, ...(cpu ? { cpu } : {}) })
  try {
    vm.addRam(0, 1 << 20)
    vm.bus.registerMmio(MMIO, EXIT_LOOPS * 4, sink, 'sink')
    const code = c.longMode ? LONG_CODE : REAL_CODE
    vm.write(code, c.code)
    const vcpu = vm.createVcpu(0)
    const restart = () => {
      if (c.longMode) enterLongMode(vcpu, vm, code)
      else enterRealMode(vcpu, code)
    }
    restart()
    return { vm, vcpu, restart }
  } catch (e) {
    vm.close()
    throw e
  }
}

/** Runs `f` repeatedly for at least `ms` milliseconds; `f` returns the units it did. */
export function timeFor(ms: number, f: () => number): { seconds: number; units: number } {
  const start = process.hrtime.bigint()
  let units = 0
  let elapsed = 0n
  do {
    units += f()
    elapsed = process.hrtime.bigint() - start
  } while (elapsed < BigInt(Math.ceil(ms * 1e6)))
  return { seconds: Number(elapsed) / 1e9, units }
}

/** One case under one policy. */
export interface ExitCost {
  readonly case: string
  readonly policy: SyncPolicy
  readonly exitsPerSecond: number
  readonly hypercallsPerExit: number
  readonly exits: number
  readonly getRegisterCalls: number
  readonly setRegisterCalls: number
  readonly translateCalls: number
}

/** Exits per second and hypercalls per exit of `c` under `policy`, measured for `ms`. */
export function measureExitCost(c: ExitCase, policy: SyncPolicy, ms: number, backend: VmOptions['backend'] = 'sim', cpu?: VmOptions['cpu']): ExitCost {
  checkNumber('measureExitCost: ms', ms, 0, 600_000)
  const { vm, vcpu, restart } = exitCaseGuest(c, policy, backend, undefined, cpu)
  try {
    const pass = () => {
      restart()
      const r = vcpu.run({ timeoutMs: 10_000 })
      if (r.reason !== c.end) throw new MshvError('EEXPERIMENT', `${c.name}: the guest ended with ${JSON.stringify(r)}, not ${c.end}`)
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
      case: c.name,
      policy,
      exitsPerSecond: s.exits / seconds,
      hypercallsPerExit: s.hypercalls / s.exits,
      exits: s.exits,
      getRegisterCalls: s.getRegisterCalls,
      setRegisterCalls: s.setRegisterCalls,
      translateCalls: s.translateCalls,
    }
  } finally {
    vm.close()
  }
}

/** Every case under every policy. */
export function exitExperiment(ms: number, backend: VmOptions['backend'] = 'sim', cases: readonly ExitCase[] = EXIT_CASES): ExitCost[] {
  checkNumber('exitExperiment: ms', ms, 0, 600_000)
  if (!Array.isArray(cases) || cases.length > 64) throw invalid('exitExperiment: cases', 'an array of at most 64 exit cases', cases)
  cases.forEach(checkExitCase)
  return cases.flatMap((c) => POLICIES.map((p) => measureExitCost(c, p, ms, backend)))
}
