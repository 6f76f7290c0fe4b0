/**
 * Sim interpreter speed: guest instructions retired per second on the workloads of
 * issue #20 (an ALU loop, a byte checksum, a qword copy, recursive fib) and `rep movsb`
 * bytes per second, each run natively with an instruction budget (no exits in between)
 * in 64-bit long mode. The peers' figures (Bochs, Unicorn, QEMU TCG) are the issue's.
 * @module
 */
import { assemble, createVm, enterLongMode } from '../index.js'
import { timeFor, type Row } from './report.js'

const CODE = 0x10_0000
const BUF = 0x20_0000
const SLICE = 2_000_000

/** Each workload loops forever; the budget ends each slice. */
const WORKLOADS: { name: string; source: string; target: number; unit: 'instr/s' | 'bytes/s' }[] = [
  { name: 'ALU loop (add/xor/sub/dec/jnz)', target: 310e6, unit: 'instr/s', source: 'again: mov ecx, 1000000\nl: add eax, 1\nxor ebx, eax\nsub edx, 3\ndec ecx\njnz l\njmp again' },
  {
    name: 'byte checksum (load/add/store)',
    target: 260e6,
    unit: 'instr/s',
    source: `again: mov rsi, ${BUF}\nmov ecx, 65536\nl: movzx eax, byte [rsi]\nadd edx, eax\nmov [rsi], dl\ninc rsi\ndec ecx\njnz l\njmp again`,
  },
  {
    name: 'qword copy loop',
    target: 250e6,
    unit: 'instr/s',
    source: `again: mov rsi, ${BUF}\nmov rdi, ${BUF + 0x10_0000}\nmov ecx, 8192\nl: mov rax, [rsi]\nmov [rdi], rax\nadd rsi, 8\nadd rdi, 8\ndec ecx\njnz l\njmp again`,
  },
  {
    name: 'recursive fib (call/ret/push/pop)',
    target: 210e6,
    unit: 'instr/s',
    source: `again: mov edi, 20\ncall fib\njmp again\nfib: cmp edi, 2\njb small\npush rdi\ndec edi\ncall fib\npop rdi\npush rax\nsub edi, 2\ncall fib\npop rdx\nadd eax, edx\nret\nsmall: mov eax, edi\nret`,
  },
  {
    name: '`rep movsb`, 64 KiB RAM to RAM',
    target: 2000e6,
    unit: 'bytes/s',
    // R8 counts the copies: bytes = R8 * 64 KiB.
    source: `again: mov rsi, ${BUF}\nmov rdi, ${BUF + 0x10_0000}\nmov ecx, 65536\nrep movsb\ninc r8\njmp again`,
  },
]

/** Measures the sim's interpreter on each workload; `ms` is the measuring time of each. */
export function interpreterSpeed(ms: number): Row[] {
  return WORKLOADS.map((w) => {
    const vm = createVm({ backend: 'sim' })
    try {
      vm.addRam(0, 4 << 20)
      vm.write(CODE, assemble(w.source, { bitness: 64, address: CODE }).bytes)
      const vcpu = vm.createVcpu(0)
      enterLongMode(vcpu, vm, CODE, { sp: 0x8_0000 })
      vcpu.run({ maxInstructions: 1_000_000 }) // warm the decode cache
      vcpu.resetStats()
      vcpu.regs.set('r8', 0n)
      const { seconds } = timeFor(ms, () => {
        const r = vcpu.run({ maxInstructions: SLICE })
        if (r.reason !== 'instructions') throw new Error(`${w.name} stopped: ${JSON.stringify(r)}`)
        return SLICE
      })
      const retired = vcpu.stats().instructions
      const value = w.unit === 'bytes/s' ? (Number(vcpu.regs.get('r8')) * 65536) / seconds : retired / seconds
      return {
        group: 'sim interpreter',
        case: w.name,
        value,
        unit: w.unit,
        notes: `issue #20 target >= ${(w.target / 1e6).toFixed(0)} M (2x Bochs); ${retired.toLocaleString('en-US')} in ${seconds.toFixed(2)} s`,
      }
    } finally {
      vm.close()
    }
  })
}
