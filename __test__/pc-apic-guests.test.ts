import test from 'ava'
import { addPcPlatform, createVm, IoApic, WiredIrq, type Vcpu } from '../index.js'
import { longModeVm, PIC_INIT, PIT_1KHZ } from './helpers.js'

/** RBX = the local APIC; software-enabled (SVR bit 8). */
const APIC_ON = `
  mov ebx, 0xfee00000
  mov dword [rbx+0xf0], 0x1ff
`
/** Redirection entry `pin` of the I/O APIC (RSI = its base) to `low` and destination 0. */
const route = (pin: number, low: number): string => `
  mov dword [rsi], ${0x10 + 2 * pin}
  mov dword [rsi+0x10], ${low}
  mov dword [rsi], ${0x11 + 2 * pin}
  mov dword [rsi+0x10], 0
`
/** Both 8259s masked: interrupts come through the I/O APIC only. */
const PIC_OFF = `
  mov al, 0xff
  out 0x21, al
  out 0xa1, al
`
/**
 * The APIC on, I/O APIC pin `pin` routed to `low` (RSI = the I/O APIC's base after
 * it), the 8259s masked: interrupts come through the I/O APIC only.
 */
const ioapicOnly = (pin: number, low: number): string => `
  ${APIC_ON}
  mov esi, 0xfec00000
  ${route(pin, low)}
  ${PIC_OFF}
`
/** Halts with interrupts on until the dword at `counter` reaches `n`. */
const waitFor = (counter: string, n: number): string => `
.wait:
  cli
  cmp dword [${counter}], ${n}
  jae .done
  sti
  hlt
  jmp .wait
.done:
`

test('PIT ticks reach a 64-bit guest through the I/O APIC (IRQ 0 on pin 2, the ISA override) and its local APIC', async (t) => {
  const vm = longModeVm(
    `
  start:
    ${ioapicOnly(2, 0x30)}
    ${PIT_1KHZ}
    ${waitFor('count', 5)}
    mov eax, [count]
    out 0xf4, al
  tick:
    inc dword [count]
    mov dword [rbx+0xb0], 0
    iretq
  count: dd 0
  `,
    { 0x30: 'tick' },
  )
  const pc = addPcPlatform(vm)
  t.deepEqual(await vm.run({ timeoutMs: 20_000 }), { reason: 'debug-exit', code: 5, vcpu: 0 })
  t.is(pc.ioapic.stats.delivered, 5)
  t.is(pc.pic.stats.requested, 0, 'the masked 8259 asked for nothing')
  vm.close()
})

test('serial receive interrupts: the guest echoes what is typed, woken from HLT by IRQ 4', async (t) => {
  const vm = longModeVm(
    `
  start:
    ${ioapicOnly(4, 0x34)}
    mov dx, 0x3f9
    mov al, 1          # IER: receive data available
    out dx, al
    mov dx, 0x3fc
    mov al, 0x0b       # MCR: DTR, RTS, OUT2 (the IRQ line's enable on a PC)
    out dx, al
  idle:
    sti
    hlt
    jmp idle
  rx:
    mov dx, 0x3fd
    in al, dx
    test al, 1
    jz .eoi
    mov dx, 0x3f8
    in al, dx
    out dx, al          # echo
    cmp al, 10
    jne rx
    out 0xf4, al
  .eoi:
    mov dword [rbx+0xb0], 0
    iretq
  `,
    { 0x34: 'rx' },
  )
  const pc = addPcPlatform(vm, { serial: {} })
  setTimeout(() => pc.serial.feed('hel'), 5)
  setTimeout(() => pc.serial.feed('lo\n'), 15)
  t.deepEqual(await vm.run({ timeoutMs: 20_000 }), { reason: 'debug-exit', code: 10, vcpu: 0 })
  t.is(pc.serial.text(), 'hello\n')
  vm.close()
})

test('a level-triggered line held high is delivered again after each EOI (remote IRR), until the device lowers it', async (t) => {
  const vm = longModeVm(
    `
  start:
    ${APIC_ON}
    mov esi, 0xfec00000
    ${route(10, 0x3a | (1 << 15))}
    ${waitFor('count', 3)}
    mov eax, [count]
    out 0xf4, al
  level:
    inc dword [count]
    out 0x90, al         # the device: acknowledged
    mov dword [rbx+0xb0], 0
    iretq
  count: dd 0
  `,
    { 0x3a: 'level' },
  )
  const ioapic = new IoApic((r) => vm.requestInterrupt(r))
  vm.bus.registerMmio(0xfec0_0000, 0x1000, ioapic, 'I/O APIC')
  vm.onEoi((vector) => ioapic.eoi(vector))
  const line = new WiredIrq([{ sink: ioapic, pin: 10 }])
  let acks = 0
  // The device keeps its line high for three acknowledgements.
  vm.bus.register(0x90, 1, { ioWrite: () => line.set(++acks < 3) }, 'level device')
  line.set(true)
  const r = await vm.run({ timeoutMs: 20_000 })
  t.deepEqual(r, { reason: 'debug-exit', code: 3, vcpu: 0 })
  t.is(ioapic.stats.delivered, 3)
  t.is(vm.cpus[0]?.stats().exitsByType['apicEoi'], 3, 'each EOI of the level vector came back to the VMM')
  vm.close()
})

test('two vCPUs: an IPI from vCPU 0 wakes vCPU 1, whose answer wakes vCPU 0', async (t) => {
  const vm = longModeVm(
    `
  start:
    ${APIC_ON}
  .wait1:
    cmp dword [ready], 1    # vCPU 1 has enabled its APIC
    jne .wait1
    mov dword [rbx+0x310], 0x1000000
    mov dword [rbx+0x300], 0x50
    ${waitFor('pong', 1)}
    mov al, 0x51
    out 0xf4, al
  cpu1:
    ${APIC_ON}
    mov dword [ready], 1
  .idle:
    sti
    hlt
    jmp .idle
  ping:
    mov dword [rbx+0x310], 0
    mov dword [rbx+0x300], 0x51
    mov dword [rbx+0xb0], 0
    iretq
  pong_handler:
    inc dword [pong]
    mov dword [rbx+0xb0], 0
    iretq
  ready: dd 0
  pong: dd 0
  `,
    { 0x50: 'ping', 0x51: 'pong_handler' },
    { vcpus: 2 },
  )
  t.deepEqual(await vm.run({ timeoutMs: 20_000 }), { reason: 'debug-exit', code: 0x51, vcpu: 0 })
  vm.close()
})

test('the RTC: the guest reads the start date in BCD and takes periodic interrupts on IRQ 8', async (t) => {
  const vm = longModeVm(
    `
  start:
    ${ioapicOnly(8, 0x38)}
    mov al, 9            # year
    out 0x70, al
    in al, 0x71
    mov [0x600], al
    mov al, 8            # month
    out 0x70, al
    in al, 0x71
    mov [0x601], al
    mov al, 7            # day
    out 0x70, al
    in al, 0x71
    mov [0x602], al
    mov al, 0x0b         # register B: periodic interrupts, 24-hour, BCD
    out 0x70, al
    mov al, 0x42
    out 0x71, al
    ${waitFor('ticks', 4)}
    mov al, [ticks]
    out 0xf4, al
  periodic:
    mov al, 0x0c         # read C: acknowledge, IRQ 8 goes low
    out 0x70, al
    in al, 0x71
    inc dword [ticks]
    mov dword [rbx+0xb0], 0
    iretq
  ticks: dd 0
  `,
    { 0x38: 'periodic' },
  )
  addPcPlatform(vm, { rtc: { start: new Date(Date.UTC(2026, 10, 25, 13, 0, 0)) } })
  t.deepEqual(await vm.run({ timeoutMs: 20_000 }), { reason: 'debug-exit', code: 4, vcpu: 0 })
  t.deepEqual([...vm.read(0x600, 3)], [0x26, 0x11, 0x25], 'year, month and day in BCD')
  // The 1,024 Hz default rate: four periods are 3.9 ms of guest time.
  t.true(vm.guestTimeNs() >= 3_900_000 && vm.guestTimeNs() < 5_000_000, `guest time ${vm.guestTimeNs()}`)
  vm.close()
})

test("an interrupt the hypervisor refuses (the guest routed the PIT's pin to an APIC id no vCPU has) is dropped and counted, not thrown into the device's timer (OpenVMM's request_msi logs and goes on)", async (t) => {
  const vm = longModeVm(
    `
  start:
    mov esi, 0xfec00000
    mov dword [rsi], 0x14
    mov dword [rsi+0x10], 0x30
    mov dword [rsi], 0x15
    mov dword [rsi+0x10], 0x07000000
    ${PIC_OFF}
    ${PIT_1KHZ}
    mov ecx, 5000000
  .spin:
    dec ecx
    jnz .spin
    mov al, 9
    out 0xf4, al
  `,
    {},
  )
  addPcPlatform(vm)
  const warnings: Error[] = []
  const listen = (w: Error): void => void warnings.push(w)
  process.on('warning', listen)
  try {
    t.deepEqual(await vm.run({ timeoutMs: 20_000 }), { reason: 'debug-exit', code: 9, vcpu: 0 })
    await new Promise((resolve) => setImmediate(resolve))
    t.true(vm.interruptsRefused >= 2, `${vm.interruptsRefused} refused`)
    const ours = warnings.filter((w) => (w as Error & { code?: string }).code === 'MSHV_INTERRUPT_REFUSED')
    t.is(ours.length, 1, 'one warning for the VM, not one per tick')
    t.regex(ours[0]?.message ?? '', /APIC id 0x7/)
  } finally {
    process.off('warning', listen)
    vm.close()
  }
})

test('the 8259 reaches vCPU 0 through LINT0 (SDM vol 3 11.5.1): set at creation to ExtINT as CH/QEMU set_lint and KVM reset it; a guest that masks LINT0 holds the tick until it unmasks it', async (t) => {
  const vm = longModeVm(
    `
  start:
    ${APIC_ON}
    mov dword [rbx+0x350], 0x10700   # LINT0 masked (ExtINT)
    ${PIC_INIT(0xfe)}
    ${PIT_1KHZ}
    sti
  poll:                              # until the 8259 has handed its INT over (ISR bit 0)
    mov al, 0x0b
    out 0x20, al
    in al, 0x20
    test al, 1
    jz poll
    mov ecx, 1000                    # interrupts on: a tick taken now would count
  spin:
    loop spin
    cli
    mov esi, [count]                 # 0: held while LINT0 is masked
    mov dword [rbx+0x350], 0x8700    # LINT0 ExtINT, as SeaBIOS's smp_setup writes it
    sti
    nop
    cli
    mov eax, [count]
    shl esi, 4
    or eax, esi
    out 0xf4, al
  tick:
    inc dword [count]
    mov al, 0x20
    out 0x20, al
    iretq
  count: dd 0
  `,
    { 0x20: 'tick' },
  )
  // What createVcpu left in the LAPIC: vCPU 0's LINT0 unmasked ExtINT, LINT1 NMI
  // (masked, as KVM resets it); an AP's both masked.
  const two = createVm({ backend: 'sim' })
  const cpus = [two.createVcpu(0), two.createVcpu(1)]
  const lvt = (i: number, offset: number): number => Buffer.from((cpus[i] as Vcpu).state().lapic, 'hex').readUInt32LE(offset)
  t.deepEqual([lvt(0, 0x350), lvt(0, 0x360), lvt(1, 0x350), lvt(1, 0x360)], [0x700, 0x1_0400, 0x1_0700, 0x1_0400])
  two.close()
  const pc = addPcPlatform(vm)
  t.deepEqual(await vm.run({ timeoutMs: 20_000 }), { reason: 'debug-exit', code: 0x01, vcpu: 0 })
  t.is(pc.pic.stats.requested, 1)
  vm.close()
})
