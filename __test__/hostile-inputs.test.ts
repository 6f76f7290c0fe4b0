/**
 * Hostile inputs (issue #32): ELF notes and segments made to hang, exhaust or crash the
 * loader end in a coded `EKERNEL` error, in bounded time and memory; cpio entries, ACPI
 * table sizes, huge arguments in error messages, linear-memory accesses, deeply nested
 * assembly and RAM sizes past 2 GiB get coded errors or work.
 */
import test from 'ava'
import { assemble, buildAcpiTables, COM1, cpioArchive, createSession, createVm, enterRealMode, GuestTimers, MshvError, parseElf, prepareLinux, readKernel, Serial16550, type CpioEntry } from '../index.js'
import { describe } from '../src/errors.js'

/** A minimal ELF64 x86-64 executable with the given program headers and the bytes after them. */
function elf(headers: { type: number; offset: number; paddr: number; filesz: number; memsz: number }[], tail: Uint8Array = new Uint8Array(0)): Uint8Array {
  const phoff = 64
  const bytes = new Uint8Array(phoff + 56 * headers.length + tail.length)
  const dv = new DataView(bytes.buffer)
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0)
  dv.setUint16(16, 2, true) // ET_EXEC
  dv.setUint16(18, 62, true) // x86-64
  dv.setBigUint64(32, BigInt(phoff), true)
  dv.setUint16(54, 56, true)
  dv.setUint16(56, headers.length, true)
  headers.forEach((h, i) => {
    const at = phoff + 56 * i
    dv.setUint32(at, h.type, true)
    dv.setBigUint64(at + 8, BigInt(h.offset), true)
    dv.setBigUint64(at + 24, BigInt(h.paddr), true)
    dv.setBigUint64(at + 32, BigInt(h.filesz), true)
    dv.setBigUint64(at + 40, BigInt(h.memsz), true)
  })
  bytes.set(tail, phoff + 56 * headers.length)
  return bytes
}

/** A note: namesz, descsz, type, then name and descriptor (each padded to 4 bytes). */
function note(nameSize: number, descSize: number, type: number, body: number[]): Uint8Array {
  const b = new Uint8Array(12 + body.length)
  const dv = new DataView(b.buffer)
  dv.setUint32(0, nameSize, true)
  dv.setUint32(4, descSize, true)
  dv.setUint32(8, type, true)
  b.set(body, 12)
  return b
}

const LOAD = { type: 1, offset: 0, paddr: 0x100_0000, filesz: 64, memsz: 64 }

test('an ELF note whose namesz is 2^31 is an EKERNEL error at once, not an endless walk (32-bit alignment arithmetic)', (t) => {
  const n = note(0x8000_0000, 4, 18, [0x58, 0x65, 0x6e, 0])
  const at = 64 + 56 * 2
  const bytes = elf([LOAD, { type: 4, offset: at, paddr: 0, filesz: n.length, memsz: n.length }], n)
  const start = performance.now()
  t.throws(() => parseElf(bytes, 'hostile.elf', 'ELF'), { instanceOf: MshvError, code: 'EKERNEL', message: /hostile\.elf: notes: the note at offset 176 \(name 2147483648 bytes/ })
  t.true(performance.now() - start < 1000)
})

test('an ELF note cut off at the end of the file is EKERNEL, not a RangeError', (t) => {
  // A Xen note whose name is promised but not there.
  const n = note(4, 4, 18, [])
  const at = 64 + 56 * 2
  const bytes = elf([LOAD, { type: 4, offset: at, paddr: 0, filesz: n.length, memsz: n.length }], n)
  t.throws(() => readKernel(bytes, 'cut.elf'), { instanceOf: MshvError, code: 'EKERNEL', message: /cut\.elf: notes: .* runs past its segment's end/ })
})

test("a segment's .bss is not copied: a kernel whose PT_LOAD asks for 60 MiB of zeros loads its file bytes alone", (t) => {
  const pvh = note(4, 4, 18, [0x58, 0x65, 0x6e, 0, 0, 0, 0, 1])
  const code = new Uint8Array([0xf4, 0xf4])
  const at = 64 + 56 * 2
  const bytes = elf([{ type: 1, offset: at + pvh.length, paddr: 0x100_0000, filesz: 2, memsz: 60 << 20 }, { type: 4, offset: at, paddr: 0, filesz: pvh.length, memsz: pvh.length }], new Uint8Array([...pvh, ...code]))
  const m = prepareLinux({ kernel: bytes, backend: 'sim', memory: 128 << 20 })
  try {
    t.deepEqual([...m.vm.read(0x100_0000, 4)], [0xf4, 0xf4, 0, 0])
    t.is(m.kernel.end, 0x100_0000 + (60 << 20))
  } finally {
    m.close()
  }
})

test('overlapping PT_LOAD segments are refused', (t) => {
  const bytes = elf([LOAD, { ...LOAD, paddr: 0x100_0020 }])
  t.throws(() => parseElf(bytes, 'overlap.elf', 'ELF'), { code: 'EKERNEL', message: /PT_LOAD segments at 0x1000000 \(\+0x40\) and 0x1000020 overlap/ })
})

test('65,534 PT_LOAD headers asking for 255 MiB each end in EKERNEL in bounded time, nothing zero-filled', (t) => {
  const pvh = note(4, 4, 18, [0x58, 0x65, 0x6e, 0, 0, 0, 0, 1]) // "Xen", PHYS32_ENTRY 0x1000000
  const count = 65_534
  const headers = Array.from({ length: count }, (_, i) => ({ type: 1, offset: 0, paddr: 0x100_0000 + i * 0x1000_0000, filesz: 0, memsz: 255 << 20 }))
  headers[count - 1] = { type: 4, offset: 64 + 56 * count, paddr: 0, filesz: pvh.length, memsz: pvh.length }
  const bytes = elf(headers, pvh)
  const start = performance.now()
  t.throws(() => prepareLinux({ kernel: bytes, backend: 'sim', memory: 64 << 20 }), { instanceOf: MshvError, code: 'EKERNEL', message: /past the 64 MiB of RAM/ })
  t.true(performance.now() - start < 5000, `${performance.now() - start} ms`)
})

test('cpioArchive refuses what would write a corrupt or escaping archive: a mode of -1, device numbers past 32 bits or as strings, .., NUL, TRAILER!!!', (t) => {
  const bad: [CpioEntry, RegExp][] = [
    [{ path: 'f', type: 'file', data: 'x', mode: -1 }, /mode must be permission bits/],
    [{ path: 'c', type: 'char', major: 2 ** 32, minor: 0 }, /major must be an integer in 0\.\.0xffffffff/],
    [{ path: 'c', type: 'char', major: '5' as unknown as number, minor: 1 }, /major must be an integer/],
    [{ path: 'a/../../etc/passwd', type: 'file', data: 'x' }, /without '\.\.'/],
    [{ path: 'a\0b', type: 'dir' }, /NUL/],
    [{ path: 'TRAILER!!!', type: 'dir' }, /TRAILER!!!/],
  ]
  for (const [entry, message] of bad) t.throws(() => cpioArchive([entry]), { instanceOf: MshvError, code: 'EINVAL', message })
  t.notThrows(() => cpioArchive([{ path: 'a/b..c', type: 'dir' }]), 'a name containing dots is a name')
})

test('buildAcpiTables(2^32 - 1) is EINVAL at once, not a build until the heap runs out', (t) => {
  t.throws(() => buildAcpiTables(2 ** 32 - 1), { instanceOf: MshvError, code: 'EINVAL', message: /vcpus must be an integer in 1\.\.255, got 4294967295/ })
  t.throws(() => buildAcpiTables(0), { code: 'EINVAL' })
})

test('an error message names a huge argument by its size, in bounded time', (t) => {
  const huge = new Array<number>(8_000_000).fill(7)
  const start = performance.now()
  t.is(describe(huge), 'an array of 8000000 elements')
  t.is(describe(new Uint8Array(1 << 24)), 'a Uint8Array of 16777216 bytes')
  const wide: Record<string, number> = {}
  for (let i = 0; i < 200_000; i++) wide[`k${i}`] = i
  t.true(describe(wide).length <= 70)
  t.true(performance.now() - start < 1000, `${performance.now() - start} ms`)
})

test('the linear-memory accessors check their arguments: a number address or a size of 200,000 is EINVAL', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const v = vm.createVcpu(0)
  try {
    const mem = v.memory()
    t.throws(() => mem.read(0x1000 as unknown as bigint, 4), { code: 'EINVAL', message: /linear address must be a bigint/ })
    t.throws(() => mem.read(0x1000n, 200_000), { code: 'EINVAL', message: /size must be 1\.\.8 bytes, got 200000/ })
    t.throws(() => mem.write(0x1000n, 4, 5 as unknown as bigint), { code: 'EINVAL', message: /value must be a bigint/ })
    mem.write(0x1000n, 4, 0x1234_5678n)
    t.is(mem.read(0x1000n, 4), 0x1234_5678n)
  } finally {
    vm.close()
  }
})

test('assemble() of 100,000 nested parentheses is EASM, not a RangeError', (t) => {
  const source = `mov eax, ${'('.repeat(100_000)}1${')'.repeat(100_000)}`
  t.throws(() => assemble(source), { instanceOf: MshvError, code: 'EASM', message: /nests too deeply/ })
})

test('createSession({ ramMiB: 2048 }) maps 2 GiB (a 32-bit shift made it negative)', (t) => {
  const s = createSession({ backend: 'sim', ramMiB: 2048, output: { write: () => true }, print: () => undefined })
  try {
    t.is(s.vm.ramSize(), 2048 * 1024 * 1024)
  } finally {
    s.vm.close()
  }
})

test('a COM1 flood keeps nothing when onByte takes the bytes, and at most keepOutput bytes (the last ones) when nothing does', (t) => {
  let seen = 0
  const withCallback = new Serial16550(COM1, { onByte: () => seen++ })
  const kept = new Serial16550(COM1, { keepOutput: 1000 })
  for (let i = 0; i < 300_000; i++) {
    withCallback.ioWrite(COM1, 1, 0x41 + (i % 26))
    kept.ioWrite(COM1, 1, 0x41 + (i % 26))
  }
  t.is(seen, 300_000)
  t.is(withCallback.text(), '')
  const text = kept.text()
  t.is(text.length, 1000)
  t.is(text.at(-1), String.fromCharCode(0x41 + (299_999 % 26)), 'the last bytes are the ones kept')
})

test('feed() takes at most inputLimit bytes and says how many (back-pressure); the guest drains 64 KiB in bounded time', (t) => {
  const s = new Serial16550(COM1)
  const start = performance.now()
  t.is(s.feed(new Uint8Array(20 << 20).fill(0x61)), 64 * 1024)
  t.is(s.buffered, 64 * 1024 - 16, '16 bytes are in the receive FIFO already')
  let read = 0
  while ((s.ioRead(COM1 + 5) & 1) !== 0) {
    s.ioRead(COM1)
    read++
  }
  t.is(read, 64 * 1024)
  t.is(s.feed('more'), 4, 'room again once the guest read')
  t.true(performance.now() - start < 2000, `${performance.now() - start} ms`)
})

test('a timer rescheduled at every exit leaves no dead entries behind (cancel removes it)', (t) => {
  let now = 0
  const timers = new GuestTimers(() => now)
  let timer = timers.after(1_000_000_000, () => {})
  for (let i = 0; i < 100_000; i++) {
    timer.cancel()
    now += 10
    timer = timers.after(1_000_000_000, () => {})
  }
  t.is(timers.pending, 1)
  t.throws(() => timers.every(5 as unknown as (n: number) => number, () => {}), { code: 'EINVAL' })
})

test('a short source that asks for gigabytes is EASM once the program passes 64 MiB, not an exhausted heap', (t) => {
  const source = Array.from({ length: 200 }, () => 'times 16000000 db 0').join('\n')
  const start = performance.now()
  t.throws(() => assemble(source), { instanceOf: MshvError, code: 'EASM', message: /more than 67108864 bytes/ })
  t.true(performance.now() - start < 5000, `${performance.now() - start} ms`)
})

test('vcpu.native.setCpuid with a sparse array of 2^32-1 answers is EINVAL, not an abort', (t) => {
  const vm = createVm({ backend: 'sim' })
  const v = vm.createVcpu(0)
  try {
    const sparse: unknown[] = []
    sparse.length = 2 ** 32 - 1
    t.throws(() => v.native.setCpuid(sparse as Parameters<typeof v.native.setCpuid>[0]), { instanceOf: MshvError, code: 'EINVAL', message: /at most 4096 answers, got an array of 4294967295/ })
    t.notThrows(() => v.native.setCpuid([]))
  } finally {
    vm.close()
  }
})

test("a VM takes at most 4096 RAM regions and says so with ENOMEM (32,561 regions of 4 KiB exhausted the kernel's map count)", (t) => {
  const vm = createVm({ backend: 'sim' })
  try {
    for (let i = 0; i < 4096; i++) vm.addRam(i * 0x2000, 0x1000)
    t.throws(() => vm.addRam(0x4000_0000, 0x1000), { instanceOf: MshvError, code: 'ENOMEM', message: /holds 4096 RAM and ROM regions already/ })
  } finally {
    vm.close()
  }
})

/** A real-mode guest that writes port 0x80 in a loop (or halts with interrupts on, `idle`). */
function portLoop(idle = false) {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  vm.write(0x1000, idle ? [0xfb, 0xf4, 0xeb, 0xfd] : [0xe6, 0x80, 0xeb, 0xfc]) // sti; hlt; jmp $-1 | out 0x80, al; jmp $-2
  const v = vm.createVcpu(0)
  enterRealMode(v, 0x1000)
  return { vm, v }
}

test('a device that powers off and closes the VM in its callback ends vcpu.run() and vm.run() with what it asked, not a TypeError', async (t) => {
  for (const stop of [true, false]) {
    const { vm, v } = portLoop()
    let n = 0
    vm.bus.register(0x80, 1, {
      ioWrite: () => {
        if (++n < 5) return
        if (stop) vm.requestStop({ reason: 'poweroff' })
        vm.close()
      },
    })
    t.deepEqual(v.run(), stop ? { reason: 'poweroff' } : { reason: 'cancelled' })
  }
  const { vm } = portLoop()
  vm.bus.register(0x80, 1, { ioWrite: () => (vm.requestStop({ reason: 'poweroff' }), vm.close()) })
  t.deepEqual(await vm.run({ timeoutMs: 5000 }), { reason: 'poweroff', vcpu: 0 })
})

test('vm.run() settles when the VM is closed while every vCPU is idle, and when every vCPU is closed under it', async (t) => {
  const a = portLoop(true)
  const runA = a.vm.run({ timeoutMs: 10_000 })
  setTimeout(() => a.vm.close(), 50)
  t.deepEqual(await runA, { reason: 'cancelled' })
  const b = portLoop(true)
  const runB = b.vm.run({ timeoutMs: 10_000 })
  setTimeout(() => b.v.close(), 50)
  t.deepEqual(await Promise.race([runB, new Promise((r) => setTimeout(() => r('hung'), 3000))]), { reason: 'cancelled' })
  b.vm.close()
})

test('vm.run({ timeoutMs }) ends on time whatever a turn would take: a quantum of 2e9 instructions, a real-time slice of 5 s', async (t) => {
  for (const options of [{ quantum: 2_000_000_000 }, { sliceMs: 5000 }]) {
    const vm = createVm({ backend: 'sim', clock: 'quantum' in options ? 'deterministic' : 'realtime' })
    vm.addRam(0, 1 << 20)
    vm.write(0x1000, [0xeb, 0xfe]) // jmp $
    enterRealMode(vm.createVcpu(0), 0x1000)
    const start = performance.now()
    t.deepEqual(await vm.run({ timeoutMs: 50, ...options }), { reason: 'timeout' })
    t.true(performance.now() - start < 1500, `${JSON.stringify(options)}: ${performance.now() - start} ms`)
    vm.close()
  }
})
