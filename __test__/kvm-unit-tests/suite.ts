/**
 * kvm-unit-tests on the sim: builds the suite from `../shared/kvm-unit-tests/` (its
 * tarball, unchanged) into a cache, reads `x86/unittests.cfg` as `run_tests.sh` does, and
 * boots each test's `.flat` with {@link prepareMultiboot} as QEMU's `x86/run` boots it with
 * `-kernel` (the harness devices of ./devices.ts beside the PC). The verdict comes from
 * the debug-exit code as `scripts/runtime.bash` reads QEMU's exit status
 * (`(code << 1) | 1`, scripts/vmm.bash): code 0 PASS; 38 SKIP (lib/report.c
 * `report_summary` returns `77 >> 1` when every check skipped); anything else FAIL
 * (1: a check failed; 63, status 127: the test called abort()).
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { addIntelIommu, pciIntxGsi, prepareMultiboot, VmPort, VMPORT_PORT, type VmRunResult } from '../../index.js'
import { cpuidFor } from './cpu.js'
import { addTestDevices } from './devices.js'
import { addEdu } from './edu.js'

const here = dirname(fileURLToPath(import.meta.url))
/** The suite's tarball: `git archive` of kvm-unit-tests at this commit (../shared/kvm-unit-tests/README.md). */
export const SUITE_COMMIT = '1da1819e'

/**
 * Where the tarball is: `$MSHV_KUT_TARBALL`, else `shared/kvm-unit-tests/` beside this
 * checkout, else beside the checkout it was cloned from (a fresh clone in a temporary
 * folder, as CI makes, has no `../shared` of its own). The first that exists; the first
 * candidate when none does, for the message.
 */
function tarball(): string {
  const name = join('shared', 'kvm-unit-tests', `kvm-unit-tests-${SUITE_COMMIT}.tar.gz`)
  const repo = join(here, '..', '..')
  const candidates = [process.env['MSHV_KUT_TARBALL'], join(repo, '..', name)]
  try {
    const origin = execFileSync('git', ['-C', repo, 'config', '--get', 'remote.origin.url'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    if (origin.startsWith('/')) candidates.push(join(origin, '..', name))
  } catch {
    // not a clone, or no origin: only the places above
  }
  const found = candidates.filter((c): c is string => c !== undefined)
  return found.find((c) => existsSync(c)) ?? (found[0] as string)
}
export const SUITE_TARBALL = tarball()

/** Where the built suite is kept between runs (`$MSHV_KUT_CACHE`, default `~/.cache/mshv-kvm-unit-tests`). */
export function suiteDir(): string {
  return join(process.env['MSHV_KUT_CACHE'] ?? join(homedir(), '.cache', 'mshv-kvm-unit-tests'), SUITE_COMMIT)
}

/**
 * The built suite's directory: extracted and built (`./configure --arch=x86_64 && make`,
 * as the README there says) on first use, into a temporary directory renamed into
 * place when the build succeeded, so that an interrupted build is not taken for one.
 */
export function buildSuite(): string {
  const dir = suiteDir()
  if (existsSync(join(dir, 'x86', 'unittests.cfg')) && existsSync(join(dir, 'x86', 'apic.flat'))) return dir
  const work = `${dir}.build-${process.pid}`
  rmSync(work, { recursive: true, force: true })
  mkdirSync(work, { recursive: true })
  execFileSync('tar', ['-xzf', SUITE_TARBALL, '-C', work])
  execFileSync('./configure', ['--arch=x86_64'], { cwd: work, stdio: 'pipe' })
  execFileSync('make', ['-j2'], { cwd: work, stdio: 'pipe', maxBuffer: 64 << 20 })
  // The folder only ever appears whole, by this rename: a build another process
  // finished first stays, and this one is dropped.
  try {
    renameSync(work, dir)
  } catch (e) {
    if (!existsSync(join(dir, 'x86', 'apic.flat'))) throw e
    rmSync(work, { recursive: true, force: true })
  }
  return dir
}

/** One test of `x86/unittests.cfg`. */
export interface SuiteTest {
  readonly name: string
  readonly file: string
  readonly smp: number
  /** `test_args`: the kernel's command line (QEMU's `-append`). */
  readonly args: string
  /** `qemu_params` / `extra_params`. */
  readonly params: string
  readonly arch: string | undefined
  /** Seconds (`timeout`, default 90 as in scripts/runtime.bash). */
  readonly timeout: number
  readonly groups: readonly string[]
}

/** The tests of `x86/unittests.cfg` (scripts/common.bash `for_each_unittest`). */
export function readConfig(dir: string): SuiteTest[] {
  const tests: SuiteTest[] = []
  let cur: Record<string, string> | undefined
  let name = ''
  const flush = (): void => {
    if (!cur) return
    const unquote = (s: string | undefined): string => (s ?? '').trim().replace(/^(['"])(.*)\1$/, '$2')
    tests.push({
      name,
      file: unquote(cur['file']),
      smp: Number(unquote(cur['smp']) || '1'),
      args: unquote(cur['test_args'] ?? cur['extra_params']?.match(/-append\s+(['"])(.*?)\1/)?.[2]),
      params: unquote(cur['qemu_params'] ?? cur['extra_params']),
      arch: cur['arch']?.trim(),
      timeout: Number.parseInt(unquote(cur['timeout']) || '90', 10),
      groups: unquote(cur['groups']).split(/\s+/).filter(Boolean),
    })
  }
  for (const line of readFileSync(join(dir, 'x86', 'unittests.cfg'), 'utf8').split('\n')) {
    if (/^\s*#/.test(line) || line.trim() === '') continue
    const section = /^\[(.+)\]/.exec(line)
    if (section) {
      flush()
      name = section[1] as string
      cur = {}
      continue
    }
    const kv = /^(\w+)\s*=\s*(.*)$/.exec(line)
    if (kv && cur) cur[kv[1] as string] = kv[2] as string
  }
  flush()
  return tests
}

/** What a test's run ended in. */
export type Verdict = 'PASS' | 'FAIL' | 'SKIP' | 'TIMEOUT' | 'ERROR'

/** A test's run. */
export interface TestRun {
  readonly verdict: Verdict
  /** What the test printed on COM1. */
  readonly output: string
  /** Why the run ended (the VM's result, or the error). */
  readonly ended: string
  readonly seconds: number
}

/** `-m N[gGmM]` of the test's parameters, in bytes (capped at the 3 GiB a VM has below the PCI hole). */
function memoryFor(params: string): number {
  const m = /-m\s+(\d+)([gGmM]?)/.exec(params)
  if (!m) return 256 << 20 // what `x86/run` would pass through scripts/arch-run.bash: QEMU's default is 128 MiB, the suite's runner asks for 256
  const mib = Number(m[1]) * (m[2]?.toLowerCase() === 'g' ? 1024 : 1)
  return Math.min(mib, 3072) * (1 << 20)
}

/**
 * The sim's clock for a test: the deterministic one (replays exact, what CI wants),
 * except for the `vmexit` group, benchmarks that time exits and instructions until 2^30
 * TSC ticks have passed (x86/vmexit.c `do_test`). On the deterministic clock an
 * instruction is one tick and an exit 1 us (hv-sim EXIT_COST_NS), so a loop of cheap
 * instructions the sim executes slowly (CR0.WP and CR4.PGE toggles, each a TLB flush)
 * runs 2^31 / its length times: a minute and more. They measure host time, as under
 * QEMU and KVM (neither runs the suite on icount).
 */
export function clockFor(t: SuiteTest): 'deterministic' | 'realtime' {
  return t.groups.includes('vmexit') ? 'realtime' : 'deterministic'
}

/**
 * Boots one test on the sim and reads its verdict. `env`: the test's environment, as
 * `scripts/arch-run.bash` passes it to QEMU: one multiboot module of `KEY=VALUE` lines,
 * which lib/x86/setup.c reads (`setup_multiboot` takes the one module as the initrd,
 * `setup_libcflat` hands it to `setup_env`), e.g. `{ TEST_DEVICE: '0' }`.
 */
export async function runTest(dir: string, t: SuiteTest, timeoutMs = t.timeout * 1000, env?: Readonly<Record<string, string>>): Promise<TestRun> {
  let output = ''
  const start = performance.now()
  const memory = memoryFor(t.params)
  const vcpus = t.smp
  let result: VmRunResult | undefined
  try {
    const m = prepareMultiboot({
      kernel: join(dir, 'x86', t.file),
      cmdline: t.args,
      memory,
      vcpus,
      backend: 'sim',
      clock: clockFor(t),
      cpuid: cpuidFor(t.params),
      ...(env ? { modules: [{ data: new TextEncoder().encode(Object.entries(env).map(([k, v]) => `${k}=${v}\n`).join('')), cmdline: 'environ' }] } : {}),
      serial: { onByte: (b) => (output += String.fromCharCode(b)) },
    })
    try {
      addTestDevices(m.vm, vcpus, memory, (irq, level) => m.pc.irq(irq).set(level))
      if (/vmport=on/.test(t.params)) m.vm.bus.register(VMPORT_PORT, 1, new VmPort({ ramSize: () => memory }), 'vmport')
      // `-device intel-iommu,intremap=on`: the package's VT-d unit, at q35's 0xFED90000.
      if (/-device intel-iommu\b/.test(t.params)) addIntelIommu(m.pc, { interruptRemapping: /intel-iommu[^ ]*intremap=on/.test(t.params) })
      // `-device edu`: QEMU's educational device, on the PCI bus (./edu.ts).
      if (/-device edu\b/.test(t.params)) addEdu(m.pci, (slot) => pciIntxGsi(slot, 0))
      result = await m.run({ timeoutMs })
    } finally {
      m.close()
    }
  } catch (e) {
    return { verdict: 'ERROR', output, ended: e instanceof Error ? `${(e as { code?: string }).code ?? e.name}: ${e.message}` : String(e), seconds: (performance.now() - start) / 1000 }
  }
  const seconds = (performance.now() - start) / 1000
  const ended = JSON.stringify(result, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))
  if (result.reason === 'timeout') return { verdict: 'TIMEOUT', output, ended, seconds }
  if (result.reason !== 'debug-exit') return { verdict: 'ERROR', output, ended, seconds }
  const verdict: Verdict = result.code === 0 ? 'PASS' : result.code === 77 >> 1 ? 'SKIP' : 'FAIL'
  return { verdict, output, ended, seconds }
}
