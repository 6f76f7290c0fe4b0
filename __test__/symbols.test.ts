/**
 * Symbols (issue #30): `System.map`/`nm` text, ELF symbol tables, and the running
 * kernel's own kallsyms found in guest memory. The judges: `nm` for an ELF gcc builds
 * here, and the kernel's `/proc/kallsyms` for the tables read from guest RAM (Debian's
 * kernel booted through its own decompressor, which applies KASLR as it defaults).
 */
import test from 'ava'
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { inspect } from 'node:util'
import { busyboxInitramfs, bzImagePayload, createSession, elfSymbols, findKallsyms, GuestSymbols, MshvError, parseSystemMap, readSymbols, SymbolTable } from '../index.js'
import { native } from '../src/native.js'
import { nameRips } from '../src/trace.js'
import { parseBootArgs, parseArgs } from '../src/cli/args.js'
import { debianLinuxOrSkip } from './helpers.js'

const hasGcc = spawnSync('gcc', ['--version']).status === 0 && spawnSync('nm', ['--version']).status === 0
if (!hasGcc && !process.env['CI']) console.log('symbols: the ELF tests are skipped: no gcc/nm (apt install gcc binutils)')
const withGcc = hasGcc || process.env['CI'] ? test : test.skip

const scratch = (): string => mkdtempSync(join(tmpdir(), 'mshv-symbols-'))

test('a symbol table labels an address name+0xoff, finds a name, and leaves what it does not cover in hex', (t) => {
  const table = new SymbolTable(
    [
      { name: 'fixed_percpu_data', address: 0n, type: 'A' },
      { name: '_text', address: 0xffff_ffff_8100_0000n, type: 'T' },
      { name: '_stext', address: 0xffff_ffff_8100_0000n, type: 'T' },
      { name: 'start_kernel', address: 0xffff_ffff_8307_9e46n, type: 'T' },
      { name: 'jiffies_64', address: 0xffff_ffff_82a0_79c0n, type: 'D' },
      { name: 'jiffies', address: 0xffff_ffff_82a0_79c0n, type: 'D' },
      { name: '_end', address: 0xffff_ffff_8400_0000n, type: 'B' },
    ],
    'test',
  )
  t.is(table.size, 7)
  t.is(inspect(table), 'SymbolTable { 7 symbols from test }', 'the REPL shows its size, not 200,000 symbols')
  t.deepEqual(table.lookup(0xffff_ffff_8307_9e4bn), { name: 'start_kernel', offset: 5n, symbol: { name: 'start_kernel', address: 0xffff_ffff_8307_9e46n, type: 'T' } })
  t.is(table.format(0xffff_ffff_8307_9e46n), 'start_kernel')
  t.is(table.format(0xffff_ffff_8307_9e46n + 0x1an), 'start_kernel+0x1a')
  t.is(table.format(0xffff_ffff_8100_0001n), '_text+0x1', 'at one address the first of equals (scripts/kallsyms.c order)')
  t.is(table.address('jiffies'), 0xffff_ffff_82a0_79c0n)
  t.is(table.address('fixed_percpu_data'), 0n, 'an absolute symbol is found by name')
  t.is(table.format(0x1000), '0x1000', 'but labels nothing: small addresses are not per-CPU offsets')
  t.is(table.format(0xffff_ffff_8400_0000n), '_end')
  t.is(table.lookup(0xffff_ffff_8400_0001n), undefined, 'nothing past the last symbol (its end is unknown)')
  t.is(table.lookup(0x7fff_0000n), undefined)
  t.is(table.address('nope'), undefined)
  for (const bad of [-1, 1.5, 'x', 2n ** 64n]) t.throws(() => table.lookup(bad as bigint), { instanceOf: MshvError, code: 'EINVAL' })
  t.throws(() => new SymbolTable([{ name: 'x', address: -1n, type: 'T' }], 't'), { instanceOf: MshvError, code: 'EINVAL', message: /symbols\[0\]\.address/ })
})

test("System.map text parses; Debian's placeholder map is refused as such; garbage names its line", (t) => {
  const map = parseSystemMap(
    [
      '0000000000000000 A fixed_percpu_data',
      'ffffffff81000000 T _stext',
      'ffffffff810fb980 t do_idle',
      'ffffffff82a079c0 D jiffies',
      '                 U printf',
      'ffffffffc0a01000 t virtio_dev_probe\t[virtio]',
      '',
    ].join('\n'),
    'System.map-test',
  )
  t.is(map.size, 5)
  t.is(map.address('do_idle'), 0xffff_ffff_810f_b980n)
  t.is(map.symbol('do_idle')?.type, 't')
  t.is(map.address('virtio_dev_probe'), 0xffff_ffff_c0a0_1000n, "/proc/kallsyms' module column is read past")
  t.is(map.format(0xffff_ffff_810f_b985n), 'do_idle+0x5')
  const linux = debianLinuxOrSkip('symbols')
  const shipped = typeof linux === 'string' ? undefined : readdirMap(linux.kernel)
  const placeholder = shipped ?? 'ffffffffffffffff B The real System.map is in the linux-image-6.1.0-57-amd64-dbg package\n'
  t.throws(() => parseSystemMap(placeholder, 'System.map-6.1'), { instanceOf: MshvError, code: 'ESYMBOLS', message: /placeholder System\.map.*linux-image-[^ ]+-dbg package.*kallsyms/ })
  t.throws(() => parseSystemMap('ffffffff81000000 T _stext\nhello, world\n', 'junk'), { instanceOf: MshvError, code: 'ESYMBOLS', message: /junk: line 2 is not 'ADDRESS TYPE NAME'.*'hello, world'/ })
  t.throws(() => parseSystemMap('\n\n', 'empty'), { instanceOf: MshvError, code: 'ESYMBOLS', message: /empty: no symbols/ })
  t.throws(() => parseSystemMap(42 as unknown as string), { instanceOf: MshvError, code: 'EINVAL' })
  const dir = scratch()
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'bin'), Uint8Array.of(1, 2, 0, 3))
  t.throws(() => readSymbols(join(dir, 'bin')), { instanceOf: MshvError, code: 'ESYMBOLS', message: /neither an ELF file nor text/ })
  t.throws(() => readSymbols(join(dir, 'absent')), { instanceOf: MshvError, code: 'ENOENT', message: /absent/ })
})

/** The System.map Debian ships beside its kernel (/boot/System.map-VERSION), when it is there. */
function readdirMap(kernel: string): string | undefined {
  const file = join(dirname(kernel), `System.map-${kernel.replace(/.*vmlinuz-/, '')}`)
  return existsSync(file) ? readFileSync(file, 'utf8') : undefined
}

const PROGRAM = `
int counter = 7;
int zeroed[16];
const char banner[] = "mshv";
static int helper(int x) { return x * 3 + counter; }
__attribute__((weak)) int maybe(void) { return 1; }
int compute(int x) { return helper(x) + maybe() + zeroed[x & 15]; }
int main(int argc, char **argv) { (void)argv; return compute(argc) + banner[0]; }
`

withGcc('an ELF built by gcc reads as nm lists it, and a truncated or stripped one is refused with a coded error', (t) => {
  const dir = scratch()
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'prog.c'), PROGRAM)
  execFileSync('gcc', ['-O0', '-o', join(dir, 'prog'), join(dir, 'prog.c')])
  const bytes = new Uint8Array(readFileSync(join(dir, 'prog')))
  const table = elfSymbols(bytes, 'prog')
  // The judge: binutils' nm over the same file.
  const nm = parseSystemMap(execFileSync('nm', ['--defined-only', join(dir, 'prog')], { encoding: 'utf8' }), 'nm prog')
  const key = (s: { address: bigint; type: string; name: string }): string => `${s.address.toString(16)} ${s.type} ${s.name}`
  t.deepEqual(table.symbols().map(key).sort(), nm.symbols().map(key).sort())
  t.log(`${table.source}: ${table.symbols().length} symbols, as nm lists them`)
  for (const [name, type] of [['main', 'T'], ['helper', 't'], ['counter', 'D'], ['zeroed', 'B'], ['banner', 'R'], ['maybe', 'W']] as const) {
    t.is(table.symbol(name)?.type, type, name)
  }
  const main = table.address('main') as bigint
  t.is(table.format(main + 5n), 'main+0x5')
  t.deepEqual(readSymbols(join(dir, 'prog')).symbols(), table.symbols(), 'readSymbols tells an ELF by its magic')
  writeFileSync(join(dir, 'prog.map'), execFileSync('nm', [join(dir, 'prog')]))
  t.is(readSymbols(join(dir, 'prog.map')).address('main'), main, '... and nm text by its lines')

  t.throws(() => elfSymbols(bytes.subarray(0, 2000), 'cut'), { instanceOf: MshvError, code: 'ESYMBOLS', message: /cut: e_shoff\/e_shnum: .* run past the file's 2000 bytes/ })
  t.throws(() => elfSymbols(bytes.subarray(0, 40), 'tiny'), { instanceOf: MshvError, code: 'ESYMBOLS', message: /tiny: ELF header: truncated/ })
  t.throws(() => elfSymbols(new TextEncoder().encode('just some text, not an ELF'), 'text'), { instanceOf: MshvError, code: 'ESYMBOLS', message: /no ELF magic/ })
  execFileSync('gcc', ['-O0', '-static', '-s', '-o', join(dir, 'stripped'), join(dir, 'prog.c')])
  t.throws(() => readSymbols(join(dir, 'stripped')), { instanceOf: MshvError, code: 'ESYMBOLS', message: /no \.symtab or \.dynsym: the file was stripped/ })
})

test("the REPL's dis() labels addresses and branch targets, and sym() goes both ways", (t) => {
  const printed: string[] = []
  const symbols = new SymbolTable(
    [
      { name: 'entry', address: 0x1000n, type: 'T' },
      { name: 'target', address: 0x1008n, type: 'T' },
      { name: 'data', address: 0x2000n, type: 'D' },
      { name: '_end', address: 0x3000n, type: 'B' },
    ],
    'test symbols',
  )
  const s = createSession({ backend: 'sim', print: (x) => printed.push(x), output: { write: () => true }, symbols })
  t.teardown(() => s.close())
  s.asm`nop; nop; mov al, [0x2000]; call 0x1008; hlt; nop; nop; hlt`
  s.dis(4)
  t.deepEqual(printed.at(-1)?.split('\n'), ['00001000 <entry>  nop', '00001001 <entry+0x1>  nop', '00001002 <entry+0x2>  mov al, [0x2000]', '00001005 <entry+0x5>  call 0x1008 <target>'])
  s.dis(1, 'target')
  t.is(printed.at(-1), '00001008 <target>  hlt')
  t.is(s.sym('data'), 0x2000n)
  t.is(s.sym(0x2004n), 'data+0x4')
  t.is(s.sym(0x10), '0x10')
  t.throws(() => s.sym('nope'), { instanceOf: MshvError, code: 'ESYMBOLS', message: /no symbol 'nope' in test symbols/ })
  t.is(s.symbols(), symbols)
  t.regex(printed.at(-1) ?? '', /^4 symbols: test symbols$/)
  const bare = createSession({ backend: 'sim', print: (x) => printed.push(x), output: { write: () => true } })
  t.teardown(() => bare.close())
  t.is(bare.symbols(), undefined)
  bare.dis(1)
  t.regex(printed.at(-1) ?? '', /^00001000  /, 'without symbols, no labels')
})

test('mshv boot --symbols goes with --trace; mshv repl takes --symbols', (t) => {
  t.is(parseBootArgs(['--trace', 't.json', '--symbols', 'System.map']).symbols, 'System.map')
  t.throws(() => parseBootArgs(['--symbols', 'System.map']), { instanceOf: MshvError, code: 'EINVAL', message: /--symbols names the addresses of --trace's events/ })
  t.is(parseArgs(['--kernel', 'debian', '--symbols', 'vmlinux']).symbols, 'vmlinux')
})

const linux = debianLinuxOrSkip('symbols')
const boot = typeof linux === 'string' ? test.skip : test.serial
/** Text symbols with one name at their address, a data symbol, the first and the last text symbols. */
const NAMES = ['start_kernel', 'do_idle', 'schedule', 'jiffies', '_stext', '_etext'] as const

boot("Debian's kernel, KASLR and all: its kallsyms read from guest memory give /proc/kallsyms' addresses", async (t) => {
  if (typeof linux === 'string') return
  let out = ''
  const init = `grep -E ' (${NAMES.join('|')})$' /proc/kallsyms\necho "kallsyms lines: $(wc -l < /proc/kallsyms)"\npoweroff -f\n`
  // The REPL's session over Linux, booted through the bzImage's own entry: the kernel's
  // decompressor picks a random base (KASLR) and relocates kallsyms_relative_base with it.
  const printed: string[] = []
  const session = createSession({
    backend: 'sim',
    linux: { kernel: linux.kernel, initrd: busyboxInitramfs({ busybox: linux.busybox, init }), cmdline: 'console=ttyS0 cryptomgr.notests', entry: 'boot64' },
    output: { write: (x: string | Uint8Array) => ((out += typeof x === 'string' ? x : Buffer.from(x).toString('latin1')), true) },
    print: (x) => printed.push(x),
  })
  t.teardown(() => session.close())
  const m = { vm: session.vm }
  const vcpu = session.vcpu
  vcpu.startTrace(200_000)
  const symbols = new GuestSymbols(m.vm)
  t.is(symbols.table(), undefined, 'before the boot there are none (and no error)')
  t.is(symbols.format(0xffff_ffff_8100_0000n), '0xffffffff81000000')
  t.is(session.symbols(), undefined)
  const result = await session.run()
  t.is(result.reason, 'poweroff', out.slice(-2000))
  // The judge: the kernel's own /proc/kallsyms, as its init printed it.
  const judge = parseSystemMap(out.split('\n').filter((l) => /^[0-9a-f]{16} [A-Za-z] \S+\r?$/.test(l)).join('\n'), '/proc/kallsyms')
  for (const name of NAMES) t.truthy(judge.address(name), `/proc/kallsyms printed ${name}`)

  const start = performance.now()
  const found = findKallsyms(m.vm.memory.list())
  const ms = performance.now() - start
  t.truthy(found, 'the kallsyms tables are in guest RAM')
  if (!found) return
  const lines = Number(/kallsyms lines: (\d+)/.exec(out)?.[1])
  t.log(`${found.table.size} symbols, ${found.table.source}: found in ${ms.toFixed(0)} ms; /proc/kallsyms has ${lines} lines; relative base ${found.relativeBase.toString(16)}`)
  t.true(found.table.size > 50_000 && found.table.size <= lines, `${found.table.size} symbols, /proc/kallsyms ${lines} lines`)
  for (const name of NAMES) {
    const a = judge.address(name) as bigint
    t.is(found.table.address(name), a, name)
    const hit = found.table.lookup(a + 5n)
    t.is(hit?.offset, 5n, `${name}+5`)
    t.is(found.table.address(hit?.name ?? ''), a, `${name}+5 is ${hit?.name}+0x5, a name at ${name}'s address`)
  }
  for (const name of ['start_kernel', 'do_idle', 'schedule']) t.is(found.table.format((judge.address(name) as bigint) + 5n), `${name}+0x5`)
  t.is(found.table.symbol('start_kernel')?.type, 'T')
  t.is(found.table.symbol('jiffies')?.type, 'D')

  // The same tables in the kernel image on disk give the link addresses: the run's are
  // them moved by one KASLR slide.
  const image = native.unpackKernelPayload(bzImagePayload(readFileSync(linux.kernel)).payload, 512 << 20) as Uint8Array
  const linked = findKallsyms([{ start: 0, bytes: image }])
  t.truthy(linked, 'the unpacked vmlinux has them too')
  if (!linked) return
  t.is(linked.table.address('_text'), 0xffff_ffff_8100_0000n, 'linked at __START_KERNEL_map + 16 MiB')
  const slide = (judge.address('_stext') as bigint) - (linked.table.address('_stext') as bigint)
  t.log(`KASLR slide ${slide.toString(16)}`)
  for (const name of NAMES) t.is((linked.table.address(name) as bigint) + slide, judge.address(name) as bigint, `${name}: link address + slide`)
  t.is(linked.table.size, found.table.size)

  // Lazily, through GuestSymbols (the REPL's and the trace's): once, then kept.
  t.is(symbols.format((judge.address('do_idle') as bigint) + 0x1an), 'do_idle+0x1a')
  t.is(symbols.table(), symbols.table())
  // The trace's exits named by them: each label's symbol lies at RIP minus its offset.
  const trace = vcpu.stopTrace()
  const events = trace?.traceEvents ?? []
  const named = nameRips(events, symbols)
  t.log(`${named} of ${events.length} trace events named`)
  t.true(named > 0)
  // (Local names repeat: static functions of one name in several files.)
  const at = new Map<string, bigint[]>()
  for (const sym of (symbols.table() as SymbolTable).symbols()) at.set(sym.name, [...(at.get(sym.name) ?? []), sym.address])
  for (const e of events.filter((x) => x.args?.['symbol'] !== undefined).slice(0, 2000)) {
    const [, name, off] = /^(.+?)(?:\+0x([0-9a-f]+))?$/.exec(String(e.args?.['symbol'])) ?? []
    const rip = BigInt(String(e.args?.['rip']))
    t.true((at.get(name as string) ?? []).some((a) => a + BigInt(`0x${off ?? '0'}`) === rip), `${String(e.args?.['symbol'])} at ${String(e.args?.['rip'])}`)
  }

  // The REPL's helpers over the same kernel: sym() both ways, dis() labelled.
  t.is(session.sym('do_idle'), judge.address('do_idle') as bigint)
  t.is(session.sym((judge.address('do_idle') as bigint) + 0x1an), 'do_idle+0x1a')
  t.is(session.symbols()?.size, found.table.size)
  t.regex(printed.at(-1) ?? '', /^[\d,]+ symbols: kallsyms in guest RAM/)
  session.dis(40, 'do_idle')
  const listing = (printed.at(-1) ?? '').split('\n')
  t.log(listing.slice(0, 6).join('\n'))
  t.regex(listing[0] ?? '', new RegExp(`^${(judge.address('do_idle') as bigint).toString(16)} <do_idle>  `))
  t.regex(listing[1] ?? '', /^[0-9a-f]{16} <do_idle\+0x[0-9a-f]+>  /)
  t.true(listing.some((l) => /\bcall 0x[0-9a-f]+ <[\w.]+(\+0x[0-9a-f]+)?>$/.test(l)), 'a call names its target')
  session.dis(1)
  t.regex(printed.at(-1) ?? '', /^[0-9a-f]{16} <[\w.]+\+0x[0-9a-f]+>  /, 'where the vCPU stopped')
})

/**
 * A kernel's kallsyms tables as scripts/kallsyms.c's write_src() lays them out, for the
 * orders no kernel here has: every name's character its own token (a table a kernel
 * could have: insert_real_symbols_in_table puts each character at its own code), the
 * other 256 - n tokens two-character ones. `layout` '6.1' puts the offsets and
 * kallsyms_relative_base before num_syms (and `seqs` adds 6.2's seqs_of_names before
 * the token table); '6.4' puts them after the token index, as Linux 6.4 and later
 * (Debian 13's 6.12) do.
 */
function kallsymsBlob(symbols: readonly { name: string; type: string; address: bigint }[], relativeBase: bigint, layout: '6.1' | '6.4', absolutePercpu: boolean, seqs: boolean): { bytes: Uint8Array; names: number } {
  const out: number[] = []
  const align = (): void => {
    while (out.length % 8) out.push(0)
  }
  const u32 = (v: number): void => void out.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff)
  const u64 = (v: bigint): void => {
    for (let i = 0n; i < 64n; i += 8n) out.push(Number((v >> i) & 0xffn))
  }
  const offsets = (): void => {
    for (const s of symbols) {
      const v = !absolutePercpu ? Number(s.address - relativeBase) : s.type === 'A' ? Number(s.address) : Number(relativeBase - s.address - 1n)
      u32(v)
    }
    align()
    u64(relativeBase)
    align()
  }
  if (layout === '6.1') offsets()
  u32(symbols.length)
  align()
  const names = out.length
  const markers: number[] = []
  symbols.forEach((s, i) => {
    if (i % 256 === 0) markers.push(out.length - names)
    const text = s.type + s.name
    out.push(text.length, ...[...text].map((c) => c.charCodeAt(0)))
  })
  align()
  for (const m of markers) u32(m)
  align()
  if (seqs) {
    for (let i = 0; i < symbols.length; i++) out.push(0, (i >> 8) & 0xff, i & 0xff)
    align()
  }
  const used = new Set(symbols.flatMap((s) => [...(s.type + s.name)].map((c) => c.charCodeAt(0))))
  const table = out.length
  const index: number[] = []
  for (let i = 0; i < 256; i++) {
    index.push(out.length - table)
    const token = used.has(i) ? String.fromCharCode(i) : `q${String.fromCharCode(0x61 + (i % 26))}`
    out.push(...[...token].map((c) => c.charCodeAt(0)), 0)
  }
  align()
  for (const o of index) out.push(o & 0xff, o >> 8)
  align()
  if (layout === '6.4') {
    offsets()
    for (let i = 0; i < symbols.length; i++) out.push(0, (i >> 8) & 0xff, i & 0xff)
  }
  return { bytes: Uint8Array.from(out), names }
}

test('kallsyms in the Linux 6.1 order (with and without 6.2\'s seqs_of_names) and the 6.4+ order, absolute per-CPU or not, are found among noise', (t) => {
  const base = 0xffff_ffff_8100_0000n
  const symbols = [
    ...(['fixed_percpu_data', 'cpu_number'] as const).map((name, i) => ({ name, type: 'A', address: BigInt(i * 0x1000) })),
    ...Array.from({ length: 700 }, (_, i) => ({ name: `fn_${i}_0123456789`, type: i % 3 ? 't' : 'T', address: base + BigInt(i * 0x40) })),
    { name: 'jiffies', type: 'D', address: base + 0x100_0000n },
  ]
  const noise = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 7919 + (i >> 5)) & 0xff)
  for (const layout of ['6.1', '6.4'] as const) {
    for (const absolutePercpu of [true, false]) {
      for (const seqs of layout === '6.1' ? [false, true] : [false]) {
        const used = absolutePercpu ? symbols : symbols.filter((s) => s.type !== 'A')
        const blob = kallsymsBlob(used, base, layout, absolutePercpu, seqs)
        const memory = new Uint8Array(0x10_0000)
        memory.set(noise(memory.length))
        // A decoy first: a run of digit tokens that is no token table.
        memory.set(new TextEncoder().encode('0\u00001\u00002\u00003\u00004\u00005\u00006\u00007\u00008\u00009\u0000'), 0x1000)
        memory.set(blob.bytes, 0x4_0000)
        const what = `${layout}${seqs ? ' + seqs_of_names' : ''}, absolute per-CPU ${absolutePercpu}`
        const found = findKallsyms([{ start: 0x20_0000, bytes: new Uint8Array(0x1000) }, { start: 0x100_0000, bytes: memory }])
        t.truthy(found, what)
        if (!found) continue
        t.is(found.layout, layout, what)
        t.is(found.absolutePercpu, absolutePercpu, what)
        t.is(found.names, 0x100_0000 + 0x4_0000 + blob.names, what)
        t.deepEqual(found.table.symbols(), used, what)
        t.is(found.table.format(base + 0x45n), 'fn_1_0123456789+0x5', what)
      }
    }
  }
  t.is(findKallsyms([{ start: 0, bytes: new Uint8Array(0x1000) }]), undefined, 'none in zeroes')
  t.is(findKallsyms([]), undefined)
})
