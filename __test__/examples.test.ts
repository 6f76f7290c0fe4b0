/**
 * Smoke tests: every example in examples/ and the README's MMIO device example run as a
 * user would run them, and print what they should.
 */
import test from 'ava'
import { buildSuite } from './kvm-unit-tests/suite.js'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))

/** The first ts block of the README section whose heading is `heading`, written to a temporary file importing this checkout; `use` runs it. */
function withReadmeBlock<T>(heading: string, fileName: string, edit: (block: string) => string, use: (file: string) => T): T | undefined {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(readme.indexOf(heading)))?.[1]
  if (!block) return undefined
  const dir = mkdtempSync(join(tmpdir(), 'mshv-readme-'))
  try {
    const file = join(dir, fileName)
    writeFileSync(file, edit(block.replace("from 'mshv'", `from '${pathToFileURL(join(ROOT, 'index.ts')).href}'`)))
    return use(file)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

function run(file: string): string {
  return execFileSync(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 })
}

const EXPECTED: [string, RegExp][] = [
  ['hello.ts', /^Hello from the guest!\n\[sim\] guest stopped: \{"reason":"debug-exit","code":0\}; 23 exits, 1 hypercalls/],
  ['mmio-device.ts', /^timer: eax=41 ecx=42 after \{"reason":"debug-exit","code":41\}\n\[sim\] 4 MMIO exits, 1 hypercalls/],
  ['vmport.ts', /^vmport GETRAMSIZE: eax=2097152 ebx=0x1177 rip=0x1013$/m],
  ['long-mode.ts', /^modes: R -> P -> L; \{"reason":"debug-exit","code":76\}; EFER\.LMA=1$/m],
  ['interrupts.ts', /^\.{10}\n\[sim\] \{"reason":"debug-exit","code":48,"vcpu":0\} after 100\.0 ms of guest time; RTC seconds \(BCD\) 0x30$/m],
  ['boot-linux.ts', /^guest: Linux 6\.1\.0-\d+-amd64, 2 CPUs, +mshv sim x86-64 processor\s*^guest: \/dev\/vda says: hello from a virtio disk$[\s\S]*^boot \[page\]: \{"reason":"poweroff","vcpu":0\}/m],
  ['exit-cost.ts', /^page +40001 exits, 0\.00 hypercalls\/exit, [\d,]+ exits\/s\nhypercall 40001 exits, 1\.00 hypercalls\/exit, [\d,]+ exits\/s\neager +40001 exits, 5\.00 hypercalls\/exit/],
]

for (const [file, expected] of EXPECTED) {
  test(`examples/${file}`, (t) => {
    t.regex(run(join('examples', file)), expected)
  })
}

/** Every ts block of the README, with the heading above it, as a script importing this checkout. */
function readmeBlocks(): { heading: string; code: string }[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const out: { heading: string; code: string }[] = []
  const re = /```ts\n([\s\S]*?)```/g
  for (let m = re.exec(readme); m; m = re.exec(readme)) {
    const before = readme.slice(0, m.index)
    const heading = [...before.matchAll(/^#+ (.*)$/gm)].at(-1)?.[1] ?? '(top)'
    out.push({ heading, code: (m[1] as string).replaceAll("from 'mshv'", `from '${pathToFileURL(join(ROOT, 'index.ts')).href}'`) })
  }
  return out
}

/** What some blocks print, exactly (the others: their own tests below check it). */
const README_OUTPUT: Record<string, string> = {
  'CPUID, MSRs, HLT and exceptions': "{ reason: 'halt' } 1986556749n 4660n\n{ reason: 'halt' } 8193n\n",
  'Interrupts and the PC platform': "K { reason: 'halt', vcpu: 0 }\n",
  'Limits, closing and memory': "{ reason: 'timeout' }\n{ reason: 'instructions' }\n",
}

/**
 * Blocks that name a file the reader has: the multiboot example boots kvm-unit-tests'
 * `x86/tsc.flat`, built here as kvm-unit-tests.test.ts builds it.
 */
function withFiles(heading: string, code: string): string {
  if (heading !== 'Multiboot kernels') return code
  return code.replace("'x86/tsc.flat'", JSON.stringify(join(buildSuite(), 'x86', 'tsc.flat')))
}

for (const [i, { heading, code }] of readmeBlocks().entries()) {
  test(`README block ${i + 1} (${heading}) runs as a program of its own`, (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'mshv-readme-'))
    try {
      const file = join(dir, `block-${i + 1}.mts`)
      writeFileSync(file, withFiles(heading, code))
      const out = execFileSync(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, encoding: 'utf8', timeout: 120_000, input: '' })
      const expected = README_OUTPUT[heading]
      if (expected !== undefined) t.is(out, expected)
      else if (heading === 'Multiboot kernels') t.regex(out, /PASS: Test RDTSCP 0\r?\n[\s\S]*\{ reason: 'debug-exit', code: 0, vcpu: 0 \}\n$/)
      else t.pass()
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
}

test('the README MMIO device example runs as printed', (t) => {
  const out = withReadmeBlock(
    '### Writing an MMIO device',
    'timer.ts',
    (b) => b.replace(/^vcpu\.run\(\).*$/m, "console.log(JSON.stringify(vcpu.run()), String(vcpu.regs.get('rax')))"),
    run,
  )
  if (out === undefined) return t.fail('no ts block in the MMIO section')
  // The README promises { reason: 'halt' } and rax = 0 (the timer's first tick).
  t.is(out.trim(), '{"reason":"halt"} 0')
  return undefined
})

test('the README Snapshots example runs as printed', (t) => {
  const out = withReadmeBlock('## Snapshots', 'snapshots.mts', (b) => b, run)
  if (out === undefined) return t.fail('no ts block in the Snapshots section')
  t.is(out, "{ bytes: 12885, pagesWritten: 1, pages: 256 }\n1 { reason: 'halt' } 3\n")
  return undefined
})

test('the README Debugging example runs as printed', (t) => {
  const out = withReadmeBlock('## Debugging', 'debugging.mts', (b) => b, run)
  if (out === undefined) return t.fail('no ts block in the Debugging section')
  t.is(
    out,
    [
      'at the OUT: ax = 1n',
      'guest wrote 1',
      "{ reason: 'breakpoint', address: 4102n }",
      "{ reason: 'step', address: 4099n }",
      'at the OUT: ax = 2n',
      'guest wrote 2',
      'at the OUT: ax = 3n',
      'guest wrote 3',
      "{ reason: 'halt' }",
      '4099n 1n',
      '',
    ].join('\n'),
  )
  return undefined
})

test("the README's createSession example runs as printed under tsx", (t) => {
  // An ES module, for the top-level await.
  const out = withReadmeBlock('## The REPL', 'session.mts', (b) => b.replace("backend: 'sim'", "backend: 'sim', ramMiB: 2"), run)
  if (out === undefined) return t.fail('no ts block in the REPL section')
  // step() prints where the vCPU is, regs() the table, run() the exit count at HLT.
  t.regex(out, /^rip 0x1006: 00001006 {2}hlt$/m) // 66 b8 imm32: real mode
  t.regex(out, /^rax 0000000000001234/m)
  t.regex(out, /^0 exits; rip 0x1007/m) // the HLT is no exit: the vCPU waits in it
  return undefined
})

test("the README's two guests on the in-process switch ping each other", (t) => {
  const out = withReadmeBlock('## Disks and networks', 'ping.mts', (b) => b, (file) => execFileSync(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, encoding: 'utf8', timeout: 110_000 }))
  if (out === undefined) return t.fail('no ts block in the Disks and networks section')
  t.regex(out, /3 packets transmitted, 3 packets received, 0% packet loss/)
  t.regex(out, /^poweroff cancelled \d+ frames switched$/m)
  return undefined
})
