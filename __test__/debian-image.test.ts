/**
 * The Debian 12 system disk `buildDebianImage` makes (mmdebstrap + mke2fs, cached outside
 * the repository) boots under QEMU's TCG from a virtio disk with Debian's own kernel and
 * initrd: root logs in on the serial console with no password, systemd reaches
 * "running", lspci shows the virtio device, and `poweroff` ends QEMU. `-snapshot` keeps
 * the image untouched, which e2fsck and the image's hash and mtime confirm afterwards.
 * Where the image cannot be built, or QEMU is missing, the tests skip saying so; under CI
 * that is a failure.
 */
import test from 'ava'
import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, readFileSync, statSync } from 'node:fs'
import { buildDebianImage, driveConsole, type DebianImage } from '../src/boot/debian-image.js'

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

/** Built in the first test (which may take minutes: it downloads ~200 MB), or why not. */
let built: DebianImage | string = 'not built'

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
  if (typeof built === 'string') {
    if (process.env['CI']) return t.fail(built)
    console.log(`debian-image boot test skipped: no image: ${built}`)
    return t.pass()
  }
  const { image, kernel, initrd } = built
  const before = { hash: await sha256(image), mtimeMs: statSync(image).mtimeMs }

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

  const fsck = spawnSync('e2fsck', ['-fn', image], { encoding: 'utf8' })
  t.is(fsck.status, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`)
  t.is(statSync(image).mtimeMs, before.mtimeMs, 'the image was not written')
  t.is(await sha256(image), before.hash, 'the image is bit-for-bit unchanged')
})
