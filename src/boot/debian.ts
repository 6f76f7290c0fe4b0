/**
 * The Linux the boot tests and `mshv boot` use: Debian 12's packaged kernel
 * (`linux-image-amd64`'s current `linux-image-6.1.0-*-amd64`) and `busybox-static`,
 * fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a cache outside
 * the repository (`$MSHV_LINUX_CACHE`, default `~/.cache/mshv-linux`).
 * @module
 */
import { checkString } from '../check.js'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { MshvError } from '../errors.js'
import { busyboxInitramfs } from './initramfs.js'
import { resolveModules, type ModuleSet } from './modules.js'

/** Where the fetched files are. */
export interface DebianLinux {
  /** The bzImage (`/boot/vmlinuz-*`). */
  readonly kernel: string
  /** The static busybox. */
  readonly busybox: string
  /** The kernel package fetched. */
  readonly package: string
}

/** The cache directory. */
export function linuxCacheDir(): string {
  return process.env['MSHV_LINUX_CACHE'] ?? join(homedir(), '.cache', 'mshv-linux')
}

function run(cmd: string, args: readonly string[], cwd: string): string {
  try {
    return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (e) {
    const err = e as { stderr?: string; message: string }
    throw new MshvError('EFETCH', `${cmd} ${args.join(' ')} failed: ${(err.stderr || err.message).trim()}`)
  }
}

/** The files, fetched if the cache lacks them (`EFETCH` naming the command that failed). */
export function fetchDebianLinux(): DebianLinux {
  const dir = linuxCacheDir()
  const manifest = join(dir, 'linux.json')
  if (existsSync(manifest)) {
    const m = JSON.parse(readFileSync(manifest, 'utf8')) as DebianLinux
    if (existsSync(m.kernel) && existsSync(m.busybox)) return m
  }
  mkdirSync(dir, { recursive: true })
  let deps: string
  try {
    deps = run('apt-cache', ['depends', 'linux-image-amd64'], dir)
  } catch (e) {
    // Ubuntu's archive, for one, names its kernels otherwise (linux-image-generic).
    throw new MshvError(
      'EFETCH',
      `${(e as Error).message}\nDebian's kernel package is not in this host's archive (Ubuntu calls its kernels linux-image-generic): give a kernel and a busybox yourself, as files (mshv boot --kernel /boot/vmlinuz-... --busybox /bin/busybox, with Ubuntu's busybox-static installed), or use a Debian host or container`,
    )
  }
  const pkg = /Depends: (linux-image-[0-9.]+-[0-9]+-amd64)\b/.exec(deps)?.[1]
  if (!pkg) throw new MshvError('EFETCH', `apt-cache depends linux-image-amd64 names no linux-image-*-amd64 package:\n${deps}`)
  for (const p of [pkg, 'busybox-static']) run('apt-get', ['download', p], dir)
  const debs = readdirSync(dir).filter((f) => f.endsWith('.deb'))
  const root = join(dir, 'root')
  for (const prefix of [`${pkg}_`, 'busybox-static_']) {
    const deb = debs.find((f) => f.startsWith(prefix))
    if (!deb) throw new MshvError('EFETCH', `apt-get download left no ${prefix}*.deb in ${dir}`)
    run('dpkg-deb', ['-x', deb, root], dir)
  }
  const vmlinuz = readdirSync(join(root, 'boot')).find((f) => f.startsWith('vmlinuz-'))
  if (!vmlinuz) throw new MshvError('EFETCH', `${pkg} holds no /boot/vmlinuz-*`)
  const m: DebianLinux = { kernel: join(root, 'boot', vmlinuz), busybox: join(root, 'bin', 'busybox'), package: pkg }
  writeFileSync(manifest, JSON.stringify(m, null, 2))
  return m
}

/**
 * The modules `names` need from the kernel package `kernel` (a `/boot/vmlinuz-VERSION`
 * beside its `/lib/modules/VERSION`, as Debian's package unpacks), for
 * {@link busyboxInitramfs}.
 */
export function kernelModules(kernel: string, names: readonly string[]): ModuleSet {
  checkString('kernelModules: kernel', kernel, 4096)
  const version = basename(kernel).replace(/^vmlinuz-/, '')
  return resolveModules(join(dirname(dirname(kernel)), 'lib', 'modules', version), names)
}

/** The modules a guest needs for virtio PCI disks (ext4 on them), network, console and RNG. */
export const VIRTIO_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_console', 'virtio_rng', 'ext4', 'crc32c_generic'] as const

/** The Linux files a command line names; any it leaves out are Debian's. */
export interface LinuxFiles {
  /** A bzImage or vmlinux (default: Debian's kernel). */
  readonly kernel?: string
  /** An initramfs file; replaces the busybox one. */
  readonly initrd?: string
  /** The static busybox of the generated initramfs (default: Debian's). */
  readonly busybox?: string
  /** That initramfs's /init script (default: an interactive shell). */
  readonly init?: string
  /** Kernel modules the busybox initramfs carries and loads (with their dependencies). */
  readonly modules?: readonly string[]
}

/**
 * The kernel and initrd to boot: what `files` names, Debian's packages for the rest
 * (fetched into the cache once; `onFetch` hears of it first), and a busybox initramfs
 * unless `files.initrd` is given.
 */
export function linuxFiles(files: LinuxFiles, onFetch?: () => void): { kernel: string; initrd: Uint8Array | string } {
  let { kernel, busybox } = files
  if (kernel === undefined || (files.initrd === undefined && busybox === undefined)) {
    onFetch?.()
    const debian = fetchDebianLinux()
    kernel ??= debian.kernel
    busybox ??= debian.busybox
  }
  const modules = files.modules && files.modules.length > 0 ? kernelModules(kernel, files.modules) : undefined
  return { kernel, initrd: files.initrd ?? busyboxInitramfs({ busybox: busybox as string, init: files.init, modules }) }
}
