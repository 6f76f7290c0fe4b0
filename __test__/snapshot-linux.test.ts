/**
 * Debian's kernel with a busybox initramfs on the sim: snapshot at the shell, restore in
 * this process and in a new one, type a command: it runs. On the deterministic clock the
 * restored VM's exits from the snapshot on equal the original's, exit for exit.
 */
import test from 'ava'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { busyboxInitramfs, prepareLinux, restoreLinux, type LinuxMachine } from '../index.js'
import { debianLinuxOrSkip } from './helpers.js'

const linux = debianLinuxOrSkip('snapshot-linux')
const boot = typeof linux === 'string' ? test.skip : test.serial
const READY = 'READY-FOR-INPUT'
/** Prints READY, then runs each line the console gives it. */
const INIT = `echo ${READY}\nwhile read -r line; do eval "$line"; done\npoweroff -f\n`
const CMDLINE = 'console=ttyS0 cryptomgr.notests'
const dir = mkdtempSync(join(tmpdir(), 'mshv-snap-linux-'))

interface Counts {
  exits: number
  instructions: number
  byType: Record<string, number>
}

function counts(m: LinuxMachine): Counts {
  const s = m.vm.cpus[0]?.stats()
  return { exits: s?.exits ?? 0, instructions: s?.instructions ?? 0, byType: { ...(s?.exitsByType ?? {}) } }
}

function minus(a: Counts, b: Counts): Counts {
  const byType: Record<string, number> = {}
  for (const [k, v] of Object.entries(a.byType)) if (v - (b.byType[k] ?? 0) !== 0) byType[k] = v - (b.byType[k] ?? 0)
  return { exits: a.exits - b.exits, instructions: a.instructions - b.instructions, byType }
}

boot('a Linux VM snapshotted at its shell restores in this process and runs a command, exit for exit as the original', async (t) => {
  if (typeof linux === 'string') return
  const initrd = busyboxInitramfs({ busybox: linux.busybox, init: INIT })
  const out = { text: '' }
  let m: LinuxMachine | undefined
  m = prepareLinux({
    kernel: linux.kernel,
    initrd,
    cmdline: CMDLINE,
    backend: 'sim',
    rtcStart: new Date(Date.UTC(2026, 11, 7)),
    serial: {
      onByte: (b) => {
        out.text += String.fromCharCode(b)
        // Stopped right after the marker's newline: between two exits, deterministically.
        if (out.text.endsWith(`${READY}\n`) || out.text.endsWith(`${READY}\r\n`)) m?.vm.cancel()
      },
    },
  })
  t.teardown(() => m?.close())
  t.is((await m.run({ timeoutMs: 120_000 })).reason, 'cancelled', out.text.slice(-500))
  const path = join(dir, 'shell.snap')
  const started = performance.now()
  const info = m.snapshot(path)
  t.log(`snapshot: ${(info.bytes / 2 ** 20).toFixed(1)} MiB, ${info.pagesWritten} of ${info.pages} pages, ${(performance.now() - started).toFixed(0)} ms`)
  t.true(info.pagesWritten < info.pages / 2, 'zero pages left out')
  const atSnapshot = counts(m)

  // The original goes on: a command, then power-off.
  const command = 'echo "answer $((6*7))"; /bin/busybox poweroff -f\n'
  const before = out.text.length
  m.pc.serial.feed(command)
  const end = await m.run({ timeoutMs: 120_000 })
  t.deepEqual(end, { reason: 'poweroff', vcpu: 0 })
  const originalOut = out.text.slice(before)
  t.regex(originalOut, /answer 42/)
  const original = minus(counts(m), atSnapshot)

  // Restored in this process: the same command, the same exits.
  let restoredOut = ''
  const t0 = performance.now()
  const r = await restoreLinux(path, { serial: { onByte: (b) => (restoredOut += String.fromCharCode(b)) } })
  t.log(`restore (rebuild + state + memory mapped): ${(performance.now() - t0).toFixed(1)} ms`)
  t.teardown(() => r.close())
  r.pc.serial.feed(command)
  t.deepEqual(await r.run({ timeoutMs: 120_000 }), { reason: 'poweroff', vcpu: 0 })
  t.is(restoredOut, originalOut, 'the same console output')
  t.deepEqual(counts(r), original, 'the same exits, by type, and instructions from the snapshot on')
})

boot('mshv boot --save-to/--save-on saves at a console marker; mshv restore goes on in a new process and runs a typed command', async (t) => {
  if (typeof linux === 'string') return
  const { boot: bootCommand } = await import('../src/cli/boot.js')
  const { parseBootArgs } = await import('../src/cli/args.js')
  const { captureIo } = await import('./helpers.js')
  const file = join(dir, 'cli.snap')
  const { io, err } = captureIo()
  const code = await bootCommand(parseBootArgs(['--backend', 'sim', '--kernel', linux.kernel, '--busybox', linux.busybox, '--init', INIT, '--cmdline', CMDLINE, '--no-progress', '--save-to', file, '--save-on', READY]), io)
  t.is(code, 0, err())
  t.regex(err(), new RegExp(`mshv: saved to ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\([\\d.]+ MiB`))
  const { execFile } = await import('node:child_process')
  const child = execFile(process.execPath, ['--import', 'tsx', 'src/cli/mshv.ts', 'restore', file, '--no-progress'], { timeout: 120_000 })
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString('latin1')))
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
  child.stdin?.end('echo "answer $((6*7)) from a restored VM"; /bin/busybox poweroff -f\n')
  const exit = await new Promise<number | null>((resolve) => child.on('close', resolve))
  t.is(exit, 0, stderr)
  t.regex(stdout, /answer 42 from a restored VM/)
  t.regex(stderr, /boot \[restored\]: \{"reason":"poweroff","vcpu":0\}/)
})

/**
 * This process's resident memory (KiB): all, anonymous (private pages: what the forks
 * wrote, and the heaps), file-backed (the snapshot's pages, counted once per mapping
 * though they are one copy in the page cache), and the proportional set size, which
 * counts each page once (/proc/self/status, /proc/self/smaps_rollup).
 */
function rss(): { total: number; anon: number; file: number; pss: number } {
  const s = readFileSync('/proc/self/status', 'utf8') + readFileSync('/proc/self/smaps_rollup', 'utf8')
  const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? 0)
  return { total: kib('VmRSS'), anon: kib('RssAnon'), file: kib('RssFile'), pss: kib('Pss') }
}

boot('100 forks of one Linux VM in one process each run a command; memory grows by what they touch, not by their RAM', async (t) => {
  if (typeof linux === 'string') return
  const out = { text: '' }
  let m: LinuxMachine | undefined
  m = prepareLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: INIT }),
    cmdline: CMDLINE,
    memory: 128 << 20,
    backend: 'sim',
    serial: {
      onByte: (b) => {
        out.text += String.fromCharCode(b)
        if (out.text.endsWith(`${READY}\r\n`)) m?.vm.cancel()
      },
    },
  })
  t.teardown(() => m?.close())
  t.is((await m.run({ timeoutMs: 120_000 })).reason, 'cancelled', out.text.slice(-500))
  const outputs: string[] = []
  const before = rss()
  const t0 = performance.now()
  const forks = await m.fork(100, (i) => ({ serial: { onByte: (b) => (outputs[i] = (outputs[i] ?? '') + String.fromCharCode(b)) } }))
  const forked = performance.now() - t0
  t.teardown(() => forks.forEach((f) => f.close()))
  for (const [i, f] of forks.entries()) {
    f.pc.serial.feed(`echo "fork ${i} says $((${i}*2))"; /bin/busybox poweroff -f\n`)
    t.deepEqual(await f.run({ timeoutMs: 60_000 }), { reason: 'poweroff', vcpu: 0 })
    t.regex(outputs[i] ?? '', new RegExp(`fork ${i} says ${i * 2}`))
  }
  const after = rss()
  const mib = (k: number): string => (k / 1024).toFixed(1)
  const perFork = (after.pss - before.pss) / 100
  // Under the translator (MSHV_SIM_CPU=translator compiles every block at its first
  // run) each fork also holds the host code it compiled: memory, but not guest RAM.
  const codePerFork = forks.reduce((n, f) => n + f.vm.cpus.reduce((k, c) => k + (c.stats().translator?.bytes ?? 0), 0), 0) / 1024 / 100
  t.log(`100 forks of a 128 MiB VM: ${forked.toFixed(0)} ms (${(forked / 100).toFixed(1)} ms each); PSS +${mib(after.pss - before.pss)} MiB (${mib(perFork)} MiB per fork, ${mib(codePerFork)} MiB of it compiled code); RSS +${mib(after.total - before.total)} MiB: anon +${mib(after.anon - before.anon)}, file +${mib(after.file - before.file)} (the snapshot's pages, one copy, counted per fork)`)
  t.true(perFork - codePerFork < 128 * 1024 / 8, `each fork costs ${mib(perFork)} MiB (PSS; ${mib(codePerFork)} MiB compiled code), far below its 128 MiB of RAM`)
  t.true((after.anon - before.anon) / 100 < 128 * 1024 / 8, 'the private pages (written) per fork')
})

boot('an incremental snapshot of a running Linux VM restores, through its parent, to the same RAM and the same exits', async (t) => {
  if (typeof linux === 'string') return
  const out = { text: '' }
  let stopAt = `${READY}\r\n`
  let m: LinuxMachine | undefined
  m = prepareLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: INIT }),
    cmdline: CMDLINE,
    backend: 'sim',
    serial: {
      onByte: (b) => {
        out.text += String.fromCharCode(b)
        if (out.text.endsWith(stopAt)) m?.vm.cancel()
      },
    },
  })
  t.teardown(() => m?.close())
  t.is((await m.run({ timeoutMs: 120_000 })).reason, 'cancelled')
  const full = join(dir, 'linux-full.snap')
  const f = m.snapshot(full)
  // The guest works between the two: a command runs (and its page cache, stacks,
  // slabs change).
  stopAt = 'one done\r\n'
  m.pc.serial.feed('i=0; while [ $i -lt 200 ]; do i=$((i+1)); done; echo "one $i"; echo one done\n')
  t.is((await m.run({ timeoutMs: 120_000 })).reason, 'cancelled')
  const next = join(dir, 'linux-next.snap')
  const i = m.snapshot(next, { parent: full })
  t.log(`full: ${f.pagesWritten} pages (${(f.bytes / 2 ** 20).toFixed(1)} MiB); incremental: ${i.pagesWritten} pages (${(i.bytes / 2 ** 20).toFixed(1)} MiB)`)
  t.true(i.pagesWritten > 0 && i.pagesWritten < f.pagesWritten / 4, 'the incremental snapshot holds what changed')
  const ram = m.vm.read(0, 256 << 20)

  let restoredOut = ''
  const r = await restoreLinux(next, { serial: { onByte: (b) => (restoredOut += String.fromCharCode(b)) } })
  t.teardown(() => r.close())
  t.true(Buffer.from(r.vm.read(0, 256 << 20)).equals(Buffer.from(ram)), 'RAM restored through the chain is the original\'s, byte for byte')
  const before = counts(m)
  const original = out.text.length
  const command = 'echo "answer $((6*7))"; /bin/busybox poweroff -f\n'
  stopAt = '\u0000never'
  m.pc.serial.feed(command)
  r.pc.serial.feed(command)
  t.deepEqual(await m.run({ timeoutMs: 120_000 }), { reason: 'poweroff', vcpu: 0 })
  t.deepEqual(await r.run({ timeoutMs: 120_000 }), { reason: 'poweroff', vcpu: 0 })
  t.is(restoredOut, out.text.slice(original))
  t.deepEqual(counts(r), minus(counts(m), before), 'the same exits and instructions from the snapshot on')
})
