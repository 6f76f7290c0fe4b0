/**
 * An MMIO device written in TypeScript: a tick counter the guest reads and resets with
 * plain `mov`s, emulated from the exit's instruction bytes (iced-x86).
 */
import { createVm, enterLongMode, type MmioDevice } from '../index.js'

const TIMER = 0xfed0_0000n

/** Offset 0: a counter that advances on each read; writing sets it. */
class Timer implements MmioDevice {
  private ticks = 0n
  mmioRead(offset: number): bigint {
    return offset === 0 ? this.ticks++ : 0n
  }
  mmioWrite(offset: number, _size: number, value: bigint): void {
    if (offset === 0) this.ticks = value
  }
}

const vm = createVm()
vm.addRam(0, 1 << 20)
vm.bus.registerMmio(TIMER, 0x1000, new Timer(), 'timer')
// mov rbx, TIMER; mov qword [rbx], 40; mov eax, [rbx]; mov eax, [rbx]; mov ecx, [rbx];
// out 0xf4, al (the debug-exit port ends the run, with AL as its code)
vm.write(0x10000, [
  0x48, 0xbb, 0x00, 0x00, 0xd0, 0xfe, 0, 0, 0, 0, 0x48, 0xc7, 0x03, 40, 0, 0, 0, 0x8b, 0x03, 0x8b, 0x03, 0x8b, 0x0b, 0xe6, 0xf4,
])
const vcpu = vm.createVcpu(0)
enterLongMode(vcpu, vm, 0x10000)
const result = vcpu.run()
const s = vcpu.stats()
console.log(`timer: eax=${vcpu.regs.get('rax')} ecx=${vcpu.regs.get('rcx')} after ${JSON.stringify(result)}`)
console.log(`[${vm.backend}] ${s.exitsByType['unmappedGpa'] ?? 0} MMIO exits, ${s.hypercalls} hypercalls`)
vm.close()
