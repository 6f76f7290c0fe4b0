/**
 * Snapshots as a benchmark: a 256 MiB Linux VM (Debian's kernel, busybox) at its
 * shell: the snapshot's time and size against RAM, a restore to the guest's first
 * instruction (the machine built again, the state put in, RAM mapped from the file;
 * Firecracker's order is ~10 ms), and forks: time and memory (PSS) per fork.
 * @module
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { busyboxInitramfs, fetchDebianLinux, prepareLinux, restoreLinux, type LinuxMachine } from '../index.js'
import type { Row } from './report.js'

const READY = 'READY-FOR-INPUT'
const INIT = `/bin/busybox echo ${READY}\nwhile read -r line; do eval "$line"; done\n`

function pssKiB(): number {
  return Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))?.[1] ?? 0)
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] ?? 0
}

export async function snapshotRows(): Promise<Row[]> {
  let linux
  try {
    linux = fetchDebianLinux()
  } catch (e) {
    console.log(`snapshot benchmark skipped: ${e instanceof Error ? e.message : e}`)
    return []
  }
  const dir = mkdtempSync(join(tmpdir(), 'mshv-bench-snap-'))
  let text = ''
  let m: LinuxMachine | undefined
  m = prepareLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: INIT }),
    cmdline: 'console=ttyS0 cryptomgr.notests',
    backend: 'sim',
    serial: {
      onByte: (b) => {
        text = (text + String.fromCharCode(b)).slice(-64)
        if (text.endsWith(`${READY}\r\n`)) m?.vm.cancel()
      },
    },
  })
  try {
    await m.run({ timeoutMs: 120_000 })
    const path = join(dir, 'shell.snap')
    const t0 = performance.now()
    const info = m.snapshot(path)
    const snapMs = performance.now() - t0
    const restores: number[] = []
    const vmRestores: number[] = []
    for (let i = 0; i < 15; i++) {
      const a = performance.now()
      const r = await restoreLinux(path)
      // The guest's first instruction after the restore.
      r.vm.cpus[0]?.run({ maxInstructions: 1 })
      restores.push(performance.now() - a)
      const b = performance.now()
      r.vm.restore(path)
      vmRestores.push(performance.now() - b)
      r.close()
    }
    const before = pssKiB()
    const f0 = performance.now()
    const forks = await m.fork(20)
    const forkMs = (performance.now() - f0) / 20
    const pss = (pssKiB() - before) / 20
    forks.forEach((f) => f.close())
    const ram = 256
    return [
      { group: 'snapshot', case: 'snapshot of a 256 MiB Linux VM at its shell', value: snapMs, unit: 'ms', notes: `${(info.bytes / 2 ** 20).toFixed(1)} MiB file (${((100 * info.bytes) / (ram * 2 ** 20)).toFixed(0)}% of RAM: ${info.pagesWritten} of ${info.pages} pages non-zero)` },
      { group: 'snapshot', case: 'restore to the first guest instruction (machine built again + state + RAM mapped)', value: median(restores), unit: 'ms', notes: `median of 15; min ${Math.min(...restores).toFixed(1)} ms; goal 10 ms (Firecracker's order)` },
      { group: 'snapshot', case: 'vm.restore() alone into a built machine', value: median(vmRestores), unit: 'ms', notes: 'devices, vCPU states, guest time, RAM remapped from the file' },
      { group: 'snapshot', case: 'fork (machine.fork(20)), per fork', value: forkMs, unit: 'ms', notes: `PSS per fork before it runs: ${(pss / 1024).toFixed(2)} MiB of its ${ram} MiB` },
    ]
  } finally {
    m.close()
    rmSync(dir, { recursive: true, force: true })
  }
}
