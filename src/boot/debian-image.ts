/**
 * A bootable Debian 12 (bookworm) system disk, built the way a user would build one:
 * `mmdebstrap` installs a minimal system with Debian's kernel and initramfs-tools into
 * a directory, customize hooks make it a VM guest (fstab, hostname, a root login with
 * no password on the serial console, no timers that would run during a test), and
 * `mke2fs -d` turns the directory into a raw ext4 image that is the whole of
 * `/dev/vda` (no partition table). The kernel and Debian's own initrd are copied out
 * of `/boot` next to it, so the disk boots with `-kernel`/`-initrd` and no bootloader.
 *
 * The result is cached under `$MSHV_LINUX_CACHE/debian-image` (default
 * `~/.cache/mshv-linux/debian-image`): `buildDebianImage()` returns at once when a
 * finished build of the same recipe is there.
 *
 * Sources: mmdebstrap(1) (Debian 12, mmdebstrap 1.3.5: MODES, FORMATS, HOOKS, the
 * `--dpkgopt` path-exclude example), mke2fs(8) (`-d root-directory`, `-L`, size
 * suffixes), initramfs.conf(5) (`MODULES=most`, `COMPRESS`), systemd-getty-generator(8)
 * (a serial getty on the `console=` device), passwd(1) (`--delete`).
 * @module
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'
import { setTimeout as sleep } from 'node:timers/promises'
import { MshvError } from '../errors.js'
import { linuxCacheDir } from './debian.js'

/** What {@link buildDebianImage} made: four files in the cache. */
export interface DebianImage {
  /** A raw ext4 file system image, no partition table, labelled `debian`: the guest's `/dev/vda`. Sparse. */
  readonly image: string
  /** The kernel (`/boot/vmlinuz-*`) of the image's `linux-image-amd64`. */
  readonly kernel: string
  /** Debian's own initrd (`/boot/initrd.img-*`), made by initramfs-tools inside the image; it holds the virtio modules. */
  readonly initrd: string
  /** A text file listing the installed packages, one `name<TAB>version` a line (`dpkg-query -W`). */
  readonly packages: string
}

/** Options of {@link buildDebianImage}. */
export interface DebianImageOptions {
  /** Rebuild even when the cache holds a finished build. */
  readonly force?: boolean
  /**
   * Hears each line the build's commands print (mmdebstrap's progress, apt's and dpkg's
   * output, mke2fs), as it comes: the first build downloads ~200 MB and takes minutes.
   */
  readonly onLog?: (line: string) => void
  /**
   * A MIRROR argument for mmdebstrap (a URI, a one-line `deb ...` entry or a sources file).
   * Default: none, so mmdebstrap uses http://deb.debian.org/debian and, bookworm being a
   * stable release, adds bookworm-updates and bookworm-security (mmdebstrap(1),
   * DESCRIPTION) — the same archive this machine's /etc/apt/sources.list.d/debian.sources names.
   */
  readonly mirror?: string
  /** Where the build is cached (default `join(linuxCacheDir(), 'debian-image')`). */
  readonly cacheDir?: string
}

/**
 * Packages beyond the `minbase` variant (Essential: yes, plus apt). The first eleven
 * make a bootable, inspectable guest; two more are what their packages recommend, and
 * mmdebstrap, like apt, leaves recommends out:
 * - `dbus`: systemd recommends a system bus; systemd-logind.service is `BusName=org.freedesktop.login1`
 *   and `Wants=dbus.socket`, so without one it fails and the system boots "degraded".
 * - `zstd`: initramfs-tools-core recommends it; initramfs.conf's default `COMPRESS=zstd`
 *   otherwise falls back to gzip with a warning ("No zstd in ..., using gzip").
 */
const PACKAGES = [
  'systemd-sysv',
  'udev',
  'kmod',
  'initramfs-tools',
  'linux-image-amd64',
  'e2fsprogs',
  'pciutils',
  'iproute2',
  'iputils-ping',
  'procps',
  'util-linux',
  'dbus',
  'zstd',
] as const

/**
 * Units masked in the image because they would run during a short test boot, add
 * load under a slow (emulated) CPU, or need the network the guest doesn't have:
 * - `apt-daily.timer`, `apt-daily-upgrade.timer`: apt's download/upgrade jobs (apt is in minbase).
 * - `dpkg-db-backup.timer`: dpkg's daily backup of its database.
 * - `e2scrub_all.timer`, `e2scrub_reap.service`: e2fsprogs' online fsck of LVM volumes; the
 *   reaper runs at every boot.
 * - `fstrim.timer`: util-linux's weekly TRIM.
 * - `systemd-networkd-wait-online.service`: not enabled by default; masked so nothing can make
 *   the boot wait for a network that is not configured.
 */
const MASKED_UNITS = [
  'apt-daily.timer',
  'apt-daily-upgrade.timer',
  'dpkg-db-backup.timer',
  'e2scrub_all.timer',
  'e2scrub_reap.service',
  'fstrim.timer',
  'systemd-networkd-wait-online.service',
] as const

/** Kernel modules the initrd must hold to mount a virtio disk as root. */
const INITRD_MODULES = ['virtio_blk.ko', 'virtio_pci.ko'] as const

/** The manifest's `version`: bump when the layout or what a build means changes. */
const MANIFEST_VERSION = 1
const GIB = 1024 ** 3
const MIB = 1024 ** 2

interface Manifest extends DebianImage {
  readonly version: number
  /** Hash of the build recipe (the mmdebstrap arguments): a changed recipe rebuilds. */
  readonly recipe: string
  readonly kernelVersion: string
  readonly sizeBytes: number
  readonly builtAt: string
}

/** `s` quoted for sh(1). */
function sq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`
}

/**
 * mmdebstrap's arguments for a chroot in `root`. Each customize hook runs under sh with the
 * chroot directory as `$1` (mmdebstrap(1), HOOKS), after all packages are installed and before
 * mmdebstrap's cleanup; the `download` hooks write to mmdebstrap's working directory.
 */
function mmdebstrapArgs(root: string, mode: 'root' | 'unshare', mirror: string | undefined): string[] {
  return [
    `--mode=${mode}`,
    // Explicit: with `auto`, a stdout that is /dev/null would pick the `null` format (FORMATS).
    '--format=directory',
    '--variant=minbase',
    // Progress per package rather than only the "I:" phase lines.
    '--verbose',
    `--include=${PACKAGES.join(',')}`,
    // mmdebstrap(1)'s "Exclude paths to reduce chroot size" example: no manuals, translations
    // or docs, but the copyright files stay (their licences ask for it).
    '--dpkgopt=path-exclude=/usr/share/man/*',
    '--dpkgopt=path-exclude=/usr/share/locale/*',
    '--dpkgopt=path-include=/usr/share/locale/locale.alias',
    '--dpkgopt=path-exclude=/usr/share/doc/*',
    '--dpkgopt=path-include=/usr/share/doc/*/copyright',
    '--dpkgopt=path-exclude=/usr/share/info/*',
    // The whole disk is the root file system; fstab(5): fsck it first (pass 1). An essential
    // hook runs before the remaining packages are installed (mmdebstrap(1)), so the fstab is
    // there when the kernel's postinst runs mkinitramfs: initramfs-tools' fsck hook reads it
    // to put e2fsck in the initrd. Written later, the initrd says "fsck not present, so
    // skipping root file system" and only systemd-fsck-root checks it.
    `--essential-hook=echo '/dev/vda / ext4 defaults 0 1' > "$1/etc/fstab"`,
    // That hook ignores fstab's type for / and probes the device instead ("Couldn't identify
    // type of root file system for fsck hook": in the chroot, /dev/vda is the build host's);
    // initramfs.conf(5)'s FSTYPE names the type outright. MODULES=most stays the default.
    `--essential-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" && echo FSTYPE=ext4 > "$1/etc/initramfs-tools/conf.d/mshv-fstype.conf"`,
    // mmdebstrap copies the host's /etc/hostname and writes no /etc/hosts.
    `--customize-hook=echo mshv-guest > "$1/etc/hostname"`,
    `--customize-hook=printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\tmshv-guest\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n' > "$1/etc/hosts"`,
    // An empty password: `root` logs in at the console with no password prompt (pam_unix's
    // `nullok` in Debian's common-auth). mmdebstrap(1)'s autopkgtest example does the same.
    `--customize-hook=chroot "$1" passwd --delete root`,
    // systemctl works offline in a chroot for mask/enable (it only writes symlinks).
    `--customize-hook=chroot "$1" systemctl mask ${MASKED_UNITS.join(' ')}`,
    // The listings the build checks and returns: made in the chroot's /tmp (which mmdebstrap's
    // cleanup empties) and copied out by its `download` special hook, which writes as the user
    // running mmdebstrap. A plain redirection to a host path would write as the chroot's root,
    // in unshare mode a sub-uid that may not write there (mmdebstrap(1), MODES: unshare).
    `--customize-hook=chroot "$1" dpkg-query -W -f '\${Package}\\t\${Version}\\n' > "$1/tmp/mshv-packages.txt"`,
    '--customize-hook=download /tmp/mshv-packages.txt packages.txt',
    `--customize-hook=chroot "$1" sh -c 'lsinitramfs /boot/initrd.img-*' > "$1/tmp/mshv-initrd.list"`,
    '--customize-hook=download /tmp/mshv-initrd.list initrd.list',
    'bookworm',
    root,
    ...(mirror === undefined ? [] : [mirror]),
  ]
}

/** Lines of a child's output, split as they come, for `onLog` and the error's tail. */
class LineSink {
  private partial = ''
  private readonly decoder = new StringDecoder('utf8')
  readonly tail: string[] = []

  constructor(private readonly onLog: ((line: string) => void) | undefined) {}

  push(chunk: Buffer): void {
    this.lines(this.decoder.write(chunk))
  }

  end(): void {
    this.lines(this.decoder.end())
    if (this.partial !== '') this.emit(this.partial)
    this.partial = ''
  }

  private lines(text: string): void {
    const parts = (this.partial + text).split(/\r?\n/)
    this.partial = parts.pop() ?? ''
    for (const line of parts) this.emit(line)
  }

  private emit(line: string): void {
    this.tail.push(line)
    if (this.tail.length > 40) this.tail.shift()
    this.onLog?.(line)
  }
}

/** Which Debian package installs each command run here, for "not installed" messages. */
const PROVIDERS: Readonly<Record<string, string>> = { mmdebstrap: 'mmdebstrap', mke2fs: 'e2fsprogs', du: 'coreutils', find: 'findutils' }

/**
 * A note added to mmdebstrap's failures that look like missing privileges: its root mode
 * needs uid 0 (it chroots and mounts /proc, /sys and /dev), its unshare mode needs user
 * namespaces and sub-uids (mmdebstrap(1), MODES).
 */
function privilegeHint(cmd: string, args: readonly string[], text: string): string {
  if (cmd !== 'mmdebstrap' || args[0] === '--unshare-helper' || !/unshare|subuid|subgid|newuidmap|newgidmap|user namespace|not permitted|permission denied|must be root|mount/i.test(text)) return ''
  return (
    '\nmmdebstrap needs root (its root mode chroots and mounts /proc, /sys and /dev) or, as another user, ' +
    'user namespaces with /etc/subuid and /etc/subgid entries for newuidmap/newgidmap (its unshare mode); ' +
    `this process runs as uid ${process.getuid?.() ?? '?'}.`
  )
}

/**
 * Runs `cmd args`, streaming its output lines to `onLog`; resolves with its stdout, or
 * rejects with `EFETCH` naming the command and the tail of its output.
 */
function run(cmd: string, args: readonly string[], onLog: ((line: string) => void) | undefined, cwd?: string): Promise<string> {
  const quoted = [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : sq(a)))
  onLog?.(`$ ${quoted.join(' ')}`)
  // Messages name the command with its hooks elided: they are long, and onLog had them in full.
  const line = quoted.map((a) => a.replace(/^'?(--[a-z]+-hook=).*/s, '$1…')).join(' ')
  return new Promise((resolve, reject) => {
    // stdin is /dev/null: mmdebstrap reads sources from stdin only when given no SUITE.
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    const out = new LineSink(onLog)
    const err = new LineSink(onLog)
    let stdout = ''
    child.stdout.on('data', (b: Buffer) => {
      stdout += b.toString('utf8')
      out.push(b)
    })
    child.stderr.on('data', (b: Buffer) => err.push(b))
    child.on('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'ENOENT' ? `${cmd} is not installed (Debian: apt-get install ${PROVIDERS[cmd] ?? cmd})` : e.message
      reject(new MshvError('EFETCH', `${line} failed: ${why}${privilegeHint(cmd, args, e.message)}`, { cause: e }))
    })
    child.on('close', (code, signal) => {
      out.end()
      err.end()
      if (code === 0) return resolve(stdout)
      const tail = (err.tail.length > 0 ? err.tail : out.tail).slice(-25).join('\n')
      const status = signal ? `signal ${signal}` : `exit status ${code}`
      reject(new MshvError('EFETCH', `${line} failed (${status}):\n${tail}${privilegeHint(cmd, args, tail)}`))
    })
  })
}

/** Mount points at or below `dir`, from /proc/self/mountinfo (field 5, octal escapes undone). */
function mountsUnder(dir: string): string[] {
  let info: string
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return []
  }
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
}

/**
 * Removes a build directory (`build-PID/`, holding the chroot `root/` and the results `out/`).
 * Never while something is mounted below it (an interrupted root-mode mmdebstrap can leave
 * its /proc, /sys or /dev mounts in the chroot, and a recursive delete would walk into the
 * host's). In unshare mode the chroot's files belong to sub-uids, so its contents are deleted
 * in mmdebstrap's user namespace (`--unshare-helper`), where the user's own uid is not mapped:
 * the rest, the user's, is deleted here.
 */
async function removeBuild(dir: string, asRoot: boolean, onLog: ((line: string) => void) | undefined): Promise<void> {
  if (!existsSync(dir)) return
  const mounts = mountsUnder(dir)
  if (mounts.length > 0) {
    onLog?.(`not removing ${dir}: mounted below it: ${mounts.join(', ')}`)
    return
  }
  const root = join(dir, 'root')
  if (!asRoot && existsSync(root)) await run('mmdebstrap', ['--unshare-helper', 'find', root, '-mindepth', '1', '-delete'], onLog)
  rmSync(dir, { recursive: true, force: true })
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function readManifest(path: string, recipe: string): Manifest | undefined {
  if (!existsSync(path)) return undefined
  try {
    const m = JSON.parse(readFileSync(path, 'utf8')) as Partial<Manifest>
    if (m.version !== MANIFEST_VERSION || m.recipe !== recipe) return undefined
    const files = [m.image, m.kernel, m.initrd, m.packages]
    if (!files.every((f): f is string => typeof f === 'string' && existsSync(f))) return undefined
    return m as Manifest
  } catch {
    return undefined
  }
}

/** The one file in `dir` whose name starts with `prefix` (`vmlinuz-`, `initrd.img-`). */
function bootFile(dir: string, prefix: string): string {
  const found = readdirSync(dir).filter((f) => f.startsWith(prefix) && !f.endsWith('.old'))
  if (found.length !== 1) {
    throw new MshvError('EFETCH', `the image's /boot holds ${found.length === 0 ? 'no' : found.length} ${prefix}* files: ${readdirSync(dir).join(', ')}`)
  }
  return found[0] as string
}

/**
 * Builds the Debian 12 system disk, or returns the cached one.
 *
 * Steps (each streams its output to `options.onLog`):
 * 1. `mmdebstrap --mode=root|unshare --format=directory --variant=minbase --include=... bookworm DIR`,
 *    with the path excludes and customize hooks of {@link PACKAGES}, {@link MASKED_UNITS}
 *    (root mode as uid 0; unshare mode otherwise, which needs /etc/subuid and /etc/subgid).
 *    The kernel's postinst runs initramfs-tools in the chroot; its default `MODULES=most`
 *    (initramfs.conf(5)) takes all block and virtio drivers, and the build checks from
 *    `lsinitramfs` that virtio_blk.ko and virtio_pci.ko are there.
 * 2. `mke2fs -t ext4 -d DIR -L debian IMAGE SIZE`: SIZE is the tree's disk usage plus 30 %,
 *    at least 1 GiB, rounded up to a MiB; mke2fs writes only what it uses, so the file is sparse.
 *    In unshare mode mke2fs runs in mmdebstrap's user namespace (`--unshare-helper`) so that
 *    files owned by the guest's root are owned by uid 0 in the image.
 * 3. The kernel and initrd are copied from DIR/boot; once all is in place DIR is removed.
 *
 * Everything is made in `build-PID/` under the cache directory and renamed into place at the
 * end, with the manifest (`image.json`) written last, so an interrupted build is never taken
 * for a finished one; builds left behind by dead processes are removed by the next build.
 *
 * @throws MshvError `EFETCH` naming the command that failed and the tail of its output
 *   (with a note on root/user namespaces when mmdebstrap fails for want of them), or when
 *   the image lacks the kernel, the initrd or its virtio modules.
 */
export async function buildDebianImage(options: DebianImageOptions = {}): Promise<DebianImage> {
  const { mirror } = options
  const dir = options.cacheDir ?? join(linuxCacheDir(), 'debian-image')
  const asRoot = process.getuid?.() === 0
  const mode = asRoot ? 'root' : 'unshare'
  const recipe = createHash('sha256')
    .update(JSON.stringify([MANIFEST_VERSION, mmdebstrapArgs('ROOT', mode, mirror)]))
    .digest('hex')
    .slice(0, 16)
  const manifestPath = join(dir, 'image.json')
  const fromCache = (): DebianImage | undefined => {
    const cached = options.force ? undefined : readManifest(manifestPath, recipe)
    return cached && { image: cached.image, kernel: cached.kernel, initrd: cached.initrd, packages: cached.packages }
  }
  const early = fromCache()
  if (early) return early
  mkdirSync(dir, { recursive: true })
  // One build at a time (test files run in parallel processes): the others wait, then take its result.
  return withLock(join(dir, 'lock'), async () => fromCache() ?? build(dir, manifestPath, recipe, asRoot, mode, options))
}

/**
 * Runs `f` holding the lock directory `lock` (mkdir is atomic); a lock whose holder
 * died is taken over. @internal
 */
async function withLock<T>(lock: string, f: () => Promise<T>): Promise<T> {
  const pidFile = join(lock, 'pid')
  for (;;) {
    try {
      mkdirSync(lock)
      writeFileSync(pidFile, String(process.pid))
      break
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
      let holder = Number.NaN
      try {
        holder = Number(readFileSync(pidFile, 'utf8'))
      } catch {
        // Just made, its pid not yet written: give the holder a moment.
      }
      const age = Date.now() - (statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? 0)
      if ((Number.isInteger(holder) && !isAlive(holder)) || (!Number.isInteger(holder) && age > 10_000)) rmSync(lock, { recursive: true, force: true })
      else await sleep(500)
    }
  }
  try {
    return await f()
  } finally {
    rmSync(lock, { recursive: true, force: true })
  }
}

/** The build itself (the lock held). */
async function build(dir: string, manifestPath: string, recipe: string, asRoot: boolean, mode: 'root' | 'unshare', options: DebianImageOptions): Promise<DebianImage> {
  const { onLog, mirror } = options
  for (const name of readdirSync(dir)) {
    const pid = /^build-(\d+)$/.exec(name)?.[1]
    if (pid !== undefined && Number(pid) !== process.pid && !isAlive(Number(pid))) await removeBuild(join(dir, name), asRoot, onLog)
  }
  const build = join(dir, `build-${process.pid}`)
  await removeBuild(build, asRoot, onLog)
  const root = join(build, 'root')
  const out = join(build, 'out')
  mkdirSync(out, { recursive: true })
  // Commands that read the chroot see its owners as the guest does: directly as root,
  // through mmdebstrap's user namespace otherwise (mmdebstrap(1), MODES: unshare).
  const inNamespace = (cmd: string, args: string[]): Promise<string> =>
    asRoot ? run(cmd, args, onLog) : run('mmdebstrap', ['--unshare-helper', cmd, ...args], onLog)

  try {
    await run('mmdebstrap', mmdebstrapArgs(root, mode, mirror), onLog, out)

    const modules = readFileSync(join(out, 'initrd.list'), 'utf8')
    const missing = INITRD_MODULES.filter((m) => !modules.split('\n').some((l) => l.endsWith(`/${m}`)))
    if (missing.length > 0) throw new MshvError('EFETCH', `the image's initrd lacks ${missing.join(', ')} (lsinitramfs lists ${modules.split('\n').length} entries)`)

    const bootDir = join(root, 'boot')
    const vmlinuz = bootFile(bootDir, 'vmlinuz-')
    const initrdName = bootFile(bootDir, 'initrd.img-')
    copyFileSync(join(bootDir, vmlinuz), join(out, 'vmlinuz'))
    copyFileSync(join(bootDir, initrdName), join(out, 'initrd.img'))

    // du(1) -s -B1: bytes of disk the tree uses, close to what ext4 with 4 KiB blocks needs.
    const used = Number(/^(\d+)/.exec(await inNamespace('du', ['-s', '-B1', root]))?.[1] ?? NaN)
    if (!Number.isFinite(used)) throw new MshvError('EFETCH', `du -s -B1 ${root} printed no size`)
    const sizeBytes = Math.max(GIB, Math.ceil((used * 1.3) / MIB) * MIB)
    const imagePath = join(out, 'debian.ext4')
    // In unshare mode mke2fs runs as a sub-uid: it writes into a file the user made writable for it.
    if (!asRoot) {
      writeFileSync(imagePath, '')
      chmodSync(imagePath, 0o666)
    }
    await inNamespace('mke2fs', ['-t', 'ext4', '-d', root, '-L', 'debian', imagePath, `${sizeBytes / MIB}M`])
    chmodSync(imagePath, 0o644)

    // Into place: the old manifest goes first, the new one comes last.
    rmSync(manifestPath, { force: true })
    const files = { image: 'debian.ext4', kernel: 'vmlinuz', initrd: 'initrd.img', packages: 'packages.txt' } as const
    for (const f of Object.values(files)) renameSync(join(out, f), join(dir, f))
    const manifest: Manifest = {
      image: join(dir, files.image),
      kernel: join(dir, files.kernel),
      initrd: join(dir, files.initrd),
      packages: join(dir, files.packages),
      version: MANIFEST_VERSION,
      recipe,
      kernelVersion: vmlinuz.slice('vmlinuz-'.length),
      sizeBytes: statSync(join(dir, files.image)).size,
      builtAt: new Date().toISOString(),
    }
    const manifestTmp = `${manifestPath}.${process.pid}.tmp`
    writeFileSync(manifestTmp, `${JSON.stringify(manifest, null, 2)}\n`)
    renameSync(manifestTmp, manifestPath)
    await removeBuild(build, asRoot, onLog)
    return { image: manifest.image, kernel: manifest.kernel, initrd: manifest.initrd, packages: manifest.packages }
  } catch (e) {
    // Leave nothing half-built that the next call must trip over; keep it if mounts remain.
    await removeBuild(build, asRoot, onLog).catch(() => undefined)
    throw e
  }
}

/** One step of {@link driveConsole}: wait for `expect`, then type `send`. */
export interface ConsoleStep {
  /** What the console must print (after the previous step's match). */
  readonly expect: RegExp | string
  /** Typed once `expect` appeared (include the `\n`). */
  readonly send?: string
  /** How long to wait for `expect` (default 60 s). */
  readonly timeoutMs?: number
}

/** What {@link driveConsole} saw. */
export interface ConsoleTranscript {
  /** Everything the console printed until the last step's match. */
  readonly text: string
  /** Per step: the output from the previous match's end to the end of this step's match, and when it matched (ms after the start). */
  readonly steps: readonly { readonly output: string; readonly ms: number }[]
}

/**
 * Drives a serial console like expect(1): for each step, waits until `output` prints
 * `expect` (searching only after the previous match), then `write`s `send`. Resolves with
 * the transcript; rejects with `ETIMEDOUT` (a step's time ran out) or `ECLOSED` (the output
 * ended first), the message ending with the console's last 2,000 characters.
 */
export function driveConsole(output: Readable, write: (s: string) => void, steps: readonly ConsoleStep[]): Promise<ConsoleTranscript> {
  const start = Date.now()
  const decoder = new StringDecoder('utf8')
  const done: { output: string; ms: number }[] = []
  let text = ''
  let pos = 0
  let index = 0
  let timer: NodeJS.Timeout | undefined
  return new Promise((resolve, reject) => {
    const finish = (error?: MshvError): void => {
      clearTimeout(timer)
      output.off('data', onData)
      output.off('close', onClose)
      output.off('end', onClose)
      if (error) reject(error)
      else resolve({ text: text.slice(0, pos), steps: done })
    }
    const arm = (): void => {
      clearTimeout(timer)
      const step = steps[index]
      if (!step) return finish()
      const ms = step.timeoutMs ?? 60_000
      timer = setTimeout(() => finish(new MshvError('ETIMEDOUT', `the console did not print ${String(step.expect)} in ${ms} ms (step ${index + 1}); it ended with:\n${text.slice(-2000)}`)), ms)
    }
    const advance = (): void => {
      for (let step = steps[index]; step; step = steps[index]) {
        const rest = text.slice(pos)
        let end: number
        if (typeof step.expect === 'string') {
          const at = rest.indexOf(step.expect)
          if (at < 0) return
          end = at + step.expect.length
        } else {
          const m = new RegExp(step.expect.source, step.expect.flags.replace('g', '').replace('y', '')).exec(rest)
          if (!m) return
          end = m.index + m[0].length
        }
        done.push({ output: rest.slice(0, end), ms: Date.now() - start })
        pos += end
        index++
        if (step.send !== undefined) write(step.send)
        arm()
      }
    }
    const onData = (chunk: Buffer | string): void => {
      text += typeof chunk === 'string' ? chunk : decoder.write(chunk)
      advance()
    }
    const onClose = (): void => finish(new MshvError('ECLOSED', `the console closed before it printed ${String(steps[index]?.expect)} (step ${index + 1}); it ended with:\n${text.slice(-2000)}`))
    output.on('data', onData)
    output.on('close', onClose)
    output.on('end', onClose)
    arm()
    advance()
  })
}
