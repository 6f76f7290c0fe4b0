import test from 'ava'
import { createVm, MshvError } from '../index.js'
import { native } from '../src/native.js'
import { realModeGuest } from './helpers.js'

test('the mshv backend without /dev/mshv fails with ENODEV naming the device', (t) => {
  const err = t.throws(() => createVm({ backend: 'mshv' })) as Error & { code: string }
  t.is(err.code, 'ENODEV')
  t.regex(err.message, /\/dev\/mshv/)
})

test('auto falls back to the sim backend', (t) => {
  t.is(createVm().backend, 'sim')
})

test('bad backend, register names and values are clear errors', (t) => {
  t.is((t.throws(() => createVm({ backend: 'kvm' as 'sim' })) as MshvError).code, 'EINVAL')
  const { vcpu } = realModeGuest([0xf4])
  t.is((t.throws(() => vcpu.regs.get('rzz')) as MshvError).code, 'EINVAL_REGISTER')
  const e = t.throws(() => vcpu.regs.set('rax', 1n << 64n)) as MshvError
  t.is(e.code, 'EINVAL')
  t.regex(e.message, /rax/)
  t.throws(() => vcpu.native.getRegisters(Uint32Array.of(0xdead), new BigUint64Array(2)), { message: /0xdead/ })
})

test('overlapping and unaligned memory maps are rejected and the VM stays usable', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 0x10000)
  t.is((t.throws(() => vm.addRam(0x8000, 0x1000)) as MshvError).code, 'EOVERLAP')
  t.is((t.throws(() => vm.addRam(0x20001, 0x1000)) as MshvError).code, 'EINVAL')
  t.is((t.throws(() => vm.addRam(0x20000, 100)) as MshvError).code, 'EINVAL')
  t.is((t.throws(() => vm.addRam(-1n, 0x1000)) as MshvError).code, 'EINVAL')
  t.notThrows(() => vm.addRam(0x20000, 0x1000))
})

test('closing a vCPU detaches its page and message views and later use throws', (t) => {
  const { vcpu } = realModeGuest([0xf4])
  const page = vcpu.native.registerPage()
  t.truthy(page)
  const view = new Uint8Array(page!)
  t.is(view.length, 4096)
  vcpu.close()
  t.is(view.length, 0, 'the old view is detached, not dangling')
  t.throws(() => new DataView(page!).getUint8(0), { instanceOf: TypeError })
  t.is((t.throws(() => vcpu.native.runSync()) as MshvError).code, 'ECLOSED')
})

test('unmapping guest RAM detaches its buffer', (t) => {
  const vm = createVm({ backend: 'sim' })
  const ram = vm.addRam(0, 0x1000)
  const bytes = ram.bytes
  vm.native.unmapMemory(ram.native)
  t.is(bytes.length, 0)
  t.is((t.throws(() => ram.native.buffer()) as MshvError).code, 'ECLOSED')
})

test('a JS write to the register page is what the backend sees, and vice versa', (t) => {
  const { vcpu } = realModeGuest([0xe6, 0x80, 0xf4])
  vcpu.native.runSync()
  const page = new DataView(vcpu.native.registerPage()!)
  const rax = native.layout().page.gpRegisters!
  page.setBigUint64(rax, 0x1234n, true)
  page.setUint32(native.layout().page.dirty!, native.layout().page.dirtyGeneral!, true)
  vcpu.native.runSync() // resumes at the OUT again: the page applies RAX
  const out = new BigUint64Array(2)
  vcpu.native.getRegisters(Uint32Array.of(native.layout().registers[0]!.id), out)
  t.is(out[0], 0x1234n)
  t.is(page.getBigUint64(rax, true), 0x1234n, 'the next intercept refilled the page')
})

test('run() on a worker thread can be cancelled, and a second run meanwhile is EBUSY', async (t) => {
  const { vcpu } = realModeGuest([0xeb, 0xfe]) // jmp $
  const running = vcpu.runAsync()
  await new Promise((r) => setTimeout(r, 50))
  t.is((t.throws(() => vcpu.native.runSync()) as MshvError).code, 'EBUSY')
  vcpu.cancel()
  t.deepEqual(await running, { reason: 'cancelled' })
  t.is(vcpu.native.runSync({ maxInstructions: 10 }) >>> 0, native.layout().exits.budget)
})
