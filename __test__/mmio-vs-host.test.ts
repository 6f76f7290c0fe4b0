/**
 * Differential test of the MMIO emulator: each supported instruction form runs on
 * device memory in the sim (the TypeScript emulator completes it) and natively on the
 * host CPU over ordinary memory (crates/host-exec); registers, the flags the
 * architecture defines, and memory must agree. A form may be a few instructions (the
 * stack moved onto the device and back). What the host cannot run from user space the
 * same way (segment loads, LTR, SMSW, injected faults, far JMP, SSE state, operands
 * straddling RAM and a device) is checked against the SDM in mmio.test.ts.
 */
import test from 'ava'
import fc from 'fast-check'
import { execFileSync } from 'node:child_process'
import { createVm, enterLongMode, RegisterBank } from '../index.js'
import { assemble } from '../src/asm/assemble.js'

const BANK = 0xc000_0000n
const CODE = 0x10000
const MEM = 64
const STATUS = 0x8d5n
const LOGIC = 0x8c5n // AF is undefined after AND/OR/XOR/TEST
const DF = 0x400n
/** The flags the SDM defines after a multiply (CF, OF), a bit scan (ZF), a bit test (CF; ZF is unaffected). */
const MUL = 0x801n
const ZF = 0x40n
const BT = 0x41n
/** A shift by a count that may exceed 1: OF and AF are undefined. */
const SHIFTED = 0xc5n
/** A rotate by a count that may exceed 1: OF is undefined, SF, ZF, AF and PF unaffected. */
const ROTATED = 0xd5n
const RAX = 0
const RCX = 1
const RDX = 2
const RBX = 3
const RSI = 6
const RDI = 7
const R8 = 8
const RUNS = 60
const EDGES = [0n, 1n, 0x7fn, 0x80n, 0xffn, 0x7fffn, 0x8000n, 0xffffn, 0x7fff_ffffn, 0x8000_0000n, 0xffff_ffffn, 1n << 63n, (1n << 64n) - 1n]

interface Form {
  name: string
  bytes: number[]
  /** Flags the architecture defines after the instruction. */
  flags: bigint
  /** Registers that point into the memory buffer. */
  bases?: number[]
  /** Adjusts random registers (and memory) so the instruction stays inside the buffer and does not fault. */
  fix?: (gpr: bigint[], mem: DataView) => void
}

/** A form written in assembly (several instructions are run one after another). */
function asm(text: string, flags: bigint, more: Omit<Form, 'name' | 'bytes' | 'flags'> = {}): Form {
  return { name: text.replace(/\n/g, '; '), bytes: [...assemble(text, { bitness: 64 }).bytes], flags, ...more }
}

/** A signed value in [-range, range) from a random one. */
const signed = (v: bigint, range: bigint) => BigInt.asUintN(64, (v % (2n * range)) - range)
const low = (g: bigint[], r: number, bits: bigint) => {
  g[r] = g[r]! & ((1n << bits) - 1n)
}
/**
 * The stack on the device for the snippet between: RSP is saved in R15, set 40 bytes
 * into the buffer, restored, and R15 cleared (MOV: no flags), so host and guest agree.
 */
const onDeviceStack = (body: string) => `mov r15, rsp\nlea rsp, [rbx+40]\n${body}\nmov rsp, r15\nmov r15d, 0`
/** Makes the buffer repeat every 8 bytes for a random stretch, so REPE CMPS runs on. */
const periodic = (g: bigint[], mem: DataView) => {
  const n = Number(g[R8]! % 57n)
  for (let i = 8; i < 8 + n; i++) mem.setUint8(i, mem.getUint8(i - 8))
}
/** CMPXCHG's accumulator equals memory on about half the cases. */
const sometimesEqual = (size: number, at: number) => (g: bigint[], mem: DataView) => {
  if ((g[R8]! & 1n) === 0n) return
  const m = (1n << BigInt(8 * size)) - 1n
  const v = size === 8 ? mem.getBigUint64(at, true) : size === 4 ? BigInt(mem.getUint32(at, true)) : size === 2 ? BigInt(mem.getUint16(at, true)) : BigInt(mem.getUint8(at))
  g[RAX] = (g[RAX]! & ~m) | v
}
/** DIV's dividend high half below the divisor (no #DE); the divisor not 0. */
const unsignedDivision = (size: number, at: number) => (g: bigint[], mem: DataView) => {
  const bits = BigInt(8 * size)
  const m = (1n << bits) - 1n
  let d = size === 8 ? mem.getBigUint64(at, true) : size === 4 ? BigInt(mem.getUint32(at, true)) : size === 2 ? BigInt(mem.getUint16(at, true)) : BigInt(mem.getUint8(at))
  if (d === 0n) d = 1n
  if (size === 8) mem.setBigUint64(at, d, true)
  else if (size === 4) mem.setUint32(at, Number(d), true)
  else if (size === 2) mem.setUint16(at, Number(d), true)
  else mem.setUint8(at, Number(d))
  if (size === 1) g[RAX] = (g[RAX]! & ~0xff00n) | ((((g[RAX]! >> 8n) & 0xffn) % d) << 8n)
  else g[RDX] = (g[RDX]! & ~m) | ((g[RDX]! & m) % d)
}
/** IDIV's dividend the accumulator sign-extended (the quotient fits unless MIN / -1, avoided). */
const signedDivision = (size: number, at: number) => (g: bigint[], mem: DataView) => {
  const bits = 8 * size
  const m = (1n << BigInt(bits)) - 1n
  let d = size === 8 ? mem.getBigUint64(at, true) : BigInt(mem.getUint32(at, true)) & m
  if (d === 0n || d === m) d = 3n
  if (size === 8) mem.setBigUint64(at, d, true)
  else mem.setUint32(at, Number(d), true)
  const a = BigInt.asIntN(bits, g[RAX]!)
  g[RDX] = (g[RDX]! & ~m) | (a < 0n ? m : 0n)
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
  // Compare and load strings: RSI at 24 and RDI at 32, in either direction (DF is
  // random): at most 4 elements of up to 8 bytes stay inside the buffer.
  ...['repe cmpsb', 'repe cmpsw', 'repne cmpsd', 'repe cmpsq', 'cmpsb', 'scasb', 'repne scasw', 'repe scasd', 'repne scasq', 'lodsb', 'lodsw', 'rep lodsd', 'rep lodsq'].map((text) =>
    asm(text, STATUS, {
      bases: [RSI, RDI],
      fix: (g: bigint[], mem: DataView) => {
        smallCount(g)
        g[RSI] = 24n
        g[RDI] = 32n
        periodic(g, mem)
      },
    }),
  ),
  ...['inc dword [rbx+4]', 'lock dec byte [rbx+1]', 'dec word [rbx+2]', 'lock inc qword [rbx]', 'neg qword [rbx+8]', 'lock neg byte [rbx+3]', 'not word [rbx+2]', 'lock not dword [rbx+4]'].map((t) => asm(t, STATUS)),
  ...['lock xadd [rbx+8], rax', 'xadd [rbx+1], cl', 'xadd [rbx+2], dx', 'xadd [rbx+4], esi'].map((t) => asm(t, STATUS)),
  asm('lock cmpxchg [rbx+8], rcx', STATUS, { fix: sometimesEqual(8, 8) }),
  asm('cmpxchg [rbx+4], edx', STATUS, { fix: sometimesEqual(4, 4) }),
  asm('cmpxchg [rbx+2], si', STATUS, { fix: sometimesEqual(2, 2) }),
  asm('cmpxchg [rbx+1], cl', STATUS, { fix: sometimesEqual(1, 1) }),
  // Based on RSI: EBX is an operand (the new low half).
  asm('lock cmpxchg8b [rsi+8]', STATUS, {
    bases: [RSI],
    fix: (g, mem) => {
      if ((g[R8]! & 1n) === 0n) return
      g[RAX] = BigInt(mem.getUint32(8, true))
      g[RDX] = BigInt(mem.getUint32(12, true))
    },
  }),
  ...['mul byte [rbx+3]', 'mul word [rbx+2]', 'mul dword [rbx+4]', 'mul qword [rbx+8]', 'imul byte [rbx+1]', 'imul word [rbx+6]', 'imul dword [rbx+4]', 'imul qword [rbx+8]'].map((t) => asm(t, MUL)),
  ...['imul cx, [rbx+2]', 'imul edx, [rbx+4]', 'imul rsi, [rbx+8]', 'imul ax, [rbx+2], 311', 'imul eax, [rbx+4], -51', 'imul rax, [rbx+8], -3', 'imul r9, [rbx+16], 0x12345'].map((t) => asm(t, MUL)),
  asm('div byte [rbx+1]', 0n, { fix: unsignedDivision(1, 1) }),
  asm('div word [rbx+2]', 0n, { fix: unsignedDivision(2, 2) }),
  asm('div dword [rbx+4]', 0n, { fix: unsignedDivision(4, 4) }),
  asm('div qword [rbx+8]', 0n, { fix: unsignedDivision(8, 8) }),
  asm('idiv dword [rbx+4]', 0n, { fix: signedDivision(4, 4) }),
  asm('idiv qword [rbx+8]', 0n, { fix: signedDivision(8, 8) }),
  ...['bsf eax, [rbx+4]', 'bsr rcx, [rbx+8]', 'bsf dx, [rbx+2]', 'bsr esi, [rbx]', 'bsf r8, [rbx+16]'].map((t) => asm(t, ZF)),
  // BTx with a register bit offset reaches memory before and after the operand (signed, SDM BT).
  asm('bt [rbx+32], rcx', BT, { fix: (g) => void (g[RCX] = signed(g[RCX]!, 256n)) }),
  asm('bts [rbx+32], ecx', BT, { fix: (g) => void (g[RCX] = signed(g[RCX]!, 256n) & 0xffff_ffffn) }),
  asm('lock btr word [rbx+32], cx', BT, { fix: (g) => void (g[RCX] = (g[RCX]! & ~0xffffn) | (signed(g[RCX]!, 256n) & 0xffffn)) }),
  asm('btc qword [rbx+32], rcx', BT, { fix: (g) => void (g[RCX] = signed(g[RCX]!, 256n)) }),
  asm('bts dword [rbx+4], 37', BT),
  asm('btc qword [rbx+8], 70', BT),
  ...['movbe eax, [rbx+4]', 'movbe [rbx+8], rcx', 'movbe [rbx+2], dx', 'movbe rsi, [rbx+16]'].map((t) => asm(t, STATUS)),
  ...['sete byte [rbx+3]', 'setl byte [rbx]', 'setbe byte [rbx+1]', 'setp byte [rbx+2]', 'seto byte [rbx+5]', 'setg byte [rbx+6]'].map((t) => asm(t, STATUS)),
  ...['cmovne eax, [rbx+4]', 'cmovg rcx, [rbx+8]', 'cmovb dx, [rbx+2]', 'cmovs esi, [rbx]', 'cmovae r8, [rbx+16]'].map((t) => asm(t, STATUS)),
  // Shifts and rotates: by 1 every defined flag; by CL or an immediate, OF (and for shifts
  // AF) aside; 8- and 16-bit shifts kept below the width, where CF is defined.
  ...['shl dword [rbx+4], 1', 'shr byte [rbx+1], 1', 'sar word [rbx+2], 1', 'sar qword [rbx+8], 1'].map((t) => asm(t, LOGIC)),
  ...['rol byte [rbx+1], 1', 'ror qword [rbx+8], 1', 'rcl dword [rbx], 1', 'rcr word [rbx+2], 1'].map((t) => asm(t, STATUS)),
  ...['sar qword [rbx+8], cl', 'shl dword [rbx+4], cl', 'shr qword [rbx+16], 5', 'sal dword [rbx], 31'].map((t) => asm(t, SHIFTED)),
  asm('shl byte [rbx+1], cl', SHIFTED, { fix: (g) => low(g, RCX, 3n) }),
  asm('shr word [rbx+2], cl', SHIFTED, { fix: (g) => low(g, RCX, 4n) }),
  asm('sar byte [rbx+3], cl', SHIFTED, { fix: (g) => low(g, RCX, 3n) }),
  ...['rol byte [rbx+1], cl', 'ror word [rbx+2], cl', 'rol dword [rbx+4], cl', 'ror qword [rbx+8], 13', 'rcl byte [rbx+3], cl', 'rcr word [rbx+2], cl', 'rcl qword [rbx+8], cl', 'rcr dword [rbx+4], 7'].map((t) =>
    asm(t, ROTATED),
  ),
  asm('shld dword [rbx+4], ecx, 1', LOGIC),
  asm('shrd qword [rbx+8], rdx, 1', LOGIC),
  asm('shld dword [rbx+4], esi, cl', SHIFTED),
  asm('shrd qword [rbx+8], rdx, cl', SHIFTED),
  asm('shld qword [rbx+16], rax, 40', SHIFTED),
  asm('shrd word [rbx+2], si, cl', SHIFTED, { fix: (g) => low(g, RCX, 4n) }),
  // PUSH and POP with an operand on the device, and with the stack on it.
  asm('push qword [rbx+8]\npop rax', STATUS),
  asm('push word [rbx+2]\npop cx', STATUS),
  asm('push rdx\npop qword [rbx+16]', STATUS),
  asm('push word [rbx]\npop word [rbx+6]', STATUS),
  asm(onDeviceStack('push rax\npush qword [rbx+8]\npush -7\npush 0x12345678\npop rcx\npop rdx\npop rsi\npop r8'), STATUS),
  asm(onDeviceStack('push cx\npush word [rbx+2]\npop si\npop dx'), STATUS),
  asm(onDeviceStack('push rax\npop qword [rbx]'), STATUS),
  // ENTER pushes RBP onto the device and LEAVE pops it back: R13 = the frame's size.
  asm(onDeviceStack('enter 24, 0\nmov r13, rbp\nsub r13, rsp\nleave'), STATUS),
  // CALL pushes its return address on the device, RET pops it; the slot is cleared after.
  asm(onDeviceStack('call l1\njmp l2\nl1: ret\nl2: mov qword [rsp-8], 0'), STATUS),
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
      const mem = new Uint8Array(MEM)
      s.words.forEach((w, k) => new DataView(mem.buffer).setBigUint64(k * 8, w, true))
      form.fix?.(gpr, new DataView(mem.buffer))
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
    if (result.reason !== "halt") return t.fail(`${where}: ${JSON.stringify(result)}`)
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
