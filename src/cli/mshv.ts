#!/usr/bin/env node
/**
 * The `mshv` command: `mshv repl` opens a Node REPL with a VM and the session helpers
 * in scope (see {@link createSession}); `mshv boot` boots Linux with the console on the
 * terminal (see {@link bootLinux}); `mshv doctor` checks a host (see {@link runDoctor}).
 * @module
 */
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { USAGE } from './args.js'
import { HELP, wantsHelp } from './help.js'

/** The package's version, from the nearest package.json named `mshv` above this file (bundled or not). */
function version(): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)), i = 0; i < 6; dir = dirname(dir), i++) {
    try {
      const pkg: unknown = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
      if (typeof pkg === 'object' && pkg !== null && 'name' in pkg && pkg.name === 'mshv' && 'version' in pkg) return String(pkg.version)
    } catch {
      // no package.json here: look further up
    }
  }
  return 'unknown'
}

/** The commands {@link runCommand} runs (the others need nothing of the package). */
const COMMANDS = ['repl', 'boot', 'restore', 'image', 'fetch-linux', 'doctor']

async function main(args: readonly string[]): Promise<void> {
  const [command, ...rest] = args
  const help = command === 'help' ? HELP[rest[0] ?? ''] : command !== undefined && wantsHelp(rest) ? HELP[command] : undefined
  if (help !== undefined) {
    console.log(help)
  } else if (command === '--version' || command === '-v') {
    console.log(version())
  } else if (command === undefined || command === '--help' || command === '-h') {
    console.log(USAGE)
  } else if (!COMMANDS.includes(command)) {
    console.error(`mshv: unknown command '${command}'\n${USAGE}`)
    process.exitCode = 2
  } else {
    // The package, and with it the native addon, only for a command that uses it.
    const { runCommand } = await import('./commands.js')
    runCommand(command, rest, version)
  }
}

// A reader that goes away (`mshv doctor | head`) ends the output, not with a stack trace.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code !== 'EPIPE') throw e
  process.exit(process.exitCode ?? 0)
})

main(process.argv.slice(2)).catch((e: unknown) => {
  // One line: the message says what is wrong and how to mend it (ENOBINARY among them).
  console.error(e instanceof Error ? (e.message.startsWith('mshv:') ? e.message : `mshv: ${e.message}`) : e)
  process.exitCode = 2
})
