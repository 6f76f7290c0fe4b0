/**
 * The main job: Debian 12's kernel and busybox (fetched once with apt-get download
 * into ~/.cache/mshv-linux) boot on the sim with a virtio disk on PCI: the guest loads
 * Debian's virtio modules, mounts the disk's ext4 file system (made here with
 * `mke2fs -d`, guarded by a copy-on-write overlay), reads a file from it and powers
 * off; then the boot's report: exits by type, hypercalls per exit, and the register
 * accesses the VP register page served.
 *
 *   node --import tsx examples/boot-linux.ts
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { bootLinux, busyboxInitramfs, fetchDebianLinux, kernelModules } from '../index.js'
import { formatBootReport } from '../src/cli/boot.js'

const linux = fetchDebianLinux()
const dir = mkdtempSync(join(tmpdir(), 'mshv-demo-'))
mkdirSync(join(dir, 'files'))
writeFileSync(join(dir, 'files', 'hello.txt'), 'hello from a virtio disk\n')
execFileSync('mke2fs', ['-q', '-t', 'ext4', '-d', join(dir, 'files'), join(dir, 'disk.img'), '4M'])
const B = '/bin/busybox'
const init = `
${B} mkdir -p /proc /sys /mnt && ${B} mount -t proc proc /proc && ${B} mount -t sysfs sysfs /sys && ${B} mount -t devtmpfs dev /dev
${B} --install -s /bin
modprobe -a virtio_pci virtio_blk ext4 crc32c_generic
echo "guest: $(uname -sr), $(grep -c ^processor /proc/cpuinfo) CPUs, $(grep 'model name' /proc/cpuinfo | head -1 | cut -d: -f2)"
mount -t ext4 -o ro /dev/vda /mnt && echo "guest: /dev/vda says: $(cat /mnt/hello.txt)"
poweroff -f
`
const report = await bootLinux({
  kernel: linux.kernel,
  initrd: busyboxInitramfs({ busybox: linux.busybox, init, modules: kernelModules(linux.kernel, ['virtio_pci', 'virtio_blk', 'ext4', 'crc32c_generic']) }),
  cmdline: 'console=ttyS0 quiet cryptomgr.notests',
  vcpus: 2,
  disks: [{ path: join(dir, 'disk.img'), overlay: true }],
  serial: { onByte: (b) => process.stdout.write(String.fromCharCode(b)) },
})
rmSync(dir, { recursive: true })
console.log(`\n${formatBootReport(report, 'page')}`)
process.exitCode = report.result.reason === 'poweroff' ? 0 : 1
