/**
 * QEMU's vmport backdoor: the device synchronizes the full vCPU state in the middle of
 * the guest's IN and sets EBX itself, and the handler's "set EAX, advance RIP" keeps it.
 */
import { createVm, enterRealMode, VmPort, VMPORT_PORT, VMPORT_MAGIC, VMPORT_CMD_GETRAMSIZE } from '../index.js'

const le = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >>> 24]
const vm = createVm()
vm.addRam(0, 2 << 20)
vm.bus.register(VMPORT_PORT, 1, new VmPort(() => vm.ramSize()), 'vmport')
// mov eax, MAGIC; mov ecx, GETRAMSIZE; mov dx, 0x5658; in eax, dx; out 0xf4, al (debug exit)
vm.write(0x1000, [0x66, 0xb8, ...le(VMPORT_MAGIC), 0x66, 0xb9, ...le(VMPORT_CMD_GETRAMSIZE), 0xba, 0x58, 0x56, 0x66, 0xed, 0xe6, 0xf4])
const vcpu = vm.createVcpu(0)
enterRealMode(vcpu, 0x1000)
vcpu.run()
const r = vcpu.regs
console.log(`vmport GETRAMSIZE: eax=${r.get('rax')} ebx=0x${r.get('rbx').toString(16)} rip=0x${r.get('rip').toString(16)}`)
vm.close()
