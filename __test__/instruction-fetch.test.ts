/**
 * Exit messages whose instruction bytes stop short of the instruction's end. MSHV copies
 * what it fetched at the intercept, which can end at a page boundary; Cloud Hypervisor
 * then fetches the instruction again through the guest's paging
 * (`hypervisor/src/arch/x86/emulator/mod.rs`, NoMoreBytes). These tests take a real
 * exit message from the sim, cut its byte count at the page boundary, and hand it to the
 * exit handlers as the VMM would receive it from MSHV.
 */
import test from 'ava'
import { createVm, enterLongMode, MshvError, RegisterBank, type PioDevice, type MmioDevice, type Vcpu, type Vm } from '../index.js'
import { handleMmio } from '../src/exits/mmio.js'
import { handleIo } from '../src/exits/pio.js'
import { message } from '../src/layout.js'

const BANK = 0xc000_0000n
const PORT = 0x60
/** Linear page 0x200000 maps to GPA 0x50000 and 0x201000 to 0x30000: not adjacent. */
const FIRST_PAGE_GPA = 0x50000
const SECOND_PAGE_GPA = 0x30000

/**
 * A long-mode guest whose code at `linear` crosses from one 4 KiB page into another that
 * is not its physical neighbour; the byte after the first page in physical memory is
 * 0xff, so reading the instruction physically contiguous gives a different instruction.
 */
function straddlingGuest(code: readonly number[], linear: number): { vm: Vm; vcpu: Vcpu } {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const vcpu = vm.createVcpu(0)
  enterLongMode(vcpu, vm, linear)
  const pd = 0x3000
  const pt = 0x4000
  const q = (gpa: number, v: bigint) => vm.write(gpa, new Uint8Array(new BigUint64Array([v]).buffer))
  q(0x2000, BigInt(pd) | 3n) // PDPT[0] -> PD
  q(pd, 0x83n) // 0..2 MiB identity
  q(pd + 8, BigInt(pt) | 3n) // 2 MiB.. in 4 KiB pages
  q(pt, BigInt(FIRST_PAGE_GPA) | 3n)
  q(pt + 8, BigInt(SECOND_PAGE_GPA) | 3n)
  vm.write(FIRST_PAGE_GPA + 0x1000, new Array<number>(16).fill(0xff))
  const inFirst = 0x1000 - (linear & 0xfff)
  vm.write(FIRST_PAGE_GPA + (linear & 0xfff), code.slice(0, inFirst))
  vm.write(SECOND_PAGE_GPA, [...code.slice(inFirst), 0xf4])
  return { vm, vcpu }
}

/** A copy of `vcpu`'s exit message with its instruction byte count cut to `count`. */
function truncated(vcpu: Vcpu, countField: string, count: number): DataView {
  const copy = new DataView(vcpu.message.buffer.slice(0))
  copy.setUint8(message(countField), count)
  return copy
}

test('an MMIO load whose bytes are cut at a page boundary is fetched again through paging', (t) => {
  // mov eax, [rbx+0x10]: 8b 43 10, with 2 bytes in the first page.
  const code = [0x8b, 0x43, 0x10]
  const linear = 0x200ffe
  const { vm, vcpu } = straddlingGuest(code, linear)
  const bank = new RegisterBank(4)
  let seen: DataView | undefined
  const recording: MmioDevice = {
    mmioRead(offset, size) {
      seen ??= truncated(vcpu, 'memInstructionByteCount', 2)
      return bank.mmioRead(offset, size)
    },
  }
  vm.bus.registerMmio(BANK, bank.size, recording, 'bank')
  bank.set(2, 0x1234_5678n)
  vcpu.regs.set('rbx', BANK)
  t.is(vcpu.run().reason, 'halt', 'the sim itself runs it')
  t.is(vcpu.regs.get('rax'), 0x1234_5678n)
  if (!seen) return t.fail('the device was not read')
  t.is(seen.getUint8(message('memInstructionByteCount')), 2)

  // The VMM side, given MSHV's cut message: back to the intercept, then handle it.
  vcpu.regs.set('rax', 0n)
  bank.set(2, 0xabcd_ef01n)
  handleMmio(seen, vcpu.regs, vcpu.memory(), (v, e) => vcpu.injectException(v, e))
  t.is(vcpu.regs.get('rax'), 0xabcd_ef01n, 'the load completed with the re-fetched [rbx+0x10]')
  t.is(vcpu.regs.get('rip'), BigInt(linear + code.length), 'RIP advanced by the whole instruction')
  vm.close()
})

test('a REP OUTSB with FS override whose bytes are cut at a page boundary is fetched again', (t) => {
  // rep fs outsb: f3 64 6e, with only the REP prefix in the first page.
  const code = [0xf3, 0x64, 0x6e]
  const linear = 0x200fff
  const { vm, vcpu } = straddlingGuest(code, linear)
  vm.write(0x9000, [7, 8, 9])
  vm.write(0x8000, [1, 2, 3])
  const written: number[] = []
  let seen: DataView | undefined
  const recorder: PioDevice = {
    ioWrite(_port, _size, value) {
      seen ??= truncated(vcpu, 'ioInstructionByteCount', 1)
      written.push(value)
    },
  }
  vm.bus.register(PORT, 1, recorder, 'recorder')
  vcpu.regs.setRaw('fs', 0x9000n, 0x0093_0010_ffff_ffffn)
  vcpu.regs.set('rsi', 0n)
  vcpu.regs.set('rcx', 3n)
  vcpu.regs.set('rdx', BigInt(PORT))
  t.is(vcpu.run().reason, 'halt')
  t.deepEqual(written, [7, 8, 9], 'the sim honours FS')
  if (!seen) return t.fail('the device was not written')

  // The cut message: only F3 survives, so FS and OUTSB must come from guest memory.
  written.length = 0
  vcpu.regs.set('rsi', 0n)
  vcpu.regs.set('rcx', 3n)
  const memory = vcpu.memory()
  handleIo(seen, vcpu.regs, vm.bus, { regs: vcpu.regs, vcpuIndex: 0 }, () => memory)
  t.deepEqual(written, [7, 8, 9], 'read through FS, not DS')
  t.is(vcpu.regs.get('rcx'), 0n)
  t.is(vcpu.regs.get('rsi'), 3n)
  vm.close()
})

test('an instruction whose missing bytes are not readable guest RAM is a clear error', (t) => {
  const code = [0x8b, 0x43, 0x10]
  const linear = 0x200ffe
  const { vm, vcpu } = straddlingGuest(code, linear)
  const bank = new RegisterBank(4)
  let seen: DataView | undefined
  vm.bus.registerMmio(
    BANK,
    bank.size,
    {
      mmioRead(offset, size) {
        seen ??= truncated(vcpu, 'memInstructionByteCount', 2)
        return bank.mmioRead(offset, size)
      },
    },
    'bank',
  )
  vcpu.regs.set('rbx', BANK)
  t.is(vcpu.run().reason, 'halt')
  if (!seen) return t.fail('the device was not read')
  // Unmap the second page: PT[1] not present.
  vm.write(0x4008, new Uint8Array(8))
  const e = t.throws(() => handleMmio(seen as DataView, vcpu.regs, vcpu.memory(), (v, e) => vcpu.injectException(v, e)), { instanceOf: MshvError })
  t.is(e?.code, 'EUNSUPPORTED_INSTRUCTION')
  t.regex(e?.message ?? '', /rip 0x200ffe is cut short: bytes 8b43 and the rest is not readable guest RAM/)
  vm.close()
})
