/**
 * Differential test of the MMIO emulator: each supported instruction form runs on
 * device memory in the sim (the TypeScript emulator completes it) and natively on the
 * host CPU over ordinary memory (crates/host-exec); registers, the flags the
 * architecture defines, and memory must agree.
 */
import test from 'ava'
import fc from 'fast-check'
import { execFileSync } from 'node:child_process'
import { createVm, enterLongMode, RegisterBank } from '../index.js'

const BANK = 0xc000_0000n
const CODE = 0x10000
const MEM = 64
const STATUS = 0x8d5n
const LOGIC = 0x8c5n // AF is undefined after AND/OR/XOR/TEST
const DF = 0x400n
const RCX = 1
const RBX = 3
const RSI = 6
const RDI = 7
const RUNS = 60
const EDGES = [0n, 1n, 0x7fn, 0x80n, 0xffn, 0x7fffn, 0x8000n, 0xffffn, 0x7fff_ffffn, 0x8000_0000n, 0xffff_ffffn, 1n << 63n, (1n << 64n) - 1n]

interface Form {
  name: string
  bytes: number[]
  /** Flags the architecture defines after the instruction. */
  flags: bigint
  /** Registers that point into the memory buffer. */
  bases?: number[]
  /** Adjusts random registers so the instruction stays inside the buffer. */
  fix?: (gpr: bigint[]) => void
}

const smallCount = (g: bigint[]) => {
  g[RCX] = g[RCX]! % 5n
}
const FORMS: Form[] = [
  { name: 'mov eax, [rbx+8]', bytes: [0x8b, 0x43, 0x08], flags: STATUS },
  { name: 'mov [rbx+8], ecx', bytes: [0x89, 0x4b, 0x08], flags: STATUS },
  { name: 'mov al, [rbx+3]', bytes: [0x8a, 0x43, 0x03], flags: STATUS },
  { name: 'mov ah, [rbx+1]', bytes: [0x8a, 0x63, 0x01], flags: STATUS },
  { name: 'mov [rbx+2], dx', bytes: [0x66, 0x89, 0x53, 0x02], flags: STATUS },
  { name: 'mov rsi, [rbx+16]', bytes: [0x48, 0x8b, 0x73, 0x10], flags: STATUS },
  { name: 'mov qword [rbx+8], -0xdcba988', bytes: [0x48, 0xc7, 0x43, 0x08, 0x78, 0x56, 0x34, 0xf2], flags: STATUS },
  { name: 'mov byte [rbx+5], 0x7f', bytes: [0xc6, 0x43, 0x05, 0x7f], flags: STATUS },
  { name: 'movzx ecx, byte [rbx+7]', bytes: [0x0f, 0xb6, 0x4b, 0x07], flags: STATUS },
  { name: 'movzx edx, word [rbx+6]', bytes: [0x0f, 0xb7, 0x53, 0x06], flags: STATUS },
  { name: 'movsx rax, byte [rbx+9]', bytes: [0x48, 0x0f, 0xbe, 0x43, 0x09], flags: STATUS },
  { name: 'movsx eax, word [rbx+2]', bytes: [0x0f, 0xbf, 0x43, 0x02], flags: STATUS },
  { name: 'movsxd rdx, dword [rbx+12]', bytes: [0x48, 0x63, 0x53, 0x0c], flags: STATUS },
  { name: 'xchg [rbx+4], esi', bytes: [0x87, 0x73, 0x04], flags: STATUS },
  { name: 'xchg [rbx+1], cl', bytes: [0x86, 0x4b, 0x01], flags: STATUS },
  { name: 'add [rbx+8], eax', bytes: [0x01, 0x43, 0x08], flags: STATUS },
  { name: 'add rax, [rbx]', bytes: [0x48, 0x03, 0x03], flags: STATUS },
  { name: 'adc dword [rbx+4], 0x12', bytes: [0x83, 0x53, 0x04, 0x12], flags: STATUS },
  { name: 'sub [rbx], cl', bytes: [0x28, 0x0b], flags: STATUS },
  { name: 'sbb edx, [rbx+8]', bytes: [0x1b, 0x53, 0x08], flags: STATUS },
  { name: 'and [rbx+2], ax', bytes: [0x66, 0x21, 0x43, 0x02], flags: LOGIC },
  { name: 'or rcx, [rbx+8]', bytes: [0x48, 0x0b, 0x4b, 0x08], flags: LOGIC },
  { name: 'xor dword [rbx], 0x80000001', bytes: [0x81, 0x33, 0x01, 0x00, 0x00, 0x80], flags: LOGIC },
  { name: 'cmp [rbx+4], edi', bytes: [0x39, 0x7b, 0x04], flags: STATUS },
  { name: 'cmp byte [rbx], 0x80', bytes: [0x80, 0x3b, 0x80], flags: STATUS },
  { name: 'test [rbx+8], rax', bytes: [0x48, 0x85, 0x43, 0x08], flags: LOGIC },
  { name: 'test dword [rbx], 0x100', bytes: [0xf7, 0x03, 0x00, 0x01, 0x00, 0x00], flags: LOGIC },
  { name: 'bt dword [rbx], 5', bytes: [0x0f, 0xba, 0x23, 0x05], flags: 1n },
  { name: 'bts qword [rbx+8], 63', bytes: [0x48, 0x0f, 0xba, 0x6b, 0x08, 0x3f], flags: 1n },
  { name: 'btr word [rbx+2], 15', bytes: [0x66, 0x0f, 0xba, 0x73, 0x02, 0x0f], flags: 1n },
  {
    name: 'btc [rbx+4], ecx',
    bytes: [0x0f, 0xbb, 0x4b, 0x04],
    flags: 1n,
    fix: (g) => {
      g[RCX] = g[RCX]! & 31n
    },
  },
  { name: 'stosd', bytes: [0xab], flags: STATUS, bases: [RDI], fix: (g) => void (g[RDI] = 24n) },
  { name: 'rep stosd', bytes: [0xf3, 0xab], flags: STATUS, bases: [RDI], fix: (g) => (smallCount(g), void (g[RDI] = 24n)) },
  { name: 'movsb', bytes: [0xa4], flags: STATUS, bases: [RSI, RDI], fix: (g) => ((g[RSI] = 8n), void (g[RDI] = 40n)) },
  {
    name: 'rep movsq',
    bytes: [0xf3, 0x48, 0xa5],
    flags: STATUS,
    bases: [RSI, RDI],
    fix: (g) => (smallCount(g), (g[RSI] = 24n), void (g[RDI] = 32n)),
  },
]

const hex64 = (v: bigint) => v.toString(16)
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex')

interface Case {
  form: Form
  gpr: bigint[]
  rflags: bigint
  mem: Uint8Array
}

function hostRun(cases: Case[]): { rflags: bigint; gpr: bigint[]; mem: string }[] {
  execFileSync('cargo', ['build', '-q', '-p', 'host-exec'], { stdio: 'inherit' })
  const input = cases
    .map((c) => {
      const bases = c.form.bases ?? [RBX]
      return `${toHex(Uint8Array.from(c.form.bytes))} ${hex64(c.rflags)} ${c.gpr.map(hex64).join(',')} ${toHex(c.mem)} ${bases.join(',')}`
    })
    .join('\n')
  const out = execFileSync('target/debug/host-exec', { input: input + '\n', encoding: 'utf8', maxBuffer: 64 << 20 })
  return out
    .trim()
    .split('\n')
    .map((line) => {
      const [rflags, gpr, mem] = line.split(' ')
      return { rflags: BigInt(`0x${rflags}`), gpr: (gpr ?? '').split(',').map((v) => BigInt(`0x${v}`)), mem: mem ?? '' }
    })
}

test('every supported MMIO instruction form computes what the host CPU computes', (t) => {
  const cases: Case[] = []
  let seed = 1
  for (const form of FORMS) {
    // Edge values often, so equal operands, carries and sign changes all occur.
    const value = fc.oneof(fc.constantFrom(...EDGES), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }))
    const samples = fc.sample(
      fc.record({
        gpr: fc.array(value, { minLength: 16, maxLength: 16 }),
        rflags: fc.bigInt({ min: 0n, max: 0xfffn }),
        words: fc.array(value, { minLength: MEM / 8, maxLength: MEM / 8 }),
      }),
      { numRuns: RUNS, seed: seed++ },
    )
    for (const s of samples) {
      const gpr = [...s.gpr]
      gpr[4] = 0n
      for (const b of form.bases ?? [RBX]) gpr[b] = 0n
      form.fix?.(gpr)
      const mem = new Uint8Array(MEM)
      s.words.forEach((w, k) => new DataView(mem.buffer).setBigUint64(k * 8, w, true))
      cases.push({ form, gpr, rflags: s.rflags & (STATUS | DF), mem })
    }
  }
  const host = hostRun(cases)
  t.is(host.length, cases.length)

  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const bank = new RegisterBank(MEM / 8)
  vm.bus.registerMmio(BANK, bank.size, bank, 'bank')
  const vcpu = vm.createVcpu(0)
  const names = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const
  let checked = 0
  cases.forEach((c, i) => {
    const bases = c.form.bases ?? [RBX]
    vm.write(CODE, [...c.form.bytes, 0xf4])
    enterLongMode(vcpu, vm, CODE)
    for (let r = 0; r < 16; r++) if (r !== 4) vcpu.regs.set(names[r]!, c.gpr[r]! + (bases.includes(r) ? BANK : 0n))
    vcpu.regs.set('rflags', c.rflags | 2n)
    for (let k = 0; k < MEM / 8; k++) bank.set(k, new DataView(c.mem.buffer).getBigUint64(k * 8, true))
    const result = vcpu.run({ maxInstructions: 1000 })
    const h = host[i]!
    const where = `${c.form.name} (case ${i})`
    if (result.reason !== 'halt') return t.fail(`${where}: ${JSON.stringify(result)}`)
    for (let r = 0; r < 16; r++) {
      if (r === 4) continue
      const got = vcpu.regs.get(names[r]!) - (bases.includes(r) ? BANK : 0n)
      if (BigInt.asUintN(64, got) !== h.gpr[r]) return t.fail(`${where}: ${names[r]} = ${hex64(got)}, host ${hex64(h.gpr[r]!)}`)
    }
    const m = c.form.flags | DF
    const flags = vcpu.regs.get('rflags')
    if ((flags & m) !== (h.rflags & m)) return t.fail(`${where}: rflags ${hex64(flags)}, host ${hex64(h.rflags)} (mask ${hex64(m)})`)
    const mem = new Uint8Array(MEM)
    for (let k = 0; k < MEM / 8; k++) new DataView(mem.buffer).setBigUint64(k * 8, bank.get(k), true)
    if (toHex(mem) !== h.mem) return t.fail(`${where}: memory ${toHex(mem)}, host ${h.mem}`)
    checked++
  })
  t.is(checked, cases.length, `${FORMS.length} forms × ${RUNS} random states`)
  vm.close()
})
