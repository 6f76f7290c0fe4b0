import test from 'ava'
import { createVm, enterRealMode, enterLongMode, segment, CpuidTable, MshvError, GuestFatalError, type Vm, type Vcpu, type VmOptions, type MsrHandler } from '../index.js'
import { u32 } from './helpers.js'

const CODE = 0x1000
const GP_HANDLER = 0x3000
const GP_PORT = 0x0d

/** A real-mode guest with `code` at 0x1000 and a #GP handler that writes port 0x0d, then halts. */
function guest(code: readonly number[], options: VmOptions = {}): { vm: Vm; vcpu: Vcpu; gps: number[] } {
  const vm = createVm({ backend: 'sim', ...options })
  vm.addRam(0, 1 << 20)
  vm.write(CODE, code)
  vm.write(13 * 4, [GP_HANDLER & 0xff, GP_HANDLER >> 8, 0, 0])
  vm.write(GP_HANDLER, [0xe6, GP_PORT, 0xf4]) // out 0x0d, al; hlt
  const gps: number[] = []
  vm.bus.register(GP_PORT, 1, { ioWrite: () => gps.push(1) }, 'gp-probe')
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, CODE)
  return { vm, vcpu, gps }
}

/** The IP the #GP handler would return to (IVT delivery pushed FLAGS, CS, IP below SP 0x7000). */
function faultingIp(vm: Vm): number {
  const b = vm.read(0x7000 - 6, 2)
  return (b[0] ?? 0) | ((b[1] ?? 0) << 8)
}

const ascii = (s: string): number => u32(new TextEncoder().encode(s))

test('CPUID answers from the table, per subleaf, and falls back to the hypervisor for the rest, without an exit', (t) => {
  const { vm, vcpu } = guest(
    [
      0x66, 0x31, 0xc0, 0x0f, 0xa2, // xor eax, eax; cpuid
      0x66, 0x89, 0x1e, 0x00, 0x05, // mov [0x500], ebx
      0x66, 0xb8, 0x00, 0x00, 0x00, 0x40, 0x0f, 0xa2, // mov eax, 0x40000000; cpuid
      0x66, 0x89, 0x1e, 0x04, 0x05, 0x66, 0x89, 0x0e, 0x08, 0x05, // mov [0x504], ebx; mov [0x508], ecx
      0x66, 0x89, 0x16, 0x0c, 0x05, 0x66, 0xa3, 0x10, 0x05, // mov [0x50c], edx; mov [0x510], eax
      0x66, 0xb8, 0x07, 0x00, 0x00, 0x00, 0x66, 0xb9, 0x01, 0x00, 0x00, 0x00, 0x0f, 0xa2, // eax=7, ecx=1; cpuid
      0x66, 0x89, 0x1e, 0x14, 0x05, 0xf4, // mov [0x514], ebx; hlt
    ],
    {
      cpuid: [
        { leaf: 0x4000_0000, eax: 0x4000_0001, ebx: ascii('Mshv'), ecx: ascii('TsMs'), edx: ascii('hvTs') },
        { leaf: 7, subleaf: 0, ebx: 0xdef },
        { leaf: 7, subleaf: 1, ebx: 0xabc },
      ],
    },
  )
  t.is(vcpu.run().reason, 'halt') // flush the setup registers first
  const m = vm.read(0x500, 0x18)
  t.is(u32(m, 0), ascii('Genu'), 'leaf 0 is the hypervisor answer (a plain x86-64 CPU)')
  t.deepEqual([u32(m, 4), u32(m, 8), u32(m, 12), u32(m, 16)], [ascii('Mshv'), ascii('TsMs'), ascii('hvTs'), 0x4000_0001])
  t.is(u32(m, 0x14), 0xabc, 'subleaf 1 of leaf 7')
  const s = vcpu.stats()
  t.is(s.exitsByType['cpuid'], undefined, 'the hypervisor answered from the registered results')
  // Nor is the HLT an exit: MSHV has no HLT intercept in a partition with a local APIC.
  t.deepEqual(Object.keys(s.exitsByType), [])
  vm.close()
})

test('the CPUID table can be edited between runs and rejects bad entries', (t) => {
  const table = new CpuidTable()
  const { vm, vcpu } = guest([0x66, 0xb8, 0x00, 0x00, 0x00, 0x40, 0x0f, 0xa2, 0xf4], { cpuid: table })
  t.is(vm.cpuid, table)
  vm.cpuid.set({ leaf: 0x4000_0000, eax: 42 })
  t.is(vcpu.run().reason, 'halt')
  t.is(vcpu.regs.get('rax'), 42n)
  // Edited after the vCPU registered it: the next run answers from the new table.
  vm.cpuid.set({ leaf: 0x4000_0000, eax: 43 })
  // Out of the halt (it stays until something ends it) and back to the start.
  vcpu.wake()
  vcpu.regs.set('rip', 0x1000n)
  t.is(vcpu.run().reason, 'halt')
  t.is(vcpu.regs.get('rax'), 43n)
  // Deleted: the hypervisor's own answer again.
  t.true(vm.cpuid.delete(0x4000_0000))
  vcpu.wake()
  vcpu.regs.set('rip', 0x1000n)
  t.is(vcpu.run().reason, 'halt')
  t.not(vcpu.regs.get('rax'), 43n)
  vm.cpuid.set({ leaf: 0x4000_0000, eax: 42 })
  t.throws(() => table.set({ leaf: -1 }), { instanceOf: MshvError, message: /leaf must be an integer in 0\.\.0xffffffff, got -1/ })
  t.throws(() => table.set({ leaf: 1, ecx: 2 ** 32 }), { message: /ecx .* got 4294967296/ })
  t.true(table.delete(0x4000_0000))
  t.is(table.size, 0)
  vm.close()
})

// mov ecx, 0x4b564d00; rdmsr; mov [0x500], eax; mov [0x504], edx;
// mov eax, 0x12345678; mov edx, 0x9abcdef0; wrmsr; mov ecx, 0x4b564d01; rdmsr; hlt
const MSR_CODE = [
  0x66, 0xb9, 0x00, 0x4d, 0x56, 0x4b, 0x0f, 0x32, 0x66, 0xa3, 0x00, 0x05, 0x66, 0x89, 0x16, 0x04, 0x05,
  0x66, 0xb8, 0x78, 0x56, 0x34, 0x12, 0x66, 0xba, 0xf0, 0xde, 0xbc, 0x9a, 0x0f, 0x30,
  0x66, 0xb9, 0x01, 0x4d, 0x56, 0x4b, 0x0f, 0x32, 0xf4,
]
const SECOND_RDMSR = CODE + 37

test('MSR handlers answer RDMSR and see WRMSR; a refused access injects #GP(0) at the instruction', (t) => {
  const written: bigint[] = []
  const msrs: Record<number, MsrHandler> = {
    0x4b56_4d00: { read: () => 0x1122_3344_5566_7788n, write: (v) => void written.push(v) },
    0x4b56_4d01: { read: () => undefined },
  }
  const { vm, vcpu, gps } = guest(MSR_CODE, { msrs })
  t.is(vcpu.run().reason, 'halt')
  const m = vm.read(0x500, 8)
  t.deepEqual([u32(m, 0), u32(m, 4)], [0x5566_7788, 0x1122_3344], 'EDX:EAX')
  t.deepEqual(written, [0x9abc_def0_1234_5678n])
  t.deepEqual(gps, [1], 'the guest took #GP')
  t.is(faultingIp(vm), SECOND_RDMSR, '#GP is a fault: it returns to the refused RDMSR')
  t.is(vcpu.stats().exitsByType['msr'], 3)
  vm.close()
})

test("the guest's vendor is the CPUID table's: with AuthenticAMD, SYSCALL from compatibility mode enters 64-bit code at CSTAR (AMD APM vol 3 SYSCALL) and the legacy counter MSRs read 0 (APM vol 2 13.2.1); with GenuineIntel, it is #UD (SDM vol 2 SYSCALL)", (t) => {
  const words = (v: string) => ({ ebx: ascii(v.slice(0, 4)), edx: ascii(v.slice(4, 8)), ecx: ascii(v.slice(8, 12)) })
  for (const vendor of ['AuthenticAMD', 'GenuineIntel']) {
    const vm = createVm({ backend: 'sim', cpuid: new CpuidTable([{ leaf: 0, ...words(vendor) }]) })
    vm.addRam(0, 1 << 22)
    vm.write(0x10000, [0x0f, 0x05]) // syscall (in 32-bit code)
    vm.write(0x11000, [0x49, 0x89, 0xc8, 0xb9, 0x04, 0x00, 0x01, 0xc0, 0x0f, 0x32, 0xf4]) // CSTAR: mov r8, rcx; mov ecx, 0xc0010004 (PerfCtr0); rdmsr; hlt
    const vcpu = vm.createVcpu(0)
    enterLongMode(vcpu, vm, 0x10000)
    vcpu.regs.setRaw('cs', ...segment(0n, 0xffffffff, 0x18, 0xc09b)) // 32-bit code: compatibility mode
    vcpu.regs.set('efer', (1n << 8n) | (1n << 10n) | 1n) // LME, LMA, SCE
    vcpu.regs.set('star', 8n << 32n)
    vcpu.regs.set('cstar', 0x11000n)
    vcpu.regs.set('lstar', 0x12000n)
    vcpu.regs.set('rax', 0x1234n)
    vcpu.regs.setRaw('idtr', 0n, 0n) // no IDT: a fault is a triple fault that names it
    if (vendor === 'AuthenticAMD') {
      t.is(vcpu.run().reason, 'halt')
      t.is(vcpu.regs.get('rip'), 0x1100bn, 'at CSTAR, past its HLT')
      t.is(vcpu.regs.get('r8'), 0x10002n, 'RCX: the next RIP')
      t.is(vcpu.regs.get('r11') & 2n, 2n, 'R11: RFLAGS')
      t.is(vcpu.regs.get('rax'), 0n, 'PerfCtr0 reads 0')
    } else {
      const e = t.throws(() => vcpu.run(), { instanceOf: GuestFatalError })
      t.is(e?.exceptions?.[0]?.vector, 6, vendor)
    }
    vm.close()
  }
})

const UNKNOWN_RDMSR = [0x66, 0xb9, 0x34, 0x12, 0x00, 0x40, 0x66, 0xb8, 0x11, 0, 0, 0, 0x0f, 0x32, 0xf4] // ecx=0x40001234, eax=0x11; rdmsr; hlt

test("unknown MSRs: 'gp' (default) faults, 'ignore' reads 0 without an exit, 'error' throws naming the MSR", (t) => {
  const gp = guest(UNKNOWN_RDMSR)
  t.is(gp.vcpu.run().reason, 'halt')
  t.deepEqual(gp.gps, [1])
  gp.vm.close()
  const ignore = guest(UNKNOWN_RDMSR, { unknownMsr: 'ignore' })
  t.is(ignore.vcpu.run().reason, 'halt')
  t.is(ignore.vcpu.regs.get('rax'), 0n)
  t.is(ignore.vcpu.stats().exitsByType['msr'], undefined)
  ignore.vm.close()
  const error = guest(UNKNOWN_RDMSR, { unknownMsr: 'error' })
  const e = t.throws(() => error.vcpu.run(), { instanceOf: MshvError })
  t.is(e?.code, 'EUNHANDLED_MSR')
  t.regex(e?.message ?? '', /RDMSR of MSR 0x40001234 has no handler: rip=0x100c /)
  error.vm.close()
})

test('bad MSR and unknown-MSR options are clear errors', (t) => {
  t.throws(() => createVm({ backend: 'sim', unknownMsr: 'maybe' as 'gp' }), { message: /unknownMsr must be 'gp', 'ignore' or 'error', got 'maybe'/ })
  t.throws(() => createVm({ backend: 'sim', msrs: { [-5]: {} } }), { message: /MSR number .* got '-5'/ })
  t.throws(() => createVm({ backend: 'sim', msrs: new Map([[0x10, null as unknown as MsrHandler]]) }), { message: /handler of MSR 0x10/ })
})

test('injectException delivers through the guest IVT and validates its arguments', (t) => {
  const { vm, vcpu, gps } = guest([0x90, 0xf4])
  vcpu.injectException(13, 0)
  t.is(vcpu.run().reason, 'halt')
  t.deepEqual(gps, [1])
  t.is(faultingIp(vm), CODE)
  t.throws(() => vcpu.injectException(32), { code: 'EINVAL', message: /vector .* got 32/ })
  t.throws(() => vcpu.injectException(13, -1), { code: 'EINVAL', message: /error code .* got -1/ })
  vm.close()
})

test('injectException pushes an error code only where the processor does (SDM vol 3 6.13, 20.1.4)', (t) => {
  const { vm, vcpu } = guest([0x90, 0xf4])
  const event = () => vcpu.regs.getRaw('pendingEvent0')[0]
  vcpu.injectException(13, 5)
  t.is(event() & 0x100n, 0n, 'real mode: no error code, or VM entry would fail')
  vcpu.regs.set('cr0', 0x11n)
  vcpu.injectException(13, 5)
  t.is(event() & 0x100n, 0x100n, 'protected mode: #GP delivers one')
  t.is(event() >> 32n, 5n)
  vcpu.injectException(13)
  t.is(event() & 0x1_0000_0100n, 0x100n, 'an error code of 0 when none is given')
  vcpu.injectException(6)
  t.is(event() & 0x100n, 0n, '#UD has none')
  t.throws(() => vcpu.injectException(6, 1), { code: 'EINVAL', message: /exception 6 has no error code/ })
  vm.close()
})

test('a triple fault is an error carrying the registers and the exceptions that led to it (SDM vol 3 6.15: #UD, #GP at the IVT limit, #GP, #DF, #GP)', (t) => {
  const { vm, vcpu } = guest([0x0f, 0x0b]) // ud2 with no usable IVT
  vcpu.regs.setRaw('idtr', 0n, 0n)
  const e = t.throws(() => vcpu.run(), { instanceOf: GuestFatalError })
  t.is(e?.code, 'EGUEST_FATAL')
  t.true(e instanceof MshvError)
  t.regex(e?.message ?? '', /triple fault.*rip=0x1000 .*cr0=.* cr2=0x0 /)
  // Real mode: a vector past the IVT's limit is #GP (SDM vol 3 20.1.4). A benign #UD
  // then a #GP are handled one after the other; a #GP delivering the #GP (two
  // contributory exceptions) is a #DF, and a fault delivering the #DF a shutdown
  // (Table 6-5).
  t.deepEqual(e?.exceptions?.map((x) => x.name), ['#UD', '#GP', '#GP', '#DF', '#GP'])
  t.regex(e?.message ?? '', /first #UD, then #GP, #GP, #DF, #GP;/)
  t.is(e?.errorCode, undefined, '#UD pushes no error code')
  t.is(e?.rip, 0x1000n)
  vm.close()
})

test('a triple fault that began with a #PF names its address and error code, which CR2 no longer holds after a later #PF (SDM vol 3 6.15, Table 6-5)', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 22)
  // mov rax, [0x100000000]: past the 4 GiB the identity map covers, a not-present read.
  const code = 0x10000 // above enterLongMode's page tables
  vm.write(code, [0x48, 0xa1, 0, 0, 0, 0, 1, 0, 0, 0])
  const vcpu = vm.createVcpu(0)
  enterLongMode(vcpu, vm, code)
  // The IDT's first 8 bytes in unmapped space: delivering the #PF faults with a #PF on
  // the IDT, which makes a #DF, whose delivery faults again.
  vcpu.regs.setRaw('idtr', 0xfffn << 48n, 0x2_0000_0000n) // hv_x64_table_register: limit in bits 48-63, then the base
  const e = t.throws(() => vcpu.run(), { instanceOf: GuestFatalError })
  t.deepEqual(e?.exceptions?.map((x) => x.vector), [14, 14, 8, 14])
  t.is(e?.errorCode, 0, 'a supervisor read of a not-present page')
  t.is(e?.faultAddress, 0x1_0000_0000n)
  t.is(e?.cr2, 0x2_0000_0080n, "CR2 holds the last #PF's address, even one in a double fault's delivery (SDM vol 3 6.15, interrupt 14's footnote): #DF's IDT entry (8 * 16)")
  t.regex(e?.message ?? '', /first #PF \(error code 0x0, address 0x100000000\), then #PF, #DF, #PF;/)
  vm.close()
})

// hlt; mov al, 42; out 0xf4, al
const HALT_THEN_EXIT = [0xf4, 0xb0, 42, 0xe6, 0xf4]

test("runAsync({ onHalt: 'wait' }) waits in a HLT with interrupts off on the vCPU's thread until wake(), then resumes after it", async (t) => {
  const { vm, vcpu } = guest([0xfa, ...HALT_THEN_EXIT])
  setTimeout(() => vcpu.wake(), 20)
  const start = performance.now()
  t.deepEqual(await vcpu.runAsync({ onHalt: 'wait' }), { reason: 'debug-exit', code: 42 })
  t.true(performance.now() - start >= 15, 'it waited for the wake')
  t.is(vcpu.regs.get('internalActivityState'), 0n, 'out of halt suspend')
  vm.close()
})

test('an NMI ends a HLT with interrupts off, as on MSHV; a cancel ends the wait and leaves the vCPU halted, with no cancel left over', async (t) => {
  // The NMI's handler (IVT entry 2) returns at once: the guest goes on after its HLT.
  const woken = guest([0xfa, ...HALT_THEN_EXIT])
  woken.vm.write(2 * 4, [0x00, 0x40, 0, 0])
  woken.vm.write(0x4000, [0xcf]) // iret
  setTimeout(() => woken.vm.requestInterrupt({ kind: 'nmi' }), 20)
  t.deepEqual(await woken.vcpu.runAsync({ onHalt: 'wait', timeoutMs: 10_000 }), { reason: 'debug-exit', code: 42 })
  woken.vm.close()
  const { vm, vcpu } = guest([0xfa, ...HALT_THEN_EXIT])
  setTimeout(() => vcpu.cancel(), 20)
  t.deepEqual(await vcpu.runAsync({ onHalt: 'wait' }), { reason: 'cancelled' })
  t.deepEqual(vcpu.run(), { reason: 'halt' }, 'still halted, and no stale cancel ended this run')
  t.is(vcpu.regs.get('internalActivityState'), 2n, 'halt suspend')
  vcpu.wake()
  t.deepEqual(vcpu.run(), { reason: 'debug-exit', code: 42 }, 'wake() between runs ends the halt')
  t.throws(() => vcpu.run({ onHalt: 'wait' }), { code: 'EINVAL', message: /needs runAsync/ })
  vm.close()
})
