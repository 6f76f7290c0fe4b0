import test from 'ava'
import { decode, decodeCacheKey } from '../src/emulator/decode.js'
import { assemble, createVm, enterLongMode, enterRealMode, loadInterruptTables, segment, RegisterBank, MshvError, type Vm, type Vcpu } from '../index.js'
import * as asmModule from '../src/asm/assemble.js'

const BANK = 0xc000_0000n
const CODE = 0x10000

function longModeGuest(code: number[], registerPage: 'on' | 'off' = 'on'): { vm: Vm; vcpu: Vcpu; bank: RegisterBank } {
  const vm = createVm({ backend: 'sim', registerPage })
  vm.addRam(0, 1 << 20)
  const bank = new RegisterBank(8)
  vm.bus.registerMmio(BANK, bank.size, bank, 'bank')
  vm.write(CODE, [...code, 0xf4])
  const vcpu = vm.createVcpu(0)
  enterLongMode(vcpu, vm, CODE)
  vcpu.regs.set('rbx', BANK)
  return { vm, vcpu, bank }
}

/** Runs once to flush the setup registers, then counts a second pass over the same code. */
function countSecondPass(code: number[], page: 'on' | 'off') {
  const { vm, vcpu, bank } = longModeGuest(code, page)
  bank.set(0, 0x1122_3344_5566_7788n)
  vcpu.regs.set('rcx', 0xabcdn)
  t0(vcpu.run())
  vcpu.wake()
  vcpu.regs.set('rip', BigInt(CODE))
  vcpu.regs.flush()
  vcpu.resetStats()
  t0(vcpu.run())
  const s = vcpu.stats()
  vm.close()
  return s
}
function t0(r: { reason: string }) {
  if (r.reason !== 'halt') throw new Error(`expected halt, got ${JSON.stringify(r)}`)
}

const LOAD = [0x8b, 0x43, 0x08] // mov eax, [rbx+8]
const STORE = [0x89, 0x4b, 0x08] // mov [rbx+8], ecx

test('an MMIO load and an MMIO store cost zero hypercalls with the register page valid', (t) => {
  for (const code of [LOAD, STORE]) {
    const s = countSecondPass(code, 'on')
    t.is(s.exitsByType['unmappedGpa'], 1)
    t.is(s.hypercalls, 0)
  }
})

test('without the page an MMIO load costs one hypercall and a store two (the message has no GPRs)', (t) => {
  const load = countSecondPass(LOAD, 'off')
  t.is(load.getRegisterCalls, 0, 'RIP comes from the message; EAX is written whole')
  t.is(load.setRegisterCalls, 1, 'RAX and RIP in one batch')
  const store = countSecondPass(STORE, 'off')
  t.is(store.getRegisterCalls, 1, 'ECX must be fetched: the memory message carries no GPRs')
  t.is(store.setRegisterCalls, 1)
})

test('at page offset 0 a plain MOV reads its address registers, to tell an operand that began on the page before', (t) => {
  // mov eax, [rbx]: RBX is fetched with the group's one get-register call (the message
  // carries no GPRs); the register page serves it for free.
  const load = countSecondPass([0x8b, 0x03], 'off')
  t.is(load.getRegisterCalls, 1)
  t.is(load.setRegisterCalls, 1)
  t.is(countSecondPass([0x8b, 0x03], 'on').hypercalls, 0)
})

test('loads and stores reach the device and the guest sees the values', (t) => {
  // mov eax, [rbx+8]; mov [rbx+16], eax; mov rax, [moffs 0xc0000018]; mov [moffs 0xc0000020], eax
  const { vcpu, bank } = longModeGuest([
    0x8b, 0x43, 0x08, 0x89, 0x43, 0x10, 0x48, 0xa1, 0x18, 0, 0, 0xc0, 0, 0, 0, 0, 0xa3, 0x20, 0, 0, 0xc0, 0, 0, 0, 0,
  ])
  bank.set(1, 0xfeed_beefn)
  bank.set(3, 0x0102_0304_0506_0708n)
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.is(bank.get(2), 0xfeed_beefn)
  t.is(vcpu.regs.get('rax'), 0x0102_0304_0506_0708n)
  t.is(bank.get(4), 0x0506_0708n)
  t.deepEqual(
    bank.log.map((a) => `${a.kind}@${a.offset}/${a.size}`),
    ['read@8/4', 'write@16/4', 'read@24/8', 'write@32/4'],
  )
})

test('real-mode MMIO through a segment, and unclaimed MMIO reads as all ones', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 0x80000)
  const bank = new RegisterBank(2)
  vm.bus.registerMmio(0xa0000, bank.size, bank, 'vga-ish')
  // mov ax, [0x8]; mov [0x0], ax; mov bx, [0x100] (unclaimed); mov [0x102], bx (dropped); hlt
  vm.write(0x1000, [0xa1, 0x08, 0x00, 0xa3, 0x00, 0x00, 0x8b, 0x1e, 0x00, 0x01, 0x89, 0x1e, 0x02, 0x01, 0xf4])
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  vcpu.regs.setRaw('ds', ...segment(0xa0000n, 0xffff, 0xa000, 0x93))
  bank.set(1, 0x4321n)
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.is(bank.get(0), 0x4321n)
  t.is(vcpu.regs.get('rbx') & 0xffffn, 0xffffn)
  t.is(vm.bus.stats.unclaimedMmioReads, 1)
  t.is(vm.bus.stats.unclaimedMmioWrites, 1)
})

test('an unsupported instruction on MMIO is a clear error and the vCPU does not resume', (t) => {
  const { vcpu } = longModeGuest([0x0f, 0x01, 0x13]) // lgdt [rbx]: no descriptor table on a device
  const e = t.throws(() => vcpu.run()) as MshvError
  t.is(e.code, 'EUNSUPPORTED_INSTRUCTION')
  t.regex(e.message, /lgdt \[rbx\]/)
  t.regex(e.message, /rip 0x10000/)
  t.regex(e.message, /0xc0000000/)
  t.is(vcpu.regs.get('rip'), BigInt(CODE), 'RIP still at the instruction')
})

test('an access outside RAM made while delivering an event (the IDT is there) is EEVENT_DELIVERY, not the instruction at RIP emulated (interruption_pending, as OpenVMM refuses it)', (t) => {
  const { vcpu } = longModeGuest([0xcc]) // int3: its gate is read from the IDT
  vcpu.regs.setRaw('idtr', 0xfffn << 48n, 0xc000_0000n)
  const e = t.throws(() => vcpu.run()) as MshvError
  t.is(e.code, 'EEVENT_DELIVERY')
  t.regex(e.message, /GPA 0xc0000030/)
  t.regex(e.message, /while delivering an event/)
})

test('MMIO ranges that overlap, or lie outside the physical address space, are rejected', (t) => {
  const vm = createVm({ backend: 'sim' })
  const bank = new RegisterBank(2)
  vm.bus.registerMmio(0xd000_0000n, 16, bank, 'a')
  t.is((t.throws(() => vm.bus.registerMmio(0xd000_0008n, 16, bank, 'b')) as MshvError).code, 'EOVERLAP')
  t.is((t.throws(() => vm.bus.registerMmio(1n << 52n, 16, bank, 'c')) as MshvError).code, 'EINVAL')
  t.is((t.throws(() => new RegisterBank(0)) as MshvError).code, 'EINVAL')
})

test('string copies between RAM and the device are served from guest memory on the RAM side', (t) => {
  // rep movsd (RAM -> device); then rsi = device, rdi = RAM: rep movsd again; hlt
  const { vm, vcpu, bank } = longModeGuest([
    0xf3, 0xa5, 0x48, 0x89, 0xde, 0x48, 0xc7, 0xc7, 0x00, 0x60, 0x00, 0x00, 0xb9, 0x04, 0x00, 0x00, 0x00, 0xf3, 0xa5,
  ])
  vm.write(0x5000, [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0])
  vcpu.regs.set('rsi', 0x5000n)
  vcpu.regs.set('rdi', BANK)
  vcpu.regs.set('rcx', 4n)
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.is(bank.get(0), 0x2_0000_0001n)
  t.is(bank.get(1), 0x4_0000_0003n)
  t.deepEqual([...vm.read(0x6000, 16)], [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0])
  t.is(vcpu.regs.get('rcx'), 0n)
  t.is(vcpu.stats().exitsByType['unmappedGpa'], 8, 'one exit per element that touches the device')
  t.is(vcpu.stats().translateCalls, 8, "the RAM side is translated; the device side is the message's GVA -> GPA")
})

test("rep stos to a device under paging costs no hypercall: the message's GVA -> GPA serves", (t) => {
  // rep stosd with rdi = BANK, 4 elements; hlt
  const { vcpu, bank } = longModeGuest([0xf3, 0xab])
  vcpu.regs.set('rdi', BANK)
  vcpu.regs.set('rcx', 4n)
  vcpu.regs.set('rax', 0x1234_5678n)
  vcpu.run({ maxExits: 1 }) // the register writes above are flushed by this first run
  vcpu.resetStats()
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.is(bank.get(0), 0x1234_5678_1234_5678n)
  t.is(bank.get(1), 0x1234_5678_1234_5678n)
  const s = vcpu.stats()
  t.is(s.exitsByType['unmappedGpa'], 3)
  t.is(s.hypercalls, 0)
})

test('the decode cache tells apart instructions whose bytes hash alike', (t) => {
  // `mov rax, imm64` over pseudo-random immediates until two share a cache hash (a
  // birthday search over 32-bit hashes: some 80k tries).
  const bytesOf = (imm: bigint) => Uint8Array.of(0x48, 0xb8, ...new Uint8Array(BigUint64Array.of(imm).buffer))
  const seen = new Map<number, bigint>()
  let pair: [bigint, bigint] | undefined
  for (let x = 1n; !pair; ) {
    x = BigInt.asUintN(64, x * 6364136223846793005n + 1442695040888963407n)
    const h = decodeCacheKey(bytesOf(x), 64)
    const other = seen.get(h)
    if (other !== undefined && other !== x) pair = [other, x]
    seen.set(h, x)
  }
  const [a, b] = pair
  t.is(decode(bytesOf(a), 64, 0n).immediates[1], a)
  t.is(decode(bytesOf(b), 64, 0n).immediates[1], b, 'a hash hit with other bytes decodes afresh')
  t.is(decode(bytesOf(a), 64, 0n).immediates[1], a)
  // The same bytes in another mode are another instruction: `inc eax` in 32-bit code, a REX `nop` in 64.
  t.is(decode(Uint8Array.of(0x40, 0x90), 32, 0n).length, 1)
  t.is(decode(Uint8Array.of(0x40, 0x90), 64, 0n).length, 2)
})

test('SSE and MMX moves to device memory: 16-byte accesses as two 8-byte ones, and what each load keeps', (t) => {
  const { assemble } = asmModule
  const code = assemble(
    `movdqu xmm0, [rbx]
     movdqa [rbx+16], xmm0
     movd xmm1, [rbx+32]
     movq [rbx+40], xmm1
     movhps xmm1, [rbx+8]
     movq mm0, [rbx+8]
     movq [rbx+48], mm0
     movss [rbx+56], xmm0`,
    { bitness: 64, address: CODE },
  ).bytes
  const { vcpu, bank } = longModeGuest([...code])
  bank.set(0, 0x1111_2222_3333_4444n)
  bank.set(1, 0x5555_6666_7777_8888n)
  bank.set(4, 0xffff_ffff_abcd_ef01n)
  vcpu.regs.setRaw('xmm1', 0x9999n, 0x9999n)
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.deepEqual(vcpu.regs.getRaw('xmm0'), [0x1111_2222_3333_4444n, 0x5555_6666_7777_8888n])
  t.is(bank.get(2), 0x1111_2222_3333_4444n)
  t.is(bank.get(3), 0x5555_6666_7777_8888n)
  t.deepEqual(vcpu.regs.getRaw('xmm1'), [0xabcd_ef01n, 0x5555_6666_7777_8888n], 'MOVD clears the rest; MOVHPS keeps the low half')
  t.is(bank.get(5), 0xabcd_ef01n)
  t.is(bank.get(6), 0x5555_6666_7777_8888n, 'through MM0')
  t.is(bank.get(7), 0x3333_4444n, 'MOVSS stores 4 bytes')
  t.deepEqual(
    bank.log.map((a) => `${a.kind}@${a.offset}/${a.size}`),
    ['read@0/8', 'read@8/8', 'write@16/8', 'write@24/8', 'read@32/4', 'write@40/8', 'read@8/8', 'read@8/8', 'write@48/8', 'write@56/4'],
  )
})

/** Where each exception handler of {@link faultingGuest} is: a HLT at HANDLERS + 16 * vector. */
const HANDLERS = 0x20000

/** {@link longModeGuest} with an IDT (and loadInterruptTables' GDT: 0x08 code, 0x10 data) whose every handler is a HLT. */
function faultingGuest(code: number[]): { vm: Vm; vcpu: Vcpu; bank: RegisterBank } {
  const g = longModeGuest(code)
  const handlers: Record<number, number> = {}
  for (let v = 0; v < 32; v++) {
    handlers[v] = HANDLERS + 16 * v
    g.vm.write(HANDLERS + 16 * v, [0xf4])
  }
  loadInterruptTables(g.vcpu, g.vm, handlers)
  return g
}

/** The exception a {@link faultingGuest} took (it halted in the handler): its vector, the RIP it pushed and its error code. */
function taken(g: { vm: Vm; vcpu: Vcpu }, errorCode: boolean): { vector: number; rip: bigint; errorCode?: bigint } {
  const rip = g.vcpu.regs.get('rip')
  const vector = Number(rip - 1n - BigInt(HANDLERS)) / 16
  const frame = new DataView(g.vm.read(g.vcpu.regs.get('rsp'), 16).buffer)
  if (!errorCode) return { vector, rip: frame.getBigUint64(0, true) }
  return { vector, rip: frame.getBigUint64(8, true), errorCode: frame.getBigUint64(0, true) }
}

test('DIV and IDIV on a device operand raise #DE at the instruction for a zero divisor or a quotient too wide, changing nothing (SDM DIV, IDIV)', (t) => {
  const div = faultingGuest([...assemble('div qword [rbx]', { bitness: 64 }).bytes])
  div.vcpu.regs.set('rax', 5n)
  div.vcpu.regs.set('rdx', 7n)
  t.deepEqual(div.vcpu.run(), { reason: 'halt' })
  t.deepEqual(taken(div, false), { vector: 0, rip: BigInt(CODE) })
  t.is(div.vcpu.regs.get('rax'), 5n)
  t.is(div.vcpu.regs.get('rdx'), 7n)
  // AX = -32768 over -1: the quotient 32768 does not fit in AL.
  const idiv = faultingGuest([...assemble('idiv byte [rbx]', { bitness: 64 }).bytes])
  idiv.bank.set(0, 0xffn)
  idiv.vcpu.regs.set('rax', 0x8000n)
  t.deepEqual(idiv.vcpu.run(), { reason: 'halt' })
  t.deepEqual(taken(idiv, false), { vector: 0, rip: BigInt(CODE) })
  t.is(idiv.vcpu.regs.get('rax'), 0x8000n)
  // 7 / -2 = -3 remainder 1: IDIV truncates toward zero.
  const ok = longModeGuest([...assemble('idiv dword [rbx]', { bitness: 64 }).bytes])
  ok.bank.set(0, 0xffff_fffen)
  ok.vcpu.regs.set('rax', 7n)
  ok.vcpu.regs.set('rdx', 0n)
  t.deepEqual(ok.vcpu.run(), { reason: 'halt' })
  t.is(ok.vcpu.regs.get('rax'), 0xffff_fffdn)
  t.is(ok.vcpu.regs.get('rdx'), 1n)
})

test('JMP and CALL through device memory: a canonical target is taken (CALL pushes the next RIP), a non-canonical one is #GP(0) at the branch (SDM JMP, CALL; kvm-unit-tests test_jmp_noncanonical)', (t) => {
  const code = [...assemble('jmp qword [rbx]\nhlt\ncall qword [rbx+8]', { bitness: 64 }).bytes]
  const g = faultingGuest(code)
  const call = BigInt(CODE + 3)
  g.bank.set(0, call) // the JMP lands on the CALL
  g.bank.set(1, BigInt(HANDLERS + 0x400)) // ... which calls a HLT
  g.vm.write(HANDLERS + 0x400, [0xf4])
  t.deepEqual(g.vcpu.run(), { reason: 'halt' })
  t.is(g.vcpu.regs.get('rip'), BigInt(HANDLERS + 0x401))
  t.is(new DataView(g.vm.read(g.vcpu.regs.get('rsp'), 8).buffer).getBigUint64(0, true), call + 3n, 'the return address')
  const bad = faultingGuest(code)
  bad.bank.set(0, 0x8000_0000_0000_0000n)
  t.deepEqual(bad.vcpu.run(), { reason: 'halt' })
  t.deepEqual(taken(bad, true), { vector: 13, rip: BigInt(CODE), errorCode: 0n })
})

test('RET with the stack on a device pops the return address there and releases imm16 more bytes', (t) => {
  const g = longModeGuest([...assemble('ret 16', { bitness: 64 }).bytes])
  g.vm.write(0x30000, [0xf4])
  g.bank.set(2, 0x30000n)
  g.vcpu.regs.set('rsp', BANK + 16n)
  t.deepEqual(g.vcpu.run(), { reason: 'halt' })
  t.is(g.vcpu.regs.get('rip'), 0x30001n)
  t.is(g.vcpu.regs.get('rsp'), BANK + 40n)
})

test('far JMP m16:64 through device memory loads CS from the GDT; a data segment there is #GP(selector) (SDM JMP; kvm-unit-tests test_ljmp)', (t) => {
  const code = [0x48, 0xff, 0x2b] // rex64 jmp far [rbx]: m16:64
  const g = faultingGuest(code)
  g.vm.write(0x30000, [0xf4])
  g.bank.set(0, 0x30000n)
  g.bank.set(1, 0x8n)
  t.deepEqual(g.vcpu.run(), { reason: 'halt' })
  t.is(g.vcpu.regs.get('rip'), 0x30001n)
  const [, cs] = g.vcpu.regs.getRaw('cs')
  t.is((cs >> 32n) & 0xffffn, 8n)
  t.is((cs >> 48n) & 0xffffn, 0xa09bn, 'the descriptor 0x00af9b... with accessed set')
  const bad = faultingGuest(code)
  bad.bank.set(0, 0x30000n)
  bad.bank.set(1, 0x10n)
  t.deepEqual(bad.vcpu.run(), { reason: 'halt' })
  t.deepEqual(taken(bad, true), { vector: 13, rip: BigInt(CODE), errorCode: 0x10n })
})

test('far CALL m16:64 through device memory pushes CS and the next RIP, then loads CS; a data segment there is #GP(selector) with nothing pushed (SDM CALL)', (t) => {
  const code = [0x48, 0xff, 0x1b] // rex64 call far [rbx]: m16:64
  const g = faultingGuest(code)
  g.vm.write(0x30000, [0xf4])
  g.bank.set(0, 0x30000n)
  g.bank.set(1, 0x8n)
  const sp = g.vcpu.regs.get('rsp')
  t.deepEqual(g.vcpu.run(), { reason: 'halt' })
  t.is(g.vcpu.regs.get('rip'), 0x30001n)
  t.is(g.vcpu.regs.get('rsp'), sp - 16n)
  const frame = new DataView(g.vm.read(sp - 16n, 16).buffer)
  t.is(frame.getBigUint64(0, true), BigInt(CODE + code.length), 'the return RIP')
  t.is(frame.getBigUint64(8, true), 8n, 'the caller CS, zero-extended')
  const bad = faultingGuest(code)
  bad.bank.set(0, 0x30000n)
  bad.bank.set(1, 0x10n)
  t.deepEqual(bad.vcpu.run(), { reason: 'halt' })
  t.deepEqual(taken(bad, true), { vector: 13, rip: BigInt(CODE), errorCode: 0x10n })
  t.is(bad.vcpu.regs.get('rsp'), sp - 48n, 'only the exception frame (SS, RSP, RFLAGS, CS, RIP, error code) was pushed')
})

test('MOV SS from device memory: a null selector at CPL 0 in 64-bit mode, #GP(0) when its RPL is not CPL, #GP(selector) for a non-null one; it holds off interrupts for one instruction (SDM MOV; kvm-unit-tests test_sreg)', (t) => {
  const code = [...assemble('mov ss, [rbx]', { bitness: 64 }).bytes]
  const g = faultingGuest(code)
  g.vcpu.run({ maxExits: 1 })
  t.is((g.vcpu.regs.getRaw('ss')[1] >> 32n) & 0xffffn, 0n)
  t.is(g.vcpu.regs.get('interruptState') & 1n, 1n, 'the interrupt shadow')
  t.deepEqual(g.vcpu.run(), { reason: 'halt' })
  for (const [selector, error] of [
    [3n, 0n],
    [0x13n, 0x10n],
  ] as const) {
    const f = faultingGuest(code)
    f.bank.set(0, selector)
    t.deepEqual(f.vcpu.run(), { reason: 'halt' })
    t.deepEqual(taken(f, true), { vector: 13, rip: BigInt(CODE), errorCode: error })
    t.is((f.vcpu.regs.getRaw('ss')[1] >> 32n) & 0xffffn, 0x10n, 'SS unchanged')
  }
})

test('LTR from device memory loads TR from an available TSS and marks it busy in the GDT; a busy one is #GP(selector) (SDM LTR; kvm-unit-tests test_ltr)', (t) => {
  const code = [...assemble('ltr [rbx]', { bitness: 64 }).bytes]
  const tss = (type: bigint, high = 0xffff_8000n) => {
    const g = faultingGuest(code)
    // A 16-byte TSS descriptor at selector 0x18: base 0xffff8000_9abc0000, limit 0x67.
    const low = 0x67n | (0xbcn << 32n) | ((0x80n | type) << 40n) | (0x9an << 56n)
    g.vm.write(0x500 + 0x18, new Uint8Array(BigUint64Array.of(low, high).buffer))
    g.vcpu.regs.setRaw('gdtr', 0x27n << 48n, 0x500n)
    g.bank.set(0, 0x18n)
    return g
  }
  const g = tss(9n)
  t.deepEqual(g.vcpu.run(), { reason: 'halt' })
  t.is(g.vcpu.regs.get('rip'), BigInt(CODE + code.length + 1))
  const [base, tr] = g.vcpu.regs.getRaw('tr')
  t.is(base, 0xffff_8000_9abc_0000n)
  t.is(tr & 0xffff_ffffn, 0x67n)
  t.is((tr >> 32n) & 0xffffn, 0x18n)
  t.is((tr >> 48n) & 0xffn, 0x8bn, 'a busy 64-bit TSS')
  t.is(g.vm.read(0x500 + 0x18 + 5, 1)[0], 0x8b, 'marked busy in the GDT')
  for (const bad of [tss(11n), tss(9n, 0x1234_5678n)]) {
    // Busy, or its base not canonical (AMD APM vol 3 LTR; as the sim's processor checks).
    t.deepEqual(bad.vcpu.run(), { reason: 'halt' })
    t.deepEqual(taken(bad, true), { vector: 13, rip: BigInt(CODE), errorCode: 0x18n })
  }
})

test("SMSW to device memory stores CR0's low 16 bits, 2 bytes (SDM SMSW; kvm-unit-tests test_smsw)", (t) => {
  const g = longModeGuest([...assemble('smsw [rbx]', { bitness: 64 }).bytes])
  g.bank.set(0, 0xffff_ffff_ffff_ffffn)
  t.deepEqual(g.vcpu.run(), { reason: 'halt' })
  t.is(g.bank.get(0), 0xffff_ffff_ffff_0033n)
  t.deepEqual(
    g.bank.log.filter((a) => a.kind === 'write').map((a) => `${a.offset}/${a.size}`),
    ['0/2'],
  )
})

test('an operand that straddles RAM and a device goes to each where it lives, byte for byte (the exit reports only the device part)', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const bank = new RegisterBank(8)
  vm.bus.registerMmio(1n << 20n, bank.size, bank, 'bank after RAM')
  // mov [rbx-4], rax; mov rcx, [rbx-4]; push qword [rbx-4]; pop rdx; hlt
  vm.write(CODE, [...assemble('mov [rbx-4], rax\nmov rcx, [rbx-4]\npush qword [rbx-4]\npop rdx\nhlt', { bitness: 64 }).bytes])
  const vcpu = vm.createVcpu(0)
  enterLongMode(vcpu, vm, CODE)
  vcpu.regs.set('rbx', 1n << 20n)
  vcpu.regs.set('rax', 0x1122_3344_5566_7788n)
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.deepEqual([...vm.read((1 << 20) - 4, 4)], [0x88, 0x77, 0x66, 0x55])
  t.is(bank.get(0), 0x1122_3344n)
  t.is(vcpu.regs.get('rcx'), 0x1122_3344_5566_7788n)
  t.is(vcpu.regs.get('rdx'), 0x1122_3344_5566_7788n)
  vm.close()
})

test('CMPXCHG16B on a device: RDX:RAX against memory, RCX:RBX stored when equal; an operand not 16-byte aligned is #GP(0) (SDM CMPXCHG8B/CMPXCHG16B)', (t) => {
  const code = [...assemble('lock cmpxchg16b [rsi]', { bitness: 64 }).bytes]
  const g = faultingGuest(code)
  g.vcpu.regs.set('rsi', BANK + 16n)
  g.bank.set(2, 1n)
  g.bank.set(3, 2n)
  for (const [r, v] of [['rax', 1n], ['rdx', 2n], ['rbx', 0xaan], ['rcx', 0xbbn]] as const) g.vcpu.regs.set(r, v)
  g.vcpu.run({ maxExits: 1 })
  t.is(g.bank.get(2), 0xaan)
  t.is(g.bank.get(3), 0xbbn)
  t.is(g.vcpu.regs.get('rflags') & 0x40n, 0x40n)
  const miss = longModeGuest(code)
  miss.vcpu.regs.set('rsi', BANK)
  miss.bank.set(0, 5n)
  miss.bank.set(1, 6n)
  t.deepEqual(miss.vcpu.run(), { reason: 'halt' })
  t.is(miss.vcpu.regs.get('rax'), 5n)
  t.is(miss.vcpu.regs.get('rdx'), 6n)
  t.is(miss.vcpu.regs.get('rflags') & 0x40n, 0n)
  const unaligned = faultingGuest(code)
  unaligned.vcpu.regs.set('rsi', BANK + 8n)
  t.deepEqual(unaligned.vcpu.run(), { reason: 'halt' })
  t.deepEqual(taken(unaligned, true), { vector: 13, rip: BigInt(CODE), errorCode: 0n })
})

test('ENTER with nesting levels on a device stack computes what the processor computes on RAM', (t) => {
  const run = (stack: bigint) => {
    const g = longModeGuest([...assemble('enter 24, 3', { bitness: 64 }).bytes])
    const mem = (at: bigint, v: bigint) => (at >= BANK ? g.bank.set(Number(at - BANK) / 8, v) : g.vm.write(at, new Uint8Array(BigUint64Array.of(v).buffer)))
    // The old frame at stack + 16 holds two frame pointers to copy below it.
    mem(stack + 8n, 0x1111n)
    mem(stack, 0x2222n)
    g.vcpu.regs.set('rbp', stack + 16n)
    g.vcpu.regs.set('rsp', stack + 64n)
    t.deepEqual(g.vcpu.run(), { reason: 'halt' })
    const words = Array.from({ length: 8 }, (_, i) => (stack >= BANK ? g.bank.get(i) : new DataView(g.vm.read(stack + BigInt(8 * i), 8).buffer).getBigUint64(0, true)))
    return { rbp: g.vcpu.regs.get('rbp') - stack, rsp: g.vcpu.regs.get('rsp') - stack, words: words.map((w) => (w >= stack && w < stack + 64n ? w - stack : w)) }
  }
  const device = run(BANK)
  t.deepEqual(device, run(0x40000n))
  t.is(device.rbp, 56n)
  t.is(device.rsp, 56n - 24n - 24n)
})

test('MOV DS from device memory in real mode takes the selector as a paragraph', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 0x80000)
  const bank = new RegisterBank(2)
  vm.bus.registerMmio(0xa0000, bank.size, bank, 'device')
  vm.write(0x1000, [0x26, 0x8e, 0x1e, 0x00, 0x00, 0xf4]) // mov ds, es:[0]; hlt
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  vcpu.regs.setRaw('es', ...segment(0xa0000n, 0xffff, 0xa000, 0x93))
  bank.set(0, 0x1234n)
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  const [base, ds] = vcpu.regs.getRaw('ds')
  t.is(base, 0x12340n)
  t.is((ds >> 32n) & 0xffffn, 0x1234n)
  vm.close()
})

test('real mode: 16-bit addresses wrap in 64 KiB before the segment base is added (ADD [BX+SI+2], XCHG ES:[DI+disp], REPE CMPSB)', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 0x80000)
  const bank = new RegisterBank(4)
  vm.bus.registerMmio(0xa0000, bank.size, bank, 'device')
  const code = assemble('add [bx+si+2], ax\nxchg es:[di+0xfff0], cl\nmov si, 0x10\nmov di, 0x18\nmov cx, 8\nrepe cmpsb\nhlt', { bitness: 16 }).bytes
  vm.write(0x1000, [...code])
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  for (const s of ['ds', 'es'] as const) vcpu.regs.setRaw(s, ...segment(0xa0000n, 0xffff, 0xa000, 0x93))
  bank.set(0, 0x1111_2222_3333_4444n)
  bank.set(1, 0x0807_0605_0403_0201n)
  bank.set(2, 0x0807_0605_0403_0201n)
  bank.set(3, 0x0807_ff05_0403_0201n)
  vcpu.regs.set('rbx', 0xfff0n) // BX + SI + 2 = 0x10002: offset 2
  vcpu.regs.set('rsi', 0x10n)
  vcpu.regs.set('rax', 0x0101n)
  vcpu.regs.set('rdi', 0x18n) // DI + 0xfff0 = 0x10008: offset 8
  vcpu.regs.set('rcx', 0xaan)
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.is(bank.get(0), 0x1111_2222_3434_4444n)
  t.is(bank.get(1), 0x0807_0605_0403_02aan)
  t.is(vcpu.regs.get('rcx') & 0xffffn, 2n, 'REPE stopped at the sixth byte')
  t.is(vcpu.regs.get('rsi') & 0xffffn, 0x16n)
  t.is(vcpu.regs.get('rdi') & 0xffffn, 0x1en)
  t.is(vcpu.regs.get('rflags') & 0x40n, 0n)
  vm.close()
})
