/**
 * Hostile guests (issue #32): guests built to hold the host — a local APIC timer storm,
 * `rep outsb` floods, a UART flood, loops rewriting the RTC and the PIT — on both clocks.
 * For each, `vm.run({ timeoutMs })`, `vm.cancel()` and `vm.close()` still end the run
 * promptly, and the heap stays bounded however long the guest keeps at it.
 */
import test from 'ava'
import { addPcPlatform, type Vm } from '../index.js'
import { longModeVm, PIT_1KHZ } from './helpers.js'

/** A guest: its 64-bit source (entry `start`), its interrupt handlers, and what else the VM needs. */
interface Hostile {
  source: string
  handlers?: Readonly<Record<number, string>>
  setUp?: (vm: Vm) => void
}

const GUESTS: Record<string, Hostile> = {
  // SDM 3A 11.5.4: divide by 1, initial count 1, periodic: a tick every nanosecond.
  'a local APIC timer storm (periodic, divide 1, count 1)': {
    source: `
    start:
      mov ebx, 0xfee00000
      mov dword [rbx+0xf0], 0x1ff
      mov dword [rbx+0x3e0], 0xb
      mov dword [rbx+0x320], 0x20040
      mov dword [rbx+0x380], 1
      sti
    spin:
      jmp spin
    tick:
      mov dword [rbx+0xb0], 0
      iretq
    `,
    handlers: { 0x40: 'tick' },
  },
  // Each exit hands a TypeScript device a batch of STRING_IO_BATCH bytes; the instruction restarts.
  'a rep outsb flood into a TypeScript device': {
    source: `
    start:
      mov dx, 0x80
    again:
      mov rcx, 0x7fffffff
      xor esi, esi
      rep outsb
      jmp again
    `,
    setUp: (vm) => {
      let bytes = 0
      vm.bus.register(0x80, 1, { ioWrite: () => void bytes++ })
    },
  },
  // Nobody reads COM1: the UART keeps only its last keepOutput bytes.
  'a UART flood nobody reads': {
    source: `
    start:
      mov dx, 0x3f8
      mov al, 0x41
    again:
      out dx, al
      jmp again
    `,
    setUp: (vm) => void addPcPlatform(vm),
  },
  // Every write re-arms a device timer: the old one must leave the queue at once.
  'a loop rewriting the RTC seconds and reprogramming the PIT': {
    source: `
    start:
      mov al, 0xff
      out 0x21, al
      out 0xa1, al
    again:
      mov al, 0
      out 0x70, al
      out 0x71, al
      ${PIT_1KHZ}
      jmp again
    `,
    setUp: (vm) => void addPcPlatform(vm),
  },
}

const CLOCKS = ['deterministic', 'realtime'] as const

function make(guest: Hostile, clock: (typeof CLOCKS)[number]): Vm {
  const vm = longModeVm(guest.source, guest.handlers ?? {}, { clock })
  guest.setUp?.(vm)
  return vm
}

/** The heap after a full collection (ava runs with --expose-gc). */
function heap(): number {
  globalThis.gc?.()
  return process.memoryUsage().heapUsed
}

/** How long `vm.run()` takes to settle after `stop` is called 50 ms into it, and what it returned. */
async function stopAfter50(vm: Vm, stop: () => void): Promise<{ result: unknown; ms: number }> {
  const run = vm.run()
  let asked = 0
  setTimeout(() => {
    asked = performance.now()
    stop()
  }, 50)
  const result = await Promise.race([run, new Promise((r) => setTimeout(() => r('hung'), 5000))])
  return { result, ms: performance.now() - asked }
}

for (const [name, guest] of Object.entries(GUESTS)) {
  for (const clock of CLOCKS) {
    test(`${name} (${clock} clock): timeoutMs, cancel() and close() still end the run at once`, async (t) => {
      const vm = make(guest, clock)
      const start = performance.now()
      t.deepEqual(await vm.run({ timeoutMs: 100 }), { reason: 'timeout' })
      const over = performance.now() - start - 100
      // A few milliseconds on an idle host; the bound leaves room for a loaded CI machine.
      t.true(over < 250, `timeoutMs 100 overran by ${over.toFixed(1)} ms`)
      const cancelled = await stopAfter50(vm, () => vm.cancel())
      t.deepEqual(cancelled.result, { reason: 'cancelled' })
      t.true(cancelled.ms < 250, `cancel() took ${cancelled.ms.toFixed(1)} ms`)
      const closed = await stopAfter50(vm, () => vm.close())
      t.deepEqual(closed.result, { reason: 'cancelled' })
      t.true(closed.ms < 250, `close() took ${closed.ms.toFixed(1)} ms`)
      t.log(`overrun ${over.toFixed(1)} ms, cancel ${cancelled.ms.toFixed(1)} ms, close ${closed.ms.toFixed(1)} ms`)
    })

    test.serial(`${name} (${clock} clock): the heap does not grow with the guest's work`, async (t) => {
      const vm = make(guest, clock)
      // Warm up (code compiled, buffers at their bounds), then the same again twice over.
      await vm.run({ timeoutMs: 200 })
      const warm = heap()
      const before = vm.cpus[0]?.stats().exits ?? 0
      await vm.run({ timeoutMs: 400 })
      const exits = (vm.cpus[0]?.stats().exits ?? 0) - before
      const grown = heap() - warm
      vm.close()
      t.true(grown < 4 << 20, `the heap grew by ${(grown / 2 ** 20).toFixed(1)} MiB over ${exits} exits`)
      t.log(`${exits} exits, heap ${grown >= 0 ? '+' : ''}${(grown / 1024).toFixed(0)} KiB`)
    })
  }
}
