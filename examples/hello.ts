/**
 * The demo: a real-mode guest prints through a 16550 UART and leaves through the
 * debug-exit port. Runs on /dev/mshv when present, else on the sim backend.
 */
import { createVm, enterRealMode, Serial16550, COM1 } from '../index.js'

const MESSAGE = 'Hello from the guest!\n'

// mov si, 0x1020; mov dx, 0x3f8; l: lodsb; test al, al; jz d; out dx, al; jmp l
// d: mov al, 0; out 0xf4, al; hlt
const CODE = [
  0xbe, 0x20, 0x10, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xb0, 0x00, 0xe6, 0xf4, 0xf4,
]

const vm = createVm()
vm.addRam(0, 1 << 20)
vm.write(0x1000, CODE)
vm.write(0x1020, [...new TextEncoder().encode(MESSAGE), 0])
// onByte prints each byte; keepOutput keeps the last bytes for text() too (by default a
// UART with onByte keeps none: a guest's flood would otherwise fill the heap).
const serial = new Serial16550(COM1, { onByte: (b) => process.stdout.write(String.fromCharCode(b)), keepOutput: 4096 })
vm.bus.register(COM1, 8, serial, 'COM1')

const vcpu = vm.createVcpu(0)
enterRealMode(vcpu, 0x1000)
const result = vcpu.run()
const s = vcpu.stats()
console.log(
  `[${vm.backend}] guest stopped: ${JSON.stringify(result)}; ${s.exits} exits, ${s.hypercalls} hypercalls ` +
    `(${s.getRegisterCalls} get, ${s.setRegisterCalls} set), ${s.pageReads} page reads, ${s.instructions} guest instructions`,
)
vm.close()
process.exitCode = result.reason === 'debug-exit' && result.code === 0 && serial.text() === MESSAGE ? 0 : 1
