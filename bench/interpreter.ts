/**
 * Sim processor speed: guest instructions retired per second on the workloads of
 * issue #20 (an ALU loop, a byte checksum, a qword copy, recursive fib, the qword copy
 * with pages that alias in a TLB indexed by a page number's low bits) and `rep movsb`
 * bytes per second, each run natively with an instruction budget (no exits in between)
 * in 64-bit long mode, under the interpreter and then the translator (`cpu:
 * 'translator'`, issue #31), side by side in one run. The peers' figures (Bochs,
 * Unicorn, QEMU TCG) are the issue's.
 * @module
 */
import { assemble, createVm, enterLongMode } from '../index.js'
import { timeFor, type Row } from './report.js'

const CODE = 0x10_0000
const BUF = 0x20_0000
const SLICE = 2_000_000

/** A loop copying 64 KiB a qword at a time to `apart` bytes past the source, forever. */
function qwordCopy(apart: number): string {
  return `again: mov rsi, ${BUF}\nmov rdi, ${BUF + apart}\nmov ecx, 8192\nl: mov rax, [rsi]\nmov [rdi], rax\nadd rsi, 8\nadd rdi, 8\ndec ecx\njnz l\njmp again`
}

/** Each workload loops forever; the budget ends each slice. */
const WORKLOADS: { name: string; source: string; target?: number; unit: 'instr/s' | 'bytes/s' }[] = [
  { name: 'ALU loop (add/xor/sub/dec/jnz)', target: 310e6, unit: 'instr/s', source: 'again: mov ecx, 1000000\nl: add eax, 1\nxor ebx, eax\nsub edx, 3\ndec ecx\njnz l\njmp again' },
  {
    name: 'byte checksum (load/add/store)',
    target: 260e6,
    unit: 'instr/s',
    source: `again: mov rsi, ${BUF}\nmov ecx, 65536\nl: movzx eax, byte [rsi]\nadd edx, eax\nmov [rsi], dl\ninc rsi\ndec ecx\njnz l\njmp again`,
  },
  { name: 'qword copy loop', target: 250e6, unit: 'instr/s', source: qwordCopy(0x10_0000) },
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
  // Issue #20's "a TLB fast path that does not alias on 4 MiB strides": each page read
  // and the page written after it share the low ten bits of their page numbers.
  { name: 'TLB-alias copy (qword copy 4 MiB apart)', unit: 'instr/s', source: qwordCopy(0x40_0000) },
]

/** Measures each workload under the interpreter, then under the translator; `ms` is the measuring time of each. */
export function interpreterSpeed(ms: number): Row[] {
  const rows: Row[] = []
  for (const w of WORKLOADS) {
    const interpreted = measure(w, 'interpreter', ms)
    const translated = measure(w, 'translator', ms)
    rows.push(
      {
        group: 'sim interpreter',
        case: w.name,
        value: interpreted.value,
        unit: w.unit,
        notes: `${w.target ? `issue #20 target >= ${(w.target / 1e6).toFixed(0)} M (2x Bochs); ` : ''}${interpreted.retired.toLocaleString('en-US')} in ${interpreted.seconds.toFixed(2)} s`,
      },
      {
        group: 'sim translator',
        case: w.name,
        value: translated.value,
        unit: w.unit,
        notes: `${(translated.value / interpreted.value).toFixed(2)}x the interpreter; ${translated.compiled}`,
      },
    )
  }
  return rows
}

function measure(w: (typeof WORKLOADS)[number], cpu: 'interpreter' | 'translator', ms: number): { value: number; retired: number; seconds: number; compiled: string } {
  const vm = createVm({ backend: 'sim', cpu })
  try {
    vm.addRam(0, 8 << 20) // the TLB-alias copy reaches BUF + 4 MiB + 64 KiB
    vm.write(CODE, assemble(w.source, { bitness: 64, address: CODE }).bytes)
    const vcpu = vm.createVcpu(0)
    enterLongMode(vcpu, vm, CODE, { sp: 0x8_0000 })
    vcpu.run({ maxInstructions: 1_000_000 }) // warm the decode cache (and compile)
    vcpu.resetStats()
    vcpu.regs.set('r8', 0n)
    const { seconds } = timeFor(ms, () => {
      const r = vcpu.run({ maxInstructions: SLICE })
      if (r.reason !== 'instructions') throw new Error(`${w.name} stopped: ${JSON.stringify(r)}`)
      return SLICE
    })
    const stats = vcpu.stats()
    const retired = stats.instructions
    const value = w.unit === 'bytes/s' ? (Number(vcpu.regs.get('r8')) * 65536) / seconds : retired / seconds
    const t = stats.translator
    const compiled = t ? `${t.blocks} blocks compiled (${t.bytes} bytes, ${(t.compileMs * 1000).toFixed(0)} us)` : ''
    return { value, retired, seconds, compiled }
  } finally {
    vm.close()
  }
}
