import test from 'ava'
import { createVm, enterLongMode, STRING_IO_BATCH, type PioDevice } from '../index.js'
import { realModeGuest } from './helpers.js'

const PORT = 0x60

/** A port that records writes and answers reads from a counter. */
class Recorder implements PioDevice {
  readonly written: number[] = []
  next = 0x11
  ioWrite(_port: number, _size: number, value: number): void {
    this.written.push(value)
  }
  ioRead(_port: number, size: number): number {
    const v = this.next
    this.next = (this.next + 0x11) & (size === 1 ? 0xff : 0xffff)
    return v
  }
}

test('REP INSB with DF set fills ES:DI downwards, wraps DI in 16 bits, costs no hypercall', (t) => {
  const { vm, vcpu } = realModeGuest([
    0xb8, 0x00, 0x20, 0x8e, 0xc0, // mov ax, 0x2000; mov es, ax
    0xbf, 0x03, 0x00, 0xb9, 0x04, 0x00, 0xba, PORT, 0x00, // mov di, 3; mov cx, 4; mov dx, 0x60
    0xfd, 0xf3, 0x6c, 0xfc, 0xf4, // std; rep insb; cld; hlt
  ])
  const dev = new Recorder()
  vm.bus.register(PORT, 1, dev, 'recorder')
  t.is(vcpu.run().reason, 'halt') // flushes the setup registers
  t.deepEqual([...vm.read(0x20000, 4)], [0x44, 0x33, 0x22, 0x11])
  t.is(vcpu.regs.get('rdi') & 0xffffn, 0xffffn, 'DI = 3 - 4 wraps')
  t.is(vcpu.regs.get('rcx') & 0xffffn, 0n)
  const s = vcpu.stats()
  t.is(s.exitsByType['ioPort'], 1, 'the whole REP in one exit')
  t.is(s.getRegisterCalls, 0, 'RCX, RSI, RDI, DS and ES come from the message')
  vm.close()
})

test('REP OUTSW honours a segment override (FS) and advances SI', (t) => {
  const { vm, vcpu } = realModeGuest([
    0xb8, 0x00, 0x30, 0x8e, 0xe0, // mov ax, 0x3000; mov fs, ax
    0xbe, 0x10, 0x00, 0xb9, 0x03, 0x00, 0xba, PORT, 0x00, // mov si, 0x10; mov cx, 3; mov dx, 0x60
    0x64, 0xf3, 0x6f, 0xf4, // rep outsw fs:[si]; hlt
  ])
  vm.write(0x30010, [0x11, 0x11, 0x22, 0x22, 0x33, 0x33])
  vm.write(0x10, [0xee, 0xee]) // what DS:SI would wrongly read
  const dev = new Recorder()
  vm.bus.register(PORT, 2, dev, 'recorder')
  t.is(vcpu.run().reason, 'halt')
  t.deepEqual(dev.written, [0x1111, 0x2222, 0x3333])
  t.is(vcpu.regs.get('rsi'), 0x16n)
  vm.close()
})

test('REP OUTSB and INSB cross a 4 KiB page boundary into a non-adjacent physical page', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const code = 0x10000
  vm.write(code, [
    0xbe, 0xfd, 0x0f, 0x20, 0x00, // mov esi, 0x200ffd
    0xb9, 0x06, 0x00, 0x00, 0x00, // mov ecx, 6
    0xba, PORT, 0x00, 0x00, 0x00, // mov edx, 0x60
    0xf3, 0x6e, // rep outsb
    0xbf, 0xfe, 0x1f, 0x20, 0x00, // mov edi, 0x201ffe
    0xb9, 0x04, 0x00, 0x00, 0x00, // mov ecx, 4
    0xf3, 0x6c, 0xf4, // rep insb; hlt
  ])
  const vcpu = vm.createVcpu(0)
  enterLongMode(vcpu, vm, code)
  // Replace the first 1 GiB page: 0..2 MiB identity (2 MiB page), then 4 KiB pages at
  // 2 MiB: linear 0x200000 -> 0x50000, 0x201000 -> 0x30000, 0x202000 -> 0x60000.
  const pd = 0x3000
  const pt = 0x4000
  const q = (gpa: number, v: bigint) => vm.write(gpa, new Uint8Array(new BigUint64Array([v]).buffer))
  q(0x2000, BigInt(pd) | 3n)
  q(pd, 0x83n)
  q(pd + 8, BigInt(pt) | 3n)
  q(pt, 0x50000n | 3n)
  q(pt + 8, 0x30000n | 3n)
  q(pt + 16, 0x60000n | 3n)
  vm.write(0x50ffd, [1, 2, 3])
  vm.write(0x30000, [4, 5, 6])
  const dev = new Recorder()
  dev.next = 0xa0
  vm.bus.register(PORT, 1, dev, 'recorder')
  t.is(vcpu.run().reason, 'halt')
  t.deepEqual(dev.written, [1, 2, 3, 4, 5, 6])
  t.deepEqual([...vm.read(0x30ffe, 2)], [0xa0, 0xb1])
  t.deepEqual([...vm.read(0x60000, 2)], [0xc2, 0xd3])
  t.is(vcpu.regs.get('rsi'), 0x201003n)
  t.is(vcpu.regs.get('rdi'), 0x202002n)
  vm.close()
})

test('a REP longer than one batch re-executes, and every byte arrives in order', (t) => {
  const n = 2 * STRING_IO_BATCH + 100
  const { vm, vcpu } = realModeGuest([
    0x1e, 0x07, // push ds; pop es (keep the code simple: DS = ES = 0)
    0xbe, 0x00, 0x80, 0xb9, n & 0xff, n >> 8, 0xba, PORT, 0x00, // mov si, 0x8000; mov cx, n; mov dx, 0x60
    0xf3, 0x6e, 0xf4, // rep outsb; hlt
  ])
  const data = Uint8Array.from({ length: n }, (_, i) => (i * 7) & 0xff)
  vm.write(0x8000, data)
  const dev = new Recorder()
  vm.bus.register(PORT, 1, dev, 'recorder')
  t.is(vcpu.run().reason, 'halt')
  t.deepEqual(dev.written, [...data])
  t.is(vcpu.stats().exitsByType['ioPort'], 3, 'ceil(n / STRING_IO_BATCH) exits')
  t.is(vcpu.regs.get('rcx') & 0xffffn, 0n)
  vm.close()
})
