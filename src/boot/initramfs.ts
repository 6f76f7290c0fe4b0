/**
 * A busybox initramfs: Debian's `busybox-static` as /bin/busybox, /dev/console, and
 * an /init script — an interactive shell on the console by default.
 * @module
 */
import { readFileSync } from 'node:fs'
import { MshvError, describe } from '../errors.js'
import { cpioArchive, type CpioEntry } from './cpio.js'
import type { ModuleSet } from './modules.js'
import { checkObject, checkStrings } from '../check.js'

/** The /init of {@link busyboxInitramfs} without a script: mounts, then a shell on the console; poweroff when it exits. */
export const SHELL_INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
[ -f /etc/modules ] && modprobe -a $(cat /etc/modules)
echo "mshv: a busybox shell on the console ('poweroff -f' ends the VM)"
setsid cttyhack sh
poweroff -f
`

/** What a script given as `init` (without `#!`) runs after: /proc, and busybox's applets in /bin. */
export const INIT_PRELUDE = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
`

/** Options for {@link busyboxInitramfs}. */
export interface BusyboxInitramfsOptions {
  /** A static busybox binary (bytes or a file path). */
  busybox: Uint8Array | string
  /**
   * The /init script (default {@link SHELL_INIT}). One without `#!` runs under
   * `/bin/busybox sh` after {@link INIT_PRELUDE}: /proc mounted and busybox's applets
   * linked in /bin, so `poweroff -f` works as typed.
   */
  init?: string
  /**
   * Kernel modules to include, with their `modules.dep` ({@link resolveModules}):
   * `/sbin/modprobe` (busybox's) loads them by name, and the kernel's own module
   * requests find it there too. {@link SHELL_INIT} loads the ones asked for (listed
   * in `/etc/modules`).
   */
  modules?: ModuleSet
}

/** An uncompressed newc initramfs with busybox and `init`. */
export function busyboxInitramfs(options: BusyboxInitramfsOptions): Uint8Array {
  const { busybox, init = SHELL_INIT } = checkObject<BusyboxInitramfsOptions>('busyboxInitramfs: options', options)
  let binary: Uint8Array
  if (busybox instanceof Uint8Array) binary = busybox
  else if (typeof busybox === 'string') {
    try {
      binary = readFileSync(busybox)
    } catch (e) {
      throw new MshvError('ENOENT', `busybox: cannot read ${busybox}: ${(e as Error).message}`)
    }
  } else throw new MshvError('EINVAL', `busybox must be bytes or a file path, got ${describe(busybox)}`)
  if (binary.length < 4 || binary[0] !== 0x7f || binary[1] !== 0x45) throw new MshvError('EINVAL', 'busybox: not an ELF executable')
  if (typeof init !== 'string') throw new MshvError('EINVAL', `init must be a script (a string), got ${describe(init)}`)
  if (options.modules !== undefined) {
    const m = checkObject<ModuleSet>('busyboxInitramfs: modules', options.modules)
    checkStrings('busyboxInitramfs: modules.requested', m.requested)
    if (!Array.isArray(m.entries)) throw new MshvError('EINVAL', `busyboxInitramfs: modules.entries must be an array of cpio entries, got ${describe(m.entries)}`)
  }
  const modules: CpioEntry[] = options.modules
    ? [
        { path: 'sbin', type: 'dir' },
        { path: 'sbin/modprobe', type: 'symlink', target: '/bin/busybox' },
        { path: 'etc', type: 'dir' },
        { path: 'etc/modules', type: 'file', data: `${options.modules.requested.join('\n')}\n` },
        { path: 'lib', type: 'dir' },
        { path: 'lib/modules', type: 'dir' },
        ...options.modules.entries,
      ]
    : []
  return cpioArchive([
    ...modules,
    { path: 'bin', type: 'dir' },
    { path: 'dev', type: 'dir' },
    { path: 'dev/console', type: 'char', major: 5, minor: 1 },
    { path: 'bin/busybox', type: 'file', data: binary, mode: 0o755 },
    { path: 'bin/sh', type: 'symlink', target: 'busybox' },
    { path: 'init', type: 'file', data: init.startsWith('#!') ? init : `${INIT_PRELUDE}${init}`, mode: 0o755 },
  ])
}
