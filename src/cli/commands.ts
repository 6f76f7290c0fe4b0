/**
 * The `mshv` commands that need the package (and so its native addon): loaded by
 * `mshv.ts` only for them, so `mshv --version`, `--help` and the usage work without it.
 * @module
 */
import repl from 'node:repl'
import { writeFileSync } from 'node:fs'
import * as mshv from '../../index.js'
import { createSession, type SessionOptions } from '../repl/session.js'
import type { RunResult } from '../vcpu.js'
import { USAGE, parseArgs, parseBootArgs, parseDoctorArgs, parseRestoreArgs, type DoctorArgs, type ReplArgs } from './args.js'
import { DETACH, boot, restore } from './boot.js'
import { fetchDebianLinux, linuxFiles } from '../boot/debian.js'
import { buildDebianImage } from '../boot/debian-image.js'
import { MshvError } from '../errors.js'
import { readSymbols } from '../debug/symbols/file.js'
import { SECTION_TITLES, formatCheck, formatConclusion, formatHost, runDoctor } from '../doctor/doctor.js'

/** The session a `mshv repl` command line asks for: a bare VM, or Linux loaded and ready to `run()`. */
function replSession(args: ReplArgs): SessionOptions {
  const symbols = args.symbols === undefined ? undefined : readSymbols(args.symbols)
  if (args.kernel === undefined) return { backend: args.backend, ramMiB: args.ramMiB, symbols }
  const { kernel, initrd } = linuxFiles({ ...args, kernel: args.kernel === 'debian' ? undefined : args.kernel })
  return {
    backend: args.backend,
    symbols,
    linux: { kernel, initrd, cmdline: args.cmdline, vcpus: args.vcpus, memory: args.memoryMiB === undefined ? undefined : args.memoryMiB * 1024 * 1024 },
  }
}

function startRepl(args: ReplArgs, version: () => string): void {
  const options = replSession(args)
  const session = createSession(options)
  const rip = session.vcpu.regs.get('rip')
  if (options.linux) {
    console.log(`mshv ${version()} on the ${session.vm.backend} backend: Linux loaded (${session.vm.cpus.length} vCPU${session.vm.cpus.length > 1 ? 's' : ''}), vCPU 0 at its PVH entry 0x${rip.toString(16)}. await run() boots it with its console attached (Ctrl+] detaches and stops it); type('...') types at its console; help() lists the helpers.`)
  } else {
    console.log(`mshv ${version()} on the ${session.vm.backend} backend: ${options.ramMiB ?? 16} MiB of RAM, vCPU 0 in real mode at rip 0x${rip.toString(16)}. help() lists the helpers.`)
  }
  // A mistake typed at the prompt (EASM, EINVAL_REGISTER) is the message, not a stack
  // through the package: in this process only, an MshvError's stack is its first line.
  const format = Error.prepareStackTrace
  Error.prepareStackTrace = (err, frames) =>
    err instanceof MshvError ? `${err.name} [${err.code}]: ${err.message}` : format ? format(err, frames) : `${String(err)}${frames.map((f) => `\n    at ${String(f)}`).join('')}`
  // Helpers that print (regs(), help(), dis(), mem.hexdump()) return nothing: no
  // `undefined` after their output.
  const server = repl.start({ prompt: 'mshv> ', ignoreUndefined: true })
  // Ctrl+C during `await run()` stops the guest and nothing else: while the REPL awaits,
  // its input is paused, so the terminal is put in cooked mode, where Ctrl+C is a real
  // SIGINT, caught here. (The REPL's own breakEvalOnSigint would abandon the await with
  // an ERR_SCRIPT_EXECUTION_INTERRUPTED error and print the run's report after the next
  // prompt.)
  /**
   * A Linux session's run has the guest's console attached, as QEMU's Ctrl+A C hands
   * the terminal to the serial console: every keystroke goes to the guest, raw (the
   * shell's line editing, Ctrl+C, and the terminal's answers to the shell's cursor
   * queries, which used to show at every prompt), never to the REPL's line editor;
   * Ctrl+] detaches: the guest stops and the prompt comes back.
   */
  const attached = async (): Promise<RunResult> => {
    const stdin = process.stdin
    const keypress = stdin.listeners('keypress') as ((...a: unknown[]) => void)[]
    stdin.removeAllListeners('keypress')
    const onData = (data: Buffer): void => {
      const detach = data.indexOf(DETACH)
      if (detach === -1) return session.type(data)
      if (detach > 0) session.type(data.subarray(0, detach))
      session.cancel()
    }
    if (stdin.isTTY) stdin.setRawMode(true)
    stdin.on('data', onData)
    stdin.resume()
    console.log("(the guest's console is attached: what you type goes to it; Ctrl+] detaches)")
    try {
      return await session.run()
    } finally {
      stdin.off('data', onData)
      for (const l of keypress) stdin.on('keypress', l)
    }
  }
  const run = async (): Promise<RunResult> => {
    if (options.linux) return attached()
    const tty = process.stdin.isTTY ? process.stdin : undefined
    const cancel = (): void => session.cancel()
    process.on('SIGINT', cancel)
    tty?.setRawMode(false)
    try {
      return await session.run()
    } finally {
      tty?.setRawMode(true)
      process.off('SIGINT', cancel)
    }
  }
  Object.assign(server.context, mshv, {
    mshv,
    session,
    vm: session.vm,
    vcpu: session.vcpu,
    mem: session.mem,
    regs: session.regs,
    // `stepped` is what a step does: only another outcome (a HLT, an exit's end) is worth a line.
    step: (count?: number) => {
      const r = session.step(count)
      return r.reason === 'stepped' ? undefined : r
    },
    run,
    asm: session.asm,
    dis: session.dis,
    sym: session.sym,
    // It prints what it found; the table itself is session.symbols()'s.
    symbols: () => void session.symbols(),
    help: session.help,
    type: session.type,
  })
  server.on('exit', () => session.close())
}

/**
 * `mshv doctor`: prints the host, then each check as it finishes, then the experiment
 * and the verdict; exit status 0 only when everything passed (1 otherwise).
 * `--json -` prints the JSON report alone; `--json FILE` writes it there as well.
 */
async function doctor(args: DoctorArgs, version: () => string): Promise<void> {
  const live = args.json !== '-'
  let section: string | undefined
  const report = await runDoctor({
    backend: args.backend,
    experimentMs: args.experimentMs,
    packageVersion: version(),
    onStart: live ? (host, backend) => console.log(`${formatHost(host, backend, version())}\n`) : undefined,
    onCheck: live
      ? (c) => {
          if (c.section !== section) console.log(`${section === undefined ? '' : '\n'}${SECTION_TITLES[c.section]}`)
          section = c.section
          console.log(formatCheck(c))
        }
      : undefined,
  })
  if (!live) {
    console.log(JSON.stringify(report, null, 2))
  } else {
    console.log(`\n${formatConclusion(report)}`)
    if (args.json !== undefined) {
      writeFileSync(args.json, `${JSON.stringify(report, null, 2)}\n`)
      console.log(`JSON report written to ${args.json}`)
    }
  }
  process.exitCode = report.passed ? 0 : 1
}

/** Runs `command` (one of {@link COMMANDS}) with its arguments. */
export function runCommand(command: string, rest: readonly string[], version: () => string): void {
  if (command === 'repl') {
    startRepl(parseArgs(rest), version)
  } else if (command === 'boot') {
    boot(parseBootArgs(rest)).then(
      (code) => {
        process.exitCode = code
        // stdin may hold the event loop open after an interactive boot.
        process.exit(code)
      },
      (e: unknown) => {
        console.error(e instanceof Error ? `mshv boot: ${e.message}` : e)
        process.exit(2)
      },
    )
  } else if (command === 'restore') {
    restore(parseRestoreArgs(rest)).then(
      (code) => process.exit(code),
      (e: unknown) => {
        console.error(e instanceof Error ? `mshv restore: ${e.message}` : e)
        process.exit(2)
      },
    )
  } else if (command === 'image') {
    if (rest.some((a) => a !== '--force')) throw new MshvError('EINVAL', `mshv image takes only --force\n${USAGE}`)
    buildDebianImage({ force: rest.includes('--force'), onLog: (line) => console.error(line) }).then(
      (image) => {
        console.log(JSON.stringify(image, null, 2))
        console.error('boot it with: npx mshv boot --system   (root logs in without a password)')
      },
      (e: unknown) => {
        console.error(e instanceof Error ? `mshv image: ${e.message}` : e)
        process.exitCode = 2
      },
    )
  } else if (command === 'fetch-linux') {
    console.log(JSON.stringify(fetchDebianLinux()))
  } else if (command === 'doctor') {
    doctor(parseDoctorArgs(rest), version).catch((e: unknown) => {
      console.error(e instanceof Error ? `mshv doctor: ${e.message}` : e)
      process.exitCode = 2
    })
  }
}

