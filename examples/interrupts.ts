/**
 * An interrupt-driven guest on the PC platform: the 8254 ticks through the I/O APIC
 * into the local APIC; each tick the guest prints a dot on COM1, and after ten it
 * reads the RTC's seconds and stops. `vm.run()` drives it while the event loop runs.
 *
 *   node --import tsx examples/interrupts.ts
 */
import { addPcPlatform, assemble, createVm, enterLongMode, loadInterruptTables } from '../index.js'

const vm = createVm({ backend: 'sim' })
vm.addRam(0, 1 << 20)
const code = assemble(
  `
start:
  mov ebx, 0xfee00000
  mov dword [rbx+0xf0], 0x1ff     # local APIC on
  mov esi, 0xfec00000
  mov dword [rsi], 0x15           # I/O APIC pin 2 (IRQ 0): destination APIC 0
  mov dword [rsi+0x10], 0
  mov dword [rsi], 0x14           #   vector 0x30, edge, unmasked
  mov dword [rsi+0x10], 0x30
  mov al, 0xff                    # the 8259s masked
  out 0x21, al
  out 0xa1, al
  mov al, 0x34                    # PIT channel 0: mode 2, 100 Hz
  out 0x43, al
  mov ax, 11932
  out 0x40, al
  mov al, ah
  out 0x40, al
wait:
  cli
  cmp dword [ticks], 10
  jae done
  sti
  hlt
  jmp wait
done:
  mov al, 0                       # RTC seconds
  out 0x70, al
  in al, 0x71
  out 0xf4, al
tick:
  inc dword [ticks]
  mov dx, 0x3f8
  mov al, '.'
  out dx, al
  mov dword [rbx+0xb0], 0         # EOI
  iretq
ticks: dd 0
`,
  { bitness: 64, address: 0x10000 },
)
vm.write(0x10000, code.bytes)
const vcpu = vm.createVcpu(0)
enterLongMode(vcpu, vm, 0x10000)
// The GDT enterLongMode's selectors name, and an IDT sending vector 0x30 to `tick`.
loadInterruptTables(vcpu, vm, { 0x30: code.labels.get('tick') ?? 0n })

addPcPlatform(vm, {
  serial: { onByte: (b) => process.stdout.write(String.fromCharCode(b)) },
  rtc: { start: new Date(Date.UTC(2026, 10, 25, 12, 0, 30)) },
})
const result = await vm.run({ timeoutMs: 10_000 })
const ms = (vm.guestTimeNs() / 1e6).toFixed(1)
console.log(`\n[${vm.backend}] ${JSON.stringify(result)} after ${ms} ms of guest time; RTC seconds (BCD) 0x${result.reason === 'debug-exit' ? result.code.toString(16) : '?'}`)
vm.close()
