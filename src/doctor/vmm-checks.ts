/**
 * The VMM checklist: the package's own exit handling on a backend, end to end (bus,
 * devices, MMIO emulator, register cache, CPUID table, MSR handlers, cancel, close).
 * The backend checklist (`hv-conformance`, run natively) covers what the hypervisor
 * delivers; these cover what this package does with it.
 * @module
 */
import { runInNewContext } from 'node:vm'
import { setFlagsFromString } from 'node:v8'
import { createVm, type Vm } from '../vm.js'
import type { Vcpu } from '../vcpu.js'
import { enterLongMode, enterRealMode } from '../guest.js'
import { Serial16550, COM1 } from '../devices/serial.js'
import { RegisterBank } from '../devices/register-bank.js'
import { VmPort, VMPORT_PORT, VMPORT_MAGIC, VMPORT_CMD_GETVERSION } from '../devices/vmport.js'
import { POLICIES } from '../registers.js'
import { liveResources } from '../native.js'
import type { PioDevice } from '../bus.js'
import { platformInterrupts } from './platform-check.js'

/** The backend a check runs on. */
export type DoctorBackend = 'sim' | 'mshv'

/** One item of the VMM checklist. */
export interface VmmCheck {
  /** A short name, stable across releases. */
  readonly name: string
  /** What it establishes, in one line. */
  readonly summary: string
  /** Runs it: what it saw when it passed; throws why it failed. */
  run(backend: DoctorBackend): string | Promise<string>
}

/** A failed expectation. */
export class CheckFailure extends Error {
  override readonly name = 'CheckFailure'
}

function expectEqual<T>(what: string, got: T, expected: T): void {
  if (got !== expected) throw new CheckFailure(`${what}: got ${show(got)}, expected ${show(expected)}`)
}

function show(v: unknown): string {
  return typeof v === 'bigint' ? `0x${v.toString(16)}` : JSON.stringify(v)
}

const le32 = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff]
const le64 = (v: bigint) => [...le32(Number(v & 0xffff_ffffn)), ...le32(Number(v >> 32n))]
const CODE = 0x1000
/** Long-mode code sits above enterLongMode's page tables. */
const LONG_CODE = 0x10000
const RUN = { timeoutMs: 10_000 } as const

/**
 * Runs the guest to its closing `cli; hlt` and checks that it waits there. MSHV has no
 * HLT intercept for a partition with a local APIC: the VP waits in the hypervisor,
 * halt-suspended, and the run returns only at its timeout (the sim's synchronous run
 * says `halt` instead); either way the halt shows in `internalActivityState` (bit 1,
 * halt suspend, as OpenVMM reads it).
 */
function runToHalt(vcpu: Vcpu, what = 'the run'): void {
  const r = vcpu.run({ timeoutMs: 50 })
  if (r.reason !== 'halt' && r.reason !== 'timeout') throw new CheckFailure(`${what}: expected the guest to wait in its HLT, got ${JSON.stringify(r)}`)
  expectEqual(`${what}: halt suspend`, vcpu.regs.get('internalActivityState') & 2n, 2n)
}

/** A VM of `backend` with 1 MiB of RAM, `code` at `at`, closed by `use` on every path. */
function withGuest<T>(backend: DoctorBackend, code: readonly number[], use: (vm: Vm, vcpu: Vcpu) => T, options: Parameters<typeof createVm>[0] = {}, at = CODE): T {
  const vm = createVm({ ...options, backend })
  try {
    vm.addRam(0, 1 << 20)
    vm.write(at, code)
    const vcpu = vm.createVcpu(0)
    if (at === LONG_CODE) enterLongMode(vcpu, vm, at)
    else enterRealMode(vcpu, at)
    return use(vm, vcpu)
  } finally {
    vm.close()
  }
}

const MESSAGE = 'mshv doctor\n'
// mov si, 0x1020; mov dx, 0x3f8; l: lodsb; test al, al; jz d; out dx, al; jmp l
// d: mov al, 0; out 0xf4, al; hlt
const UART_CODE = [0xbe, 0x20, 0x10, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xb0, 0x00, 0xe6, 0xf4, 0xf4]

const uart: VmmCheck = {
  name: 'uart_and_debug_exit',
  summary: 'a real-mode guest prints through a 16550 UART on the bus and leaves by the debug-exit port; with a valid register page no exit costs a hypercall',
  run: (backend) =>
    withGuest(backend, UART_CODE, (vm, vcpu) => {
      vm.write(0x1020, [...new TextEncoder().encode(MESSAGE), 0])
      const serial = new Serial16550(COM1)
      vm.bus.register(COM1, 8, serial, 'COM1')
      vcpu.regs.flush() // the set-up writes are not the experiment's
      vcpu.resetStats()
      const r = vcpu.run(RUN)
      expectEqual('the run', JSON.stringify(r), JSON.stringify({ reason: 'debug-exit', code: 0 }))
      expectEqual('the UART output', serial.text(), MESSAGE)
      const s = vcpu.stats()
      const page = vcpu.native.registerPage()?.valid === true
      if (page) expectEqual('hypercalls with the page valid', s.hypercalls, 0)
      return `${s.exits} exits, ${s.hypercalls} hypercalls (${page ? 'register page valid' : 'no valid register page'})`
    }),
}

/** Records bytes written to its port and answers reads with 0x11, 0x22, ... */
class Recorder implements PioDevice {
  readonly written: number[] = []
  private next = 0x11
  ioWrite(_port: number, _size: number, value: number): void {
    this.written.push(value)
  }
  ioRead(): number {
    const v = this.next
    this.next = (this.next + 0x11) & 0xff
    return v
  }
}

// mov si, 0x2000; mov cx, 4; mov dx, 0x60; cld; rep outsb;
// mov di, 0x3000; mov cx, 3; rep insb; mov al, 0; out 0xf4, al; hlt
const STRING_CODE = [
  0xbe, 0x00, 0x20, 0xb9, 0x04, 0x00, 0xba, 0x60, 0x00, 0xfc, 0xf3, 0x6e, 0xbf, 0x00, 0x30, 0xb9, 0x03, 0x00, 0xf3, 0x6c, 0xb0, 0x00,
  0xe6, 0xf4, 0xf4,
]

const stringIo: VmmCheck = {
  name: 'string_io_devices',
  summary: 'REP OUTSB and REP INSB move bytes between guest memory and a port device, and RCX/RSI/RDI end where the processor leaves them',
  run: (backend) =>
    withGuest(backend, STRING_CODE, (vm, vcpu) => {
      vm.write(0x2000, [...new TextEncoder().encode('mshv')])
      const dev = new Recorder()
      vm.bus.register(0x60, 1, dev, 'recorder')
      expectEqual('the run', vcpu.run(RUN).reason, 'debug-exit')
      expectEqual('bytes the device received', String.fromCharCode(...dev.written), 'mshv')
      expectEqual('bytes the guest received', [...vm.read(0x3000, 3)].join(','), '17,34,51')
      expectEqual('CX', vcpu.regs.get('rcx') & 0xffffn, 0n)
      expectEqual('SI', vcpu.regs.get('rsi') & 0xffffn, 0x2004n)
      expectEqual('DI', vcpu.regs.get('rdi') & 0xffffn, 0x3003n)
      return 'REP OUTSB of 4 bytes and REP INSB of 3, through guest memory'
    }),
}

const BANK = 0xc000_0000n
// mov rbx, BANK; mov eax, [rbx+8]; mov [rbx+16], eax; mov rax, [BANK+24]; mov [BANK+32], eax;
// mov rdi, BANK+48; mov ecx, 2; mov eax, 0x5a5a5a5a; rep stosd; hlt
const MMIO_CODE = [
  0x48, 0xbb, ...le64(BANK), 0x8b, 0x43, 0x08, 0x89, 0x43, 0x10, 0x48, 0xa1, ...le64(BANK + 24n), 0xa3, ...le64(BANK + 32n), 0x48, 0xbf,
  ...le64(BANK + 48n), 0xb9, ...le32(2), 0xb8, ...le32(0x5a5a5a5a), 0xf3, 0xab, 0xf4,
]

const mmio: VmmCheck = {
  name: 'mmio_emulator',
  summary: 'long-mode loads, stores, moffs forms and REP STOSD to an MMIO device are emulated: the device sees each access and the guest its values',
  run: (backend) =>
    withGuest(
      backend,
      MMIO_CODE,
      (vm, vcpu) => {
        const bank = new RegisterBank(8)
        vm.bus.registerMmio(BANK, bank.size, bank, 'bank')
        bank.set(1, 0xfeed_beefn)
        bank.set(3, 0x0102_0304_0506_0708n)
        runToHalt(vcpu)
        expectEqual('bank register 2', bank.get(2), 0xfeed_beefn)
        expectEqual('RAX from the moffs load', vcpu.regs.get('rax'), 0x5a5a5a5an)
        expectEqual('bank register 4', bank.get(4), 0x0506_0708n)
        expectEqual('bank register 6 (REP STOSD)', bank.get(6), 0x5a5a5a5a_5a5a5a5an)
        const log = bank.log.map((a) => `${a.kind}@${a.offset}/${a.size}`).join(' ')
        expectEqual('the accesses', log, 'read@8/4 write@16/4 read@24/8 write@32/4 write@48/4 write@52/4')
        return `${bank.log.length} device accesses, each as the instruction made it`
      },
      {},
      LONG_CODE,
    ),
}

// mov eax, 0x80000002; cpuid; mov [0x2000], eax; hlt
const CPUID_CODE = [0x66, 0xb8, ...le32(0x8000_0002), 0x0f, 0xa2, 0x66, 0xa3, 0x00, 0x20, 0xf4]

const cpuid: VmmCheck = {
  name: 'cpuid_table',
  summary: "the VM's CpuidTable answers the guest's CPUID, and edits between runs take effect",
  run: (backend) =>
    withGuest(backend, CPUID_CODE, (vm, vcpu) => {
      const eax = () => new DataView(vm.read(0x2000, 4).buffer).getUint32(0, true)
      const again = () => {
        // Out of the last pass's halt, back to the start.
        vcpu.wake()
        vcpu.regs.set('rip', BigInt(CODE))
        runToHalt(vcpu)
        return eax()
      }
      vm.cpuid.set({ leaf: 0x8000_0002, eax: 0x74636f64 })
      expectEqual('EAX of the registered answer', again(), 0x74636f64)
      vm.cpuid.set({ leaf: 0x8000_0002, eax: 0x21636f64 })
      expectEqual('EAX after an edit', again(), 0x21636f64)
      vm.cpuid.delete(0x8000_0002)
      const own = again()
      if (own === 0x21636f64 || own === 0x74636f64) throw new CheckFailure('a deleted answer is still given')
      return `set, edited and deleted between runs; the hypervisor's own EAX is 0x${own.toString(16)}`
    }),
}

const MSR = 0x1b
// mov ecx, MSR; rdmsr; mov [0x2000], eax; mov eax, 0x12345678; xor edx, edx; wrmsr;
// mov eax, 0xdead; wrmsr; hlt
const MSR_CODE = [
  0x66, 0xb9, ...le32(MSR), 0x0f, 0x32, 0x66, 0xa3, 0x00, 0x20, 0x66, 0xb8, ...le32(0x12345678), 0x66, 0x31, 0xd2, 0x0f, 0x30, 0x66,
  0xb8, ...le32(0xdead), 0x0f, 0x30, 0xf4,
]
// out 0x0d, al; hlt: the #GP handler.
const GP_HANDLER = 0x3000

const msr: VmmCheck = {
  name: 'msr_handlers',
  summary: 'an MSR handler answers RDMSR and receives WRMSR; a refused write becomes a #GP the guest takes',
  run: (backend) => {
    const written: bigint[] = []
    const handler = { read: () => 0xfee0_0900n, write: (v: bigint) => (written.push(v), v !== 0xdeadn) }
    return withGuest(
      backend,
      MSR_CODE,
      (vm, vcpu) => {
        vm.write(13 * 4, [GP_HANDLER & 0xff, GP_HANDLER >> 8, 0, 0])
        vm.write(GP_HANDLER, [0xe6, 0x0d, 0xf4])
        runToHalt(vcpu)
        expectEqual('EAX from RDMSR', new DataView(vm.read(0x2000, 4).buffer).getUint32(0, true), 0xfee0_0900)
        expectEqual('the writes the handler saw', written.map((v) => v.toString(16)).join(','), '12345678,dead')
        expectEqual('where the #GP left the guest', vcpu.regs.get('rip'), BigInt(GP_HANDLER + 3))
        return 'RDMSR answered, WRMSR received, the refused WRMSR faulted into the guest'
      },
      { msrs: { [MSR]: handler } },
    )
  },
}

// mov eax, MAGIC; mov ebx, 0x11111111; mov ecx, GETVERSION; mov dx, 0x5658; in eax, dx;
// mov [0x2000], eax; mov [0x2004], ebx; hlt
const VMPORT_CODE = [
  0x66, 0xb8, ...le32(VMPORT_MAGIC), 0x66, 0xbb, ...le32(0x11111111), 0x66, 0xb9, ...le32(VMPORT_CMD_GETVERSION), 0xba, 0x58, 0x56, 0x66,
  0xed, 0x66, 0xa3, 0x00, 0x20, 0x66, 0x89, 0x1e, 0x04, 0x20, 0xf4,
]

const vmport: VmmCheck = {
  name: 'vmport_synchronize',
  summary: "QEMU's vmport syncs the full state mid-IN and sets EBX; under every sync policy the guest sees EBX, the returned EAX and RIP past the IN",
  run: (backend) => {
    for (const policy of POLICIES) {
      withGuest(
        backend,
        VMPORT_CODE,
        (vm, vcpu) => {
          vm.bus.register(VMPORT_PORT, 1, new VmPort(() => vm.ramSize()), 'vmport')
          runToHalt(vcpu, `the run [${policy}]`)
          const out = new DataView(vm.read(0x2000, 8).buffer)
          expectEqual(`EAX [${policy}]`, out.getUint32(0, true), 6)
          expectEqual(`EBX set by the device [${policy}]`, out.getUint32(4, true), VMPORT_MAGIC)
        },
        { policy },
      )
    }
    return `EAX and EBX kept under ${POLICIES.join(', ')}`
  },
}

const cancel: VmmCheck = {
  name: 'cancel_and_timeout',
  summary: 'cancel() from the event loop stops a guest spinning in runAsync, and timeoutMs ends a run',
  run: async (backend) => {
    const vm = createVm({ backend })
    try {
      vm.addRam(0, 1 << 20)
      vm.write(CODE, [0xeb, 0xfe]) // jmp $
      const vcpu = vm.createVcpu(0)
      enterRealMode(vcpu, CODE)
      const started = performance.now()
      const running = vcpu.runAsync(RUN)
      setTimeout(() => vcpu.cancel(), 50)
      expectEqual('the async run', (await running).reason, 'cancelled')
      const took = performance.now() - started
      if (took > 2000) throw new CheckFailure(`the cancel took ${took.toFixed(0)} ms`)
      const t0 = performance.now()
      expectEqual('a run with timeoutMs 50', vcpu.run({ timeoutMs: 50 }).reason, 'timeout')
      const timed = performance.now() - t0
      if (timed > 2000) throw new CheckFailure(`the 50 ms timeout took ${timed.toFixed(0)} ms`)
      return `cancelled after ${took.toFixed(1)} ms (asked at 50), timed out after ${timed.toFixed(1)} ms (asked 50)`
    } finally {
      vm.close()
    }
  },
}

/** The V8 garbage collector, made reachable without --expose-gc. */
function collector(): () => void {
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc') as () => void
}

const closeAndGc: VmmCheck = {
  name: 'close_and_gc',
  summary: 'close() gives back every VM, vCPU and memory region at once; a VM dropped unclosed is given back by garbage collection',
  run: async (backend) => {
    const before = liveResources()
    const same = (what: string) => {
      const now = liveResources()
      expectEqual(`${what}: live VMs`, now.vms, before.vms)
      expectEqual(`${what}: live vCPUs`, now.vcpus, before.vcpus)
      expectEqual(`${what}: live memory regions`, now.memoryRegions, before.memoryRegions)
    }
    withGuest(backend, [0xfa, 0xf4], (_vm, vcpu) => runToHalt(vcpu))
    same('after close()')
    const gc = collector()
    ;(() => {
      const vm = createVm({ backend })
      vm.addRam(0, 1 << 20)
      vm.createVcpu(0)
    })()
    // Finalizers run after collections, in no set order: give them a few rounds.
    const settled = () => {
      const now = liveResources()
      return now.vms === before.vms && now.vcpus === before.vcpus && now.memoryRegions === before.memoryRegions
    }
    for (let i = 0; i < 50 && !settled(); i++) {
      gc()
      await new Promise((resolve) => setTimeout(resolve, i < 10 ? 0 : 10))
    }
    same('after garbage collection')
    return 'everything given back by close() and by garbage collection'
  },
}

/** The VMM checklist, in report order. */
export const VMM_CHECKS: readonly VmmCheck[] = [uart, stringIo, mmio, cpuid, msr, vmport, platformInterrupts, cancel, closeAndGc]
