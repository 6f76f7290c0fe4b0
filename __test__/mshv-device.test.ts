/**
 * The TypeScript layer on the real hypervisor. Needs /dev/mshv; without it every test
 * here is skipped, and the reason is printed.
 */
import test from 'ava'
import { existsSync } from 'node:fs'
import { createVm, enterRealMode, Serial16550, COM1 } from '../index.js'

const HAVE_DEVICE = existsSync('/dev/mshv')
const onDevice = HAVE_DEVICE ? test : test.skip
if (!HAVE_DEVICE) console.log('mshv-device tests skipped: /dev/mshv is absent on this machine')

onDevice('the demo guest prints through the UART on mshv with zero hypercalls per PIO exit', (t) => {
  const vm = createVm({ backend: 'mshv' })
  t.is(vm.backend, 'mshv')
  vm.addRam(0, 1 << 20)
  // mov dx, 0x3f8; mov al, 'K'; out dx, al; out dx, al; mov al, 0; out 0xf4, al
  vm.write(0x1000, [0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xee, 0xb0, 0x00, 0xe6, 0xf4])
  const serial = new Serial16550(COM1)
  vm.bus.register(COM1, 8, serial, 'COM1')
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  t.deepEqual(vcpu.run({ timeoutMs: 10_000 }), { reason: 'debug-exit', code: 0 })
  t.is(serial.text(), 'KK')
  const s = vcpu.stats()
  if (vcpu.native.registerPage()?.valid) t.is(s.getRegisterCalls, 0)
  vm.close()
})

onDevice('cancel() interrupts a spinning guest on mshv', async (t) => {
  const vm = createVm({ backend: 'mshv' })
  vm.addRam(0, 1 << 20)
  vm.write(0x1000, [0xeb, 0xfe])
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  const running = vcpu.runAsync()
  setTimeout(() => vcpu.cancel(), 50)
  t.deepEqual(await running, { reason: 'cancelled' })
  vm.close()
})
