import test from 'ava'
import { PIC_INIT, PIT_1KHZ } from './helpers.js'
import { addPcPlatform, assemble, createVm, enterRealMode, loadInterruptTables, MshvError, type Vcpu, type Vm } from '../index.js'

/** A sim VM with 1 MiB of RAM, `source` assembled at 0x1000 and a vCPU at it. */
function realModeVm(source: string, clock: 'deterministic' | 'realtime' = 'deterministic'): Vm {
  const vm = createVm({ backend: 'sim', clock })
  vm.addRam(0, 1 << 20)
  vm.write(0x1000, assemble(source, { bitness: 16, address: 0x1000 }).bytes)
  enterRealMode(vm.createVcpu(0), 0x1000)
  return vm
}

const PIT_VIA_PIC = `
  cli
  xor ax, ax
  mov ds, ax
  mov word [0x20*4], handler
  mov word [0x20*4+2], 0
  ${PIC_INIT(0xfe)}
  ${PIT_1KHZ}
wait:
  cli
  cmp word [count], 10
  jae done
  sti
  hlt
  jmp wait
done:
  rdtsc
  mov [0x600], eax
  mov [0x604], edx
  mov al, [count]
  out 0xf4, al
handler:
  inc word [count]
  mov al, 0x20
  out 0x20, al
  iret
count: dw 0
`

test('PIT ticks reach a real-mode guest through the 8259 (IRQ 0 -> ExtINT -> vector 0x20), 1 ms apart in guest time', async (t) => {
  const vm = realModeVm(PIT_VIA_PIC)
  const pc = addPcPlatform(vm)
  const r = await vm.run({ timeoutMs: 20_000 })
  t.deepEqual(r, { reason: 'debug-exit', code: 10, vcpu: 0 })
  t.is(pc.pic.stats.requested, 10)
  // Ten periods of 1193 PIT clocks: 9.998 ms of guest time; TSC at 1 GHz.
  const tsc = new DataView(vm.read(0x600, 8).buffer).getBigUint64(0, true)
  t.true(tsc >= 9_998_000n && tsc < 10_100_000n, `TSC ${tsc}`)
  vm.close()
})

test('the deterministic clock replays an interrupt-driven guest exactly: same exits, same guest time', async (t) => {
  const once = async (): Promise<unknown> => {
    const vm = realModeVm(PIT_VIA_PIC)
    addPcPlatform(vm)
    await vm.run({ timeoutMs: 20_000 })
    const s = vm.cpus[0]?.stats()
    const out = { time: vm.guestTimeNs(), tsc: vm.read(0x600, 8), exits: s?.exits, byType: s?.exitsByType, instructions: s?.instructions }
    vm.close()
    return out
  }
  const first = await once()
  t.deepEqual(await once(), first)
})

/** PIT_VIA_PIC, but busy between ticks: the count it reaches depends on the instruction each tick interrupts. */
const PIT_BUSY = PIT_VIA_PIC.replace('  sti\n  hlt\n  jmp wait', '  sti\n  add dword [0x608], 1\n  jmp wait')

test('the deterministic replay does not depend on host time: any sliceMs gives the same exits, counts and guest time', async (t) => {
  const once = async (sliceMs: number): Promise<unknown> => {
    const vm = realModeVm(PIT_BUSY)
    addPcPlatform(vm)
    t.like(await vm.run({ timeoutMs: 20_000, sliceMs }), { reason: 'debug-exit', code: 10 })
    const s = vm.cpus[0]?.stats()
    const out = { time: vm.guestTimeNs(), spins: vm.read(0x608, 4), exits: s?.exits, byType: s?.exitsByType, instructions: s?.instructions }
    vm.close()
    return out
  }
  // 1 µs: the event loop gets a turn after every round.
  t.deepEqual(await once(0.001), await once(1000))
})

test('the same guest runs in real time: the ticks follow the host clock', async (t) => {
  const vm = realModeVm(PIT_VIA_PIC, 'realtime')
  addPcPlatform(vm)
  const start = performance.now()
  const r = await vm.run({ timeoutMs: 20_000 })
  // In real time a loaded host may deliver two late ticks back to back: the second can
  // come between the handler's IRET and the loop's CLI, so the count may pass 10.
  t.like(r, { reason: 'debug-exit', vcpu: 0 })
  t.true(r.reason === 'debug-exit' && r.code >= 10, JSON.stringify(r))
  t.true(performance.now() - start >= 9, 'ten 1 ms ticks took at least 9 ms of host time')
  vm.close()
})

test('the i8042 reset line ends the run with reason reset', async (t) => {
  const vm = realModeVm('mov al, 0xfe\nout 0x64, al\nhlt')
  const pc = addPcPlatform(vm)
  t.deepEqual(await vm.run(), { reason: 'reset', vcpu: 0 })
  t.is(pc.i8042.resets, 1)
  vm.close()
})

test('the event loop runs while the VM does: a timer cancels a guest that spins forever', async (t) => {
  const vm = realModeVm('spin: jmp spin')
  let fired = false
  setTimeout(() => {
    fired = true
    vm.cancel()
  }, 20)
  t.deepEqual(await vm.run({ timeoutMs: 10_000 }), { reason: 'cancelled' })
  t.true(fired)
  vm.close()
})

test('a halted guest waits without blocking: an interrupt from a JavaScript timer wakes it', async (t) => {
  for (const clock of ['deterministic', 'realtime'] as const) {
    const vm = realModeVm(
      `
      xor ax, ax
      mov ds, ax
      mov word [0x40*4], handler
      mov word [0x40*4+2], 0
      sti
      hlt
      out 0xf4, al
      handler:
      mov al, 0x40
      iret
    `,
      clock,
    )
    // Real mode: the APIC is software-disabled, so the request goes as an ExtINT, as
    // the 8259 would send it, through the LINT0 createVcpu left unmasked in ExtINT mode.
    setTimeout(() => vm.requestInterrupt({ kind: 'extint', vector: 0x40 }), 10)
    t.deepEqual(await vm.run({ timeoutMs: 10_000 }), { reason: 'debug-exit', code: 0x40, vcpu: 0 }, clock)
    vm.close()
  }
})

test('bad interrupt requests are coded errors naming the value', (t) => {
  const vm = realModeVm('hlt')
  const e = (f: () => void): MshvError => t.throws(f, { instanceOf: MshvError }) as MshvError
  t.like(e(() => vm.requestInterrupt({ vector: 5 })), { code: 'EINVAL' })
  t.regex(e(() => vm.requestInterrupt({ vector: 5 })).message, /vector 5/)
  t.regex(e(() => vm.requestInterrupt({ vector: 0x40, destination: 3 })).message, /APIC id 0x3/)
  t.regex(e(() => vm.requestInterrupt({ vector: 0x40, kind: 'smi' as 'nmi' })).message, /'smi'/)
  t.regex(e(() => vm.requestInterrupt({ vector: 0x40, pin: 3 } as object)).message, /unknown field 'pin'/)
  t.regex(e(() => vm.signalMsi(0x1234_0000, 0x40)).message, /0x12340000/)
  t.regex(e(() => vm.timers.at(-1, () => {})).message, /-1/)
  t.regex(e(() => addPcPlatform(vm).irq(16)).message, /got 16/)
  t.regex(e(() => loadInterruptTables(vm.cpus[0] as Vcpu, vm, { 256: 0x1000 })).message, /vector must be 0\.\.255, got '256'/)
  vm.close()
  t.like(e(() => vm.requestInterrupt({ vector: 0x40 })), { code: 'ECLOSED' })
})

test('vcpu.run(): HLT with interrupts enabled is idle, not a halt exit; runAsync onHalt wait sleeps until an interrupt', async (t) => {
  const source = `
    xor ax, ax
    mov ds, ax
    mov word [0x2*4], nmi
    mov word [0x2*4+2], 0
    sti
    hlt
    mov al, 7
    out 0xf4, al
  nmi:
    iret
  `
  const vm = realModeVm(source)
  const vcpu = vm.cpus[0]
  if (!vcpu) throw new Error('no vCPU')
  t.deepEqual(vcpu.run(), { reason: 'idle' })
  t.deepEqual(vcpu.run(), { reason: 'idle' }, 'still halted: nothing woke it')
  t.throws(() => vcpu.run({ blockOnHalt: true }), { code: 'EINVAL', message: /runAsync/ })
  setTimeout(() => vm.requestInterrupt({ kind: 'nmi' }), 10)
  t.deepEqual(await vcpu.runAsync({ onHalt: 'wait', timeoutMs: 10_000 }), { reason: 'debug-exit', code: 7 })
  vm.close()
})
