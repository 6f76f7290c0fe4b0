/**
 * The `mshv` command's arguments.
 * @module
 */
import { MshvError } from '../errors.js'
import type { SessionOptions } from '../repl/session.js'

/** The command's usage text. */
export const USAGE = `usage: mshv repl [--backend auto|sim|mshv] [--ram MiB]
                 [--kernel FILE|debian [--initrd FILE | --busybox FILE] [--cmdline TEXT] [--vcpus N] [--memory MiB]]
                 [--symbols FILE]
       mshv boot [--kernel FILE] [--initrd FILE | --busybox FILE] [--init SCRIPT] [--cmdline TEXT]
                 [--memory MiB] [--vcpus N] [--backend auto|sim|mshv] [--clock deterministic|realtime]
                 [--entry pvh|boot64] [--policy page|hypercall|eager|all] [--json FILE] [--no-progress]
                 [--disk IMAGE]... [--snapshot] [--rng] [--system] [--gdb [HOST]:PORT [--gdb-wait]]
                 [--save-to FILE --save-on TEXT] [--trace FILE [--symbols FILE]]
       mshv restore FILE [--no-progress] [--gdb [HOST]:PORT [--gdb-wait]] [--save-to FILE --save-on TEXT]
       mshv image [--force]
       mshv fetch-linux
       mshv doctor [--backend auto|sim|mshv] [--json [FILE]] [--experiment-ms N]
       mshv --version
       mshv COMMAND --help   (each option, its default and an example)`

/** The usage error of every command: the option that was not understood, then {@link USAGE}. */
function badOption(flag: string | undefined, value: string | undefined): never {
  throw new MshvError('EINVAL', `unknown or incomplete option '${flag ?? ''}${value === undefined ? '' : ` ${value}`}'\n${USAGE}`)
}

/** A known option given a value it cannot take: the value is named, and what it must be. */
function badValue(flag: string, value: string, wanted: string): never {
  throw new MshvError('EINVAL', `${flag} takes ${wanted}, got '${value}'\n${USAGE}`)
}

/** What `mshv boot` was asked for. */
export interface BootArgs {
  kernel?: string
  initrd?: string
  busybox?: string
  /** The /init script for the busybox initramfs (default: an interactive shell). */
  init?: string
  cmdline?: string
  memoryMiB?: number
  vcpus?: number
  backend?: 'auto' | 'sim' | 'mshv'
  clock?: 'deterministic' | 'realtime'
  /** How the kernel is entered (see `LinuxOptions.entry`). */
  entry?: 'pvh' | 'boot64'
  /** The sync policies to boot under, in order ('all': each). */
  policies: ('page' | 'hypercall' | 'eager')[]
  json?: string
  progress: boolean
  /** Raw disk images, the guest's /dev/vda, /dev/vdb, ... (virtio-blk on PCI). */
  disks: string[]
  /** The guest's writes go to copy-on-write overlays; the images stay as they are (QEMU's -snapshot). */
  snapshot: boolean
  /** A virtio-rng device. */
  rng: boolean
  /** Boot the Debian system image (`mshv image`) as /dev/vda with its own kernel and initramfs. */
  system: boolean
  /** The system image's path, once `--system` found it. @internal */
  systemImage?: string
  /** Serve the VM to GDB on this host and port (QEMU's `-gdb tcp::PORT`). */
  gdb?: { host: string; port: number }
  /** With `gdb`: the VM waits for GDB to continue it (QEMU's `-S`). */
  gdbWait: boolean
  /** Where `saveOn` saves the machine. */
  saveTo?: string
  /** When the console prints this text, the machine is saved to `saveTo` and the boot ends. */
  saveOn?: string
  /** Write each vCPU's runs and exits to this file as a Chrome trace (ui.perfetto.dev). */
  trace?: string
  /** A System.map or ELF naming the trace's addresses (default for Linux: the kernel's kallsyms in guest memory). */
  symbols?: string
}

/** `mshv boot`'s options; throws a usage error on anything else. */
export function parseBootArgs(args: readonly string[]): BootArgs {
  const out: BootArgs = { policies: ['page'], progress: true, disks: [], snapshot: false, rng: false, system: false, gdbWait: false }
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]
    const value = args[i + 1]
    if (flag === '--no-progress' || flag === '--snapshot' || flag === '--rng' || flag === '--system' || flag === '--gdb-wait') {
      if (flag === '--no-progress') out.progress = false
      else if (flag === '--gdb-wait') out.gdbWait = true
      else out[flag.slice(2) as 'snapshot' | 'rng' | 'system'] = true
      continue
    }
    if (value === undefined) badOption(flag, value)
    const v = value as string
    switch (flag) {
      case '--kernel':
      case '--initrd':
      case '--busybox':
      case '--init':
      case '--cmdline':
      case '--json':
        out[flag.slice(2) as 'kernel' | 'initrd' | 'busybox' | 'init' | 'cmdline' | 'json'] = v
        break
      case '--disk':
        out.disks.push(v)
        break
      case '--save-to':
        out.saveTo = v
        break
      case '--trace':
        out.trace = v
        break
      case '--symbols':
        out.symbols = v
        break
      case '--save-on':
        if (v === '') badValue(flag, v, 'the text the console prints when the machine is to be saved')
        out.saveOn = v
        break
      case '--gdb': {
        const m = /^(.*):([0-9]{1,5})$/.exec(v)
        const port = Number(m?.[2])
        if (!m || port > 65535) badValue(flag, v, "[HOST]:PORT (':1234', '0.0.0.0:1234')")
        out.gdb = { host: m[1] === '' ? '127.0.0.1' : (m[1] as string), port }
        break
      }
      case '--memory':
      case '--vcpus':
        if (!/^[0-9]+$/.test(v)) badValue(flag, v, flag === '--memory' ? 'a whole number of MiB' : 'a whole number of vCPUs')
        if (flag === '--memory') out.memoryMiB = Number(v)
        else out.vcpus = Number(v)
        break
      case '--backend':
        if (v !== 'auto' && v !== 'sim' && v !== 'mshv') badValue(flag, v, "'auto', 'sim' or 'mshv'")
        out.backend = v as BootArgs['backend']
        break
      case '--clock':
        if (v !== 'deterministic' && v !== 'realtime') badValue(flag, v, "'deterministic' or 'realtime'")
        out.clock = v as BootArgs['clock']
        break
      case '--entry':
        if (v !== 'pvh' && v !== 'boot64') badValue(flag, v, "'pvh' or 'boot64'")
        out.entry = v as BootArgs['entry']
        break
      case '--policy':
        if (v === 'all') out.policies = ['page', 'hypercall', 'eager']
        else if (v === 'page' || v === 'hypercall' || v === 'eager') out.policies = [v]
        else badValue(flag, v, "'page', 'hypercall', 'eager' or 'all'")
        break
      default:
        badOption(flag, v)
    }
    i++
  }
  if (out.system && (out.kernel ?? out.initrd ?? out.busybox ?? out.init) !== undefined) {
    throw new MshvError('EINVAL', `--system boots the Debian image's own kernel and initramfs: leave out --kernel, --initrd, --busybox and --init\n${USAGE}`)
  }
  checkSave(out)
  if (out.symbols !== undefined && out.trace === undefined) throw new MshvError('EINVAL', `--symbols names the addresses of --trace's events: give --trace FILE too\n${USAGE}`)
  if (out.gdbWait && !out.gdb) throw new MshvError('EINVAL', `--gdb-wait waits for the GDB of --gdb: give --gdb [HOST]:PORT too\n${USAGE}`)
  if (out.gdb && out.policies.length > 1) throw new MshvError('EINVAL', `--gdb debugs one boot: it cannot go with --policy all\n${USAGE}`)
  if (out.initrd !== undefined && (out.busybox !== undefined || out.init !== undefined)) {
    throw new MshvError('EINVAL', `--initrd replaces the busybox initramfs: give it alone, or --busybox/--init\n${USAGE}`)
  }
  return out
}

/** `--save-on` and `--save-to` go together. */
function checkSave(out: { saveTo?: string; saveOn?: string }): void {
  if ((out.saveTo === undefined) !== (out.saveOn === undefined)) {
    throw new MshvError('EINVAL', `--save-to FILE and --save-on TEXT go together: the machine is saved to FILE when the console prints TEXT\n${USAGE}`)
  }
}

/** What `mshv restore` was asked for. */
export interface RestoreArgsParsed {
  file: string
  progress: boolean
  gdb?: { host: string; port: number }
  gdbWait: boolean
  saveTo?: string
  saveOn?: string
}

/** `mshv restore`'s arguments; a usage error on anything else. */
export function parseRestoreArgs(args: readonly string[]): RestoreArgsParsed {
  const [file, ...rest] = args
  if (file === undefined || file.startsWith('--')) throw new MshvError('EINVAL', `mshv restore takes the file a boot saved (--save-to)\n${USAGE}`)
  // The options it shares with `mshv boot` are parsed by the same code.
  const b = parseBootArgs(rest)
  const allowed = new Set(['--no-progress', '--gdb', '--gdb-wait', '--save-to', '--save-on'])
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i] as string
    if (!allowed.has(a)) badOption(a, undefined)
    if (a === '--gdb' || a === '--save-to' || a === '--save-on') i++
  }
  return { file, progress: b.progress, gdb: b.gdb, gdbWait: b.gdbWait, saveTo: b.saveTo, saveOn: b.saveOn }
}

/** What `mshv repl` was asked for: the session, and a kernel to boot in it. */
export interface ReplArgs {
  backend?: SessionOptions['backend']
  ramMiB?: number
  /** A kernel file, or `debian` for Debian's (fetched once). */
  kernel?: string
  initrd?: string
  busybox?: string
  cmdline?: string
  vcpus?: number
  memoryMiB?: number
  /** A System.map or ELF for dis() and sym() (default with --kernel: the kernel's kallsyms in guest memory). */
  symbols?: string
}

/** `--backend sim --ram 32` -> REPL options; throws a usage error on anything else. */
export function parseArgs(args: readonly string[]): ReplArgs {
  const out: ReplArgs = {}
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]
    const value = args[i + 1]
    const number = value !== undefined && /^[0-9]+$/.test(value)
    if (flag === '--backend' && (value === 'auto' || value === 'sim' || value === 'mshv')) out.backend = value
    else if (flag === '--backend' && value !== undefined) badValue(flag, value, "'auto', 'sim' or 'mshv'")
    else if (flag === '--ram' && number) out.ramMiB = Number(value)
    else if (flag === '--vcpus' && number) out.vcpus = Number(value)
    else if (flag === '--memory' && number) out.memoryMiB = Number(value)
    else if ((flag === '--ram' || flag === '--memory' || flag === '--vcpus') && value !== undefined) badValue(flag, value, flag === '--vcpus' ? 'a whole number of vCPUs' : 'a whole number of MiB')
    else if ((flag === '--kernel' || flag === '--initrd' || flag === '--busybox' || flag === '--cmdline' || flag === '--symbols') && value !== undefined) out[flag.slice(2) as 'kernel' | 'initrd' | 'busybox' | 'cmdline' | 'symbols'] = value
    else badOption(flag, value)
    i++
  }
  if (out.kernel === undefined && (out.initrd ?? out.busybox ?? out.cmdline ?? out.vcpus ?? out.memoryMiB) !== undefined) {
    throw new MshvError('EINVAL', `--initrd, --busybox, --cmdline, --vcpus and --memory go with --kernel\n${USAGE}`)
  }
  return out
}

/** What `mshv doctor` was asked for. */
export interface DoctorArgs {
  backend?: 'auto' | 'sim' | 'mshv'
  /** Write the report as JSON: to this file, or to stdout when `'-'`. */
  json?: string
  /** Measuring time per experiment case (0 skips the experiment). */
  experimentMs?: number
}

/** `--backend sim --json report.json` -> doctor options; throws a usage error on anything else. */
export function parseDoctorArgs(args: readonly string[]): DoctorArgs {
  const out: DoctorArgs = {}
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]
    const value = args[i + 1]
    if (flag === '--backend' && (value === 'auto' || value === 'sim' || value === 'mshv')) out.backend = value
    else if (flag === '--experiment-ms' && value !== undefined && /^[0-9]+$/.test(value)) out.experimentMs = Number(value)
    else if (flag === '--json') {
      // The file is optional: a following flag (or nothing) means stdout.
      if (value === undefined || value.startsWith('--')) {
        out.json = '-'
        continue
      }
      out.json = value
    } else badOption(flag, value)
    i++
  }
  return out
}
