import test from 'ava'
import fc from 'fast-check'
import { registers, registerIndex } from '../index.js'
import { LAST_EPOCH } from '../src/registers.js'
import { native } from '../src/native.js'
import { realModeGuest, POLICIES, PAGE_MODES, type PageMode } from './helpers.js'
import type { RegisterName, SyncPolicy } from '../index.js'

// Guest: 0x1000..0x1ffe filled with `out 0x80, al`, so any even RIP in range exits
// at once with RIP unchanged and no other register touched: after a resume the guest
// state must equal the model exactly.
const CODE = Array.from({ length: 0x800 }, () => [0xe6, 0x80]).flat()

// Registers a sequence may write, with value generators that keep the guest runnable.
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })
const WRITABLE: readonly [RegisterName, fc.Arbitrary<bigint>][] = [
  ...(['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const).map(
    (n) => [n, u64] as [RegisterName, fc.Arbitrary<bigint>],
  ),
  ['rsp', fc.bigInt({ min: 0x100n, max: 0xfff0n })],
  ['rip', fc.integer({ min: 0x800, max: 0xfff }).map((k) => BigInt(k * 2))],
  // CF, PF, AF, ZF, SF, DF, OF: flags that do not change how OUT executes.
  ['rflags', fc.integer({ min: 0, max: 0xfff }).map((f) => BigInt((f & 0xcd5) | 2))],
  ['cr2', u64],
  ['dr0', u64],
  ['lstar', u64],
  ['kernelGsBase', u64],
]
/** General registers the guest does not depend on: targets of the number-valued writes. */
const GPRS = WRITABLE.map(([n]) => n).filter((n) => /^r([a-d]x|si|di|bp|\d+)$/.test(n))
const READABLE = registers.filter((r) => r.kind === 'u64' && r.group !== 'msr' || r.name === 'lstar').map((r) => r.name)
const MODEL_NAMES = WRITABLE.map(([n]) => n)

type Op =
  | { kind: 'read'; name: RegisterName }
  | { kind: 'write'; name: RegisterName; value: bigint }
  | { kind: 'readLow32'; name: RegisterName }
  | { kind: 'add'; name: RegisterName; n: number }
  | { kind: 'setSized'; name: RegisterName; size: 1 | 2 | 4; value: number }
  | { kind: 'sync' }
  | { kind: 'resume' }

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...READABLE).map((name) => ({ kind: 'read' as const, name })) },
  {
    weight: 4,
    arbitrary: fc
      .constantFrom(...WRITABLE)
      .chain(([name, value]) => value.map((v) => ({ kind: 'write' as const, name, value: v }))),
  },
  { weight: 1, arbitrary: fc.constantFrom(...GPRS).map((name) => ({ kind: 'readLow32' as const, name })) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('add' as const), name: fc.constantFrom(...GPRS), n: fc.nat({ max: 0xffff_ffff }) }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('setSized' as const),
      name: fc.constantFrom(...GPRS),
      size: fc.constantFrom(1 as const, 2 as const, 4 as const),
      value: fc.nat({ max: 0xffff_ffff }),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'sync' as const }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'resume' as const }) },
)

/**
 * `nearWrap` restarts every sequence two resumes before the cache's epoch counter wraps,
 * so the sequences cross the wrap.
 */
function model(policy: SyncPolicy, page: PageMode, nearWrap: boolean): void {
  const where = nearWrap ? ', across the epoch wrap' : ''
  test(`model: the guest sees exactly the last write to every register (${policy}, page ${page}${where})`, (t) => {
    const { vm, vcpu } = realModeGuest(CODE, policy, page)
    vcpu.run({ maxInstructions: 0 })
    const ids = Uint32Array.from(MODEL_NAMES, (n) => registers[registerIndex(n)]!.id)
    const raw = new BigUint64Array(ids.length * 2)
    const truth = (): Map<string, bigint> => {
      vcpu.native.getRegisters(ids, raw)
      return new Map<RegisterName, bigint>(MODEL_NAMES.map((n, i) => [n, raw[2 * i]!]))
    }
    fc.assert(
      fc.property(fc.array(op, { maxLength: 24 }), (ops) => {
        // Start each sequence from a resume so the cache matches a fresh exit.
        vcpu.regs.flush()
        t.is(vcpu.native.runner(new native.RunBudget({ maxInstructions: 1 }))() >>> 0, 0x80010000)
        vcpu.regs.reset()
        if (nearWrap) Reflect.set(vcpu.regs, 'epoch', LAST_EPOCH - 4)
        const model = truth()
        for (const o of [...ops, { kind: 'resume' } as Op]) {
          if (o.kind === 'read') {
            const expected = model.get(o.name)
            const got = vcpu.regs.get(o.name)
            if (expected !== undefined && got !== expected) return false
          } else if (o.kind === 'write') {
            vcpu.regs.set(o.name, o.value)
            model.set(o.name, o.value)
          } else if (o.kind === 'readLow32') {
            const expected = model.get(o.name)
            if (expected !== undefined && vcpu.regs.getLow32At(registerIndex(o.name)) !== Number(expected & 0xffff_ffffn)) return false
          } else if (o.kind === 'add') {
            vcpu.regs.addAt(registerIndex(o.name), o.n)
            model.set(o.name, BigInt.asUintN(64, (model.get(o.name) ?? 0n) + BigInt(o.n)))
          } else if (o.kind === 'setSized') {
            vcpu.regs.setSizedAt(registerIndex(o.name), o.size, o.value)
            const m = (1n << BigInt(8 * o.size)) - 1n
            const old = model.get(o.name) ?? 0n
            model.set(o.name, o.size === 4 ? BigInt(o.value) : (old & ~m) | (BigInt(o.value) & m))
          } else if (o.kind === 'sync') {
            vcpu.regs.synchronize()
          } else {
            vcpu.regs.flush()
            const code = vcpu.native.runner(new native.RunBudget({ maxInstructions: 1 }))()
            vcpu.regs.reset()
            if (code >>> 0 !== 0x80010000) return false
            const now = truth()
            for (const [n, v] of model) if (now.get(n) !== v) return false
          }
        }
        return true
      }),
      { numRuns: nearWrap ? 300 : 1200 },
    )
    vm.close()
  })
}

for (const policy of POLICIES) for (const page of PAGE_MODES) model(policy, page, false)
model('page', 'on', true)
model('hypercall', 'off', true)
