import test from 'ava'
import type { ChromeTrace } from '../index.js'
import { realModeGuest } from './helpers.js'

// out 0x80, al; out 0x80, al; mov al, 3; out 0xf4, al
const CODE = [0xe6, 0x80, 0xe6, 0x80, 0xb0, 0x03, 0xe6, 0xf4]

test('startTrace records one guest slice and one exit slice per exit, as Chrome trace JSON', (t) => {
  const { vm, vcpu } = realModeGuest(CODE)
  t.throws(() => vcpu.trace(), { code: 'EINVAL', message: /startTrace/ })
  vcpu.startTrace()
  t.deepEqual(vcpu.run(), { reason: 'debug-exit', code: 3 })
  const trace = JSON.parse(JSON.stringify(vcpu.trace())) as ChromeTrace
  const exits = trace.traceEvents.filter((e) => e.cat === 'exit')
  const runs = trace.traceEvents.filter((e) => e.cat === 'guest')
  t.deepEqual(exits.map((e) => e.name), ['ioPort', 'ioPort', 'ioPort'])
  t.deepEqual(exits.map((e) => e.args?.['rip']), ['0x1000', '0x1002', '0x1006'])
  // What each exit was: port, size, direction and the value written.
  t.deepEqual(exits[2]?.args, { rip: '0x1006', port: '0xf4', size: 1, direction: 'out', value: '0x3' })
  t.is(exits[0]?.args?.['port'], '0x80')
  t.is(runs.length, 3)
  for (const e of trace.traceEvents) {
    t.is(e.ph, 'X')
    t.true(e.dur >= 0 && e.ts >= 0)
  }
  const starts = trace.traceEvents.map((e) => e.ts)
  t.deepEqual(starts, [...starts].sort((a, b) => a - b), 'events in time order')
  t.is(vcpu.stopTrace()?.traceEvents.length, 6)
  t.throws(() => vcpu.trace(), { code: 'EINVAL' })
  vm.close()
})

test('the trace stops at its limit and counts what it dropped', (t) => {
  const { vm, vcpu } = realModeGuest(CODE)
  vcpu.startTrace(2)
  vcpu.run()
  const trace = vcpu.trace()
  t.is(trace.traceEvents.length, 2)
  t.is(trace.otherData.dropped, 4)
  t.throws(() => vcpu.startTrace(0), { code: 'EINVAL', message: /got 0/ })
  vm.close()
})
