/**
 * `mshv doctor` on the sim, where CI runs it: every check passes, the report and the
 * command say so, and the VMM checks fail when the behaviour they check breaks.
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { existsSync } from 'node:fs'
import { runDoctor, formatDoctorReport, hostReport, EXIT_CASES, POLICIES, Vcpu, Serial16550, MshvError, type DoctorReport } from '../index.js'
import { VMM_CHECKS } from '../src/doctor/vmm-checks.js'
import { formatHost } from '../src/doctor/doctor.js'
import { native } from '../src/native.js'

const run = promisify(execFile)
const CLI = 'dist/mshv-cli.js'

test('on the sim every backend and VMM check passes and the experiment covers every case and policy', async (t) => {
  const seen: string[] = []
  const r = await runDoctor({ backend: 'sim', experimentMs: 5, onCheck: (c) => seen.push(c.name) })
  const failed = r.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.detail}`)
  t.deepEqual(failed, [])
  t.true(r.passed)
  t.is(r.backend, 'sim')
  const names = [...native.backendChecks().map((c) => c.name), ...VMM_CHECKS.map((c) => c.name)]
  t.deepEqual(r.checks.map((c) => c.name), names)
  t.deepEqual(seen, names, 'reported live, in order')
  t.is(r.experiment.length, EXIT_CASES.length * POLICIES.length)
  const pio = (policy: string) => r.experiment.find((e) => e.case === 'PIO OUT' && e.policy === policy)
  t.is(pio('page')?.hypercallsPerExit, 0, 'a port exit with the page costs no hypercall')
  t.is(pio('hypercall')?.hypercallsPerExit, 1)
  t.regex(formatDoctorReport(r), new RegExp(`All ${names.length} checks passed on sim\\.`))
})

test('`mshv doctor --backend sim --json FILE` exits 0, prints the report and writes the JSON', async (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'mshv-doctor-')), 'report.json')
  const { stdout } = await run(process.execPath, [CLI, 'doctor', '--backend', 'sim', '--json', file, '--experiment-ms', '5'])
  t.regex(stdout, /^mshv .* doctor\n/)
  t.regex(stdout, /The hypervisor at the VMM boundary:\n {2}PASS {2}partition/)
  t.regex(stdout, /This package's exit handling:\n {2}PASS {2}uart_and_debug_exit/)
  t.regex(stdout, /PIO OUT \[page\] +[0-9,]+ {2}0\.000/)
  t.regex(stdout, /All \d+ checks passed on sim\./)
  if (!existsSync('/dev/mshv')) t.regex(stdout, /\nkernel api {2}not determined: \/dev\/mshv/)
  const json = JSON.parse(readFileSync(file, 'utf8')) as DoctorReport
  t.true(json.passed)
  t.true(json.checks.every((c) => c.passed))
})

test('`mshv doctor --backend mshv` fails with one clear reason where /dev/mshv is absent', async (t) => {
  const present = existsSync('/dev/mshv')
  const e = await run(process.execPath, [CLI, 'doctor', '--backend', 'mshv', '--experiment-ms', '0']).then(
    () => undefined,
    (err: { code: number; stdout: string }) => err,
  )
  if (present) {
    t.is(e, undefined, 'on a host with the device every check passes')
    return
  }
  t.is(e?.code, 1)
  t.regex(e?.stdout ?? '', /FAIL {2}open_device +\/dev\/mshv is not available/)
  t.regex(e?.stdout ?? '', /1 of 1 checks failed on mshv\./)
})

test('the host report names the kernel paths (partition creation, GVA translation, refused intercepts) or says why it cannot (#28)', (t) => {
  const host = hostReport()
  t.true(Array.isArray(host.refusedIntercepts))
  if (!existsSync('/dev/mshv')) {
    t.is(host.partitionPath, undefined)
    t.is(host.translateGvaPath, undefined)
    t.regex(host.kernelPathsError ?? '', /^not determined: \/dev\/mshv is not available/)
    t.regex(formatHost(host, 'sim', 'test'), /\nkernel api {2}not determined: \/dev\/mshv/)
  } else {
    t.true(host.partitionPath !== undefined || host.kernelPathsError !== undefined)
  }
  const known = formatHost(
    {
      ...host,
      partitionPath: "QEMU's arguments (LAPIC, X2APIC, GPA super pages; the kernel's processor features), since ...",
      translateGvaPath: 'HVCALL_TRANSLATE_VIRTUAL_ADDRESS through MSHV_ROOT_HVCALL',
      refusedIntercepts: ['MSR 0x1b: the hypervisor refused the intercept'],
      kernelPathsError: undefined,
    },
    'mshv',
    'test',
  )
  t.regex(known, /\npartitions  QEMU's arguments/)
  t.regex(known, /\ngva xlate   HVCALL_TRANSLATE_VIRTUAL_ADDRESS/)
  t.regex(known, /\nrefused     MSR 0x1b: /)
  t.notRegex(known, /\nkernel api /)
})

test('bad doctor options are clear errors, and a bad command line exits 2 with the usage', async (t) => {
  await t.throwsAsync(runDoctor({ backend: 'kvm' as 'sim' }), { instanceOf: MshvError, message: /backend must be 'auto', 'sim' or 'mshv', got 'kvm'/ })
  await t.throwsAsync(runDoctor({ experimentMs: -1 }), { instanceOf: MshvError, message: /experimentMs .* got -1/ })
  await t.throwsAsync(runDoctor({ onCheck: 5 as unknown as () => void }), { instanceOf: MshvError, code: 'EINVAL', message: /onCheck must be a function, got 5/ })
  const e = await run(process.execPath, [CLI, 'doctor', '--frobnicate']).then(
    () => undefined,
    (err: { code: number; stderr: string }) => err,
  )
  t.is(e?.code, 2)
  t.regex(e?.stderr ?? '', /unknown or incomplete option '--frobnicate'[^]*mshv doctor \[--backend/)
  // A command that does not exist is named as such (it used to print the usage alone).
  const u = await run(process.execPath, [CLI, 'bogus']).then(
    () => undefined,
    (err: { code: number; stderr: string }) => err,
  )
  t.is(u?.code, 2)
  t.regex(u?.stderr ?? '', /^mshv: unknown command 'bogus'\nusage: mshv repl/)
})

/** Runs the VMM check `name` on the sim with `patch` applied, restoring it afterwards. */
async function withPatch(name: string, patch: () => () => void): Promise<string> {
  const check = VMM_CHECKS.find((c) => c.name === name)
  if (!check) throw new Error(`no check ${name}`)
  await check.run('sim') // passes as things are
  const restore = patch()
  try {
    await check.run('sim')
    return 'passed'
  } catch (e) {
    return e instanceof Error ? e.message : String(e)
  } finally {
    restore()
  }
}

test.serial('the VMM checks fail when what they check breaks (serial: it patches shared prototypes)', async (t) => {
  const inject = Vcpu.prototype.injectException
  t.regex(
    await withPatch('msr_handlers', () => {
      Vcpu.prototype.injectException = () => {
        throw new Error('no #GP was injected')
      }
      return () => (Vcpu.prototype.injectException = inject)
    }),
    /no #GP was injected/,
  )
  const write = Serial16550.prototype.ioWrite
  t.regex(
    await withPatch('uart_and_debug_exit', () => {
      Serial16550.prototype.ioWrite = () => undefined
      return () => (Serial16550.prototype.ioWrite = write)
    }),
    /the UART output/,
  )
  const cancel = Vcpu.prototype.cancel
  t.regex(
    await withPatch('cancel_and_timeout', () => {
      // A cancel that arrives only after the guest ran 3 s: the check must call it late.
      Vcpu.prototype.cancel = function (this: Vcpu) {
        setTimeout(() => cancel.call(this), 3000)
      }
      return () => (Vcpu.prototype.cancel = cancel)
    }),
    /the cancel took/,
  )
})
