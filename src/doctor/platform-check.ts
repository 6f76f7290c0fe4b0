/**
 * The VMM check of the interrupt path end to end: the 8254 on the PC platform ticks
 * through the I/O APIC (a TypeScript device) into the hypervisor's local APIC
 * (`requestInterrupt`), under `vm.run()`, on either backend.
 * @module
 */
import { createVm } from '../vm.js'
import { enterLongMode, loadInterruptTables } from '../guest.js'
import { assemble } from '../asm/assemble.js'
import { addPcPlatform } from '../platform/pc.js'
import type { DoctorBackend, VmmCheck } from './vmm-checks.js'

const TICKS = 3
const VECTOR = 0x31

const SOURCE = `
start:
  mov ebx, 0xfee00000
  mov dword [rbx+0xf0], 0x1ff       # software-enable the local APIC
  mov esi, 0xfec00000
  mov dword [rsi], 0x15             # pin 2 high dword: APIC id 0
  mov dword [rsi+0x10], 0
  mov dword [rsi], 0x14             # pin 2 low dword: the vector, edge, unmasked
  mov dword [rsi+0x10], ${VECTOR}
  mov al, 0xff
  out 0x21, al
  out 0xa1, al
  mov al, 0x34                      # channel 0, mode 2, 1 kHz
  out 0x43, al
  mov ax, 1193
  out 0x40, al
  mov al, ah
  out 0x40, al
idle:
  cli
  cmp dword [count], ${TICKS}
  jae stop
  sti
  hlt
  jmp idle
stop:
  mov eax, [count]
  out 0xf4, al
handler:
  inc dword [count]
  mov dword [rbx+0xb0], 0
  iretq
count: dd 0
`

async function run(backend: DoctorBackend): Promise<string> {
  const vm = createVm({ backend })
  try {
    vm.addRam(0, 1 << 20)
    const code = assemble(SOURCE, { bitness: 64, address: 0x10000 })
    vm.write(0x10000, code.bytes)
    const vcpu = vm.createVcpu(0)
    enterLongMode(vcpu, vm, 0x10000)
    loadInterruptTables(vcpu, vm, { [VECTOR]: code.labels.get('handler') ?? 0n })
    const pc = addPcPlatform(vm)
    const start = performance.now()
    const r = await vm.run({ timeoutMs: 10_000 })
    if (r.reason !== 'debug-exit' || r.code !== TICKS) throw new Error(`the run: got ${JSON.stringify(r)}, expected debug-exit ${TICKS}`)
    if (pc.ioapic.stats.delivered !== TICKS) throw new Error(`I/O APIC deliveries: got ${pc.ioapic.stats.delivered}, expected ${TICKS}`)
    const ms = (performance.now() - start).toFixed(1)
    return `${TICKS} PIT ticks through the I/O APIC and the local APIC; ${(vm.guestTimeNs() / 1e6).toFixed(2)} ms of guest time, ${ms} ms of host time`
  } finally {
    vm.close()
  }
}

export const platformInterrupts: VmmCheck = {
  name: 'platform_interrupts',
  summary: 'PIT ticks reach a 64-bit guest through the TypeScript I/O APIC and the hypervisor local APIC, under vm.run()',
  run,
}
