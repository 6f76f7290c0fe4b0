import test from 'ava'
import { createVm, liveResources, MshvError, registerIndex, registers } from '../index.js'
import { native } from '../src/native.js'
import { realModeGuest } from './helpers.js'

test('the mshv backend without /dev/mshv fails with ENODEV naming the device', (t) => {
  const err = t.throws(() => createVm({ backend: 'mshv' })) as Error & { code: string }
  t.is(err.code, 'ENODEV')
  t.regex(err.message, /\/dev\/mshv/)
})

test('auto falls back to the sim backend', (t) => {
  t.is(createVm().backend, 'sim')
})

test('bad backend, register names and values are clear errors', (t) => {
  t.is((t.throws(() => createVm({ backend: 'kvm' as 'sim' })) as MshvError).code, 'EINVAL')
  const { vcpu } = realModeGuest([0xf4])
  // @ts-expect-error register names are a literal union: a misspelt one does not type-check
  t.is((t.throws(() => vcpu.regs.get('rzz')) as MshvError).code, 'EINVAL_REGISTER')
  const e = t.throws(() => vcpu.regs.set('rax', 1n << 64n)) as MshvError
  t.is(e.code, 'EINVAL')
  t.regex(e.message, /rax/)
  t.throws(() => vcpu.native.getRegisters(Uint32Array.of(0xdead), new BigUint64Array(2)), { message: /0xdead/ })
})

test('the register cache index methods name a bad index, size or value', (t) => {
  const { vcpu } = realModeGuest([0xf4])
  const rax = registerIndex('rax')
  const bad: [() => unknown, string, RegExp][] = [
    [() => vcpu.regs.getAt(-1), 'EINVAL_REGISTER', /got -1/],
    [() => vcpu.regs.getLow32At(1e9), 'EINVAL_REGISTER', /got 1000000000/],
    [() => vcpu.regs.setAt(registers.length, 0n), 'EINVAL_REGISTER', new RegExp(`got ${registers.length}`)],
    [() => vcpu.regs.addAt(0.5, 1), 'EINVAL_REGISTER', /got 0.5/],
    [() => vcpu.regs.addAt(rax, -1), 'EINVAL', /increment .* got -1/],
    [() => vcpu.regs.addAt(rax, 2 ** 32), 'EINVAL', /got 4294967296/],
    [() => vcpu.regs.setSizedAt(rax, 3 as 4, 0), 'EINVAL', /size .* got 3/],
    [() => vcpu.regs.setSizedAt(rax, 2, 1.5), 'EINVAL', /value .* got 1.5/],
    [() => vcpu.regs.seed(rax, -1n), 'EINVAL', /rax .* got -1/],
  ]
  for (const [f, code, message] of bad) {
    const e = t.throws(f) as MshvError
    t.is(e.code, code)
    t.regex(e.message, message)
  }
  vcpu.regs.setAt(rax, 0xffff_ffff_ffff_fff0n)
  vcpu.regs.addAt(rax, 0x20)
  t.is(vcpu.regs.getAt(rax), 0x10n, 'addAt wraps at 2^64')
  vcpu.regs.setSizedAt(rax, 2, 0xbeef)
  t.is(vcpu.regs.getAt(rax), 0xbeefn)
})

test('overlapping and unaligned memory maps are rejected and the VM stays usable', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 0x10000)
  t.is((t.throws(() => vm.addRam(0x8000, 0x1000)) as MshvError).code, 'EOVERLAP')
  t.is((t.throws(() => vm.addRam(0x20001, 0x1000)) as MshvError).code, 'EINVAL')
  t.is((t.throws(() => vm.addRam(0x20000, 100)) as MshvError).code, 'EINVAL')
  t.is((t.throws(() => vm.addRam(-1n, 0x1000)) as MshvError).code, 'EINVAL')
  t.notThrows(() => vm.addRam(0x20000, 0x1000))
})

test('closing a vCPU detaches its page and message views and later use throws', (t) => {
  const { vcpu } = realModeGuest([0xf4])
  const registerPage = vcpu.native.registerPage()
  t.truthy(registerPage)
  const runBeforeClose = vcpu.native.runner()
  const page = registerPage!.buffer()
  t.is(registerPage!.buffer(), page, 'one buffer per page while it is alive')
  const view = new Uint8Array(page)
  t.is(view.length, 4096)
  vcpu.close()
  t.is(view.length, 0, 'the old view is detached, not dangling')
  t.throws(() => new DataView(page).getUint8(0), { instanceOf: TypeError })
  t.is((t.throws(() => vcpu.native.runner()) as MshvError).code, 'ECLOSED')
  t.like(t.throws(() => runBeforeClose()), { code: 'ECLOSED', message: 'vCPU is closed' })
  t.is((t.throws(() => registerPage!.buffer()) as MshvError).code, 'ECLOSED')
  t.is((t.throws(() => registerPage!.readU64(0)) as MshvError).code, 'ECLOSED')
})

test('unmapping guest RAM detaches its buffer', (t) => {
  const vm = createVm({ backend: 'sim' })
  const ram = vm.addRam(0, 0x1000)
  const bytes = ram.bytes
  vm.native.unmapMemory(ram.native)
  t.is(bytes.length, 0)
  t.is((t.throws(() => ram.native.buffer()) as MshvError).code, 'ECLOSED')

  const other = createVm({ backend: 'sim' })
  const kept = other.addRam(0, 0x1000).bytes
  other.close()
  t.is(kept.length, 0, 'closing the VM detaches its RAM views too')
})

test('a JS write to the register page is what the backend sees, and vice versa', (t) => {
  const { vcpu } = realModeGuest([0xe6, 0x80, 0xf4])
  vcpu.native.runner()()
  const registerPage = vcpu.native.registerPage()!
  t.true(registerPage.valid)
  const page = new DataView(registerPage.buffer())
  const rax = native.layout().page.gpRegisters!
  page.setBigUint64(rax, 0x1234n, true)
  page.setUint32(native.layout().page.dirty!, native.layout().page.dirtyGeneral!, true)
  vcpu.native.runner()() // resumes at the OUT again: the page applies RAX
  const out = new BigUint64Array(2)
  vcpu.native.getRegisters(Uint32Array.of(native.layout().registers[0]!.id), out)
  t.is(out[0], 0x1234n)
  t.is(page.getBigUint64(rax, true), 0x1234n, 'the next intercept refilled the page')
  t.is(registerPage.readU64(rax), 0x1234n, 'the native getter reads the same page')
  t.is((t.throws(() => registerPage.readU64(4093)) as MshvError).code, 'EINVAL')
})

test('a GPA beyond the partition and a size that wraps are clear errors', (t) => {
  const vm = createVm({ backend: 'sim' })
  for (const gpa of [1n << 52n, (1n << 52n) - 0x1000n]) {
    const e = t.throws(() => vm.addRam(gpa, 0x2000)) as MshvError
    t.is(e.code, 'EINVAL')
    t.regex(e.message, /0x10000000000000|0xfffffffff000/)
  }
  t.is((t.throws(() => vm.native.interceptRange(0xffff_ffff_ffff_f000n, 0x2000n)) as MshvError).code, 'EINVAL')
  t.notThrows(() => vm.addRam(0, 0x1000), 'the VM is still usable')
})

test('dropping VMs and vCPUs without close releases them once, in GC', async (t) => {
  const gc = (globalThis as { gc?: () => void }).gc
  if (!gc) return t.fail('run ava with --expose-gc (package.json sets it)')
  const collect = async () => {
    for (let i = 0; i < 20; i++) {
      gc()
      await new Promise((r) => setImmediate(r))
    }
  }
  await collect()
  const before = liveResources()
  ;(() => {
    for (let i = 0; i < 5; i++) {
      const { vcpu } = realModeGuest([0xe6, 0x80, 0xf4])
      vcpu.run({ maxInstructions: 10 })
      new Uint8Array(vcpu.native.registerPage()!.buffer())[0] = 1
    }
  })()
  const during = liveResources()
  t.is(during.vms - before.vms, 5)
  t.is(during.vcpus - before.vcpus, 5)
  t.is(during.memoryRegions - before.memoryRegions, 10, 'RAM, and the sim allocates each register page')
  await collect()
  t.deepEqual(liveResources(), before, 'everything dropped was released')

  // An explicit close releases at once, and the later GC does not release again.
  const { vm, vcpu } = realModeGuest([0xf4])
  vcpu.close()
  vm.close()
  t.is(liveResources().vcpus, before.vcpus)
  t.is(liveResources().vms, before.vms)
  await collect()
  t.deepEqual(liveResources(), before)
})

test('run() on a worker thread can be cancelled, and a second run meanwhile is EBUSY', async (t) => {
  const { vcpu } = realModeGuest([0xeb, 0xfe]) // jmp $
  const running = vcpu.runAsync()
  await new Promise((r) => setTimeout(r, 50))
  t.is((t.throws(() => vcpu.native.runner()()) as MshvError).code, 'EBUSY')
  vcpu.cancel()
  t.deepEqual(await running, { reason: 'cancelled' })
  t.is(vcpu.native.runner(new native.RunBudget({ maxInstructions: 10 }))() >>> 0, native.layout().exits['instructions'] ?? -1)
})

test('bad run limits name the limit and the value', (t) => {
  const { vcpu } = realModeGuest([0xf4])
  t.like(t.throws(() => new native.RunBudget({ maxInstructions: -1 })), {
    code: 'EINVAL',
    message: 'maxInstructions must be a whole number from 0 to 2^53-1, got -1',
  })
  t.like(t.throws(() => vcpu.run({ timeoutMs: Number.NaN })), {
    code: 'EINVAL',
    message: 'run(): timeoutMs must be a number of milliseconds from 0 to 2^53-1, got NaN',
  })
})

test('bad VM options name the option, the choices and the value', (t) => {
  t.throws(() => createVm({ backend: 'sim', registerPage: 'maybe' as 'on' }), {
    code: 'EINVAL',
    message: "registerPage must be 'on', 'off' or 'invalid', got 'maybe'",
  })
})

// Serial: a freed id is reused by the next runner made, which a concurrent test could make.
test.serial('the one run function refuses what is not a live runner id with EINVAL, and a collected handle frees its id', async (t) => {
  const run = native.runVcpuFunction()
  for (const bad of [undefined, 'x', -1, 2 ** 31, 1.5e9, {}]) {
    const e = t.throws(() => (run as (id: unknown) => number)(bad)) as Error & { code?: string }
    t.is(e.code, 'EINVAL', `argument ${String(bad)}`)
  }
  const { vcpu } = realModeGuest([0xe6, 0x80, 0xf4])
  const handle = vcpu.native.runnerHandle()
  vcpu.regs.flush() // the guest's start state reaches the vCPU
  t.is((run(handle.id) ^ 0x8000_0000) >>> 0, 0x80010000, 'the answer has bit 31 flipped: a port exit')
  // A handle nobody holds is collected and its id freed: a later call with it fails.
  const gc = (globalThis as { gc?: () => void }).gc
  if (!gc) throw new Error('ava runs with --expose-gc (package.json)')
  let id = -1
  ;(() => {
    id = vcpu.native.runnerHandle().id
  })()
  for (let i = 0; i < 10; i++) {
    gc()
    await new Promise((r) => setImmediate(r))
  }
  t.is((t.throws(() => run(id)) as Error & { code?: string }).code, 'EINVAL')
})
