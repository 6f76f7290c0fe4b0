#!/usr/bin/env node
/**
 * The `mshv` command: `mshv repl` opens a Node REPL with a VM and the session helpers
 * in scope (see {@link createSession}).
 * @module
 */
import repl from 'node:repl'
import { readFileSync } from 'node:fs'
import * as mshv from '../../index.js'
import { createSession, type SessionOptions } from '../repl/session.js'
import { USAGE, parseArgs } from './args.js'

function version(): string {
  const pkg: unknown = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'))
  return typeof pkg === 'object' && pkg !== null && 'version' in pkg ? String(pkg.version) : 'unknown'
}

function startRepl(options: SessionOptions): void {
  const session = createSession(options)
  const rip = session.vcpu.regs.get('rip')
  console.log(`mshv ${version()} on the ${session.vm.backend} backend: ${options.ramMiB ?? 16} MiB of RAM, vCPU 0 in real mode at rip 0x${rip.toString(16)}. help() lists the helpers.`)
  // breakEvalOnSigint: Ctrl+C reaches the SIGINT listener below even while `await run()` is pending
  const server = repl.start({ prompt: 'mshv> ', breakEvalOnSigint: true })
  Object.assign(server.context, mshv, {
    mshv,
    session,
    vm: session.vm,
    vcpu: session.vcpu,
    mem: session.mem,
    regs: session.regs,
    step: session.step,
    run: session.run,
    asm: session.asm,
    dis: session.dis,
    help: session.help,
  })
  // A run() in flight: Ctrl+C stops the guest rather than the REPL line.
  server.on('SIGINT', () => session.cancel())
  server.on('exit', () => session.close())
}

function main(args: readonly string[]): void {
  const [command, ...rest] = args
  if (command === '--version' || command === '-v') {
    console.log(version())
  } else if (command === 'repl') {
    startRepl(parseArgs(rest))
  } else {
    console.log(USAGE)
    process.exitCode = command === undefined || command === '--help' || command === '-h' ? 0 : 2
  }
}

try {
  main(process.argv.slice(2))
} catch (e) {
  console.error(e instanceof Error ? `mshv: ${e.message}` : e)
  process.exitCode = 2
}
