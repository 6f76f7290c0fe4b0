import test from 'ava'
import { assemble, createVm, enterLongMode, MshvError, type TranslatorStats } from '../index.js'

const CODE = 0x10_0000
const BUF = 0x20_0000

/** The byte checksum loop of bench/interpreter.ts, bounded: 4096 bytes, then HLT. */
const CHECKSUM = `mov rsi, ${BUF}\nmov ecx, 4096\nl: movzx eax, byte [rsi]\nadd edx, eax\nmov [rsi], dl\ninc rsi\ndec ecx\njnz l\nhlt`

interface Ran {
  regs: string
  instructions: number
  bytes: Uint8Array
  digests: { instructions: bigint; hash: bigint }[]
  translator: TranslatorStats | undefined
}

function runUnder(cpu: 'interpreter' | 'translator', rdx = 0n): Ran {
  const vm = createVm({ backend: 'sim', cpu })
  try {
    vm.addRam(0, 4 << 20)
    vm.write(CODE, assemble(CHECKSUM, { bitness: 64, address: CODE }).bytes)
    vm.write(BUF, Array.from({ length: 4096 }, (_, i) => (i * 7) & 0xff))
    const vcpu = vm.createVcpu(0)
    enterLongMode(vcpu, vm, CODE, { sp: 0x8_0000 })
    vcpu.regs.set('rdx', rdx)
    vcpu.recordExits()
    const exit = vcpu.run()
    if (exit.reason !== 'halt') throw new Error(`stopped: ${JSON.stringify(exit)}`)
    const regs = vcpu.regs.get('rdx').toString() + ',' + vcpu.regs.get('rip').toString() + ',' + vcpu.regs.get('rflags').toString()
    const stats = vcpu.stats()
    return { regs, instructions: stats.instructions, bytes: vm.read(BUF, 4096), digests: vcpu.exitDigests(), translator: stats.translator }
  } finally {
    vm.close()
  }
}

test("cpu: 'translator' gives the interpreter's exit, count, registers and memory", (t) => {
  const a = runUnder('interpreter')
  const b = runUnder('translator')
  t.is(b.regs, a.regs)
  t.is(b.instructions, a.instructions)
  t.deepEqual(b.bytes, a.bytes)
})

test('cpu: an unknown tier is EINVAL naming it', (t) => {
  const e = t.throws(() => createVm({ backend: 'sim', cpu: 'jit' as 'translator' }), { instanceOf: MshvError })
  t.is(e?.code, 'EINVAL')
  t.regex(e?.message ?? '', /cpu must be 'interpreter' or 'translator', got 'jit'/)
})

test('exit digests: the same run end under both tiers, another for another guest state; the translator counts what it compiled', (t) => {
  const a = runUnder('interpreter')
  const b = runUnder('translator')
  t.is(a.digests.length, 1)
  t.deepEqual(b.digests, a.digests)
  t.is(a.digests[0]?.instructions, BigInt(a.instructions))
  // One more in RDX at the start: the sums, the bytes and so the registers at the HLT differ.
  t.notDeepEqual(runUnder('translator', 1n).digests, a.digests)
  t.true((b.translator?.blocks ?? 0) >= 1, JSON.stringify(b.translator))
  t.true((b.translator?.bytes ?? 0) > 0)
  t.is(b.translator?.failed, 0)
})
