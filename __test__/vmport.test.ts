import test from 'ava'
import { VmPort, VMPORT_PORT, VMPORT_MAGIC } from '../index.js'
import { realModeGuest, u32, POLICIES, PAGE_MODES } from './helpers.js'

// mov eax, MAGIC; mov ebx, 0x11111111; mov ecx, CMD; mov dx, 0x5658; in eax, dx
// mov [0x2000], eax; mov [0x2004], ebx; mov [0x2008], ecx; out 0xf4, al
function guest(command: number): number[] {
  const le = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff]
  return [
    0x66, 0xb8, ...le(VMPORT_MAGIC),
    0x66, 0xbb, ...le(0x11111111),
    0x66, 0xb9, ...le(command),
    0xba, 0x58, 0x56,
    0x66, 0xed,
    0x66, 0xa3, 0x00, 0x20,
    0x66, 0x89, 0x1e, 0x04, 0x20,
    0x66, 0x89, 0x0e, 0x08, 0x20,
    0xe6, 0xf4,
  ]
}

for (const policy of POLICIES) {
  for (const page of PAGE_MODES) {
    test(`vmport GETVERSION and GETRAMSIZE: the guest sees the device's writes and the right RIP (${policy}, page ${page})`, (t) => {
      for (const [command, eax, ebx] of [
        [10, 6, VMPORT_MAGIC],
        [20, 1 << 20, 0x1177],
      ] as const) {
        const { vm, vcpu } = realModeGuest(guest(command), policy, page)
        vm.bus.register(VMPORT_PORT, 1, new VmPort(() => vm.ramSize()), 'vmport')
        const r = vcpu.run({ maxInstructions: 1000 })
        t.deepEqual(r, { reason: 'debug-exit', code: eax & 0xff })
        const out = vm.read(0x2000, 12)
        t.is(u32(out, 0), eax >>> 0, 'EAX holds the value the device returned')
        t.is(u32(out, 4), ebx >>> 0, 'EBX holds the value the device set during the IN')
        t.is(u32(out, 8), command, 'ECX is untouched')
        vm.close()
      }
    })
  }
}

test('vmport GETHZ answers the TSC in EBX:EAX and the APIC bus in ECX as QEMU does, EBX = 0xffffffff when it does not know', (t) => {
  // mov eax, MAGIC; mov ecx, 45; mov dx, 0x5658; in eax, dx; mov [0x2000], eax; mov [0x2004], ebx; mov [0x2008], ecx; out 0xf4, al
  const le = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff]
  const code = [0x66, 0xb8, ...le(VMPORT_MAGIC), 0x66, 0xb9, ...le(45), 0xba, 0x58, 0x56, 0x66, 0xed, 0x66, 0xa3, 0x00, 0x20, 0x66, 0x89, 0x1e, 0x04, 0x20, 0x66, 0x89, 0x0e, 0x08, 0x20, 0xe6, 0xf4]
  for (const clocks of [{ tscHz: 3_000_000_123, apicTimerHz: 25_000_000 }, undefined]) {
    const { vm, vcpu } = realModeGuest(code)
    const port = new VmPort({ ramSize: () => vm.ramSize(), clocks })
    vm.bus.register(VMPORT_PORT, 1, port, 'vmport')
    vcpu.run({ maxInstructions: 1000 })
    const out = vm.read(0x2000, 12)
    if (clocks) {
      t.is(u32(out, 0) + u32(out, 4) * 2 ** 32, 3_000_000_123)
      t.is(u32(out, 8), 25_000_000)
    } else t.is(u32(out, 4), 0xffff_ffff)
    t.is(port.commands.get(45), 1)
    vm.close()
  }
})
