/**
 * Sim interpreter speed: guest instructions retired per second of a simple integer
 * loop, run natively with an instruction budget (no exits in between).
 * @module
 */
import { createVm, enterRealMode } from '../index.js'
import { timeFor, type Row } from './report.js'

// l: add ax, 1; xor bx, ax; sub dx, 3; jmp l
const LOOP = [0x83, 0xc0, 0x01, 0x31, 0xc3, 0x83, 0xea, 0x03, 0xeb, 0xf6]
const SLICE = 20_000_000

/** Measures the sim's interpreter; `ms` is the measuring time. */
export function interpreterSpeed(ms: number): Row[] {
  const vm = createVm({ backend: 'sim' })
  try {
    vm.addRam(0, 1 << 20)
    vm.write(0x1000, LOOP)
    const vcpu = vm.createVcpu(0)
    enterRealMode(vcpu, 0x1000)
    vcpu.run({ maxInstructions: 1_000_000 }) // warm the decode cache
    vcpu.resetStats()
    const { seconds } = timeFor(ms, () => {
      const r = vcpu.run({ maxInstructions: SLICE })
      if (r.reason !== 'instructions') throw new Error(`the loop stopped: ${JSON.stringify(r)}`)
      return SLICE
    })
    const retired = vcpu.stats().instructions
    return [
      {
        group: 'sim interpreter',
        case: 'add/xor/sub/jmp loop',
        value: retired / seconds,
        unit: 'instr/s',
        notes: `target >= 50,000,000; ${retired.toLocaleString('en-US')} in ${seconds.toFixed(2)} s`,
      },
    ]
  } finally {
    vm.close()
  }
}
