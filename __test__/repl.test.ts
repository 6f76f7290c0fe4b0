import test from 'ava'
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { createSession, MshvError, type ProgressStream } from '../index.js'
import { flagNames, hexdump, registerTable } from '../src/repl/format.js'
import { ProgressLine, formatRate } from '../src/progress.js'
import { parseBootArgs, parseArgs } from '../src/cli/args.js'

/** A session on the sim whose printed lines and guest output are captured. */
function captured(): { session: ReturnType<typeof createSession>; printed: string[]; output: () => string } {
  const printed: string[] = []
  let out = ''
  const session = createSession({ backend: 'sim', ramMiB: 2, print: (t) => printed.push(t), output: { write: (t: string) => (out += t) } })
  return { session, printed, output: () => out }
}

test('hexdump: 16 bytes a line, two groups, printable ASCII', (t) => {
  const bytes = Uint8Array.from([...new TextEncoder().encode('Hello, guest!'), 0, 1, 2, 0x41, 0x7f])
  t.is(
    hexdump(bytes, 0x1000n),
    '00001000  48 65 6c 6c 6f 2c 20 67  75 65 73 74 21 00 01 02  |Hello, guest!...|\n' +
      `00001010  ${'41 7f'.padEnd(23)}  ${''.padEnd(23)}  |A.|`,
  )
})

test('flag names and the register table read from the cache', (t) => {
  t.is(flagNames(0x246n), 'PF ZF IF')
  const values = new Map<string, bigint>([['rax', 0x1234n], ['rflags', 0x2n], ['rip', 0x7c00n]])
  const table = registerTable({ get: (n) => values.get(n) ?? 0n, getRaw: (n) => (n === 'cs' ? [0x10000n, (0x9bn << 48n) | (0x1000n << 32n) | 0xffffn] : [0n, 0n]) })
  t.regex(table, /^rax 0000000000001234 {2}rbx 0000000000000000/)
  t.regex(table, /rip 0000000000007c00 {2}rflags 0000000000000002 \[\]/)
  t.regex(table, / {2}cs sel 1000 base 0000000000010000 limit 0000ffff attr 009b/)
})

test('session: asm writes at RIP in the code size, step executes one instruction, run reaches HLT', async (t) => {
  const { session, printed, output } = captured()
  const code = session.asm`mov al, 'H'; out 0xe9, al; mov al, 'i'; out 0xe9, al; hlt`
  t.is(code.address, 0x1000n)
  t.deepEqual([...session.mem.read(0x1000, 3)], [0xb0, 0x48, 0xe6])
  t.deepEqual(session.step(), { reason: 'stepped' })
  t.is(session.vcpu.regs.get('rax') & 0xffn, 0x48n)
  t.deepEqual(session.step(), { reason: 'stepped' }, 'an exiting instruction is completed by its handler')
  t.is(output(), 'H\n', "the guest's line is ended before the report")
  t.is(printed.at(-1), 'rip 0x1004: 00001004  mov al, 0x69')
  t.deepEqual(session.vcpu.run({ maxExits: 1 }), { reason: 'exits' }, 'maxExits ends a run after that many exits')
  t.is(output(), 'H\ni')
  t.like(t.throws(() => session.vcpu.run({ maxExits: 0 })), { code: 'EINVAL', message: 'run(): maxExits must be an integer from 1 to 2^53-1, got 0' })
  t.deepEqual(await session.run(), { reason: 'halt' })
  t.is(output(), 'H\ni\n')
  t.regex(printed.at(-1) ?? '', /^0 exits; rip 0x1009/, "the run's own exits: none (the HLT is no exit; the vCPU waits in it)")
  session.regs()
  t.regex(printed.at(-1) ?? '', /^rax 0000000000000069/)
  session.mem.hexdump(0x1000, 16)
  t.regex(printed.at(-1) ?? '', /^00001000 {2}b0 48 e6 e9 b0 69 e6 e9 {2}f4 00/)
  session.close()
})

test('session: asm follows the vCPU into 32-bit code, and bad input is a clear error', (t) => {
  const { session } = captured()
  const r = session.vcpu.regs
  r.set('cr0', r.get('cr0') | 1n)
  r.setRaw('cs', 0n, (0xc09bn << 48n) | (0x8n << 32n) | 0xffff_ffffn)
  t.is(session.asm`mov eax, ${0x12345678}`.bytes.length, 5, 'B8 imm32: no operand-size prefix in 32-bit code')
  t.like(t.throws(() => session.step(0)), { code: 'EINVAL', message: 'step count must be a positive integer, got 0' })
  t.like(t.throws(() => session.asm`mov eax, ${1.5}`), { code: 'EINVAL', message: 'asm template value must be an integer, got 1.5' })
  t.throws(() => createSession({ backend: 'sim', ramMiB: 0 }), { instanceOf: MshvError, message: 'ramMiB must be an integer in 1..4096, got 0' })
  session.close()
})

test('progress line: drawn in place on a terminal after half a second, with rate and exit mix; never on a pipe', (t) => {
  let clock = 0
  const drawn: string[] = []
  const tty: ProgressStream = { isTTY: true, write: (s: string) => drawn.push(s) }
  const line = new ProgressLine(tty, () => clock)
  for (let i = 0; i < 4096; i++) line.exit(i % 4 === 0 ? 0x80000000 : 0x80010000)
  t.is(drawn.length, 0, 'nothing before half a second')
  clock = 1000
  for (let i = 0; i < 4096; i++) line.exit(0x80010000)
  t.is(drawn.length, 1)
  // Drawn at the first sample past 500 ms: exit 5,120.
  t.is(drawn[0], '\r\x1b[2K5.1 k exits/s, 5,120 exits in 1.0 s: ioPort 80% unmappedGpa 20%')
  line.finish()
  t.is(drawn.at(-1), '\r\x1b[2K', 'cleared at the end')
  const piped: string[] = []
  const quiet = new ProgressLine({ isTTY: false, write: (s: string) => piped.push(s) }, () => (clock += 1000))
  for (let i = 0; i < 10_000; i++) quiet.exit(0x80010000)
  quiet.finish()
  t.deepEqual(piped, [])
  t.is(formatRate(7_372_444), '7.37 M')
  // A guest that computes without exits: the instruction rate shows it moving.
  let retired = 0
  const busy: string[] = []
  const spinning = new ProgressLine({ isTTY: true, write: (s: string) => busy.push(s) }, () => clock, () => retired)
  clock += 1000
  retired = 300_000_000
  spinning.tick()
  t.is(busy[0], '\r\x1b[2K300.00 M instructions/s, 0 exits/s, 0 exits in 1.0 s')
})

test('mshv CLI: options are parsed, bad ones name the option', (t) => {
  t.deepEqual(parseArgs(['--backend', 'sim', '--ram', '32']), { backend: 'sim', ramMiB: 32 })
  t.throws(() => parseArgs(['--ram', 'lots']), { message: /^--ram takes a whole number of MiB, got 'lots'/ })
  t.throws(() => parseArgs(['--backend', 'kvm']), { message: /^--backend takes 'auto', 'sim' or 'mshv', got 'kvm'/ })
  t.throws(() => parseBootArgs(['--memory', 'abc']), { message: /^--memory takes a whole number of MiB, got 'abc'/ })
  t.throws(() => parseBootArgs(['--policy', 'fast']), { message: /^--policy takes 'page', 'hypercall', 'eager' or 'all', got 'fast'/ })
  t.throws(() => parseBootArgs(['--bogus', 'x']), { message: /^unknown or incomplete option '--bogus x'/ })
  t.deepEqual(parseArgs(['--kernel', 'debian', '--vcpus', '2', '--cmdline', 'quiet']), { kernel: 'debian', vcpus: 2, cmdline: 'quiet' })
  t.throws(() => parseArgs(['--vcpus', '2']), { message: /go with --kernel/ })
})

// Drives `mshv repl` in a pseudo-terminal, as a user would.
const CLI = fileURLToPath(new URL('../dist/mshv-cli.js', import.meta.url))
const tmux = spawnSync('tmux', ['-V']).status === 0
;(tmux ? test : test.skip)('mshv repl in a terminal: asm, step, regs, run with guest output, hexdump', async (t) => {
  const name = `mshv-repl-${process.pid}`
  const sh = (...args: string[]) => execFileSync('tmux', args, { encoding: 'utf8' })
  const screen = () => sh('capture-pane', '-p', '-t', name, '-S', '-200')
  const waitFor = async (pattern: RegExp, what: string) => {
    for (let i = 0; i < 100; i++) {
      if (pattern.test(screen())) return
      await new Promise((r) => setTimeout(r, 100))
    }
    t.fail(`timed out waiting for ${what}; the screen:\n${screen()}`)
  }
  const type = async (line: string, expect: RegExp) => {
    sh('send-keys', '-t', name, '-l', line)
    sh('send-keys', '-t', name, 'Enter')
    await waitFor(expect, line)
  }
  t.true(existsSync(CLI), 'built CLI')
  sh('new-session', '-d', '-s', name, '-x', '160', '-y', '50', `node ${CLI} repl --backend sim --ram 4`)
  try {
    await waitFor(/on the sim backend: 4 MiB of RAM.*\nmshv>\s*$/, 'the banner and prompt')
    await type("asm`mov al, 'O'; out 0xe9, al; mov al, 'K'; out 0xe9, al; mov al, 0; out 0xf4, al`", /00001000 {2}b0 4f +mov al, 'O'/)
    await type('step(2)', /^O\nrip 0x1004: 00001004 {2}mov al, 0x4b/m)
    await type('regs()', /rax 000000000000004f/)
    await type('await run()', /^K\n2 exits; rip 0x100c.*\n\{ reason: 'debug-exit', code: 0 \}/m)
    await type('mem.hexdump(0x1000, 16)', /00001000 {2}b0 4f e6 e9 b0 4b e6 e9 {2}b0 00 e6 f4/)
    await type("assemble('hlt').bytes", /Uint8Array\(1\) \[ 244 \]/)
    // A guest that loops on port exits forever: the progress line shows, Ctrl+C stops it.
    await type('vcpu.regs.set("rip", 0x2000n); asm`l: out 0x80, al; jmp l`', /00002002 {2}eb fc +jmp l/)
    sh('send-keys', '-t', name, '-l', 'await run()')
    sh('send-keys', '-t', name, 'Enter')
    await waitFor(/\d[\d.]* [kM] exits\/s, [\d,]+ exits in \d+\.\d s: ioPort 100%/, 'the progress line')
    sh('send-keys', '-t', name, 'C-c')
    // The report, the result and a fresh prompt, in that order, and no REPL noise.
    await waitFor(/\n\d+ exits; rip 0x200[02][^\n]*\n\{ reason: 'cancelled' \}\nmshv>\s*$/, 'the cancelled run')
    t.notRegex(screen(), /ERR_SCRIPT_EXECUTION_INTERRUPTED|Uncaught/)
    await type('vcpu.runState', /^'paused'\n/m)
    // A guest that spins without exits still gets its progress line (redrawn on a clock).
    await type('vcpu.regs.set("rip", 0x3000n); asm`jmp $`', /00003000 {2}eb fe +jmp \$/)
    sh('send-keys', '-t', name, '-l', 'await run()')
    sh('send-keys', '-t', name, 'Enter')
    await waitFor(/0 exits\/s, 0 exits in \d+\.\d s/, 'the progress line of a guest without exits')
    sh('send-keys', '-t', name, 'C-c')
    await waitFor(/0 exits; rip 0x3000[^\n]*\n\{ reason: 'cancelled' \}\nmshv>\s*$/, 'the cancelled spin')
  } finally {
    sh('kill-session', '-t', name)
  }
})

test('session: a Ctrl+C with no run in progress stops nothing, and the first step after a cancelled run steps', async (t) => {
  const { session } = captured()
  session.asm`l: jmp l`
  const run = session.run()
  setTimeout(() => session.cancel(), 50)
  t.deepEqual(await run, { reason: 'cancelled' })
  session.cancel() // a second Ctrl+C, after the run ended
  t.deepEqual(session.step(), { reason: 'stepped' })
  t.deepEqual(session.step(), { reason: 'stepped' })
  session.close()
})
