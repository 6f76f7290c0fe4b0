/**
 * Real I/O beside QEMU's TCG in one run: virtio-blk sequential reads in a Debian guest
 * (`dd` of 512 MiB with `iflag=direct`, the same kernel, initramfs and disk image on
 * both), and Debian 12 with systemd booted from a virtio disk to its login prompt.
 * Host seconds are taken from markers on the serial console. Skipped, saying why,
 * where Debian's packages, the image or QEMU cannot be had.
 * @module
 */
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { busyboxInitramfs, fetchDebianLinux, kernelModules, prepareLinux, type LinuxOptions } from '../index.js'
import { buildDebianImage } from '../src/boot/debian-image.js'
import type { Row } from './report.js'

const DISK_MIB = 512
const QEMU = 'qemu-system-x86_64'

/** Host seconds between two console markers, and when the run ended. */
interface Timing {
  readonly between: number
  readonly total: number
}

/** Watches console bytes for `start` and `end`; `onEnd` fires once `end` is seen. */
function markers(start: string, end: string, onEnd: () => void): { byte: (b: number) => void; timing: () => Timing | undefined } {
  const t0 = performance.now()
  let text = ''
  let a: number | undefined
  let b: number | undefined
  return {
    byte: (c) => {
      text = (text + String.fromCharCode(c)).slice(-256)
      if (a === undefined && text.endsWith(start)) a = performance.now()
      if (a !== undefined && b === undefined && text.endsWith(end)) {
        b = performance.now()
        onEnd()
      }
    },
    timing: () => (a !== undefined && b !== undefined ? { between: (b - a) / 1000, total: (b - t0) / 1000 } : undefined),
  }
}

/** Runs Linux on the sim with `options` until `end` appears on the console (or the run ends). */
async function onSim(options: LinuxOptions, start: string, end: string): Promise<Timing | undefined> {
  const m = prepareLinux({ ...options, backend: 'sim', serial: { onByte: (b) => watch.byte(b) } })
  const watch = markers(start, end, () => m.vm.cancel())
  try {
    await m.run({ timeoutMs: 600_000 })
    return watch.timing()
  } finally {
    m.close()
  }
}

/** Runs QEMU (TCG) with `args` until `end` appears on its serial console. */
function onQemu(args: readonly string[], start: string, end: string): Promise<Timing | undefined> {
  return new Promise((resolve) => {
    const q = spawn(QEMU, ['-accel', 'tcg', '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio', ...args], { stdio: ['pipe', 'pipe', 'ignore'] })
    const watch = markers(start, end, () => q.kill('SIGKILL'))
    const timer = setTimeout(() => q.kill('SIGKILL'), 600_000)
    q.stdout.on('data', (d: Buffer) => {
      for (const b of d) watch.byte(b)
    })
    q.on('close', () => {
      clearTimeout(timer)
      resolve(watch.timing())
    })
  })
}

/** virtio-blk sequential read, MB/s, on the sim and on QEMU TCG. */
async function sequentialRead(): Promise<Row[]> {
  const linux = fetchDebianLinux()
  const dir = mkdtempSync(join(tmpdir(), 'mshv-bench-'))
  try {
    // Data, not a sparse file: QEMU's raw driver skips holes (it asks the file system where
    // data is), which would measure that, not the device path. Both read the page cache.
    const disk = join(dir, 'disk.raw')
    const fd = openSync(disk, 'w')
    const chunk = randomBytes(1 << 20)
    for (let i = 0; i < DISK_MIB; i++) {
      chunk[0] = i & 0xff
      writeSync(fd, chunk)
    }
    closeSync(fd)
    const B = '/bin/busybox'
    const init = `${B} mkdir -p /proc /sys; ${B} mount -t proc p /proc; ${B} mount -t sysfs s /sys; ${B} mount -t devtmpfs d /dev
${B} --install -s /bin
modprobe -a virtio_pci virtio_blk
echo DD-START
dd if=/dev/vda of=/dev/null bs=1M count=${DISK_MIB} iflag=direct
echo DD-END
poweroff -f
`
    const initrd = busyboxInitramfs({ busybox: linux.busybox, init, modules: kernelModules(linux.kernel, ['virtio_pci', 'virtio_blk']) })
    const initrdFile = join(dir, 'initrd.cpio')
    writeFileSync(initrdFile, initrd)
    const cmdline = 'console=ttyS0 quiet cryptomgr.notests'
    const sim = await onSim({ kernel: linux.kernel, initrd, cmdline, disks: [{ path: disk, readOnly: true }], memory: 512 << 20 }, 'DD-START', 'DD-END')
    const qemu = hasQemu() ? await onQemu(['-m', '512', '-kernel', linux.kernel, '-initrd', initrdFile, '-append', cmdline, '-drive', `file=${disk},if=virtio,format=raw,readonly=on`], 'DD-START', 'DD-END') : undefined
    const rate = (t: Timing | undefined): number => (t ? DISK_MIB / t.between : 0)
    return [
      { group: 'virtio-blk', case: `dd ${DISK_MIB} MiB iflag=direct bs=1M, sim`, value: rate(sim), unit: 'MiB/s', notes: sim ? `${sim.between.toFixed(2)} s` : 'did not finish' },
      {
        group: 'virtio-blk',
        case: `dd ${DISK_MIB} MiB iflag=direct bs=1M, QEMU TCG`,
        value: rate(qemu),
        unit: 'MiB/s',
        notes: qemu ? `${qemu.between.toFixed(2)} s; sim / QEMU ${(rate(sim) / rate(qemu)).toFixed(2)}x (goal > 1)` : 'QEMU missing or did not finish',
      },
    ]
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Debian 12 with systemd from a virtio disk to its login prompt, seconds, on the sim and on QEMU TCG. */
async function debianBoot(): Promise<Row[]> {
  const image = await buildDebianImage()
  const cmdline = 'root=/dev/vda console=ttyS0'
  const sim = await onSim({ kernel: image.kernel, initrd: image.initrd, cmdline, disks: [{ path: image.image, overlay: true }], memory: 1024 << 20 }, 'Linux version', 'login: ')
  const qemu = hasQemu()
    ? await onQemu(['-m', '1024', '-kernel', image.kernel, '-initrd', image.initrd, '-append', cmdline, '-drive', `file=${image.image},if=virtio,format=raw`, '-snapshot'], 'Linux version', 'login: ')
    : undefined
  return [
    { group: 'debian boot', case: 'Debian 12 (systemd) to the login prompt, virtio disk, sim', value: sim?.total ?? 0, unit: 's' },
    { group: 'debian boot', case: 'Debian 12 (systemd) to the login prompt, virtio disk, QEMU TCG', value: qemu?.total ?? 0, unit: 's', notes: sim && qemu ? `sim / QEMU ${(sim.total / qemu.total).toFixed(2)}x the time` : 'did not finish' },
  ]
}

function hasQemu(): boolean {
  return spawnSync(QEMU, ['--version'], { stdio: 'ignore' }).status === 0
}

/** The real-I/O rows (each group skipped, saying why, when what it needs is missing). */
export async function virtioRows(): Promise<Row[]> {
  const rows: Row[] = []
  for (const [name, f] of [['virtio-blk read', sequentialRead], ['Debian boot', debianBoot]] as const) {
    if (process.env['MSHV_BENCH_ONLY'] && process.env['MSHV_BENCH_ONLY'] !== name) continue
    try {
      rows.push(...(await f()))
    } catch (e) {
      console.log(`${name} benchmark skipped: ${e instanceof Error ? e.message : e}`)
    }
  }
  return rows
}
