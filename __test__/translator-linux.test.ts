/**
 * The translator's judge on real code (#31): Debian's kernel boots to its initramfs
 * marker and powers off on the deterministic clock under `cpu: 'interpreter'` and
 * `cpu: 'translator'`, and the two boots must end every run alike: the same number of
 * exits, and at each the same instruction count and the same digest of how the run
 * ended, its exit message and the registers (`vcpu.exitDigests()`); at the power-off,
 * the same console output and all of guest RAM the same.
 *
 * Lock-step here, not in Rust: the PC platform the kernel boots on (the UART, the PIT,
 * the RTC, the I/O APIC, ACPI's PM block, PCI) is TypeScript, so only this side can
 * boot it; the digests are taken in the sim (hv-sim), at each run's end, where a
 * divergence first shows.
 */
import test from 'ava'
import { createHash } from 'node:crypto'
import { busyboxInitramfs, prepareLinux } from '../index.js'
import { debianLinuxOrSkip } from './helpers.js'

const MARKER = 'MSHV-BOOT-MARKER'
const INIT = `/bin/busybox echo ${MARKER}\n/bin/busybox poweroff -f\n`
const CMDLINE = 'console=ttyS0 cryptomgr.notests'
const MEMORY = 256 << 20

const linux = debianLinuxOrSkip('translator-linux')
const boot = typeof linux !== 'string' ? test.serial : test.skip

interface Boot {
  result: unknown
  console: string
  digests: { instructions: bigint; hash: bigint }[]
  ram: string
  seconds: number
  instructions: number
  translator: unknown
}

async function bootUnder(cpu: 'interpreter' | 'translator'): Promise<Boot> {
  if (typeof linux === 'string') throw new Error(linux)
  let out = ''
  const m = prepareLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: INIT }),
    cmdline: CMDLINE,
    memory: MEMORY,
    vcpus: 1,
    backend: 'sim',
    clock: 'deterministic',
    cpu,
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
    rtcStart: new Date(Date.UTC(2026, 10, 25, 12, 0, 0)),
  })
  try {
    const v = m.vm.cpus[0]
    if (!v) throw new Error('no vCPU 0')
    v.recordExits()
    const start = performance.now()
    const result = await m.run({ timeoutMs: 300_000 })
    const seconds = (performance.now() - start) / 1000
    const stats = v.stats()
    const ram = createHash('sha256').update(m.vm.read(0, MEMORY)).digest('hex')
    return { result, console: out, digests: v.exitDigests(), ram, seconds, instructions: stats.instructions, translator: stats.translator }
  } finally {
    m.close()
  }
}

boot("Debian's boot to its marker ends every run alike under the interpreter and the translator (lock-step on exit digests)", async (t) => {
  const a = await bootUnder('interpreter')
  const b = await bootUnder('translator')
  t.deepEqual(a.result, { reason: 'poweroff', vcpu: 0 }, a.console.slice(-2000))
  t.true(a.console.includes(MARKER), 'the marker reached the console')
  const n = Math.min(a.digests.length, b.digests.length)
  let first = -1
  for (let i = 0; i < n && first < 0; i++) {
    const x = a.digests[i]
    const y = b.digests[i]
    if (x?.instructions !== y?.instructions || x?.hash !== y?.hash) first = i
  }
  t.is(first, -1, first < 0 ? '' : `run end ${first} differs: interpreter ${JSON.stringify(a.digests[first], (_, v) => (typeof v === 'bigint' ? v.toString(16) : v))}, translator ${JSON.stringify(b.digests[first], (_, v) => (typeof v === 'bigint' ? v.toString(16) : v))}`)
  t.is(b.digests.length, a.digests.length, 'the same number of run ends')
  t.is(b.instructions, a.instructions)
  t.deepEqual(b.result, a.result)
  t.is(b.console, a.console)
  t.is(b.ram, a.ram, 'all of guest RAM at the power-off')
  t.log(`${a.digests.length} run ends compared, ${a.instructions} instructions; interpreter ${a.seconds.toFixed(2)} s, translator ${b.seconds.toFixed(2)} s ${JSON.stringify(b.translator)}`)
})
