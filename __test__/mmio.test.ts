import test from 'ava'
import { decode, decodeCacheKey } from '../src/emulator/decode.js'
import { createVm, enterLongMode, enterRealMode, segment, RegisterBank, MshvError, type Vm, type Vcpu } from '../index.js'
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
