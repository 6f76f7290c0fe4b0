/**
 * `vm.run()`'s threaded path: each vCPU on a native thread of its own, its exits handed
 * to the JavaScript thread (`crates/mshv-napi/src/threads.rs`, `src/scheduler.ts`). The
 * sim runs it with more than one vCPU on the real-time clock, by the same code the mshv
 * backend runs for every VM, so CI runs what a host runs.
 */
import test from 'ava'
import { readFile } from 'node:fs/promises'
import { GuestFatalError, MshvError, enterLongMode } from '../index.js'
import { native } from '../src/native.js'
import { longModeVm } from './helpers.js'

/** Two vCPUs each count `n` into one dword with LOCK INC and exit on a port each time. */
const racing = (n: number): string => `
start:
  mov ecx, ${n}
.l0:
  lock inc dword [counter]
  out 0x80, al
  dec ecx
  jnz .l0
  lock inc dword [done]
.w0:
  pause
  cmp dword [done], 2
  jne .w0
  mov eax, [counter]
  shr eax, 8
  out 0xf4, al
cpu1:
  mov ecx, ${n}
.l1:
  lock inc dword [counter]
  out 0x81, al
  dec ecx
  jnz .l1
  lock inc dword [done]
  cli
  hlt
counter: dd 0
done: dd 0
`

test('two vCPUs on threads of their own: every port exit handled on the JavaScript thread, no LOCK INC lost', async (t) => {
  const n = 20_000
  const vm = longModeVm(racing(n), {}, { vcpus: 2, clock: 'realtime' })
  const outs = [0, 0]
  vm.bus.register(0x80, 2, { ioWrite: (port) => void (outs[port - 0x80] = (outs[port - 0x80] ?? 0) + 1) }, 'counters')
  const r = await vm.run({ timeoutMs: 30_000 })
  t.deepEqual(r, { reason: 'debug-exit', code: ((2 * n) >> 8) & 0xff, vcpu: 0 })
  t.deepEqual(outs, [n, n])
  t.is(vm.cpus[0]?.runState, 'paused')
  vm.close()
})

test("a device's error on vCPU 1's thread rejects vm.run() once, naming the vCPU; nothing is an unhandled rejection", async (t) => {
  const vm = longModeVm(
    `
  start:
    out 0x80, al
    jmp start
  cpu1:
    mov ecx, 1000
  .l:
    out 0x80, al
    dec ecx
    jnz .l
    in al, 0x84
    jmp cpu1
  `,
    {},
    { vcpus: 2, clock: 'realtime' },
  )
  vm.bus.register(0x80, 1, { ioWrite: () => {} }, 'sink')
  vm.bus.register(0x84, 1, { ioRead: () => 'not a number' as unknown as number }, 'broken device')
  const unhandled: unknown[] = []
  const listen = (e: unknown): void => void unhandled.push(e)
  process.on('unhandledRejection', listen)
  try {
    const e = await t.throwsAsync(vm.run({ timeoutMs: 30_000 }), { instanceOf: MshvError })
    t.is(e?.code, 'EDEVICE')
    t.regex(e?.message ?? '', /^vCPU 1: broken device: ioRead\(0x84, 1\) returned/)
    await new Promise((resolve) => setTimeout(resolve, 50))
    t.deepEqual(unhandled, [])
    // Both vCPUs are back between runs: a synchronous run of vCPU 0 works (no cancel left over).
    t.is(vm.cpus[0]?.runState, 'paused')
    t.deepEqual(vm.cpus[0]?.run({ maxExits: 3 }), { reason: 'exits' })
  } finally {
    process.off('unhandledRejection', listen)
    vm.close()
  }
})

test("a triple fault on vCPU 1's thread rejects vm.run() with a GuestFatalError naming the vCPU and keeping the exceptions", async (t) => {
  const vm = longModeVm(
    `
  start:
    out 0x80, al
    jmp start
  cpu1:
    lidt [rel empty]
    ud2
  empty:
    dw 0
    dq 0
  `,
    {},
    { vcpus: 2, clock: 'realtime' },
  )
  vm.bus.register(0x80, 1, { ioWrite: () => {} }, 'sink')
  try {
    const e = await t.throwsAsync(vm.run({ timeoutMs: 30_000 }), { instanceOf: GuestFatalError })
    t.is(e?.code, 'EGUEST_FATAL')
    t.regex(e?.message ?? '', /^vCPU 1: the guest hit an unrecoverable exception \(triple fault\): first #UD, then #GP/)
    t.deepEqual(e?.exceptions?.slice(0, 2).map((x) => x.name), ['#UD', '#GP'])
  } finally {
    vm.close()
  }
})

test("eight vCPUs, seven halted in the hypervisor, hold none of libuv's four pool threads: file reads complete and the BSP runs on", async (t) => {
  const aps = Array.from({ length: 7 }, (_, i) => `cpu${i + 1}:\n  sti\n  hlt\n  jmp cpu${i + 1}\n`).join('')
  const vm = longModeVm(
    `
  start:
    in al, 0x82
    test al, al
    jz start
    mov al, 8
    out 0xf4, al
  ${aps}
  `,
    {},
    { vcpus: 8, clock: 'realtime' },
  )
  let read = false
  // Pool work, started while every AP waits in its halt: it completes within the run.
  const reads = Promise.all(Array.from({ length: 8 }, () => readFile(new URL(import.meta.url)))).then(() => (read = true))
  vm.bus.register(0x82, 1, { ioRead: () => (read ? 1 : 0) }, 'read done')
  t.deepEqual(await vm.run({ timeoutMs: 30_000 }), { reason: 'debug-exit', code: 8, vcpu: 0 })
  await reads
  vm.close()
})

test('an exit a thread posted after the run was decided is handled at the next run: none lost, none twice', async (t) => {
  const n = 5000
  const vm = longModeVm(
    `
  start:
    cmp dword [counter], ${n / 2}
    jb start
    mov al, 1
    out 0xf4, al
    cli
    hlt
  cpu1:
    mov ecx, ${n}
  .l:
    inc dword [counter]
    mov eax, [counter]
    out 0x81, al
    dec ecx
    jnz .l
    mov al, 2
    out 0xf4, al
  counter: dd 0
  `,
    {},
    { vcpus: 2, clock: 'realtime' },
  )
  const seen: number[] = []
  vm.bus.register(0x81, 1, { ioWrite: (_port, _size, value) => void seen.push(value) }, 'sequence')
  t.deepEqual(await vm.run({ timeoutMs: 30_000 }), { reason: 'debug-exit', code: 1, vcpu: 0 })
  t.true(seen.length < n, 'vCPU 1 was stopped half-way')
  t.deepEqual(await vm.run({ timeoutMs: 30_000 }), { reason: 'debug-exit', code: 2, vcpu: 1 })
  t.is(seen.length, n)
  t.true(
    seen.every((v, i) => v === ((i + 1) & 0xff)),
    'each OUT reached the device once, in order',
  )
  vm.close()
})

test('timeoutMs, cancel() and close() end a threaded run promptly, and leave no cancel behind', async (t) => {
  const spin = `
  start:
    jmp start
  cpu1:
    out 0x80, al
    jmp cpu1
  `
  const vm = longModeVm(spin, {}, { vcpus: 2, clock: 'realtime' })
  vm.bus.register(0x80, 1, { ioWrite: () => {} }, 'sink')
  t.deepEqual(await vm.run({ timeoutMs: 50 }), { reason: 'timeout' })
  setTimeout(() => vm.cancel(), 50)
  t.deepEqual(await vm.run({ timeoutMs: 30_000 }), { reason: 'cancelled' })
  t.deepEqual(vm.cpus[1]?.run({ maxExits: 2 }), { reason: 'exits' }, 'no cancel was left latched')
  const run = vm.run({ timeoutMs: 30_000 })
  setTimeout(() => vm.close(), 50)
  t.deepEqual(await run, { reason: 'cancelled' })
})

test('vm.run({ threads }) is checked: a boolean; with one vCPU on the deterministic clock, true puts it on its thread and the run ends as on this one', async (t) => {
  const vm = longModeVm('start:\n  mov al, 3\n  out 0xf4, al\n', {})
  await t.throwsAsync(vm.run({ threads: 'yes' as unknown as boolean }), { code: 'EINVAL', message: /threads must be true or false, got 'yes'/ })
  t.deepEqual(await vm.run({ threads: true }), { reason: 'debug-exit', code: 3, vcpu: 0 })
  vm.close()
})

test('one vCPU on the real-time clock runs on its own thread when asked (threads: true), as on mshv', async (t) => {
  const vm = longModeVm(
    `
  start:
    mov ecx, 1000
  .l:
    out 0x80, al
    dec ecx
    jnz .l
    mov al, 7
    out 0xf4, al
  `,
    {},
    { clock: 'realtime' },
  )
  let outs = 0
  vm.bus.register(0x80, 1, { ioWrite: () => void outs++ }, 'sink')
  t.deepEqual(await vm.run({ threads: true, timeoutMs: 30_000 }), { reason: 'debug-exit', code: 7, vcpu: 0 })
  t.is(outs, 1000)
  vm.close()
})

test('VcpuThreads checks its arguments: EINVAL naming the value, never a crash', (t) => {
  const vm = longModeVm('start:\n  out 0x80, al\n  jmp start\n', {}, { clock: 'realtime' })
  vm.bus.register(0x80, 1, { ioWrite: () => {} }, 'sink')
  const v = vm.cpus[0]?.native
  if (!v) return t.fail('no vCPU')
  t.throws(() => new native.VcpuThreads([]), { code: 'EINVAL', message: /expected 1 to 255 vCPUs, got 0/ })
  t.throws(() => new native.VcpuThreads([v, v]), { code: 'EINVAL', message: /vCPU 0 is listed twice/ })
  const g = new native.VcpuThreads([v])
  t.throws(() => g.resume(3), { code: 'EINVAL', message: /no member 3 \(the group has 1\)/ })
  const next = g.nextFunction()
  for (const bad of [Number.NaN, -1, Number.POSITIVE_INFINITY]) t.throws(() => next(-1, bad), { message: /timeoutMs must be a finite number from 0, got/ })
  t.throws(() => (next as unknown as (a: unknown, b: unknown) => number)('x', 0), { message: /expected \(resume: number, timeoutMs: number\)/ })
  t.is(next(-1, 0), -1, 'nothing posted')
  g.resume(0)
  t.throws(() => g.resume(0), { code: 'EINVAL', message: /member 0 is running already/ })
  const r = next(-1, 10_000)
  t.true(r >= 0, 'the OUT was posted')
  g.end()
  t.throws(() => g.resume(0), { code: 'EINVAL', message: /the group has ended/ })
  t.is(g.takeError(0), null)
  vm.close()
})

test('on the deterministic clock two vCPUs take turns on threads of their own, and a replay repeats exactly: the same interleaving of exits, the same instructions', async (t) => {
  const replay = async (): Promise<{ order: string; instructions: number[]; r: unknown }> => {
    const vm = longModeVm(racing(3000), {}, { vcpus: 2 })
    const order: number[] = []
    vm.bus.register(0x80, 2, { ioWrite: (port) => void order.push(port - 0x80) }, 'counters')
    const r = await vm.run({ timeoutMs: 60_000, quantum: 5000 })
    const instructions = vm.cpus.map((c) => c.stats().instructions)
    vm.close()
    return { order: order.join(''), instructions, r }
  }
  const a = await replay()
  const b = await replay()
  t.deepEqual(a.r, { reason: 'debug-exit', code: ((2 * 3000) >> 8) & 0xff, vcpu: 0 })
  t.true(a.order.includes('01') && a.order.includes('10'), 'the vCPUs took turns')
  t.is(b.order, a.order)
  t.deepEqual(b.instructions, a.instructions)
})

test('a threaded run that ends while a vCPU waits in its HLT leaves it halted, and enterLongMode puts it back to running for the next run', async (t) => {
  const loops = 500
  const vm = longModeVm(
    `
  start:
    mov ecx, ${loops}
  .l0:
    out 0x80, al
    dec ecx
    jnz .l0
    cli
    hlt
  cpu1:
    mov ecx, ${loops}
  .l1:
    out 0x80, al
    dec ecx
    jnz .l1
    cli
    hlt
  `,
    {},
    { vcpus: 2, clock: 'realtime' },
  )
  let seen = 0
  vm.bus.register(0x80, 1, { ioWrite: () => void (++seen === 2 * loops && vm.requestStop({ reason: 'debug-exit', code: 0 })) }, 'pair')
  const entries = vm.cpus.map((v) => v.regs.get('rip'))
  for (let pass = 0; pass < 3; pass++) {
    seen = 0
    // The entry state again, as a VMM restarts a guest: the halt it may wait in ends.
    if (pass > 0) vm.cpus.forEach((v, i) => enterLongMode(v, vm, entries[i] as bigint, { sp: 0x8_0000 - i * 0x1_0000 }))
    const r = await vm.run({ timeoutMs: 20_000 })
    t.is(r.reason, 'debug-exit', `pass ${pass}: ${JSON.stringify(r)}`)
    t.is(seen, 2 * loops, `pass ${pass}`)
  }
  vm.close()
})

test('on the deterministic clock a vCPU spinning with PAUSE gives its turn to the vCPU it waits for: a handshake of 200 rounds costs the spinners little, and replays exactly', async (t) => {
  // vCPU 0 and vCPU 1 hand a token back and forth, each spinning on PAUSE until it is theirs.
  const source = `
  start:
    mov ecx, 200
  .l0:
    pause
    cmp dword [token], 0
    jne .l0
    mov dword [token], 1
    dec ecx
    jnz .l0
    out 0xf4, al
  cpu1:
  .l1:
    pause
    cmp dword [token], 1
    jne .l1
    mov dword [token], 0
    jmp .l1
  token: dd 0
  `
  const runs: number[][] = []
  for (let pass = 0; pass < 2; pass++) {
    const vm = longModeVm(source, {}, { vcpus: 2, clock: 'deterministic' })
    const r = await vm.run({ timeoutMs: 60_000 })
    t.is(r.reason, 'debug-exit')
    runs.push(vm.cpus.map((v) => v.stats().instructions))
    vm.close()
  }
  t.deepEqual(runs[0], runs[1], 'a replay repeats the same instructions')
  // Without yielding, each round would cost a spinner its whole quantum (100,000 instructions).
  const [a, b] = runs[0] as [number, number]
  t.true(a + b < 200 * 2_000, `${a} + ${b} instructions for 200 rounds`)
})
