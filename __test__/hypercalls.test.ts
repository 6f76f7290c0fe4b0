import test from 'ava'
import { realModeGuest } from './helpers.js'

const EXITS = 50
// 50 × (out 0x80, al ; in al, 0x80) then out 0xf4, al
const CODE = [...Array.from({ length: EXITS }, () => [0xe6, 0x80, 0xe4, 0x80]).flat(), 0xe6, 0xf4]

function run(policy: 'page' | 'hypercall', page: 'on' | 'off') {
  const { vm, vcpu } = realModeGuest(CODE, policy, page)
  vcpu.run()
  // The first run flushed the initial registers before any page was valid.
  vcpu.resetStats()
  vcpu.regs.set('rip', 0x1000n)
  vcpu.run()
  const s = vcpu.stats()
  vm.close()
  return s
}

test('PIO OUT and IN exits cost zero hypercalls with the register page valid', (t) => {
  const s = run('page', 'on')
  t.is(s.exits, 2 * EXITS + 1)
  t.deepEqual(s.exitsByType, { ioPort: 2 * EXITS + 1 }, 'the backend counts exits by type too')
  // The one hypercall-free exception: the RIP rewind above is flushed through the page too.
  t.is(s.hypercalls, 0)
  t.true(s.pageWrites > 0)
})

test('PIO exits cost at most one hypercall each without the page', (t) => {
  const s = run('page', 'off')
  t.is(s.exits, 2 * EXITS + 1)
  t.is(s.getRegisterCalls, 0, 'RAX and RIP come from the exit message')
  t.true(s.hypercalls <= s.exits + 1, `${s.hypercalls} hypercalls for ${s.exits} exits`)
})

test('the hypercall policy ignores a valid page', (t) => {
  const s = run('hypercall', 'on')
  t.is(s.pageReads + s.pageWrites, 0)
  t.true(s.setRegisterCalls >= s.exits)
})
