/**
 * The first hour at the command line (#30): every command answers --help with its
 * options, their defaults and an example, and exits 0 without doing anything; the REPL
 * prints no `undefined` after a helper's output; a number that fits sets a register;
 * a RAM size too small for the kernel says how much it needs.
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { createVm, enterRealMode, MshvError, prepareLinux } from '../index.js'
import { debianLinuxOrSkip } from './helpers.js'

const cli = (...args: string[]): { status: number | null; out: string; err: string } => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/mshv.ts', ...args], { encoding: 'utf8', timeout: 60_000 })
  return { status: r.status, out: r.stdout, err: r.stderr }
}

for (const [command, option, example] of [
  ['boot', '--memory MiB', 'mshv boot --backend sim'],
  ['restore', '--save-on TEXT', 'mshv restore shell.snap'],
  ['repl', '--kernel FILE|debian', 'mshv repl --backend sim --kernel debian'],
  ['doctor', '--experiment-ms N', 'mshv doctor --backend mshv'],
  ['image', '--force', 'mshv image'],
  ['fetch-linux', 'MSHV_LINUX_CACHE', 'mshv fetch-linux'],
] as const) {
  test(`mshv ${command} --help prints its options, defaults and an example, and exits 0`, (t) => {
    for (const form of [[command, '--help'], [command, '-h'], ['help', command]]) {
      const r = cli(...form)
      t.is(r.status, 0, r.err)
      t.true(r.out.includes(option), r.out)
      t.true(r.out.includes('example: ') && r.out.includes(example), r.out)
    }
  })
}

test('the usage names --help', (t) => {
  const r = cli('bogus')
  t.is(r.status, 2)
  t.regex(r.err, /unknown command 'bogus'/)
  t.regex(r.err, /mshv COMMAND --help/)
})

test('the REPL prints no undefined after a helper that prints nor a stack for a typing mistake, and regs.set takes a number that fits', (t) => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/mshv.ts', 'repl', '--backend', 'sim'], {
    encoding: 'utf8',
    timeout: 60_000,
    input: "regs()\nvcpu.regs.set('rax', 5)\nvcpu.regs.get('rax')\nasm`bogus`\n",
  })
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /rax 0000000000000000/)
  t.notRegex(r.stdout, /undefined/)
  t.regex(r.stdout, /5n/)
  t.regex(r.stdout, /EASM.*unknown instruction 'bogus'/, 'a typing mistake is its message')
  t.notRegex(r.stdout + r.stderr, /\n\s+at /, 'and no stack through the package')
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  vcpu.regs.set('rbx', 0x1234)
  t.is(vcpu.regs.get('rbx'), 0x1234n)
  for (const bad of [-1, 1.5, 2 ** 53]) t.throws(() => vcpu.regs.set('rbx', bad), { instanceOf: MshvError, code: 'EINVAL' })
  vm.close()
})

const linux = debianLinuxOrSkip('cli-help')
;(typeof linux === 'string' ? test.skip : test)('a RAM size too small for the kernel says how much it needs', (t) => {
  if (typeof linux === 'string') return
  const e = t.throws(() => prepareLinux({ kernel: linux.kernel, memory: 64 << 20, backend: 'sim' }), { instanceOf: MshvError, code: 'EKERNEL' })
  t.regex(e?.message ?? '', /it needs \d+ MiB or more/)
})

test('the status line waits for the console to finish its line: it never erases what the guest printed', async (t) => {
  const { StatusLine, ConsoleOut } = await import('../src/cli/boot.js')
  let screen = ''
  const term = { isTTY: true, write: (s: string | Uint8Array) => ((screen += typeof s === 'string' ? s : Buffer.from(s).toString('latin1')), true) }
  const out = new ConsoleOut({ stdin: process.stdin, stdout: term, stderr: term })
  const status = new StatusLine(term, () => 'STATUS', () => out.atLineStart)
  out.status = status
  status.start()
  for (const b of Buffer.from('busybox shell')) out.onByte(b)
  status.draw()
  t.false(screen.includes('STATUS'), 'mid-line: not drawn (it would erase "busybox shell")')
  for (const b of Buffer.from(' ready\n')) out.onByte(b)
  status.draw()
  t.true(screen.endsWith('\x1b[7mSTATUS\x1b[0m'), 'at a line start: drawn')
  out.onByte(0x41)
  t.true(screen.endsWith('\r\x1b[2KA'), 'cleared before the next byte')
  status.stop()
  t.true(screen.startsWith('busybox shell ready\n'))
})

;(typeof linux === 'string' ? test.skip : test)('a kernel panic ends the run with its line, where the guest would spin for ever', async (t) => {
  if (typeof linux === 'string') return
  const { bootLinux, busyboxInitramfs } = await import('../index.js')
  // An /init that returns: the kernel panics ("Attempted to kill init!").
  const report = await bootLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: '/bin/busybox echo bye\n' }),
    cmdline: 'console=ttyS0 cryptomgr.notests',
    backend: 'sim',
    timeoutMs: 120_000,
  })
  t.is(report.result.reason, 'panic')
  t.regex((report.result as { message: string }).message, /^Kernel panic - not syncing: Attempted to kill init!/)
  // With panic=-1 the kernel reboots itself: that ends the run.
  const reboot = await bootLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: '/bin/busybox echo bye\n' }),
    cmdline: 'console=ttyS0 cryptomgr.notests panic=-1',
    backend: 'sim',
    timeoutMs: 120_000,
  })
  t.is(reboot.result.reason, 'reboot')
})

;(typeof linux === 'string' ? test.skip : test.serial)('mshv boot --policy all runs unattended: each boot powers off, and an --init of applets works as typed', async (t) => {
  if (typeof linux === 'string') return
  const { boot } = await import('../src/cli/boot.js')
  const { parseBootArgs } = await import('../src/cli/args.js')
  const { captureIo } = await import('./helpers.js')
  const all = captureIo()
  const code = await boot(parseBootArgs(['--backend', 'sim', '--kernel', linux.kernel, '--busybox', linux.busybox, '--cmdline', 'console=ttyS0 quiet cryptomgr.notests', '--policy', 'all', '--no-progress']), all.io)
  t.is(code, 0, all.err())
  t.is((all.out().match(/mshv: booted; powering off/g) ?? []).length, 3)
  for (const policy of ['page', 'hypercall', 'eager']) t.regex(all.err(), new RegExp(`boot \\[${policy}\\]: \\{"reason":"poweroff","vcpu":0\\}`))
  const one = captureIo()
  t.is(await boot(parseBootArgs(['--backend', 'sim', '--kernel', linux.kernel, '--busybox', linux.busybox, '--cmdline', 'console=ttyS0 quiet cryptomgr.notests', '--init', 'uname -s; poweroff -f', '--no-progress']), one.io), 0, one.err())
  t.regex(one.out(), /^Linux\r?$/m, 'uname and poweroff are busybox applets, linked by the prelude')
})

;(typeof linux === 'string' ? test.skip : test.serial)('mshv boot --trace FILE writes every run and exit of the boot as a Chrome trace', async (t) => {
  if (typeof linux === 'string') return
  const { boot } = await import('../src/cli/boot.js')
  const { parseBootArgs } = await import('../src/cli/args.js')
  const { captureIo } = await import('./helpers.js')
  const { mkdtempSync, readFileSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  const file = join(mkdtempSync(join(tmpdir(), 'mshv-trace-')), 'boot.json')
  const io = captureIo()
  t.is(await boot(parseBootArgs(['--backend', 'sim', '--kernel', linux.kernel, '--busybox', linux.busybox, '--cmdline', 'console=ttyS0 quiet cryptomgr.notests', '--init', 'poweroff -f', '--no-progress', '--trace', file]), io.io), 0, io.err())
  t.regex(io.err(), /trace events written to .*boot\.json/)
  const trace = JSON.parse(readFileSync(file, 'utf8')) as { traceEvents: { name: string; cat: string; args?: Record<string, unknown> }[] }
  const exits = trace.traceEvents.filter((e) => e.cat === 'exit')
  t.true(exits.length > 1000, `${exits.length} exits`)
  t.true(exits.some((e) => e.name === 'ioPort' && e.args?.['port'] === '0x3f8' && e.args['direction'] === 'out'), 'the console UART writes')
  t.true(exits.some((e) => e.name === 'unmappedGpa' && typeof e.args?.['gpa'] === 'string'), 'MMIO (the I/O APIC, PCI)')
})

test('on a host whose archive has no linux-image-amd64 (Ubuntu), fetching Debian\'s kernel says what to do instead', async (t) => {
  const { mkdtempSync, writeFileSync, chmodSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  // An apt-cache that knows no such package, as Ubuntu's archive; an empty cache directory.
  const bin = mkdtempSync(join(tmpdir(), 'mshv-ubuntu-'))
  writeFileSync(join(bin, 'apt-cache'), '#!/bin/sh\necho "E: No packages found" >&2\nexit 100\n')
  chmodSync(join(bin, 'apt-cache'), 0o755)
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/mshv.ts', 'fetch-linux'], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, PATH: `${bin}:${process.env['PATH'] ?? ''}`, MSHV_LINUX_CACHE: mkdtempSync(join(tmpdir(), 'mshv-cache-')) },
  })
  t.not(r.status, 0)
  t.regex(r.stderr, /linux-image-generic/)
  t.regex(r.stderr, /--kernel .* --busybox/)
})

;(typeof linux === 'string' ? test.skip : test.serial)('mshv boot at a terminal runs on the host\'s time unless --clock says otherwise; piped, deterministic', async (t) => {
  if (typeof linux === 'string') return
  const { boot } = await import('../src/cli/boot.js')
  const { parseBootArgs } = await import('../src/cli/args.js')
  const { captureIo } = await import('./helpers.js')
  const { mkdtempSync, readFileSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  const dir = mkdtempSync(join(tmpdir(), 'mshv-clock-'))
  const clockOf = async (tty: boolean, extra: string[]): Promise<string> => {
    const c = captureIo()
    if (tty) Object.assign(c.stdin, { isTTY: true, setRawMode: () => c.stdin })
    const file = join(dir, `${tty}-${extra.length}.json`)
    const code = await boot(parseBootArgs(['--backend', 'sim', '--kernel', linux.kernel, '--busybox', linux.busybox, '--cmdline', 'console=ttyS0 quiet cryptomgr.notests', '--init', 'poweroff -f', '--no-progress', '--json', file, ...extra]), c.io)
    t.is(code, 0, c.err())
    return (JSON.parse(readFileSync(file, 'utf8')) as { report: { clock: string } }[])[0]?.report.clock ?? ''
  }
  t.is(await clockOf(true, []), 'realtime')
  t.is(await clockOf(true, ['--clock', 'deterministic']), 'deterministic')
  t.is(await clockOf(false, []), 'deterministic')
})
