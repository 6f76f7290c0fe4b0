/**
 * The Debian 12 system disk `buildDebianImage` makes (mmdebstrap + mke2fs, cached outside
 * the repository) boots under QEMU's TCG from a virtio disk with Debian's own kernel and
 * initrd: root logs in on the serial console with no password, systemd reaches
 * "running", lspci shows the virtio device, and `poweroff` ends QEMU. `-snapshot` keeps
 * the image untouched, which e2fsck and the image's hash and mtime confirm afterwards.
 * Then the same image boots on the sim, with the devices in TypeScript: login, systemd
 * "running", lspci with the IDs the VMM gave, random bytes from /dev/hwrng written to a
 * second disk and hashed on both sides, a ping to a busybox guest over the in-process
 * switch, and a clean poweroff with the image unchanged (a copy-on-write overlay).
 * Where the image cannot be built, or QEMU is missing, the tests skip saying so; under CI
 * that is a failure.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, readFileSync, statSync } from 'node:fs'
import { PassThrough } from 'node:stream'
import { buildDebianImage, driveConsole, type DebianImage } from '../src/boot/debian-image.js'
import { busyboxInitramfs, fetchDebianLinux, kernelModules, MemoryDisk, NetworkSwitch, prepareLinux } from '../index.js'
import { captureIo } from './helpers.js'

const QEMU = 'qemu-system-x86_64'
const MARKER = 'DONE-MARKER'
/** A bash prompt of root on the guest (`root@mshv-guest:~# `), after any escape sequences. */
const PROMPT = /root@mshv-guest:[^\n]*# $/

function hasCommand(cmd: string, arg = '--version'): boolean {
  return spawnSync(cmd, [arg], { stdio: 'ignore' }).status === 0
}

const missing = [QEMU, 'mmdebstrap', 'e2fsck'].filter((c) => !hasCommand(c, c === 'e2fsck' ? '-V' : '--version'))
if (missing.length > 0) {
  const why = `${missing.join(', ')} not installed`
  if (process.env['CI']) test('QEMU, mmdebstrap and e2fsprogs are installed (required in CI)', (t) => t.fail(why))
  else console.log(`debian-image tests skipped: ${why}`)
}
const run = missing.length === 0 ? test.serial : test.skip

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** The image's fingerprint: its hash and modification time. */
async function fingerprint(image: string): Promise<{ hash: string; mtimeMs: number }> {
  return { hash: await sha256(image), mtimeMs: statSync(image).mtimeMs }
}

/** The file system is clean (`e2fsck -fn`) and the image is what it was before the boot. */
async function assertUntouched(t: ExecutionContext, image: string, before: { hash: string; mtimeMs: number }, unchanged: string): Promise<void> {
  const fsck = spawnSync('e2fsck', ['-fn', image], { encoding: 'utf8' })
  t.is(fsck.status, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`)
  t.is(statSync(image).mtimeMs, before.mtimeMs, 'the image was not written')
  t.is(await sha256(image), before.hash, unchanged)
}

/** Built in the first test (which may take minutes: it downloads ~200 MB), or why not. */
let built: DebianImage | string = 'not built'

/** The image, or (saying why) nothing: a failure under CI, a pass elsewhere. */
function builtOrSkip(t: ExecutionContext, test: string): DebianImage | undefined {
  if (typeof built !== 'string') return built
  if (process.env['CI']) t.fail(built)
  else {
    console.log(`debian-image ${test} test skipped: no image: ${built}`)
    t.pass()
  }
  return undefined
}

run('the Debian 12 image builds (or comes from the cache) with the virtio modules in its initrd', async (t) => {
  t.timeout(1_200_000)
  const started = Date.now()
  const log: string[] = []
  try {
    built = await buildDebianImage({ onLog: (line) => log.push(line) })
  } catch (e) {
    built = e instanceof Error ? e.message : String(e)
    if (process.env['CI']) return t.fail(built)
    console.log(`debian-image tests skipped: cannot build the Debian image: ${built}`)
    return t.pass()
  }
  const image = built
  t.log(`${log.length === 0 ? 'from the cache' : `built in ${((Date.now() - started) / 1000).toFixed(0)} s`}: ${image.image}`)
  t.is(statSync(image.image).size % 1024 ** 2, 0)
  t.true(statSync(image.image).size >= 1024 ** 3, 'at least 1 GiB')
  const packages = readFileSync(image.packages, 'utf8')
  for (const p of ['systemd-sysv', 'linux-image-amd64', 'initramfs-tools', 'pciutils', 'e2fsprogs']) t.regex(packages, new RegExp(`^${p}\\t`, 'm'))
  // A second call takes the cache at once.
  const again = Date.now()
  t.deepEqual(await buildDebianImage(), image)
  t.true(Date.now() - again < 1000)
})

run('the image boots under QEMU TCG from a virtio disk to a root shell on ttyS0, and -snapshot leaves it unchanged', async (t) => {
  t.timeout(600_000)
  const ready = builtOrSkip(t, 'boot')
  if (!ready) return
  const { image, kernel, initrd } = ready
  const before = await fingerprint(image)

  const qemu = spawn(
    QEMU,
    [
      ...['-accel', 'tcg', '-m', '1024', '-smp', '1', '-nographic', '-no-reboot', '-nic', 'none'],
      ...['-kernel', kernel, '-initrd', initrd],
      // panic=-1: a panic reboots at once, and -no-reboot turns that into QEMU's exit.
      ...['-append', 'root=/dev/vda console=ttyS0 panic=-1'],
      // -snapshot: writes go to a temporary overlay QEMU deletes at exit, never to the image.
      ...['-drive', `file=${image},if=virtio,format=raw`, '-snapshot'],
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  )
  let stderr = ''
  qemu.stderr.on('data', (b: Buffer) => (stderr += b.toString()))
  const exited = new Promise<number | null>((resolve) => qemu.on('exit', (code) => resolve(code)))
  try {
    const transcript = await driveConsole(qemu.stdout, (s) => qemu.stdin.write(s), [
      { expect: 'mshv-guest login: ', send: 'root\n', timeoutMs: 240_000 },
      { expect: PROMPT, send: `systemctl is-system-running --wait; systemctl --failed --no-legend --no-pager; lspci -n; echo ${MARKER}\n`, timeoutMs: 60_000 },
      { expect: new RegExp(`\\n${MARKER}\\r?\\n`), timeoutMs: 180_000 },
      { expect: PROMPT, send: 'systemd-analyze --no-pager; systemd-analyze blame --no-pager | head -n 8\n' },
      { expect: PROMPT, send: 'poweroff\n', timeoutMs: 120_000 },
    ])
    const [login, , checks, , analyze] = transcript.steps
    t.log(`login: prompt after ${((login?.ms ?? 0) / 1000).toFixed(1)} s`)
    // systemd-analyze's boot times and slowest units, without the terminal's escape sequences.
    t.log((analyze?.output ?? '').replace(/\x1b\[[0-9;?]*[A-Za-z]|\r/g, '').split('\n').slice(1, -1).join('\n'))
    const out = checks?.output ?? ''
    t.regex(out, /\n1af4:|\s1af4:/, `lspci -n lists a virtio (vendor 1af4) device:\n${out}`)
    t.regex(out, /^running\r?$/m, `systemd reached "running":\n${out}`)
    let timer: NodeJS.Timeout | undefined
    const code = await Promise.race([exited, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), 120_000)))])
    clearTimeout(timer)
    t.is(code, 0, `QEMU exits after poweroff; stderr: ${stderr}`)
  } finally {
    if (qemu.exitCode === null) qemu.kill('SIGKILL')
    await exited
  }

  await assertUntouched(t, image, before, 'the image is bit-for-bit unchanged')
})

run('the image boots on the sim from virtio-blk to a root login: systemd runs, lspci, a second disk, /dev/hwrng and a ping over the in-process switch', async (t) => {
  t.timeout(900_000)
  const ready = builtOrSkip(t, 'sim')
  if (!ready) return
  const { image, kernel, initrd } = ready
  const before = await fingerprint(image)
  const scratch = new MemoryDisk(4 << 20)
  const sw = new NetworkSwitch()
  // The peer: Debian's kernel with busybox, at 192.0.2.2 (RFC 5737's documentation range: nothing leaves the process).
  const linux = fetchDebianLinux()
  const peer = prepareLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, modules: kernelModules(linux.kernel, ['virtio_pci', 'virtio_net']), init: '/bin/busybox mount -t proc p /proc; /bin/busybox mount -t sysfs s /sys\n/bin/busybox --install -s /bin\nmodprobe -a virtio_pci virtio_net\nip link set eth0 up; ip addr add 192.0.2.2/24 dev eth0\nwhile true; do sleep 3600; done\n' }),
    cmdline: 'console=ttyS0 quiet cryptomgr.notests',
    backend: 'sim',
    // Real time: an idle peer then waits for its timers instead of leaping to them (which would
    // keep a core busy under the deterministic clock and slow the guest under test).
    clock: 'realtime',
    network: sw,
    mac: '52:54:00:00:00:02',
  })
  const serialOut = new PassThrough()
  const m = prepareLinux({
    kernel,
    initrd,
    cmdline: 'root=/dev/vda console=ttyS0 panic=-1',
    memory: 1024 << 20,
    backend: 'sim',
    disks: [{ path: image, overlay: true }, { backend: scratch, id: 'scratch' }],
    rng: true,
    network: sw,
    mac: '52:54:00:00:00:01',
    serial: { onByte: (b) => serialOut.write(Uint8Array.of(b)) },
  })
  const peerRun = peer.run()
  const run = m.run({ timeoutMs: 800_000 })
  try {
    const transcript = await driveConsole(serialOut, (s) => m.pc.serial.feed(Buffer.from(s)), [
      { expect: 'mshv-guest login: ', send: 'root\n', timeoutMs: 600_000 },
      {
        expect: PROMPT,
        send: `systemctl is-system-running --wait; lspci -n; systemd-analyze --no-pager; grep -H . /sys/devices/system/cpu/vulnerabilities/{meltdown,mds}; echo ${MARKER}\n`,
        timeoutMs: 60_000,
      },
      { expect: new RegExp(`\\n${MARKER}\\r?\\n`), timeoutMs: 300_000 },
      {
        expect: PROMPT,
        send: `head -c 1048576 /dev/hwrng > /tmp/r; echo "WROTE $(sha256sum < /tmp/r)"; dd if=/tmp/r of=/dev/vdb bs=65536 oflag=direct status=none; echo "READ $(dd if=/dev/vdb bs=65536 count=16 iflag=direct status=none | sha256sum)"; echo ${MARKER}\n`,
        timeoutMs: 60_000,
      },
      { expect: new RegExp(`\\n${MARKER}\\r?\\n`), timeoutMs: 300_000 },
      { expect: PROMPT, send: `IF=$(ls /sys/class/net | grep -v '^lo$' | head -n 1); ip link set $IF up; ip addr add 192.0.2.1/24 dev $IF; ping -c 3 -W 10 192.0.2.2; echo ${MARKER}\n`, timeoutMs: 60_000 },
      { expect: new RegExp(`\\n${MARKER}\\r?\\n`), timeoutMs: 300_000 },
      { expect: PROMPT, send: 'poweroff\n', timeoutMs: 60_000 },
    ])
    const [login, , checks, , disk, , ping] = transcript.steps
    t.log(`login: prompt after ${((login?.ms ?? 0) / 1000).toFixed(1)} s on the sim`)
    const out = checks?.output ?? ''
    t.regex(out, /^running\r?$/m, `systemd reached "running":\n${out}`)
    for (const line of ['00:00.0 0600: 8086:0d57', '00:01.0 00ff: 1af4:1044', '00:02.0 0100: 1af4:1042', '00:03.0 0100: 1af4:1042', '00:04.0 0200: 1af4:1041']) t.true(out.includes(line), `lspci -n lists ${line}:\n${out}`)
    t.log(/Startup finished[^\r\n]*/.exec(out)?.[0] ?? 'no systemd-analyze line')
    // Linux's own reading of IA32_ARCH_CAPABILITIES (RDCL_NO, MDS_NO): no page-table isolation.
    t.regex(out, /vulnerabilities\/meltdown:Not affected/, `Linux finds the sim's processor not affected by Meltdown:\n${out}`)
    t.regex(out, /vulnerabilities\/mds:Not affected/, `nor by MDS:\n${out}`)
    const hash = (await import('node:crypto')).createHash('sha256').update(scratch.bytes.subarray(0, 1 << 20)).digest('hex')
    t.regex(disk?.output ?? '', new RegExp(`WROTE ${hash}`), 'the guest wrote what the VMM holds')
    t.regex(disk?.output ?? '', new RegExp(`READ ${hash}`), 'and read it back from the device')
    t.regex(ping?.output ?? '', /3 packets transmitted, 3 received, 0% packet loss/)
    t.deepEqual(await run, { reason: 'poweroff', vcpu: 0 })
  } finally {
    m.vm.cancel()
    await run.catch(() => undefined)
    m.close()
    peer.vm.cancel()
    await peerRun.catch(() => undefined)
    peer.close()
  }
  await assertUntouched(t, image, before, 'the overlay kept the image bit-for-bit unchanged')
})

run('`mshv boot --system` boots the image with its own kernel and initrd: Debian\'s initramfs mounts /dev/vda and runs the init given', async (t) => {
  t.timeout(300_000)
  if (!builtOrSkip(t, 'cli')) return
  const { parseBootArgs } = await import('../src/cli/args.js')
  const { boot } = await import('../src/cli/boot.js')
  t.throws(() => parseBootArgs(['--system', '--kernel', 'vmlinuz']), { code: 'EINVAL', message: /--system boots the Debian image's own kernel/ })
  const { io, out: printed, err: errors } = captureIo()
  // init=/bin/true exits at once: the kernel panics ("Attempted to kill init") and, with
  // panic=-1, reboots: the whole early boot from the virtio disk, without systemd's minute.
  const code = await boot(parseBootArgs(['--system', '--backend', 'sim', '--no-progress', '--cmdline', 'root=/dev/vda console=ttyS0 init=/bin/true panic=-1']), io)
  const out = printed()
  const err = errors()
  t.is(code, 0, err + out.slice(-2000))
  t.regex(out, /virtio_blk virtio\d+: \[vda\]/)
  t.regex(out, /EXT4-fs \(vda\): mounted filesystem/)
  t.regex(out, /Attempted to kill init/)
  t.regex(err, /boot \[page\]: \{"reason":"reboot","vcpu":0\}/)
})
