/**
 * Every bad input is a coded error naming the value, every close a real release,
 * every limit a real bound: the API as a new user meets it.
 */
import test from 'ava'
import { constants as bufferConstants } from 'node:buffer'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import {
  MshvError,
  RegisterBank,
  assemble,
  createSession,
  createVm,
  enterLongMode,
  enterRealMode,
  liveResources,
  type PioDevice,
  type RunResult,
  type Vm,
  type Vcpu,
} from '../index.js'

function guest(code: readonly number[], at = 0x1000): { vm: Vm; vcpu: Vcpu } {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  vm.write(at, code)
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, at)
  return { vm, vcpu }
}

const EXIT_LOOP = [0xe6, 0x80, 0xeb, 0xfc] // l: out 0x80, al; jmp l
const SPIN = [0xeb, 0xfe] // jmp $

test('limits bound the whole run, however often the guest exits, and say which fired', async (t) => {
  const { vm, vcpu } = guest(EXIT_LOOP)
  const start = performance.now()
  t.deepEqual(vcpu.run({ timeoutMs: 200 }), { reason: 'timeout' })
  const ms = performance.now() - start
  t.true(ms >= 199 && ms < 400, `stopped after ${ms.toFixed(0)} ms`)
  const before = vcpu.stats().instructions
  t.deepEqual(vcpu.run({ maxInstructions: 1001 }), { reason: 'instructions' })
  t.is(vcpu.stats().instructions - before, 1001, 'counted across ~500 exits')
  t.deepEqual(vcpu.run({ maxExits: 7 }), { reason: 'exits' })
  t.deepEqual(await vcpu.runAsync({ timeoutMs: 100 }), { reason: 'timeout' })
  t.deepEqual(await vcpu.runAsync({ maxInstructions: 11 }), { reason: 'instructions' })
  vm.close()
})

test('stats().instructions counts the instructions that exit', (t) => {
  // mov al, 'A'; out 0xe9, al; out 0xf4, al: three instructions, two of them exit.
  const { vm, vcpu } = guest([0xb0, 0x41, 0xe6, 0xe9, 0xe6, 0xf4])
  t.is(vcpu.run().reason, 'debug-exit')
  t.is(vcpu.stats().instructions, 3)
  vm.close()
})

test('runAsync errors carry the same codes as run(), and a second run at once is EBUSY', async (t) => {
  const { vm, vcpu } = guest([0xf4, 0xeb, 0xfd]) // hlt; jmp back
  const first = vcpu.runAsync({ onHalt: 'wait' })
  await t.throwsAsync(vcpu.runAsync(), { instanceOf: MshvError, code: 'EBUSY', message: /runAsync\(\): vCPU 0 is already running/ })
  t.throws(() => vcpu.run(), { instanceOf: MshvError, code: 'EBUSY' })
  vcpu.cancel()
  t.deepEqual(await first, { reason: 'cancelled' })
  vm.close()
  await t.throwsAsync(vcpu.runAsync(), { instanceOf: MshvError, code: 'ECLOSED' })
  t.throws(() => vcpu.run(), { instanceOf: MshvError, code: 'ECLOSED' })
})

test('closing during runAsync cancels the run, waits for it and releases everything', async (t) => {
  const { vm, vcpu } = guest(SPIN)
  const running = vcpu.runAsync()
  await new Promise((r) => setTimeout(r, 30))
  t.throws(() => vcpu.regs.set('rax', 1n), { instanceOf: MshvError, code: 'EBUSY', message: /vCPU 0 is running/ })
  t.throws(() => vcpu.regs.get('rax'), { code: 'EBUSY' })
  vm.close()
  t.deepEqual(await running, { reason: 'cancelled' })
  t.true(vcpu.closed && vm.closed)
})

test('after close: run, registers, the message and kept RAM views are ECLOSED', (t) => {
  const { vm, vcpu } = guest([0xf4])
  const ram = vm.addRam(0x20_0000, 0x1000)
  vcpu.close()
  for (const f of [() => vcpu.run(), () => vcpu.regs.get('rax'), () => vcpu.regs.set('rax', 1n), () => vcpu.message, () => vcpu.stats(), () => vcpu.step()]) {
    t.throws(f, { instanceOf: MshvError, code: 'ECLOSED' })
  }
  vm.close()
  t.throws(() => ram.bytes, { instanceOf: MshvError, code: 'ECLOSED', message: /guest RAM at 0x200000 is unmapped/ })
  t.throws(() => vm.addRam(0, 0x1000), { code: 'ECLOSED' })
  t.throws(() => vm.read(0, 1), { code: 'ECLOSED' })
})

test('bad values are EINVAL naming the value', (t) => {
  const { vm, vcpu } = guest([0xf4])
  const cases: [() => unknown, RegExp][] = [
    [() => vm.read(0, -1), /length must be a non-negative integer, got -1/],
    [() => vm.write(0, 'abc' as unknown as number[]), /data must be a Uint8Array or an array of bytes, got 'abc'/],
    [() => vm.write(0, [300, -1, 1.7]), /data\[0\] must be a byte \(an integer 0..255\), got 300/],
    [() => vm.addRam(1.5, 0x1000), /addRam: gpa must be .* got 1.5/],
    [() => vm.addRam(0, '4096' as unknown as number), /addRam: size must be a positive multiple of 4096 bytes \(a number\), got '4096'/],
    [() => vm.createVcpu(1.5), /createVcpu: index must be an integer in 0..255, got 1.5/],
    [() => vm.createVcpu(-1), /createVcpu: index must be an integer in 0..255, got -1/],
    [() => vm.createVcpu(2, 'bogus' as 'page'), /createVcpu: policy must be 'page', 'hypercall' or 'eager', got 'bogus'/],
    [() => vcpu.run(5 as unknown as object), /run\(\): options must be an object, got 5/],
    [() => vcpu.run({ onHalt: 'bogus' as 'wait' }), /run\(\): onHalt must be 'return' or 'wait', got 'bogus'/],
    [() => vcpu.run({ maxInstructions: 1.5 }), /run\(\): maxInstructions must be an integer from 0 to 2\^53-1, got 1.5/],
    [() => vcpu.run({ timeoutMs: 1e300 }), /run\(\): timeoutMs must be a number of milliseconds from 0 to 2\^53-1, got 1e\+300/],
    [() => vcpu.run({ maxInstruction: 5 } as object), /run\(\): unknown option 'maxInstruction'/],
    [() => createVm(null as unknown as object), /createVm: options must be an object, got null/],
    [() => createVm({ policy: 'bogus' as 'page' }), /policy must be 'page', 'hypercall' or 'eager', got 'bogus'/],
    [() => createVm({ cpuid: 5 as unknown as [] }), /cpuid must be an array of entries or a CpuidTable, got 5/],
    [() => vm.bus.register(0x10, 1, null as unknown as PioDevice), /device must be an object with ioRead and\/or ioWrite methods, got null/],
    [() => assemble(123 as unknown as string), /assemble: source must be a string, got 123/],
    [() => enterRealMode(vcpu, 0x10_0000), /a real-mode start address must be an integer below 1 MiB \(0x100000\), got 1048576/],
  ]
  for (const [f, message] of cases) {
    const e = t.throws(f, { instanceOf: MshvError }, String(message))
    t.regex(e?.message ?? '', message)
    t.is(e?.code, 'EINVAL', e?.message)
  }
  vm.close()
})

test('an 8 GiB region: refused before anything is mapped where a typed array cannot view it (Node 20), mapped where it can', (t) => {
  const vm = createVm({ backend: 'sim' })
  const before = liveResources()
  if (bufferConstants.MAX_LENGTH < 2 ** 33) {
    t.throws(() => vm.addRam(0x1_0000_0000, 2 ** 33), { code: 'EINVAL', message: /addRam: a region of 0x200000000 bytes is larger than one typed array can view on Node v20/ })
    t.deepEqual(liveResources(), before, 'no native region was left behind')
  } else {
    const ram = vm.addRam(0x1_0000_0000, 2 ** 33)
    t.is(ram.bytes.length, 2 ** 33)
    ram.bytes[2 ** 33 - 1] = 7
    t.is(vm.read(0x2_ffff_ffffn, 1)[0], 7)
  }
  vm.close()
  t.is(liveResources().memoryRegions, before.memoryRegions)
})

test('native errors are MshvErrors too, and negative numbers print as -0x..', (t) => {
  const { vm, vcpu } = guest([0xf4])
  const e = t.throws(() => vcpu.native.translateGva(-1n, 0), { instanceOf: MshvError })
  t.is(e?.code, 'EINVAL')
  t.regex(e?.message ?? '', /gva must be a BigInt between 0 and 2\^64-1, got -0x1/)
  t.throws(() => vm.native.createVcpu(4096), { instanceOf: MshvError, code: 'EINVAL', message: /got 4096/ })
  vm.close()
})

test('device return values are checked: EDEVICE names the device, the access and the value', (t) => {
  for (const bad of [undefined, '7', 1.9, 2 ** 40]) {
    const { vm, vcpu } = guest([0xe4, 0x60, 0xf4]) // in al, 0x60; hlt
    vm.bus.register(0x60, 1, { ioRead: () => bad as number }, 'kbd')
    const e = t.throws(() => vcpu.run(), { instanceOf: MshvError })
    t.is(e?.code, 'EDEVICE')
    t.regex(e?.message ?? '', /^kbd: ioRead\(0x60, 1\) returned .* it must return an integer of at most 32 bits$/)
    vm.close()
  }
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  vm.bus.registerMmio(0xc000_0000n, 0x1000, { mmioRead: () => 5 as unknown as bigint }, 'timer')
  vm.write(0x10000, [0x8b, 0x03, 0xf4]) // mov eax, [rbx]; hlt
  const vcpu = vm.createVcpu(0)
  enterLongMode(vcpu, vm, 0x10000)
  vcpu.regs.set('rbx', 0xc000_0000n)
  t.throws(() => vcpu.run(), { instanceOf: MshvError, code: 'EDEVICE', message: 'timer: mmioRead(0x0, 4) returned 5; it must return a bigint' })
  vm.close()
})

test('MMIO over RAM and RAM over MMIO are EOVERLAP', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 0x10_0000)
  t.throws(() => vm.bus.registerMmio(0x8000, 0x10, new RegisterBank(2), 'bank'), {
    code: 'EOVERLAP',
    message: "MMIO 0x8000..0x800f for bank overlaps RAM at 0x0..0xfffff: the guest's accesses there go to memory, never to the device",
  })
  vm.bus.registerMmio(0x20_0000, 0x1000, new RegisterBank(2), 'bank')
  t.throws(() => vm.addRam(0x20_0000, 0x1000), { code: 'EOVERLAP', message: 'addRam at 0x200000 (+0x1000) overlaps MMIO device bank at 0x200000..0x200fff' })
  vm.close()
})

test('mov [mmio], ss stores the selector; an unsupported MMIO instruction names its RIP and GPA', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const bank = new RegisterBank(2)
  vm.bus.registerMmio(0xc000_0000n, bank.size, bank, 'bank')
  // mov [rbx], ss; lgdt [rbx] (a descriptor-table load from device memory is refused)
  vm.write(0x10000, [0x8c, 0x13, 0x0f, 0x01, 0x13, 0xf4])
  const vcpu = vm.createVcpu(0)
  enterLongMode(vcpu, vm, 0x10000)
  vcpu.regs.set('rbx', 0xc000_0000n)
  const e = t.throws(() => vcpu.run(), { instanceOf: MshvError })
  t.is(bank.get(0), 0x10n, 'the SS selector enterLongMode loaded')
  t.is(e?.code, 'EUNSUPPORTED_INSTRUCTION')
  t.regex(e?.message ?? '', /'lgdt \[rbx\]' at rip 0x10002 \(GPA 0xc0000000\)/)
  vm.close()
})

test('a real-mode start above 64 KiB is reached through CS:IP', (t) => {
  const { vm, vcpu } = guest([0xb0, 0x2a, 0xe6, 0xf4], 0x1_2345) // mov al, 42; out 0xf4, al
  t.deepEqual(vcpu.run(), { reason: 'debug-exit', code: 42 })
  t.is(vcpu.regs.getRaw('cs')[0], 0x1_0000n)
  vm.close()
})

test('ROM: the guest reads and runs it, its writes go to the handler or nowhere, and it can be removed', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 0x8000)
  const writes: [number, number, bigint][] = []
  // mov al, [0xa000]; mov byte [0xa000], 0x55; out 0xf4, al
  const rom = vm.addRom(0xf000, [0xa0, 0x00, 0xa0, 0xc6, 0x06, 0x00, 0xa0, 0x55, 0xe6, 0xf4])
  const data = vm.addRom(0xa000, [0x99], { onWrite: (o, s, v) => writes.push([o, s, v]) })
  t.is(rom.size, 0x1000, 'padded to whole pages')
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0xf000)
  t.deepEqual(vcpu.run(), { reason: 'debug-exit', code: 0x99 })
  t.deepEqual(writes, [[0, 1, 0x55n]], 'the write reached the handler')
  t.is(vm.read(0xa000, 1)[0], 0x99, 'and not the ROM')
  vm.removeRam(data)
  t.false(data.mapped)
  t.throws(() => vm.removeRam(data), { code: 'ENOTMAPPED' })
  t.throws(() => vm.addRom(0x3000, []), { code: 'EINVAL', message: 'addRom: bytes must not be empty' })
  vm.close()
})

test('devices can be unregistered, and their ports are free again', (t) => {
  const { vm, vcpu } = guest([0xe4, 0x60, 0xe6, 0xf4]) // in al, 0x60; out 0xf4, al
  vm.bus.register(0x60, 1, { ioRead: () => 7 }, 'a')
  vm.bus.unregister(0x60)
  vm.bus.register(0x60, 1, { ioRead: () => 9 }, 'b')
  t.deepEqual(vcpu.run(), { reason: 'debug-exit', code: 9 })
  t.throws(() => vm.bus.unregister(0x61), { code: 'ENOTMAPPED' })
  const bank = new RegisterBank(1)
  vm.bus.registerMmio(0x20_0000, bank.size, bank)
  t.is(vm.bus.unregisterMmio(0x20_0000), bank)
  t.throws(() => vm.bus.unregisterMmio(0x20_0000), { code: 'ENOTMAPPED' })
  vm.close()
})

test('REPL helpers check their input: asm takes a string too, dis and step a positive count', (t) => {
  const s = createSession({ backend: 'sim', print: () => {}, output: { write: () => true } })
  t.is(s.asm('nop').bytes[0], 0x90)
  t.throws(() => s.asm(5 as unknown as string), { code: 'EINVAL', message: /asm takes a template .* got 5/ })
  for (const bad of [-3, 'x', 0, 1.5]) t.throws(() => s.dis(bad as number), { code: 'EINVAL', message: /dis: count must be an integer in 1..10000/ })
  s.close()
})

test('a guest that touches only ports never loads iced-x86 (start-up stays small)', (t) => {
  const bundle = fileURLToPath(new URL('../dist/mshv.js', import.meta.url))
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { createRequire } from 'node:module'
import { assemble, createVm, enterRealMode } from ${JSON.stringify(bundle)}
const icedLoaded = () => Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('iced-x86'))
const vm = createVm({ backend: 'sim' })
vm.addRam(0, 0x10000)
vm.write(0x1000, [0xe6, 0x80, 0xb0, 0x00, 0xe6, 0xf4])
const vcpu = vm.createVcpu(0)
enterRealMode(vcpu, 0x1000)
const result = vcpu.run()
const afterRun = icedLoaded()
assemble('nop')
console.log(JSON.stringify({ result, afterRun, afterAssemble: icedLoaded() }))`,
    ],
    { encoding: 'utf8' },
  )
  t.is(r.status, 0, r.stderr)
  t.deepEqual(JSON.parse(r.stdout), { result: { reason: 'debug-exit', code: 0 }, afterRun: false, afterAssemble: true })
})

test('a trace slice of the guest ends exactly where the next exit slice starts', (t) => {
  const { vm, vcpu } = guest([0xe6, 0x80, 0xe6, 0x80, 0xe6, 0xf4])
  vcpu.startTrace()
  const result: RunResult = vcpu.run()
  t.is(result.reason, 'debug-exit')
  const events = vcpu.trace().traceEvents
  for (let i = 0; i + 1 < events.length; i += 2) {
    const guestSlice = events[i]!
    const exitSlice = events[i + 1]!
    t.is(guestSlice.cat, 'guest')
    t.is(exitSlice.cat, 'exit')
    t.is(guestSlice.ts + guestSlice.dur, exitSlice.ts, 'one clock reading ends one and starts the other')
  }
  vm.close()
})
