/**
 * `mshv boot`: boots Linux (Debian's kernel and busybox by default, fetched on first
 * use) with the serial console on the terminal — interactive: what is typed goes to
 * the guest, Ctrl+] detaches (ends the VM) — a live progress line while it boots, and
 * at the end a report: time, exits by type, hypercalls per exit, and the register
 * reads and writes the VP register page served against those that took hypercalls.
 * `--policy all` boots once under each sync policy and compares them. `--disk IMAGE`
 * adds virtio disks (the busybox initramfs then loads Debian's virtio and ext4 modules),
 * `--snapshot` keeps the images unchanged.
 * @module
 */
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs'
import type { BootArgs } from './args.js'
import { linuxFiles, VIRTIO_MODULES } from '../boot/debian.js'
import { buildDebianImage } from '../boot/debian-image.js'
import { prepareLinux, bootReport, type LinuxBootReport, type LinuxMachine } from '../boot/linux.js'
import { restoreLinux } from '../boot/linux-snapshot.js'
import { isMultiboot, prepareMultiboot } from '../boot/multiboot.js'
import { MshvError } from '../errors.js'
import type { SnapshotInfo } from '../snapshot/vm-snapshot.js'
import { nameRips } from '../trace.js'
import { formatRate } from '../progress.js'
import type { Vm } from '../vm.js'
import type { VmRunResult } from '../scheduler.js'
import { GuestSymbols } from '../debug/symbols/guest.js'
import { readSymbols } from '../debug/symbols/file.js'
import type { SymbolTable } from '../debug/symbols/table.js'

/** The terminal the command talks to (the process's, in use). */
export interface BootIo {
  readonly stdin: NodeJS.ReadStream
  readonly stdout: { write(s: string | Uint8Array): unknown; readonly isTTY?: boolean }
  readonly stderr: { write(s: string): unknown; readonly isTTY?: boolean }
}

/** Ctrl+]: detaches the guest's console (telnet's escape), in `mshv boot` and the REPL. @internal */
export const DETACH = 0x1d
/** Input held for the guest's console before stdin is paused. */
const HELD_INPUT = 1 << 20

/** A status line on stderr, cleared before console output and redrawn after it. @internal */
export class StatusLine {
  private shown = false
  private timer: ReturnType<typeof setInterval> | undefined

  constructor(
    private readonly out: BootIo['stderr'],
    private readonly text: () => string,
    /** Whether the console is at the start of a line: drawing mid-line would erase what it printed of it. */
    private readonly ready: () => boolean = () => true,
  ) {}

  start(): void {
    if (!this.out.isTTY) return
    this.timer = setInterval(() => this.draw(), 250)
    this.timer.unref()
  }

  draw(): void {
    if (!this.timer || !this.ready()) return
    this.out.write(`\r\x1b[2K\x1b[7m${this.text()}\x1b[0m`)
    this.shown = true
  }

  clear(): void {
    if (this.shown) this.out.write('\r\x1b[2K')
    this.shown = false
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
    this.clear()
  }
}

function liveText(vm: Vm, policy: string, start: number): string {
  let exits = 0
  let instructions = 0
  for (const v of vm.cpus) {
    const s = v.stats()
    exits += s.exits
    instructions += s.instructions
  }
  const seconds = (performance.now() - start) / 1000
  return `booting [${policy}] ${seconds.toFixed(1)} s, guest ${(vm.guestTimeNs() / 1e9).toFixed(2)} s, ${formatRate(instructions / seconds)} instructions/s, ${exits.toLocaleString('en-US')} exits (Ctrl+] ends)`
}

/** The guest's console on stdout, with the status line cleared before each byte. @internal */
export class ConsoleOut {
  status: StatusLine | undefined
  /** Sees each byte after it is shown (the --save-on marker's watch). */
  watch: ((b: number) => void) | undefined
  /** The console's last byte ended a line (or none came yet): the status line may be drawn. */
  atLineStart = true
  constructor(private readonly io: BootIo) {}
  readonly onByte = (b: number): void => {
    this.status?.clear()
    this.io.stdout.write(Uint8Array.of(b))
    this.atLineStart = b === 0x0a
    this.watch?.(b)
  }
}

/** What {@link drive} runs: a Linux machine, or a multiboot one (which cannot be saved). */
type Drivable = Pick<LinuxMachine, 'vm' | 'pc' | 'run' | 'close'> & { snapshot?: LinuxMachine['snapshot'] }

/** What {@link drive} does besides the console: progress, GDB, saving. */
interface DriveArgs {
  progress: boolean
  /** Write the vCPUs' runs and exits to this file as a Chrome trace. */
  trace?: string
  /** Names for the trace's RIPs (a file's); without them a Linux guest's kallsyms are searched for. */
  symbolTable?: SymbolTable
  /** Whether the guest is Linux, whose kernel carries its kallsyms. */
  kallsyms?: boolean
  gdb?: BootArgs['gdb']
  gdbWait: boolean
  saveTo?: string
  saveOn?: string
}

/** Boots once under `policy`; the console is live, and interactive when `interactive`. */
async function bootOnce(args: BootArgs & Pick<DriveArgs, 'symbolTable'>, kernel: string, initrd: Uint8Array | string, policy: BootArgs['policies'][number], io: BootIo, interactive: boolean): Promise<LinuxBootReport & { detached: boolean; saved?: SnapshotInfo }> {
  const out = new ConsoleOut(io)
  const m = prepareLinux({
    kernel,
    initrd,
    cmdline: args.cmdline,
    memory: args.memoryMiB === undefined ? undefined : args.memoryMiB * 1024 * 1024,
    vcpus: args.vcpus,
    backend: args.backend,
    // At a terminal, guest time is the host's unless asked otherwise: on the deterministic
    // clock an idle guest leaps from timer to timer, burning a core, and its clock races
    // ahead of the user's (`sleep 5` returned in 0.14 s).
    clock: args.clock ?? (interactive && io.stdin.isTTY === true ? 'realtime' : undefined),
    entry: args.entry,
    policy,
    // Boots that compare policies must each start from the same disk contents.
    disks: [
      ...(args.systemImage ? [{ path: args.systemImage, overlay: true }] : []),
      ...args.disks.map((path) => ({ path, overlay: args.snapshot || args.policies.length > 1 })),
    ],
    rng: args.rng,
    serial: { onByte: out.onByte },
  })
  return drive(m, out, { ...args, kallsyms: true }, policy, io, interactive)
}

/**
 * Runs `m` with its console on the terminal (interactive when `interactive`) until the
 * guest ends it, Ctrl+] or the save `saveOn` asks for; closes it; its report.
 */
async function drive(m: Drivable, out: ConsoleOut, args: DriveArgs, policy: string, io: BootIo, interactive: boolean): Promise<LinuxBootReport & { detached: boolean; saved?: SnapshotInfo }> {
  let status: StatusLine | undefined
  const start = performance.now()
  status = args.progress ? new StatusLine(io.stderr, () => liveText(m.vm, policy, start), () => out.atLineStart) : undefined
  out.status = status
  status?.start()
  // --save-on: the console printed the marker: the run stops right after that exit
  // (deterministically), the machine is saved, and the boot ends.
  let saveRequested = false
  if (args.saveOn !== undefined) {
    const marker = Buffer.from(args.saveOn)
    let seen = 0
    out.watch = (b) => {
      seen = b === marker[seen] ? seen + 1 : b === marker[0] ? 1 : 0
      if (seen === marker.length && !saveRequested) {
        saveRequested = true
        m.vm.cancel()
      }
    }
  }
  const stdin = io.stdin
  const raw = interactive && stdin.isTTY
  // Input typed (or piped) before a program opened the console waits for it: the
  // kernel's driver clears the UART's FIFO when it opens the port.
  // What the UART has not taken is held here, and stdin is paused while much is held
  // (back-pressure: a pasted file waits in the pipe, not in this process's memory).
  const early: Buffer[] = []
  let held = 0
  let paused = false
  const feedHeld = (): void => {
    while (early.length > 0 && m.pc.serial.receiving) {
      const head = early[0] as Buffer
      const n = m.pc.serial.feed(head)
      held -= n
      if (n < head.length) {
        early[0] = head.subarray(n)
        break
      }
      early.shift()
    }
    if (paused && held < HELD_INPUT / 2) {
      paused = false
      stdin.resume()
    }
  }
  const deliver = (data: Buffer): void => {
    early.push(data)
    held += data.length
    feedHeld()
    if (interactive && held > HELD_INPUT && !paused) {
      paused = true
      stdin.pause()
    }
  }
  const drain = setInterval(feedHeld, 20)
  const onData = (data: Buffer): void => {
    const detach = data.indexOf(DETACH)
    if (detach !== -1) {
      if (detach > 0) deliver(data.subarray(0, detach))
      detached = true
      m.vm.cancel()
      return
    }
    // Typing ends the status line: the shell has the terminal now.
    if (raw) status?.stop()
    deliver(data)
  }
  const onSigint = (): void => m.vm.cancel()
  // Ctrl+] is the user's way out, as QEMU's Ctrl+A X is: it ends the VM and the command succeeds.
  let detached = false
  if (interactive) {
    if (raw) stdin.setRawMode(true)
    stdin.on('data', onData)
    stdin.resume()
  }
  process.on('SIGINT', onSigint)
  if (args.trace !== undefined) for (const v of m.vm.cpus) v.startTrace(1_000_000)
  try {
    // At a terminal an idle guest's time passes as the user's does, on either clock
    // (the deterministic one then sleeps where it would leap: QEMU's icount sleep=on).
    const result = args.gdb ? await underGdb(m.vm, args.gdb, args.gdbWait, io) : await m.run(raw ? { idle: 'sleep' } : {})
    if (args.trace !== undefined) writeTrace(m.vm, args.trace, io, new GuestSymbols(m.vm, args.symbolTable, args.kallsyms === true))
    if (saveRequested && args.saveTo !== undefined && m.snapshot && result.reason === 'cancelled') {
      const saved = m.snapshot(args.saveTo)
      status?.stop()
      io.stderr.write(`\nmshv: saved to ${args.saveTo} (${(saved.bytes / 2 ** 20).toFixed(1)} MiB: ${saved.pagesWritten} of ${saved.pages} pages); 'mshv restore ${args.saveTo}' goes on from there\n`)
      return { ...bootReport(m.vm, { reason: 'cancelled' }, (performance.now() - start) / 1000), detached, saved }
    }
    return { ...bootReport(m.vm, result, (performance.now() - start) / 1000), detached }
  } finally {
    clearInterval(drain)
    status?.stop()
    process.off('SIGINT', onSigint)
    if (interactive) {
      stdin.off('data', onData)
      if (raw) stdin.setRawMode(false)
      stdin.pause()
    }
    m.close()
  }
}

/**
 * Every vCPU's trace in one Chrome trace file (a track per vCPU), each exit's RIP named
 * (`args.symbol`: `start_kernel+0x1a`) where `symbols` cover it.
 */
function writeTrace(vm: Vm, file: string, io: BootIo, symbols: GuestSymbols): void {
  const traces = vm.cpus.map((v) => v.stopTrace()).filter((t) => t !== undefined)
  const events = traces.flatMap((t) => t.traceEvents).sort((a, b) => a.ts - b.ts)
  const dropped = traces.reduce((n, t) => n + t.otherData.dropped, 0)
  const named = nameRips(events, symbols)
  writeFileSync(file, JSON.stringify({ traceEvents: events, displayTimeUnit: 'ns', otherData: { dropped } }))
  const table = symbols.table()
  const search = symbols.lastSearch
  const how = table ? `; ${named.toLocaleString('en-US')} RIPs named by the ${table.size.toLocaleString('en-US')} symbols of ${table.source}${search?.found ? ` (found in ${search.ms.toFixed(0)} ms)` : ''}` : '; no symbols found: RIPs in hex'
  io.stderr.write(`\nmshv: ${events.length.toLocaleString('en-US')} trace events written to ${file}${dropped ? ` (${dropped} past the limit left out)` : ''}${how}: open it in ui.perfetto.dev\n`)
}


/** The boot served to GDB: it runs (or waits, with `--gdb-wait`) until the guest ends it or GDB kills it. */
async function underGdb(vm: Vm, gdb: { host: string; port: number }, wait: boolean, io: BootIo): Promise<VmRunResult> {
  const server = await vm.gdb({ host: gdb.host, port: gdb.port, wait })
  io.stderr.write(`mshv boot: GDB can connect with 'target remote ${gdb.host}:${server.port}'${wait ? '; the VM waits for it to continue' : ''}\n`)
  try {
    return await server.done
  } finally {
    await server.close()
  }
}

/** The report of one boot, as lines. */
export function formatBootReport(r: LinuxBootReport, policy: string): string {
  const mix = Object.entries(r.exitsByType)
    .sort((a, b) => b[1] - a[1])
    .map(([t, n]) => `${t} ${n.toLocaleString('en-US')}`)
    .join(', ')
  const perExit = r.exits === 0 ? 0 : r.hypercalls / r.exits
  return [
    `boot [${policy}]: ${JSON.stringify(r.result)} after ${r.seconds.toFixed(2)} s (${(r.guestNs / 1e9).toFixed(2)} s of guest time), ${(r.instructions / 1e6).toFixed(0)} M instructions`,
    `  exits: ${r.exits.toLocaleString('en-US')} (${mix}), ${formatRate(r.exits / Math.max(r.seconds, 1e-9))}/s`,
    `  hypercalls: ${r.hypercalls.toLocaleString('en-US')} (${perExit.toFixed(3)} per exit)`,
    `  register reads: ${r.pageReads.toLocaleString('en-US')} from the page, ${r.hypercallReads.toLocaleString('en-US')} by hypercall; writes: ${r.pageWrites.toLocaleString('en-US')} through the page, ${r.hypercallWrites.toLocaleString('en-US')} by hypercall`,
  ].join('\n')
}

/** The kernel, initramfs and command line to boot, and the disks: the Debian system image's with `--system`. */
async function bootFiles(args: BootArgs, io: BootIo): Promise<{ kernel: string; initrd: Uint8Array | string; args: BootArgs }> {
  if (args.system) {
    let told = false
    const image = await buildDebianImage({
      onLog: () => {
        if (!told) io.stderr.write('mshv boot: building the Debian system image (mmdebstrap, once; `mshv image` does it alone)...\n')
        told = true
      },
    })
    // The image stays as built: the boot writes into an overlay (the other disks follow --snapshot).
    const system: BootArgs = { ...args, cmdline: args.cmdline ?? 'root=/dev/vda console=ttyS0' }
    return { kernel: image.kernel, initrd: image.initrd, args: { ...system, systemImage: image.image } }
  }
  // With disks, the busybox initramfs carries the kernel's virtio and ext4 modules and loads them.
  const modules = args.disks.length > 0 || args.rng ? VIRTIO_MODULES : undefined
  // Boots that compare policies run unattended: each powers off once booted, where the
  // default shell would wait for a user who is not typing (with its console not even live).
  const init = args.init ?? (args.policies.length > 1 && args.initrd === undefined ? COMPARE_INIT : undefined)
  const { kernel, initrd } = linuxFiles({ ...args, init, modules }, () => io.stderr.write("mshv boot: Debian's kernel and busybox (fetched once into the cache)...\n"))
  return { kernel, initrd, args }
}

/** What `mshv restore` was asked for. */
export interface RestoreArgs extends DriveArgs {
  file: string
}

/** Runs `mshv restore FILE`: the saved machine goes on, its console live; resolves to the exit status. */
export async function restore(args: RestoreArgs, io: BootIo = process): Promise<number> {
  const out = new ConsoleOut(io)
  const m = await restoreLinux(args.file, { serial: { onByte: out.onByte } })
  const report = await drive(m, out, { ...args, kallsyms: true }, 'restored', io, true)
  io.stderr.write(`\n${formatBootReport(report, 'restored')}\n`)
  return report.detached || report.saved !== undefined || report.result.reason === 'poweroff' || report.result.reason === 'reboot' ? 0 : 1
}

/** The /init of `--policy all` without `--init`: boot, say so, power off. */
const COMPARE_INIT = 'echo "mshv: booted; powering off (the policies are compared unattended)"\npoweroff -f\n'

/** Whether `file` is a multiboot kernel: a multiboot header, and no Linux boot-protocol header ("HdrS" at 0x202). */
function isMultibootFile(file: string): boolean {
  // Both headers lie in the file's first 8 KiB (multiboot spec 3.1.1; boot.rst's setup
  // header at 0x1f1): the kernel itself is read once, by its loader.
  const bytes = new Uint8Array(8192)
  let fd: number | undefined
  try {
    fd = openSync(file, 'r')
    const head = bytes.subarray(0, readSync(fd, bytes, 0, bytes.length, 0))
    const linux = head.length > 0x206 && Buffer.from(head.subarray(0x202, 0x206)).toString('latin1') === 'HdrS'
    return !linux && isMultiboot(head)
  } catch {
    return false // prepareLinux names the file it cannot read
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

/** Options that only mean something for Linux. */
const LINUX_ONLY: readonly [keyof BootArgs, string][] = [
  ['busybox', '--busybox'],
  ['init', '--init'],
  ['entry', '--entry'],
  ['saveOn', '--save-on'],
  ['json', '--json'],
]

/**
 * Boots a multiboot kernel as QEMU's `-kernel` does (`--cmdline` its command line,
 * `--initrd` its module); resolves to the exit status: the code the guest wrote to the
 * debug-exit port (kvm-unit-tests: 0 passed, 77 skipped), 0 after a poweroff or reset, else 1.
 */
async function bootMultiboot(args: BootArgs & Pick<DriveArgs, 'symbolTable'>, io: BootIo): Promise<number> {
  for (const [key, flag] of LINUX_ONLY) if (args[key] !== undefined) throw new MshvError('EINVAL', `${flag} is for Linux: ${args.kernel} is a multiboot kernel`)
  if (args.disks.length > 0 || args.rng || args.policies.length > 1) throw new MshvError('EINVAL', `--disk, --rng and --policy all are for Linux: ${args.kernel} is a multiboot kernel`)
  const out = new ConsoleOut(io)
  const interactive = true
  const m = prepareMultiboot({
    kernel: args.kernel as string,
    cmdline: args.cmdline,
    modules: args.initrd === undefined ? [] : [args.initrd],
    memory: args.memoryMiB === undefined ? undefined : args.memoryMiB * 1024 * 1024,
    vcpus: args.vcpus,
    backend: args.backend,
    clock: args.clock ?? (io.stdin.isTTY === true ? 'realtime' : undefined),
    policy: args.policies[0],
    serial: { onByte: out.onByte },
  })
  const report = await drive(m, out, args, args.policies[0] ?? 'page', io, interactive)
  io.stderr.write(`\n${formatBootReport(report, args.policies[0] ?? 'page')}\n`)
  const r = report.result
  if (r.reason === 'debug-exit') return r.code & 0xff
  return report.detached || r.reason === 'poweroff' || r.reason === 'reboot' || r.reason === 'reset' ? 0 : 1
}

/**
 * Runs `mshv boot`; resolves to the exit status (0 when every boot powered off or
 * rebooted). A multiboot `--kernel` is booted as such.
 */
export async function boot(given: BootArgs, io: BootIo = process): Promise<number> {
  // A symbol file that cannot be read fails now, not after the boot.
  const symbolTable = given.symbols === undefined ? undefined : readSymbols(given.symbols)
  if (given.kernel !== undefined && !given.system && isMultibootFile(given.kernel)) return bootMultiboot({ ...given, symbolTable }, io)
  const { kernel, initrd, args: files } = await bootFiles(given, io)
  const args = { ...files, symbolTable }
  const reports: { policy: string; report: LinuxBootReport & { detached: boolean; saved?: SnapshotInfo } }[] = []
  for (const policy of args.policies) {
    // A comparison boots non-interactively: the same input each time.
    const interactive = args.policies.length === 1
    const report = await bootOnce(args, kernel, initrd, policy, io, interactive)
    reports.push({ policy, report })
    io.stderr.write(`\n${formatBootReport(report, policy)}\n`)
  }
  if (reports.length > 1) {
    io.stderr.write('\npolicy     seconds  exits      hypercalls/exit  page reads  hypercall reads  page writes  hypercall writes\n')
    for (const { policy, report: r } of reports) {
      const cells = [policy.padEnd(9), r.seconds.toFixed(2).padStart(8), String(r.exits).padStart(10), (r.hypercalls / Math.max(r.exits, 1)).toFixed(3).padStart(16), String(r.pageReads).padStart(11), String(r.hypercallReads).padStart(16), String(r.pageWrites).padStart(12), String(r.hypercallWrites).padStart(17)]
      io.stderr.write(`${cells.join(' ')}\n`)
    }
  }
  if (args.json !== undefined) writeFileSync(args.json, `${JSON.stringify(reports, null, 2)}\n`)
  return reports.every(({ report }) => report.detached || report.saved !== undefined || report.result.reason === 'poweroff' || report.result.reason === 'reboot') ? 0 : 1
}
