/**
 * `mshv doctor`'s checklists on the real hypervisor: each backend check (what MSHV
 * delivers) and each VMM check (what this package does with it) is one test. They need
 * /dev/mshv; without it every one is skipped, and the reason is printed.
 */
import test from 'ava'
import { existsSync } from 'node:fs'
import { native } from '../src/native.js'
import { VMM_CHECKS } from '../src/doctor/vmm-checks.js'
import { bootLinux, busyboxInitramfs, fetchDebianLinux } from '../index.js'

const HAVE_DEVICE = existsSync('/dev/mshv')
const onDevice = HAVE_DEVICE ? test.serial : test.skip
if (!HAVE_DEVICE) console.log('mshv-device tests skipped: /dev/mshv is absent on this machine')

for (const c of native.backendChecks()) {
  onDevice(`backend check on mshv: ${c.name} (${c.summary})`, (t) => {
    const r = native.runBackendCheck('mshv', c.name)
    t.log(r.detail)
    t.true(r.passed, r.detail)
  })
}

for (const c of VMM_CHECKS) {
  onDevice(`VMM check on mshv: ${c.name} (${c.summary})`, async (t) => {
    t.log(await c.run('mshv'))
  })
}

onDevice("Debian's kernel boots on mshv to the initramfs marker and powers off (2 vCPUs)", async (t) => {
  const linux = fetchDebianLinux()
  let out = ''
  const report = await bootLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: '/bin/busybox echo MSHV-BOOT-MARKER\n/bin/busybox poweroff -f\n' }),
    cmdline: 'console=ttyS0',
    vcpus: 2,
    backend: 'mshv',
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
    timeoutMs: 120_000,
  })
  t.log(`${report.seconds.toFixed(2)} s, ${report.exits} exits, ${(report.hypercalls / report.exits).toFixed(3)} hypercalls/exit`)
  t.deepEqual(report.result, { reason: 'poweroff', vcpu: 0 }, out.slice(-2000))
  t.true(out.includes('MSHV-BOOT-MARKER'))
})
