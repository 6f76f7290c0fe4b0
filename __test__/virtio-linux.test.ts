/**
 * Linux's own drivers against the devices: Debian 12's kernel loads `virtio_pci`,
 * `virtio_blk`, `virtio_net`, `virtio_console` and `virtio-rng` from its package (through
 * the modules.dep made for the initramfs), finds the functions on PCI bus 0 with the IDs
 * the VMM gave, mounts an ext4 file system made by `mke2fs -d` from a virtio disk,
 * writes random bytes to a second disk whose SHA-256 the test computes from the image
 * itself, reads /dev/hwrng, writes to hvc0, and two guests of one process ping each
 * other over the in-process switch. Where Debian's packages cannot be fetched the tests
 * skip saying so; under CI that is a failure.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { boot as bootCommand } from '../src/cli/boot.js'
import { parseBootArgs } from '../src/cli/args.js'
import { busyboxInitramfs, kernelModules, MemoryDisk, NetworkSwitch, prepareLinux, VIRTIO_MODULES, type LinuxOptions } from '../index.js'
import { captureIo, debianLinuxOrSkip } from './helpers.js'

const linux = debianLinuxOrSkip('virtio-linux')
const boot = typeof linux === 'string' ? test.skip : test.serial

const B = '/bin/busybox'
// /proc and busybox's applets come with the initramfs's own prelude (INIT_PRELUDE).
const PRELUDE = `${B} mkdir -p /sys /tmp /mnt
${B} mount -t sysfs sysfs /sys
${B} mount -t devtmpfs devtmpfs /dev
modprobe -a $(cat /etc/modules)
`

/** Boots `init` with `options`; returns the serial console's text and the run's result. */
async function run(options: Omit<LinuxOptions, 'kernel'>, init: string): Promise<{ console: string; reason: string }> {
  if (typeof linux === 'string') throw new Error(linux)
  let out = ''
  const m = prepareLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: PRELUDE + init, modules: kernelModules(linux.kernel, VIRTIO_MODULES) }),
    cmdline: 'console=ttyS0 quiet cryptomgr.notests',
    backend: 'sim',
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
    ...options,
  })
  try {
    const r = await m.run({ timeoutMs: 120_000 })
    return { console: out, reason: r.reason }
  } finally {
    m.close()
  }
}

boot('Linux drives virtio-blk, virtio-rng and virtio-console on PCI: ext4 from one disk, random bytes to another with equal SHA-256 on both sides', async (t) => {
  // An ext4 file system with one file, as users make one: mke2fs -d.
  const dir = mkdtempSync(join(tmpdir(), 'mshv-virtio-'))
  mkdirSync(join(dir, 'root'))
  writeFileSync(join(dir, 'root', 'greeting.txt'), 'read from a virtio disk\n')
  const image = join(dir, 'ext4.img')
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-d', join(dir, 'root'), '-L', 'mshv', image, '8M'])
  const imageHash = createHash('sha256').update(readFileSync(image)).digest('hex')
  const scratch = new MemoryDisk(4 << 20)
  let hvc = ''
  const { console, reason } = await run(
    { disks: [{ path: image, overlay: true }, { backend: scratch }], rng: true, virtioConsole: { onData: (b) => (hvc += new TextDecoder().decode(b)) }, memory: 256 << 20 },
    `for d in /sys/bus/pci/devices/*; do echo "PCI $(basename $d) $(cat $d/vendor) $(cat $d/device) $(cat $d/class)"; done
mount -t ext4 /dev/vda /mnt && echo "FILE $(cat /mnt/greeting.txt)"
echo changed > /mnt/greeting.txt; umount /mnt
dd if=/dev/hwrng of=/tmp/random bs=4096 count=256 2>/dev/null
echo "HWRNG $(wc -c < /tmp/random)"
dd if=/tmp/random of=/dev/vdb bs=65536 2>/dev/null; sync
echo 3 > /proc/sys/vm/drop_caches
echo "WROTE $(sha256sum < /tmp/random)"
echo "READ $(dd if=/dev/vdb bs=65536 count=16 2>/dev/null | sha256sum)"
echo "SERIAL $(cat /sys/block/vda/serial)"
echo "to the VMM over hvc0" > /dev/hvc0
poweroff -f
`,
  )
  t.is(reason, 'poweroff', console.slice(-3000))
  const pci = [...console.matchAll(/^PCI (\S+) (\S+) (\S+) (\S+)/gm)].map((m) => m.slice(1).join(' '))
  t.deepEqual(pci, ['0000:00:00.0 0x8086 0x0d57 0x060000', '0000:00:01.0 0x1af4 0x1044 0x00ff00', '0000:00:02.0 0x1af4 0x1042 0x010000', '0000:00:03.0 0x1af4 0x1042 0x010000', '0000:00:04.0 0x1af4 0x1043 0x078000'])
  t.regex(console, /^FILE read from a virtio disk$/m)
  t.regex(console, /^HWRNG 1048576$/m)
  const disk = createHash('sha256').update(scratch.bytes.subarray(0, 1 << 20)).digest('hex')
  t.regex(console, new RegExp(`^WROTE ${disk}`, 'm'), 'the guest wrote what the VMM holds')
  t.regex(console, new RegExp(`^READ ${disk}`, 'm'), 'and reads it back from the disk')
  t.regex(console, /^SERIAL mshv-vda$/m)
  t.is(hvc, 'to the VMM over hvc0\r\n', 'hvc0 is a tty: ONLCR makes the newline CRLF')
  t.is(createHash('sha256').update(readFileSync(image)).digest('hex'), imageHash, 'the overlay kept the image unchanged')
  execFileSync('e2fsck', ['-fn', image], { stdio: 'pipe' })
})

boot('without MSI (pci=nomsi) the drivers take INTx: the _PRT routes it to an I/O APIC pin, level-triggered, and reading the ISR ends it', async (t) => {
  const disk = new MemoryDisk(1 << 20)
  disk.bytes.set(new Uint8Array(1 << 20).map((_, i) => (i * 31 + 7) & 0xff))
  const expected = createHash('sha256').update(disk.bytes).digest('hex')
  const { console, reason } = await run(
    { disks: [{ backend: disk }], rng: true, cmdline: 'console=ttyS0 quiet cryptomgr.notests pci=nomsi' },
    `echo "READ $(dd if=/dev/vda bs=4096 2>/dev/null | sha256sum)"
echo "HWRNG $(dd if=/dev/hwrng bs=512 count=8 2>/dev/null | wc -c)"
grep virtio /proc/interrupts | sed 's/^/IRQ /'
poweroff -f
`,
  )
  t.is(reason, 'poweroff', console.slice(-3000))
  t.regex(console, new RegExp(`^READ ${expected}`, 'm'))
  t.regex(console, /^HWRNG 4096$/m)
  // Each function's INTx on the GSI the _PRT names for its slot (16 + (slot + pin) % 8), level-triggered, not MSI.
  const irqs = [...console.matchAll(/^IRQ +(\d+): +(\d+) +IO-APIC +(\d+)-fasteoi +(.*)$/gm)].map((m) => ({ irq: Number(m[1]), count: Number(m[2]), gsi: Number(m[3]), name: (m[4] ?? '').trim() }))
  t.true(irqs.length >= 2 && irqs.every((i) => i.gsi >= 16 && i.gsi < 24 && i.count > 0), console.match(/^IRQ .*$/gm)?.join('\n'))
  t.notRegex(console, /PCI-MSI/)
})

boot('two guests of one process ping each other over the in-process switch', async (t) => {
  if (typeof linux === 'string') return t.fail(linux)
  const sw = new NetworkSwitch()
  // RFC 5737's documentation addresses: the frames never leave the process.
  const machine = (ip: string, mac: string, then: string, out: { text: string }) =>
    prepareLinux({
      kernel: linux.kernel,
      initrd: busyboxInitramfs({ busybox: linux.busybox, init: `${PRELUDE}ip link set lo up; ip link set eth0 up; ip addr add ${ip}/24 dev eth0\n${then}\n`, modules: kernelModules(linux.kernel, VIRTIO_MODULES) }),
      cmdline: 'console=ttyS0 quiet cryptomgr.notests',
      backend: 'sim',
      network: sw,
      mac,
      serial: { onByte: (b) => (out.text += String.fromCharCode(b)) },
    })
  // Each VM keeps its own clock (an idle one leaps ahead): A waits until B answers, then
  // pings; B waits for A and is stopped when A is done.
  const outA = { text: '' }
  const outB = { text: '' }
  const a = machine('192.0.2.1', '52:54:00:00:00:01', 'until ping -c 1 -W 1 192.0.2.2 > /dev/null; do sleep 1; done; ping -c 3 -W 10 192.0.2.2; poweroff -f', outA)
  const b = machine('192.0.2.2', '52:54:00:00:00:02', 'sleep 3600', outB)
  try {
    const bRun = b.run({ timeoutMs: 120_000 })
    const ra = await a.run({ timeoutMs: 120_000 })
    b.vm.cancel()
    t.is((await bRun).reason, 'cancelled', outB.text.slice(-2000))
    t.is(ra.reason, 'poweroff', outA.text.slice(-2000))
    t.regex(outA.text, /3 packets transmitted, 3 packets received, 0% packet loss/)
    t.deepEqual(sw.addresses().map((x) => x.mac).sort(), ['52:54:00:00:00:01', '52:54:00:00:00:02'])
  } finally {
    a.close()
    b.close()
  }
})

boot('`mshv boot --disk IMAGE --snapshot --policy all`: a disk workload under each sync policy, exits by kind and register traffic compared; the image unchanged', async (t) => {
  if (typeof linux === 'string') return t.fail(linux)
  const dir = mkdtempSync(join(tmpdir(), 'mshv-virtio-'))
  mkdirSync(join(dir, 'root'))
  writeFileSync(join(dir, 'root', 'data.bin'), new Uint8Array(256 * 1024).map((_, i) => i & 0xff))
  const image = join(dir, 'disk.img')
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-d', join(dir, 'root'), image, '8M'])
  const before = createHash('sha256').update(readFileSync(image)).digest('hex')
  const { io, out: printed, err: errors } = captureIo()
  // The busybox initramfs's modules are listed in /etc/modules: a custom /init loads them itself.
  const init = `${PRELUDE}mount -t ext4 /dev/vda /mnt && echo "SUM $(sha256sum /mnt/data.bin | cut -c1-16)"; dd if=/dev/zero of=/mnt/new bs=4096 count=64 2>/dev/null; sync; umount /mnt; poweroff -f`
  const args = parseBootArgs(['--backend', 'sim', '--kernel', linux.kernel, '--busybox', linux.busybox, '--init', init, '--cmdline', 'console=ttyS0 quiet cryptomgr.notests', '--disk', image, '--snapshot', '--policy', 'all', '--no-progress'])
  const code = await bootCommand(args, io)
  const out = printed()
  const err = errors()
  t.is(code, 0, err + out.slice(-2000))
  const expected = createHash('sha256').update(readFileSync(join(dir, 'root', 'data.bin'))).digest('hex').slice(0, 16)
  t.is([...out.matchAll(/^SUM (\w+)/gm)].map((m) => m[1]).join(' '), [expected, expected, expected].join(' '), 'each boot read the file')
  for (const policy of ['page', 'hypercall', 'eager']) t.regex(err, new RegExp(`boot \\[${policy}\\]: \\{"reason":"poweroff","vcpu":0\\}[\\s\\S]*?exits: [\\d,]+ \\(.*unmappedGpa [\\d,]+`))
  t.regex(err, /^policy +seconds +exits +hypercalls\/exit/m)
  t.regex(err, /^page +[\d.]+ +\d+ +0\.0\d\d/m, 'the page policy: almost no hypercalls per exit on virtio I/O')
  t.is(createHash('sha256').update(readFileSync(image)).digest('hex'), before, '--snapshot left the image unchanged')
})
