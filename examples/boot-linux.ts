/**
 * The main job: Debian 12's kernel and busybox (fetched once with apt-get download
 * into ~/.cache/mshv-linux) boot on the sim to a shell script that looks around and
 * powers off; then the boot's report: exits by type, hypercalls per exit, and the
 * register accesses the VP register page served.
 *
 *   node --import tsx examples/boot-linux.ts
 */
import { bootLinux, busyboxInitramfs, fetchDebianLinux } from '../index.js'
import { formatBootReport } from '../src/cli/boot.js'

const linux = fetchDebianLinux()
const init = `
/bin/busybox mount -t proc proc /proc 2>/dev/null || (/bin/busybox mkdir /proc && /bin/busybox mount -t proc proc /proc)
/bin/busybox echo "guest: $(/bin/busybox uname -sr), $(/bin/busybox grep -c ^processor /proc/cpuinfo) CPUs, $(/bin/busybox grep 'model name' /proc/cpuinfo | /bin/busybox head -1 | /bin/busybox cut -d: -f2)"
/bin/busybox poweroff -f
`
const report = await bootLinux({
  kernel: linux.kernel,
  initrd: busyboxInitramfs({ busybox: linux.busybox, init }),
  cmdline: 'console=ttyS0 quiet cryptomgr.notests',
  vcpus: 2,
  serial: { onByte: (b) => process.stdout.write(String.fromCharCode(b)) },
})
console.log(`\n${formatBootReport(report, 'page')}`)
process.exitCode = report.result.reason === 'poweroff' ? 0 : 1
