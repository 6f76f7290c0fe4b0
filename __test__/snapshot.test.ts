import test from 'ava'
import { mkdtempSync, readFileSync, writeFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createVm, enterRealMode, MshvError, type Vm } from '../index.js'

const CODE = 0x1000
/** mov cx, 5; l: inc ax; out 0x80, ax; loop l; hlt */
const LOOP = [0xb9, 0x05, 0x00, 0x40, 0xe7, 0x80, 0xe2, 0xfb, 0xf4]
const OUT = 0x1004

/** A device with state: it counts the guest's writes and keeps the last one. */
class Probe {
  seen: number[] = []
  save(): { version: 1; seen: number[] } {
    return { version: 1, seen: [...this.seen] }
  }
  restore(s: { version: 1; seen: number[] }): void {
    if (s?.version !== 1 || !Array.isArray(s.seen)) throw new MshvError('EINVAL', `probe state ${JSON.stringify(s)}`)
    this.seen = [...s.seen]
  }
}

function machine(): { vm: Vm; probe: Probe } {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 19)
  vm.addRom(0xf0000, new Uint8Array(0x10000).fill(0x90))
  const probe = new Probe()
  vm.bus.register(0x80, 2, { ioWrite: (_p, _s, v) => probe.seen.push(v) }, 'probe')
  vm.addState('probe', probe)
  vm.createVcpu(0)
  return { vm, probe }
}

const dir = mkdtempSync(join(tmpdir(), 'mshv-snap-'))

test('a snapshot restores into a machine built the same way: the guest goes on from where it was, the devices too', async (t) => {
  const a = machine()
  a.vm.write(CODE, LOOP)
  a.vm.write(0x4_0000, [1, 2, 3])
  enterRealMode(a.vm.cpus[0] as never, CODE)
  t.deepEqual(a.vm.cpus[0]?.run({ until: OUT }), { reason: 'breakpoint', address: BigInt(OUT) })
  t.deepEqual(a.vm.cpus[0]?.run({ until: OUT }), { reason: 'breakpoint', address: BigInt(OUT) })
  t.deepEqual(a.probe.seen, [1])
  const path = join(dir, 'loop.snap')
  const info = a.vm.snapshot(path, { machine: { kind: 'test' } })
  t.is(info.pages, 128 + 16)
  t.true(info.pagesWritten <= 3 + 16, `${info.pagesWritten} non-zero pages of ${info.pages} written`)
  t.true(statSync(path).size < 120 * 1024, 'zero pages are not in the file')
  t.is((await a.vm.run()).reason, 'halt')
  t.deepEqual(a.probe.seen, [1, 2, 3, 4, 5])

  const b = machine()
  b.vm.write(CODE, [0xf4]) // what the builder wrote is gone after the restore
  const header = b.vm.restore(path)
  t.deepEqual(header.machine, { kind: 'test' })
  t.deepEqual(b.probe.seen, [1], 'the device state came back')
  t.deepEqual([...b.vm.read(0x4_0000, 3)], [1, 2, 3])
  t.is(b.vm.cpus[0]?.regs.get('rip'), BigInt(OUT))
  t.is((await b.vm.run()).reason, 'halt')
  t.deepEqual(b.probe.seen, [1, 2, 3, 4, 5], 'the same OUTs from the same point')
  // Writes after the restore did not reach the file: a second restore is the same.
  const c = machine()
  c.vm.restore(path)
  t.deepEqual([...c.vm.read(CODE, LOOP.length)], LOOP)
  for (const m of [a, b, c]) m.vm.close()
})

test('a snapshot that does not fit the machine is EINVAL naming the difference, and changes nothing', (t) => {
  const a = machine()
  const path = join(dir, 'fit.snap')
  a.vm.snapshot(path)
  const einval = (vm: Vm, text: RegExp): void => {
    const e = t.throws(() => vm.restore(path), { instanceOf: MshvError })
    t.is(e.code, 'EINVAL')
    t.regex(e.message, text)
  }
  const more = machine()
  more.vm.addRam(0x20_0000, 0x1000)
  einval(more.vm, /2 memory regions; this VM has 3/)
  const small = createVm({ backend: 'sim' })
  small.addRam(0, 1 << 18)
  small.addRom(0xf0000, new Uint8Array(0x10000))
  small.createVcpu(0)
  small.addState('probe', new Probe())
  einval(small, /RAM at 0x0 \(0x80000 bytes\) is not this VM's \(0x40000 bytes there\)/)
  const noProbe = createVm({ backend: 'sim' })
  noProbe.addRam(0, 1 << 19)
  noProbe.addRom(0xf0000, new Uint8Array(0x10000))
  noProbe.createVcpu(0)
  einval(noProbe, /device 'probe' is not in this VM/)
  const twoCpus = machine()
  twoCpus.vm.createVcpu(1)
  einval(twoCpus.vm, /1 vCPUs; this VM has 2/)
  const det = createVm({ backend: 'sim', clock: 'realtime' })
  einval(det, /deterministic clock; this VM's is realtime/)
  // Files that are not snapshots, or are damaged.
  const junk = join(dir, 'junk.snap')
  writeFileSync(junk, 'hello')
  t.throws(() => machine().vm.restore(junk), { code: 'EINVAL', message: /not a snapshot/ })
  const bytes = readFileSync(path)
  writeFileSync(junk, bytes.subarray(0, bytes.length - 10))
  t.throws(() => machine().vm.restore(junk), { code: 'EINVAL', message: /truncated/ })
  t.throws(() => machine().vm.restore(join(dir, 'nosuch.snap')), { code: 'ENOENT' })
  const header = JSON.parse(bytes.subarray(Number(bytes.readBigUInt64LE(16))).toString())
  header.devices.probe = { version: 9 }
  const json = Buffer.from(JSON.stringify(header))
  const bad = Buffer.concat([bytes.subarray(0, Number(bytes.readBigUInt64LE(16))), json])
  bad.writeBigUInt64LE(BigInt(json.length), 24)
  writeFileSync(junk, bad)
  const m = machine()
  m.vm.write(0x100, [7])
  t.throws(() => m.vm.restore(junk), { code: 'EINVAL', message: /device 'probe'/ })
  t.is(m.vm.read(0x100, 1)[0], 7, 'memory untouched by the refused restore')
})

test('addState checks its arguments', (t) => {
  const { vm } = machine()
  t.throws(() => vm.addState('probe', new Probe()), { code: 'EEXIST' })
  t.throws(() => vm.addState('', new Probe()), { code: 'EINVAL' })
  t.throws(() => vm.addState('x', {} as never), { code: 'EINVAL' })
  vm.close()
})

test('run states: running during vm.run, paused between runs; pause() ends a run with its exit completed', async (t) => {
  const { vm, probe } = machine()
  // l: out 0x80, ax; inc ax; jmp l — an OUT on every round: pause() lands between two of them.
  vm.write(CODE, [0xe7, 0x80, 0x40, 0xeb, 0xfb])
  const vcpu = vm.cpus[0]
  if (!vcpu) return t.fail()
  enterRealMode(vcpu, CODE)
  t.is(vm.runState, 'paused')
  t.is(vcpu.runState, 'paused')
  const run = vm.run()
  t.is(vm.runState, 'running')
  await new Promise((r) => setTimeout(r, 20))
  await vm.pause()
  t.deepEqual(await run, { reason: 'cancelled' })
  t.is(vm.runState, 'paused')
  t.is(vcpu.runState, 'paused')
  // Every OUT the guest made was completed: each value once, and the next run's first
  // OUT is the next value (none is done again, none half done).
  const n = probe.seen.length
  t.true(n > 0)
  t.deepEqual(probe.seen, [...Array(n).keys()], 'each OUT once, in order')
  vcpu.run({ maxExits: 1 })
  t.is(probe.seen[n], n)
  await vm.pause() // not running: at once
  vm.close()
  t.is(vm.runState, 'closed')
  t.is(vcpu.runState, 'closed')
  return undefined
})

test('an incremental snapshot holds only what changed since its parent, and restores through the chain', async (t) => {
  const a = machine()
  a.vm.write(CODE, LOOP)
  a.vm.write(0x4_0000, [1, 2, 3])
  a.vm.write(0x5_0000, [9])
  enterRealMode(a.vm.cpus[0] as never, CODE)
  a.vm.cpus[0]?.run({ until: OUT })
  const full = join(dir, 'chain-0.snap')
  const f = a.vm.snapshot(full)
  // Between the two: the guest runs (its stack and the probe change), the VMM writes a
  // page and zeroes another.
  a.vm.cpus[0]?.run({ until: OUT })
  a.vm.write(0x6_0000, [7, 7])
  a.vm.write(0x5_0000, [0])
  const one = join(dir, 'chain-1.snap')
  t.throws(() => a.vm.snapshot(one, { parent: join(dir, 'other.snap') }), { code: 'EINVAL', message: /is not the snapshot this VM last wrote or restored/ })
  const i = a.vm.snapshot(one, { parent: full })
  t.log(`full: ${f.pagesWritten} pages, ${f.bytes} bytes; incremental: ${i.pagesWritten} pages, ${i.bytes} bytes`)
  t.true(i.pagesWritten < f.pagesWritten && i.pagesWritten >= 1, 'the incremental one holds fewer pages')
  a.vm.cpus[0]?.run({ until: OUT })
  const two = join(dir, 'chain-2.snap')
  a.vm.snapshot(two, { parent: one })
  const ram = [...a.vm.read(0, 1 << 19)]

  const b = machine()
  b.vm.restore(two)
  t.deepEqual([...b.vm.read(0, 1 << 19)], ram, 'RAM through the chain equals the original')
  t.deepEqual(b.probe.seen, a.probe.seen)
  t.is(b.vm.cpus[0]?.regs.get('rip'), a.vm.cpus[0]?.regs.get('rip'))
  t.is((await b.vm.run()).reason, 'halt')
  t.is((await a.vm.run()).reason, 'halt')
  t.deepEqual(b.probe.seen, a.probe.seen)
  // A parent written over since is refused by name.
  const c = machine()
  c.vm.restore(full)
  c.vm.snapshot(one) // `one` is another snapshot now
  const e = t.throws(() => machine().vm.restore(two), { code: 'EINVAL' })
  t.regex(e?.message ?? '', /its parent '.*chain-1\.snap' is another snapshot now/)
})

test('vm.fork(n, build) makes n VMs from one state, each going on on its own', async (t) => {
  const a = machine()
  a.vm.write(CODE, LOOP)
  enterRealMode(a.vm.cpus[0] as never, CODE)
  a.vm.cpus[0]?.run({ until: OUT })
  const probes: Probe[] = []
  const forks = a.vm.fork(3, () => {
    const m = machine()
    probes.push(m.probe)
    return m.vm
  })
  t.is(forks.length, 3)
  for (const [i, f] of forks.entries()) {
    // Each fork writes its own memory: the others, and the parent, do not see it.
    f.write(0x4_0000, [i + 1])
    t.is((await f.run()).reason, 'halt')
    t.deepEqual(probes[i]?.seen, [1, 2, 3, 4, 5])
  }
  t.deepEqual(forks.map((f) => f.read(0x4_0000, 1)[0]), [1, 2, 3])
  t.is(a.vm.read(0x4_0000, 1)[0], 0)
  t.throws(() => a.vm.fork(0, () => machine().vm), { code: 'EINVAL' })
  t.throws(() => a.vm.fork(1, (() => 5) as never), { code: 'EINVAL', message: /build\(0\) must return a Vm/ })
  for (const f of [a.vm, ...forks]) f.close()
})
