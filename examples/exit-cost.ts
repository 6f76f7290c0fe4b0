/**
 * An exit-cost experiment: the same port-I/O loop under each register sync policy,
 * counting hypercalls per exit and timing exits per second.
 */
import { createVm, enterRealMode, type SyncPolicy } from '../index.js'

const LOOPS = 20_000
const le = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >>> 24]
// mov ecx, LOOPS; l: in al, 0x80; out 0x80, al; dec ecx; jnz l; out 0xf4, al (the
// debug-exit port ends the run: a HLT would not, on MSHV, where the vCPU waits in it)
const CODE = [0x66, 0xb9, ...le(LOOPS), 0xe4, 0x80, 0xe6, 0x80, 0x66, 0x49, 0x75, 0xf8, 0xe6, 0xf4]

for (const policy of ['page', 'hypercall', 'eager'] as SyncPolicy[]) {
  const vm = createVm({ policy })
  vm.addRam(0, 1 << 20)
  vm.write(0x1000, CODE)
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  vcpu.regs.flush() // the set-up registers are not part of the experiment
  vcpu.resetStats()
  const start = process.hrtime.bigint()
  vcpu.run()
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  const s = vcpu.stats()
  const perExit = (s.hypercalls / s.exits).toFixed(2)
  console.log(`${policy.padEnd(9)} ${s.exits} exits, ${perExit} hypercalls/exit, ${Math.round(s.exits / seconds).toLocaleString('en-US')} exits/s`)
  vm.close()
}
