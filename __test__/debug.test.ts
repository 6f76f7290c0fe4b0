import test from 'ava'
import { createVm, enterRealMode, MshvError, type Vm, type Vcpu, type VcpuState } from '../index.js'

const CODE = 0x1000
/**
 * mov cx, 5; l: inc ax (0x1003); out 0x80, ax; loop l; hlt — AX counts the rounds,
 * each OUT shows it.
 */
const LOOP = [0xb9, 0x05, 0x00, 0x40, 0xe7, 0x80, 0xe2, 0xfb, 0xf4]
const INC = 0x1003
const OUT = 0x1004

function guest(): { vm: Vm; vcpu: Vcpu; outs: number[] } {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  vm.write(CODE, LOOP)
  const outs: number[] = []
  vm.bus.register(0x80, 2, { ioWrite: (_p, _s, v) => outs.push(v) }, 'probe')
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, CODE)
  return { vm, vcpu, outs }
}

test('a breakpoint stops the vCPU before its instruction each time round; a run resumed there runs it', (t) => {
  const { vm, vcpu, outs } = guest()
  vcpu.addBreakpoint(INC)
  t.deepEqual(vcpu.breakpoints, [BigInt(INC)])
  for (let round = 0; round < 3; round++) {
    t.deepEqual(vcpu.run(), { reason: 'breakpoint', address: BigInt(INC) })
    t.is(vcpu.regs.get('rip'), BigInt(INC))
    t.is(vcpu.regs.get('rax') & 0xffffn, BigInt(round), 'INC has not run yet')
  }
  t.deepEqual(outs, [1, 2], 'the OUTs between the stops ran')
  t.true(vcpu.removeBreakpoint(INC))
  t.false(vcpu.removeBreakpoint(INC))
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.deepEqual(outs, [1, 2, 3, 4, 5])
  vm.close()
})

test('a breakpoint hook runs at the stop with the registers at hand, and the run goes on unless it says stop', (t) => {
  const { vm, vcpu, outs } = guest()
  const seen: bigint[] = []
  vcpu.addBreakpoint(OUT, () => {
    seen.push(vcpu.regs.get('rax') & 0xffffn)
    // The hook may change the guest: double AX before each OUT.
    vcpu.regs.set('rax', (vcpu.regs.get('rax') & 0xffffn) * 2n)
    return seen.length === 4 ? 'stop' : undefined
  })
  t.deepEqual(vcpu.run(), { reason: 'breakpoint', address: BigInt(OUT) })
  t.deepEqual(seen, [1n, 3n, 7n, 15n])
  t.deepEqual(outs, [2, 6, 14])
  vm.close()
})

test('run({ until }) and vm.run({ until }) stop at an address once, and single-step stops after each instruction', async (t) => {
  const { vm, vcpu, outs } = guest()
  t.deepEqual(vcpu.run({ until: 0x1008 }), { reason: 'breakpoint', address: 0x1008n })
  t.deepEqual(outs, [1, 2, 3, 4, 5])
  t.deepEqual(vcpu.breakpoints, [], 'until leaves no breakpoint behind')
  enterRealMode(vcpu, CODE)
  const r = await vm.run({ until: BigInt(OUT) })
  t.deepEqual(r, { reason: 'breakpoint', address: BigInt(OUT), vcpu: 0 })
  vcpu.singleStep = true
  t.deepEqual(vcpu.run(), { reason: 'step', address: 0x1006n }, 'OUT ran (its exit handled), LOOP is next')
  t.deepEqual(vcpu.run(), { reason: 'step', address: BigInt(INC) })
  t.deepEqual(vcpu.run(), { reason: 'step', address: BigInt(OUT) })
  vcpu.singleStep = false
  t.deepEqual(vcpu.run(), { reason: 'halt' })
  t.deepEqual(outs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
  vm.close()
})

test('a vCPU state holds a register written in this exit, survives JSON, and puts a new VM where the old one was', (t) => {
  const a = guest()
  t.deepEqual(a.vcpu.run({ until: OUT }), { reason: 'breakpoint', address: BigInt(OUT) })
  a.vcpu.regs.set('rax', 0x40n) // dirty, on its way through the page
  const state = JSON.parse(JSON.stringify(a.vcpu.state())) as VcpuState
  t.is(state.version, 1)
  t.is(state.backend, 'sim')
  t.is(state.registers['rax'], '0x40')
  t.is(state.registers['rip'], '0x1004')
  t.is(state.lapic.length, 2048, '1 KiB of APIC page as hex')
  t.is(a.vcpu.regs.get('rax'), 0x40n, 'the write is still there')
  t.is(a.vcpu.run().reason, 'halt')
  t.deepEqual(a.outs, [0x40, 0x41, 0x42, 0x43, 0x44])

  const b = guest()
  b.vcpu.regs.set('rbx', 0x1234n) // dirty in the cache: the new state must win over it
  b.vcpu.setState(state)
  t.is(b.vcpu.regs.get('rax'), 0x40n, 'reads after setState are the new state')
  t.is(b.vcpu.regs.get('rbx'), BigInt(state.registers['rbx'] ?? '0'))
  t.is(b.vcpu.run().reason, 'halt')
  t.deepEqual(b.outs, [0x40, 0x41, 0x42, 0x43, 0x44], 'the same OUTs from the same point')
  a.vm.close()
  b.vm.close()
})

test('bad breakpoints, states and until are EINVAL naming the value, and change nothing', (t) => {
  const { vm, vcpu } = guest()
  const einval = (f: () => unknown, text: string): void => {
    const e = t.throws(f, { instanceOf: MshvError })
    t.is(e.code, 'EINVAL')
    t.true(e.message.includes(text), e.message)
  }
  einval(() => vcpu.addBreakpoint(-1), '-1')
  einval(() => vcpu.addBreakpoint(1n << 64n), '18446744073709551616')
  einval(() => vcpu.addBreakpoint(0x1000, 5 as never), 'hook')
  einval(() => vcpu.run({ until: 'x' as never }), 'until')
  const good = vcpu.state()
  einval(() => vcpu.setState({ ...good, version: 2 as never }), 'version')
  einval(() => vcpu.setState({ ...good, backend: 'mshv' }), "'mshv'")
  einval(() => vcpu.setState({ ...good, registers: { ...good.registers, rip: 'zz' } }), 'rip')
  einval(() => vcpu.setState({ ...good, registers: { ...good.registers, nosuch: '0x1' } }), 'nosuch')
  einval(() => vcpu.setState({ ...good, lapic: 'abc' }), 'lapic')
  einval(() => vcpu.setState({ ...good, lapic: '00' }), '1024')
  einval(() => vcpu.setState({ ...good, internal: { ...good.internal, 'mshv.x': '0x1' } }), 'mshv.x')
  einval(() => vcpu.setState({ ...good, registers: { ...good.registers, xfem: '0x0' } }), 'xfem')
  t.deepEqual(vcpu.state(), good)
  vm.close()
})

test('a watchpoint stops after the instruction that writes, reads or accesses its range, and nowhere else', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  // 0x1000: mov [0x2000], ax; 0x1003: mov bx, [0x2000]; 0x1007: hlt
  vm.write(CODE, [0xa3, 0x00, 0x20, 0x8b, 0x1e, 0x00, 0x20, 0xf4])
  const vcpu = vm.createVcpu(0)
  const from = (kind: 'write' | 'read' | 'access', address = 0x2000, length = 2): ReturnType<Vcpu['run']> => {
    enterRealMode(vcpu, CODE)
    const w = vcpu.addWatchpoint(address, length, kind)
    try {
      return vcpu.run()
    } finally {
      vcpu.removeWatchpoint(w)
    }
  }
  t.deepEqual(from('write'), { reason: 'watchpoint', address: 0x1003n, watch: { address: 0x2000n, length: 2, kind: 'write' } })
  t.deepEqual(from('read'), { reason: 'watchpoint', address: 0x1007n, watch: { address: 0x2000n, length: 2, kind: 'read' } })
  t.deepEqual(from('access', 0x2001, 1), { reason: 'watchpoint', address: 0x1003n, watch: { address: 0x2001n, length: 1, kind: 'access' } })
  t.deepEqual(from('access', 0x2002, 4), { reason: 'halt' }, 'the bytes next to it are not watched')
  t.deepEqual(vcpu.watchpoints, [])
  // Four at most; bad ones are EINVAL and leave none behind.
  for (let i = 0; i < 4; i++) vcpu.addWatchpoint(0x3000 + 8 * i, 8)
  t.throws(() => vcpu.addWatchpoint(0x4000, 8), { code: 'EINVAL', message: /at most 4/ })
  t.throws(() => vcpu.addWatchpoint(0x4000, 0), { code: 'EINVAL', message: /length/ })
  t.throws(() => vcpu.addWatchpoint(0x4000, 1, 'exec' as never), { code: 'EINVAL', message: /kind/ })
  t.is(vcpu.watchpoints.length, 4)
  vm.close()
})
