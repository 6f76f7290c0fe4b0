/**
 * Device state as data (issue #29 item 2): for each device, random accesses drive a
 * device A; at a random point A is saved (through JSON or not) and restored into a
 * freshly constructed B; the rest of the accesses then go to both, and every value read,
 * every edge and level of their interrupt lines, every interrupt requested and their
 * final `save()` must agree. A bad state is an `EINVAL` that leaves the device as it was;
 * a state field save or restore forgets does not compile.
 */
import test, { type ExecutionContext } from 'ava'
import fc from 'fast-check'
import {
  AcpiPm,
  addPcPlatform,
  createVm,
  GuestTimers,
  I8042,
  IoApic,
  Msi,
  Msix,
  MshvError,
  MemoryDisk,
  PciFunction,
  pciIntxGsi,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VirtioBlock,
  VirtioConsole,
  VirtioNet,
  VirtioPci,
  VirtioRng,
  Virtqueue,
  feature,
  Pic,
  Pit,
  Rtc,
  Serial16550,
  WiredIrq,
  type InterruptRequest,
  type PcPlatform,
  type PciHost,
  type VirtioDevice,
  type Vm,
} from '../index.js'
import { CTX, ConfigPorts, VirtioDriver, type DriverQueue } from './virtio-driver.js'
import { fromHex, toHex } from '../src/snapshot/device-state.js'
import { noneLeft, parseState, u8, version, type Fields, type Saveable, type Schema } from '../src/snapshot/device-state.js'

/** One device under test, with what it told the world (reads, line edges, requests). */
interface Instance {
  readonly device: { save(): unknown; restore(state: unknown): void }
  /** What the device did, in order: compared between A (after the save) and B. */
  readonly events: unknown[]
  /** Its clock (guest ns) and timers, when it has any. */
  readonly clock?: { now: number; readonly timers: GuestTimers }
  /** The interrupt lines it drives: their levels are compared at the end. */
  readonly lines?: readonly WiredIrq[]
  /** Frees what it holds (a VM). */
  close?(): void
}

/** How to make a device and drive it with one random access. */
interface Fixture<Op> {
  /** A device constructed as every instance is, its clock at `now`. */
  make(now: number): Instance
  /** One random access. */
  op: fc.Arbitrary<Op>
  /** Applies `op`, pushing what it returned or caused to `events`. */
  apply(instance: Instance, op: Op): void
}

/** A clock a test moves by hand, and timers on it. */
function clockAt(now: number): { now: number; timers: GuestTimers } {
  const clock = { now, timers: undefined as unknown as GuestTimers }
  clock.timers = new GuestTimers(() => clock.now)
  return clock
}

/** Moves `instance`'s clock by `ns` and fires what is due. */
function advance(instance: Instance, ns: number): void {
  const c = instance.clock
  if (!c) return
  c.now += ns
  c.timers.fire(c.now)
}

/** A line that logs each level change to `events`. */
function loggedLine(events: unknown[], name: string): WiredIrq {
  return new WiredIrq([{ sink: { setIrq: (_pin, level) => events.push(`${name} ${level ? 'up' : 'down'}`) }, pin: 0 }], name)
}

const roundTrip = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T

/** The property: save at a random point, restore into a fresh device, and both go on alike. */
function sameAfterRestore<Op>(t: ExecutionContext, fixture: Fixture<Op>, numRuns = 100): void {
  fc.assert(
    fc.property(fc.array(fixture.op, { maxLength: 60, size: 'medium' }), fc.nat(), fc.boolean(), (ops, at, viaJson) => {
      const split = at % (ops.length + 1)
      const a = fixture.make(0)
      let b: Instance | undefined
      try {
        for (const op of ops.slice(0, split)) fixture.apply(a, op)
        const saved = a.device.save()
        t.deepEqual(roundTrip(saved), saved, 'the state survives JSON whole')
        b = fixture.make(a.clock?.now ?? 0)
        b.events.length = 0
        b.device.restore(viaJson ? roundTrip(saved) : saved)
        t.deepEqual(b.device.save(), saved, 'restore then save gives the state back')
        const before = a.events.length
        for (const op of ops.slice(split)) {
          fixture.apply(a, op)
          fixture.apply(b, op)
        }
        t.deepEqual(b.events, a.events.slice(before), 'the same reads, edges and requests')
        t.deepEqual(b.device.save(), a.device.save(), 'the same state at the end')
        t.deepEqual(b.lines?.map((l) => l.asserted), a.lines?.map((l) => l.asserted), 'the same line levels at the end')
      } finally {
        a.close?.()
        b?.close?.()
      }
    }),
    { numRuns },
  )
}

/** `state` is refused with `EINVAL` naming it, and the device keeps its state. */
function refuses(t: ExecutionContext, instance: Instance, state: unknown, message: RegExp): void {
  const before = instance.device.save()
  const e = t.throws(() => instance.device.restore(state), { instanceOf: MshvError, message })
  t.is(e?.code, 'EINVAL')
  t.deepEqual(instance.device.save(), before, 'nothing changed')
}

/** A valid state with one field replaced (dotted path; a missing key deletes it). */
function withField(state: unknown, path: string, value: unknown): unknown {
  const copy = roundTrip(state) as Record<string, unknown>
  const keys = path.split('.')
  let o = copy as Record<string, unknown>
  for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>
  const last = keys.at(-1) as string
  if (value === undefined) delete o[last]
  else o[last] = value
  return copy
}

/** The refusals every state must make: not an object, another version, a field missing, one too many. */
function refusesShape(t: ExecutionContext, instance: Instance): void {
  const good = instance.device.save() as Record<string, unknown>
  refuses(t, instance, 5, /state must be an object, got 5/)
  refuses(t, instance, null, /state must be an object, got null/)
  refuses(t, instance, withField(good, 'version', 2), /version must be 1 .*got 2/)
  const first = Object.keys(good).find((k) => k !== 'version') as string
  refuses(t, instance, withField(good, first, undefined), new RegExp(`${first} is missing`))
  refuses(t, instance, { ...good, extra: 1 }, /field 'extra'/)
}

// ---- The pattern itself --------------------------------------------------------------

interface TwoState {
  version: 1
  a: number
  b: number
}

test('a state field that save() or restore() forgets does not compile', (t) => {
  const schema: Schema<TwoState> = { version: version(1), a: u8, b: u8 }
  const { version: _, a, ...rest } = parseState('two', { version: 1, a: 1, b: 2 }, schema)
  // Compiled, never run: each line below is a compile error tsc expects.
  const typeErrors = (): unknown[] => {
    // @ts-expect-error a schema without a check for b
    const partial: Schema<TwoState> = { version: version(1), a: u8 }
    // @ts-expect-error save() built without b
    const saved = { version: 1, a: 1 } satisfies TwoState
    // @ts-expect-error restore() did not take b
    noneLeft(rest)
    // @ts-expect-error a device's fields without b
    const fields: Fields<TwoState> = { a }
    // @ts-expect-error a state with a bigint (not JSON data) is no Saveable state
    const bad: Saveable<{ version: 1; big: bigint }> = { save: () => ({ version: 1, big: 1n }), restore: () => {} }
    return [partial, saved, fields, bad]
  }
  t.is(typeof typeErrors, 'function')
  // And at run time, a field past the schema is refused.
  t.throws(() => noneLeft(rest as unknown as Record<string, never>), { instanceOf: MshvError, message: /not restored: b/ })
})

test('guest timers say whether they are armed: what a device saves of its timer with its due time', (t) => {
  const c = clockAt(0)
  const once = c.timers.at(100, () => {})
  const gone = c.timers.at(50, () => {})
  const series = c.timers.every((n) => n * 30, () => {})
  gone.cancel()
  t.deepEqual([once.armed, gone.armed, series.armed], [true, false, true])
  c.now = 100
  c.timers.fire(100)
  t.deepEqual([once.armed, series.armed, series.at], [false, true, 120], 'fired once; the series goes on at its next edge')
  series.cancel()
  t.false(series.armed)
})

// ---- ISA devices ---------------------------------------------------------------------

type PortOp = { kind: 'read' | 'write'; port: number; size: 1 | 2 | 4; value: number } | { kind: 'advance'; ns: number }

/** Port accesses to `ports` (some values drawn from `values`) and clock moves. */
function portOps(ports: readonly number[], values: readonly number[] = [], maxNs = 2_000_000, sizes: readonly (1 | 2 | 4)[] = [1]): fc.Arbitrary<PortOp> {
  const value = values.length > 0 ? fc.oneof(fc.constantFrom(...values), fc.integer({ min: 0, max: 0xffff_ffff })) : fc.integer({ min: 0, max: 0xffff_ffff })
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constantFrom('read' as const, 'write' as const), port: fc.constantFrom(...ports), size: fc.constantFrom(...sizes), value }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('advance' as const), ns: fc.oneof(fc.integer({ min: 0, max: maxNs }), fc.integer({ min: 0, max: 50 * maxNs })) }) },
  )
}

/** A device on ports: `read`, `write`, `advance`. */
function applyPort(instance: Instance, op: PortOp, dev: { ioRead?(port: number, size: number, ctx: never): number; ioWrite?(port: number, size: number, value: number, ctx: never): void }): void {
  if (op.kind === 'advance') advance(instance, op.ns)
  else if (op.kind === 'read') instance.events.push(`in ${op.port.toString(16)} = ${dev.ioRead?.(op.port, op.size, undefined as never)}`)
  else dev.ioWrite?.(op.port, op.size, op.value & (op.size === 4 ? 0xffff_ffff : (1 << (op.size * 8)) - 1), undefined as never)
}

type PitOp = PortOp | { kind: 'program'; channel: number; mode: number; access: number; count: number }

function pitFixture(): Fixture<PitOp> {
  return {
    make(now) {
      const events: unknown[] = []
      const clock = clockAt(now)
      const line = loggedLine(events, 'IRQ 0')
      return { device: new Pit(clock.timers, line), events, clock, lines: [line] }
    },
    // Whole programmings (control word and count) and single accesses: control words for
    // every channel, mode and access; latches and read-backs; port 0x61's gate.
    op: fc.oneof(
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('program' as const), channel: fc.constantFrom(0, 0, 2, 1), mode: fc.integer({ min: 0, max: 7 }), access: fc.integer({ min: 1, max: 3 }), count: fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 100, max: 3000 })) }) },
      { weight: 3, arbitrary: portOps([0x40, 0x41, 0x42, 0x43, 0x61], [0x34, 0x36, 0x30, 0x32, 0x38, 0x3a, 0x10, 0x20, 0x00, 0x74, 0xb0, 0xb6, 0xe2, 0xc2, 0xd2, 0x01, 0x03, 0x80, 0x04]) },
    ),
    apply(instance, op) {
      const pit = instance.device as Pit
      if (op.kind !== 'program') return applyPort(instance, op, pit)
      pit.ioWrite(0x43, 1, (op.channel << 6) | (op.access << 4) | (op.mode << 1))
      if (op.access !== 2) pit.ioWrite(0x40 + op.channel, 1, op.count & 0xff)
      if (op.access !== 1) pit.ioWrite(0x40 + op.channel, 1, op.count >> 8)
    },
  }
}

test('8254: save, restore into a new one, and both go on alike (timers armed for the same guest time)', (t) => {
  sameAfterRestore(t, pitFixture())
})

test('8254: a periodic channel 0 saved between edges keeps its edges', (t) => {
  const f = pitFixture()
  const a = f.make(0)
  const pit = a.device as Pit
  pit.ioWrite(0x43, 1, 0x34)
  pit.ioWrite(0x40, 1, 1193 & 0xff)
  pit.ioWrite(0x40, 1, 1193 >> 8)
  advance(a, 10_500_000)
  const s = pit.save()
  t.is(s.irqTimer, 10_998_323, 'the eleventh edge: 11 x 1193 clocks')
  t.is(s.channels[0]?.rwMode, 'word')
  t.is(s.channels[0]?.writeState, 'word-lsb')
  const b = f.make(a.clock?.now ?? 0)
  b.device.restore(s)
  advance(a, 3_000_000)
  advance(b, 3_000_000)
  t.is(b.events.filter((e) => e === 'IRQ 0 up').length, 3)
  t.deepEqual(b.events, a.events.slice(-6))
})

test('8254: bad states are EINVAL and change nothing', (t) => {
  const f = pitFixture()
  const a = f.make(0)
  const pit = a.device as Pit
  pit.ioWrite(0x43, 1, 0x34)
  pit.ioWrite(0x40, 1, 0x00)
  pit.ioWrite(0x40, 1, 0x10)
  const good = pit.save()
  refusesShape(t, a)
  refuses(t, a, withField(good, 'channels', good.channels.slice(0, 2)), /channels must be an array of 3/)
  refuses(t, a, withField(good, 'speaker', 4), /speaker must be an integer in 0..3, got 4/)
  refuses(t, a, withField(good, 'channels.0.count', 0), /channels\[0\]\.count must be an integer in 1..65536, got 0/)
  refuses(t, a, withField(good, 'channels.1.readState', 'word'), /readState must be one of .* got 'word'/)
  refuses(t, a, withField(good, 'channels.2.mode', 6), /mode must be an integer in 0..5/)
  refuses(t, a, withField(good, 'irqTimer', (good.irqTimer ?? 0) + 1), /irqTimer .* is no edge of channel 0/)
  refuses(t, a, withField(good, 'irqTimer', -1), /irqTimer must be an integer/)
  refuses(t, a, withField(good, 'irq', 'yes'), /irq must be a boolean, got 'yes'/)
})

function picFixture(): Fixture<PortOp | { kind: 'irq'; irq: number; level: boolean } | { kind: 'ack' }> {
  const init = [0x11, 0x20, 0x28, 0x04, 0x02, 0x01, 0x00, 0xff, 0x20, 0x60, 0x63, 0xc3, 0x0a, 0x0b, 0x0c, 0x68, 0x48, 0x13, 0x1b, 0xe0, 0xa0, 0x80]
  return {
    make(now) {
      const events: unknown[] = []
      return { device: new Pic((vector) => events.push(`vector ${vector}`)), events, clock: clockAt(now) }
    },
    op: fc.oneof(
      { weight: 3, arbitrary: portOps([0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1], init) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('irq' as const), irq: fc.integer({ min: 0, max: 15 }), level: fc.boolean() }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('ack' as const) }) },
    ),
    apply(instance, op) {
      const pic = instance.device as Pic
      if (op.kind === 'irq') pic.setIrq(op.irq, op.level)
      else if (op.kind === 'ack') instance.events.push(`ack ${pic.acknowledgeIfPending()}`)
      else applyPort(instance, op, pic)
    },
  }
}

test('8259: save, restore into a new one, and both go on alike', (t) => {
  sameAfterRestore(t, picFixture())
})

test('8259: the init and register-select state machines are named in the state', (t) => {
  const a = picFixture().make(0)
  const pic = a.device as Pic
  pic.ioWrite(0x20, 1, 0x11)
  t.is(pic.save().master.init, 'icw2')
  pic.ioWrite(0x21, 1, 0x20)
  t.is(pic.save().master.init, 'icw3')
  pic.ioWrite(0x21, 1, 0x04)
  t.is(pic.save().master.init, 'icw4')
  pic.ioWrite(0x21, 1, 0x01)
  pic.ioWrite(0x20, 1, 0x0b)
  t.like(pic.save().master, { init: 'ready', readRegister: 'isr', irqBase: 0x20 })
})

test('8259: bad states are EINVAL and change nothing', (t) => {
  const a = picFixture().make(0)
  const good = (a.device as Pic).save()
  refusesShape(t, a)
  refuses(t, a, withField(good, 'master.irqBase', 0x21), /master\.irqBase must be a multiple of 8/)
  refuses(t, a, withField(good, 'slave.elcr', 0x01), /slave\.elcr must be a mask within 0xde/)
  refuses(t, a, withField(good, 'master.init', 3), /master\.init must be one of 'ready'/)
  refuses(t, a, withField(good, 'master.imr', 256), /master\.imr must be an integer in 0..255, got 256/)
  refuses(t, a, withField(good, 'slave.poll', 1), /slave\.poll must be a boolean/)
})

type IoApicOp = { kind: 'select' | 'write' | 'read' | 'eoi-register'; value: number } | { kind: 'irq'; pin: number; level: boolean } | { kind: 'eoi'; vector: number }

function ioapicFixture(): Fixture<IoApicOp> {
  const entries = [0x0000_8031, 0x0001_0041, 0x0000_0941, 0x0000_0005, 0x0000_0700, 0x0000_8731, 0x0300_0000, 0x0001_8031]
  return {
    make() {
      const events: unknown[] = []
      const io = new IoApic(
        (r: InterruptRequest) => {
          if ((r.vector ?? 0) < 16) throw new MshvError('EINVAL', `vector ${r.vector} is reserved`)
          events.push(r)
        },
        () => 0x30,
      )
      return { device: io, events }
    },
    op: fc.oneof(
      fc.record({ kind: fc.constant('select' as const), value: fc.oneof(fc.integer({ min: 0x10, max: 0x2f }), fc.integer({ min: 0, max: 0xff })) }),
      fc.record({ kind: fc.constantFrom('write' as const, 'read' as const), value: fc.oneof(fc.constantFrom(...entries), fc.integer({ min: 0, max: 0xffff_ffff })) }),
      fc.record({ kind: fc.constant('irq' as const), pin: fc.integer({ min: 0, max: 23 }), level: fc.boolean() }),
      fc.record({ kind: fc.constant('eoi' as const), vector: fc.constantFrom(0x31, 0x41, 0x05, 0x30) }),
      fc.record({ kind: fc.constant('eoi-register' as const), value: fc.constantFrom(0x31, 0x41) }),
    ),
    apply(instance, op) {
      const io = instance.device as IoApic
      switch (op.kind) {
        case 'select':
          io.mmioWrite(0, 4, BigInt(op.value))
          break
        case 'write':
          io.mmioWrite(0x10, 4, BigInt(op.value))
          break
        case 'read':
          instance.events.push(`read ${io.mmioRead(0x10, 4)} ${io.mmioRead(0, 4)}`)
          break
        case 'eoi-register':
          io.mmioWrite(0x40, 4, BigInt(op.value))
          break
        case 'irq':
          io.setIrq(op.pin, op.level)
          break
        case 'eoi':
          io.eoi(op.vector)
          break
      }
    },
  }
}

test('I/O APIC: save, restore into a new one, and both go on alike', (t) => {
  sameAfterRestore(t, ioapicFixture())
})

test('I/O APIC: bad states are EINVAL and change nothing', (t) => {
  const a = ioapicFixture().make(0)
  const good = (a.device as IoApic).save()
  refusesShape(t, a)
  refuses(t, a, withField(good, 'entries', good.entries.slice(1)), /entries must be an array of 24/)
  refuses(t, a, withField(good, 'entries.3.low', 0x1000), /entries\[3\]\.low must be an entry without delivery status/)
  refuses(t, a, withField(good, 'entries.3.low', 0x4000), /entries\[3\]\.low .*remote IRR only when level-triggered/)
  refuses(t, a, withField(good, 'entries.0.high', 2 ** 32), /entries\[0\]\.high must be an integer in 0..4294967295/)
  refuses(t, a, withField(good, 'irr', 1 << 24), /irr must be an integer in 0..16777215/)
  refuses(t, a, withField(good, 'id', 16), /id must be an integer in 0..15, got 16/)
})

type RtcOp = PortOp | { kind: 'set'; register: number; value: number } | { kind: 'get'; register: number }

function rtcFixture(): Fixture<RtcOp> {
  // Register selects (with and without the NMI bit), then values: rates, PIE/AIE/UIE/SET, BCD/binary, 12/24 h.
  const registers = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x32, 0x8a, 0x8c, 0x40]
  const values = [0x26, 0x23, 0x2f, 0x20, 0x40, 0x12, 0x20, 0x22, 0x60, 0x70, 0x06, 0xc0, 0x59, 0x80, 0x00, 0x05]
  return {
    make(now) {
      const events: unknown[] = []
      const clock = clockAt(now)
      const line = loggedLine(events, 'IRQ 8')
      return { device: new Rtc(clock.timers, line, { start: new Date(Date.UTC(2026, 0, 1, 23, 59, 58)), cmos: { 0x34: 0x12 } }), events, clock, lines: [line] }
    },
    op: fc.oneof(
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('set' as const), register: fc.constantFrom(...registers), value: fc.oneof(fc.constantFrom(...values), fc.integer({ min: 0, max: 0xff })) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('get' as const), register: fc.constantFrom(...registers) }) },
      { weight: 2, arbitrary: portOps([0x70, 0x71], [...registers, ...values], 300_000_000) },
    ),
    apply(instance, op) {
      const rtc = instance.device as Rtc
      if (op.kind === 'set' || op.kind === 'get') rtc.ioWrite(0x70, 1, op.register)
      if (op.kind === 'set') rtc.ioWrite(0x71, 1, op.value)
      else if (op.kind === 'get') instance.events.push(`cmos ${op.register} = ${rtc.ioRead(0x71)}`)
      else applyPort(instance, op, rtc)
    },
  }
}

test('RTC: save, restore into a new one, and both go on alike (periodic and update timers at the same guest times)', (t) => {
  sameAfterRestore(t, rtcFixture(), 60)
})

test('RTC: bad states are EINVAL and change nothing', (t) => {
  const a = rtcFixture().make(0)
  const good = (a.device as Rtc).save()
  refusesShape(t, a)
  refuses(t, a, withField(good, 'cmos', good.cmos.slice(2)), /cmos must be 128 bytes as lowercase hex/)
  refuses(t, a, withField(good, 'cmos', `A${good.cmos.slice(1)}`), /cmos must be 128 bytes as lowercase hex/)
  refuses(t, a, withField(good, 'cmos', `${good.cmos.slice(0, 20)}a6${good.cmos.slice(22)}`), /UIP bit/)
  refuses(t, a, withField(good, 'index', 0x80), /index must be an integer in 0..127/)
  refuses(t, a, withField(good, 'periodicTimer', 5), /periodicTimer is armed .* no PIE/)
  refuses(t, a, withField(good, 'updateTimer', 1.5), /updateTimer must be an integer/)
  refuses(t, a, withField(good, 'setTo', 1e16), /setTo must be an integer/)
})

type SerialOp = PortOp | { kind: 'feed'; bytes: number[] }

function serialFixture(): Fixture<SerialOp> {
  return {
    make() {
      const events: unknown[] = []
      const line = loggedLine(events, 'IRQ 4')
      const s = new Serial16550(0x3f8, { irq: line, onByte: (b) => events.push(`tx ${b}`), inputLimit: 64 })
      return { device: s, events, lines: [line] }
    },
    // IER, LCR with DLAB, MCR (loop, OUT2), FCR (enable, clear), data and scratch.
    op: fc.oneof(
      { weight: 5, arbitrary: portOps([0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff], [0x01, 0x02, 0x03, 0x05, 0x0f, 0x80, 0x03, 0x08, 0x18, 0x1a, 0x10, 0xc7, 0x07, 0x41]) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('feed' as const), bytes: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 40 }) }) },
    ),
    apply(instance, op) {
      const s = instance.device as Serial16550
      if (op.kind === 'feed') instance.events.push(`fed ${s.feed(Uint8Array.from(op.bytes))}`)
      else applyPort(instance, op, s)
    },
  }
}

test('16550: save, restore into a new one, and both go on alike (FIFO and typed-ahead input included)', (t) => {
  sameAfterRestore(t, serialFixture())
})

test('16550: bad states are EINVAL and change nothing', (t) => {
  const a = serialFixture().make(0)
  const good = (a.device as Serial16550).save()
  refusesShape(t, a)
  refuses(t, a, withField(good, 'rx', new Array(17).fill(0)), /rx must be an array of 0..16/)
  refuses(t, a, withField(good, 'rx', [256]), /rx\[0\] must be an integer in 0..255/)
  refuses(t, a, withField(good, 'input', '00'.repeat(65)), /input must be 0..64 bytes/)
  refuses(t, a, withField(good, 'input', '41'), /input holds bytes while the receive FIFO has room/)
  refuses(t, a, withField(good, 'ier', 0x10), /ier must be a byte within 0xf/)
  refuses(t, a, withField(good, 'lsrErrors', 0x01), /lsrErrors must be a byte within 0x2/)
})

function i8042Fixture(): Fixture<PortOp> {
  return {
    make() {
      const events: unknown[] = []
      return { device: new I8042(() => events.push('reset')), events }
    },
    op: portOps([0x60, 0x64], [0x20, 0x60, 0xd1, 0xaa, 0xab, 0xd0, 0xfe, 0xf0, 0xf1, 0x00, 0x01, 0x47, 0xad]),
    apply(instance, op) {
      applyPort(instance, op, instance.device as I8042)
    },
  }
}

test('i8042: save, restore into a new one, and both go on alike', (t) => {
  sameAfterRestore(t, i8042Fixture())
})

test('i8042: the awaited data byte is a named state; bad states are EINVAL and change nothing', (t) => {
  const a = i8042Fixture().make(0)
  const k = a.device as I8042
  k.ioWrite(0x64, 1, 0x60)
  t.is(k.save().awaiting, 'command-byte')
  k.ioWrite(0x64, 1, 0xd1)
  t.is(k.save().awaiting, 'output-port')
  const good = k.save()
  refusesShape(t, a)
  refuses(t, a, withField(good, 'awaiting', 0x60), /awaiting must be one of 'none', 'command-byte', 'output-port', got 96/)
  refuses(t, a, withField(good, 'output', new Array(17).fill(0x55)), /output must be an array of 0..16/)
  refuses(t, a, withField(good, 'commandByte', -1), /commandByte must be an integer in 0..255, got -1/)
})

function acpiPmFixture(): Fixture<PortOp> {
  return {
    make(now) {
      const events: unknown[] = []
      const clock = clockAt(now)
      return {
        device: new AcpiPm(
          () => clock.now,
          () => events.push('poweroff'),
          () => events.push('reset'),
        ),
        events,
        clock,
      }
    },
    op: portOps([0x600, 0x602, 0x604, 0x608, 0xcf9], [0xffff, 0x0001, 0x0101_0000, 0x2001, 0x3401, 0x1401, 0x06, 0x02], 2_000_000, [1, 2, 4]),
    apply(instance, op) {
      applyPort(instance, op, instance.device as AcpiPm)
    },
  }
}

test('ACPI PM: save, restore into a new one, and both go on alike', (t) => {
  sameAfterRestore(t, acpiPmFixture())
})

test('ACPI PM: bad states are EINVAL and change nothing', (t) => {
  const a = acpiPmFixture().make(0)
  const good = (a.device as AcpiPm).save()
  refusesShape(t, a)
  refuses(t, a, withField(good, 'control', 0), /control must have SCI_EN set/)
  refuses(t, a, withField(good, 'enable', 0x10000), /enable must be an integer in 0..65535/)
})

// ---- PCI ---------------------------------------------------------------------------

/** A sim VM with the PC platform, recording the interrupts and MSIs it would deliver instead. */
function pcMachine(events: unknown[]): { vm: Vm; pc: PcPlatform; host: PciHost } {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 2 << 20)
  const pc = addPcPlatform(vm)
  // Devices raise through deviceMsi/deviceInterrupt (the tolerant entry points).
  const hooks = vm as unknown as { deviceMsi: (a: bigint, d: number) => void; deviceInterrupt: (r: InterruptRequest) => void }
  hooks.deviceMsi = (address, data) => events.push(`msi ${address.toString(16)} ${data.toString(16)}`)
  hooks.deviceInterrupt = (r) => events.push(r)
  return { vm, pc, host: pc.pci as PciHost }
}

/** Ports and addresses the function's BARs may be at (the firmware's, and those the ops write). */
const IO_PROBES = [0xc000, 0xc004, 0xd000, 0xd008]
const MMIO_PROBES = [0xc000_0000, 0xc000_4000, 0xc000_4010, 0xd000_0000, 0xd800_0000, 0x1_d800_0000]
/** Config space offsets worth writing: command, header storage, the BARs, MSI's and MSI-X's registers. */
const CONFIG_OFFSETS = [0x04, 0x05, 0x0c, 0x0d, 0x3c, 0x10, 0x14, 0x18, 0x1c, 0x42, 0x44, 0x48, 0x4c, 0x50, 0x5a]
const CONFIG_VALUES = [0x0007, 0x0407, 0x0003, 0x0000, 0xffff_ffff, 0xd000, 0xd000_0000, 0xd800_0000, 0x1, 0xfee0_0000, 0x4041, 0x0031, 0x8000, 0xc000, 0x0001, 0x0021, 0x0000_0002]

type PciOp =
  | { kind: 'cfg-write'; offset: number; size: 1 | 2 | 4; value: number }
  | { kind: 'cfg-read'; offset: number; size: 1 | 2 | 4 }
  | { kind: 'probe'; at: number; io: boolean }
  | { kind: 'intx'; level: boolean }
  | { kind: 'msi' | 'msix'; vector: number }
  | { kind: 'table-write'; offset: number; value: number }
  | { kind: 'table-read'; offset: number }
  | { kind: 'ioapic'; entry: number }
  | { kind: 'eoi' }

function pciFixture(): Fixture<PciOp> {
  return {
    make() {
      const events: unknown[] = []
      const { vm, pc, host } = pcMachine(events)
      const bar = (n: number) => ({ read: (o: number, size: number) => (events.push(`bar ${n} read ${o}/${size}`), BigInt(n * 0x100 + o)), write: (o: number, size: number, v: bigint) => void events.push(`bar ${n} write ${o}/${size} ${v}`) })
      const msi = new Msi(4, (address, data) => events.push(`msi ${address.toString(16)} ${data.toString(16)}`))
      const msix = new Msix({ vectors: 3, tableBar: 1, tableOffset: 0, pbaBar: 1, pbaOffset: 0x800, signal: (address, data) => events.push(`msix ${address.toString(16)} ${data.toString(16)}`) })
      const fn = new PciFunction({
        name: 'state',
        vendorId: 0x1234,
        deviceId: 0x5678,
        classCode: 0xff_00_00,
        bars: [{ kind: 'io', size: 16, handler: bar(0) }, { kind: 'mmio32', size: 0x1000, handler: bar(1) }, { kind: 'mmio64', size: 0x4000, handler: bar(2) }],
        capabilities: [msi, msix],
      })
      const slot = host.add(fn)
      const cfg = new ConfigPorts(vm, slot)
      const gsi = pciIntxGsi(slot, 0)
      const device = {
        save: () => ({ fn: fn.save(), msi: msi.save(), msix: msix.save(), ioapic: pc.ioapic.save(), host: host.save() }),
        restore: (st: unknown) => {
          const x = st as ReturnType<typeof device.save>
          fn.restore(x.fn)
          msi.restore(x.msi)
          msix.restore(x.msix)
          pc.ioapic.restore(x.ioapic)
          host.restore(x.host)
        },
      }
      const instance: Instance & { fn: PciFunction; msi: Msi; msix: Msix; cfg: ConfigPorts; vm: Vm; pc: PcPlatform; gsi: number } = { device, events, fn, msi, msix, cfg, vm, pc, gsi, close: () => vm.close() }
      return instance
    },
    op: fc.oneof(
      { weight: 4, arbitrary: fc.record({ kind: fc.constant('cfg-write' as const), offset: fc.constantFrom(...CONFIG_OFFSETS), size: fc.constantFrom(1 as const, 2 as const, 4 as const), value: fc.oneof(fc.constantFrom(...CONFIG_VALUES), fc.integer({ min: 0, max: 0xffff_ffff })) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('cfg-read' as const), offset: fc.constantFrom(...CONFIG_OFFSETS, 0x06, 0x00, 0x40, 0x58, 0x54), size: fc.constantFrom(1 as const, 2 as const, 4 as const) }) },
      { weight: 3, arbitrary: fc.oneof(fc.record({ kind: fc.constant('probe' as const), at: fc.constantFrom(...IO_PROBES), io: fc.constant(true) }), fc.record({ kind: fc.constant('probe' as const), at: fc.constantFrom(...MMIO_PROBES), io: fc.constant(false) })) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('intx' as const), level: fc.boolean() }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constantFrom('msi' as const, 'msix' as const), vector: fc.integer({ min: 0, max: 3 }) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('table-write' as const), offset: fc.integer({ min: 0, max: 11 }).map((i) => i * 4), value: fc.oneof(fc.constantFrom(0, 1, 0xfee0_0000, 0x41), fc.integer({ min: 0, max: 0xffff_ffff })) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('table-read' as const), offset: fc.integer({ min: 0, max: 11 }).map((i) => i * 4) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('ioapic' as const), entry: fc.constantFrom(0x8040, 0x1_8040, 0x0040) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('eoi' as const) }) },
    ),
    apply(instance, op) {
      const m = instance as ReturnType<ReturnType<typeof pciFixture>['make']> & { fn: PciFunction; msi: Msi; msix: Msix; cfg: ConfigPorts; vm: Vm; pc: PcPlatform; gsi: number }
      const tried = (f: () => unknown): unknown => {
        try {
          return f()
        } catch (e) {
          return (e as MshvError).code
        }
      }
      switch (op.kind) {
        case 'cfg-write':
          m.cfg.write(op.offset & ~(op.size - 1), op.size, op.value & (op.size === 4 ? 0xffff_ffff : (1 << (op.size * 8)) - 1))
          break
        case 'cfg-read':
          m.events.push(`cfg ${op.offset} = ${m.cfg.read(op.offset & ~(op.size - 1), op.size)}`)
          break
        case 'probe':
          m.events.push(`probe ${op.at.toString(16)} = ${String(tried(() => (op.io ? m.vm.bus.read(op.at, 4, CTX) : m.vm.bus.mmioRead(BigInt(op.at), 4, CTX))))}`)
          break
        case 'intx':
          m.fn.setIntx(op.level)
          break
        case 'msi':
          m.events.push(`msi notify ${String(tried(() => m.msi.notify(op.vector)))}`)
          break
        case 'msix':
          m.events.push(`msix notify ${String(tried(() => m.msix.notify(op.vector)))}`)
          break
        case 'table-write':
          m.msix.tableHandler.write(op.offset, 4, BigInt(op.value), CTX)
          break
        case 'table-read':
          m.events.push(`table ${op.offset} = ${m.msix.tableHandler.read(op.offset, 4, CTX)} pba ${m.msix.pbaHandler.read(0, 8, CTX)}`)
          break
        case 'ioapic':
          m.pc.ioapic.mmioWrite(0, 4, BigInt(0x10 + 2 * m.gsi))
          m.pc.ioapic.mmioWrite(0x10, 4, BigInt(op.entry))
          break
        case 'eoi':
          m.pc.ioapic.eoi(0x40)
          break
      }
    },
  }
}

test('PCI: a function, its MSI and MSI-X and the host bridge saved and restored go on alike (BAR windows, INTx, pending vectors)', (t) => {
  sameAfterRestore(t, pciFixture(), 40)
})

test('PCI: a small 64-bit BAR mid-sizing (all ones in both halves: 2^64 as a number) saves and restores', (t) => {
  const events: unknown[] = []
  const machines = [pcMachine(events), pcMachine(events)]
  try {
    const fns = machines.map(({ host }) => {
      const fn = new PciFunction({ name: 'small', vendorId: 1, deviceId: 2, classCode: 0, bars: [{ kind: 'mmio64', size: 16, handler: { read: () => 0n, write: () => {} } }] })
      host.add(fn, 5)
      return fn
    })
    const [a, b] = fns as [PciFunction, PciFunction]
    a.configWrite(0x10, 4, 0xffff_ffff)
    a.configWrite(0x14, 4, 0xffff_ffff)
    const saved = roundTrip(a.save())
    t.is(saved.bars[0], 2 ** 64)
    b.restore(saved)
    t.deepEqual(b.save(), a.save())
    t.deepEqual([b.configRead(0x10, 4), b.configRead(0x14, 4)], [a.configRead(0x10, 4), a.configRead(0x14, 4)])
  } finally {
    for (const m of machines) m.vm.close()
  }
})

test('PCI: bad states are EINVAL and change nothing', (t) => {
  const a = pciFixture().make(0) as Instance & { fn: PciFunction; msi: Msi; msix: Msix; vm: Vm; pc: PcPlatform }
  try {
    const one = (device: { save(): unknown; restore(s: unknown): void }): Instance => ({ device, events: [] })
    const fn = one(a.fn)
    const good = a.fn.save()
    refusesShape(t, fn)
    refuses(t, fn, withField(good, 'bars', good.bars.slice(1)), /bars must be an array of 6/)
    refuses(t, fn, withField(good, 'bars.1', 0xc000_0800), /bars\[1\] must be an address in 0..0xffffffff aligned to BAR 1's 0x1000 bytes/)
    refuses(t, fn, withField(good, 'bars.0', 0x1_0000), /bars\[0\] must be an address in 0..0xffff/)
    refuses(t, fn, withField(good, 'bars.3', 0), /bars\[3\] must be null \(state has no BAR 3\)/)
    refuses(t, fn, withField(good, 'bars.2', null), /bars\[2\] must be an address/)
    refuses(t, fn, withField(good, 'command', 0x08), /command must be a command register within 0x507/)
    const msi = one(a.msi)
    refusesShape(t, msi)
    refuses(t, msi, withField(a.msi.save(), 'mask', 0x10), /mask must be bits within 0xf/)
    refuses(t, msi, withField(a.msi.save(), 'addressLow', 0xfee0_0001), /addressLow must be bits within 0xfffffffc/)
    const msix = one(a.msix)
    const x = a.msix.save()
    refusesShape(t, msix)
    refuses(t, msix, withField(x, 'table', x.table.slice(1)), /table must be an array of 3/)
    refuses(t, msix, withField(x, 'pending', [2, 1]), /pending must be vector numbers in increasing order/)
    refuses(t, msix, withField(x, 'pending', [3]), /pending\[0\] must be an integer in 0..2/)
    refuses(t, msix, withField(x, 'table.0.masked', 1), /table\[0\]\.masked must be a boolean/)
    const host = one(a.pc.pci as PciHost)
    refusesShape(t, host)
    refuses(t, host, withField((a.pc.pci as PciHost).save(), 'bridge.bars.0', 0), /bridge\.bars\[0\] must be null/)
  } finally {
    a.close?.()
  }
})

// ---- virtio ------------------------------------------------------------------------

/** Where the driver's rings and buffers go, and how much of it a snapshot of the guest copies. */
const GUEST_RAM = 0x10_0000
const GUEST_SPAN = 0x4_0000

type VirtioKind = 'blk' | 'net' | 'console' | 'rng'

type VirtioOp =
  | { kind: 'bring-up'; indirect: boolean; eventIdx: boolean; msix: boolean; vector: number }
  | { kind: 'negotiate'; indirect: boolean; eventIdx: boolean }
  | { kind: 'setup'; queue: number; vector: number }
  | { kind: 'ready' | 'reset' | 'isr' | 'msix-off' }
  | { kind: 'msix'; functionMask: boolean; masked: number }
  | { kind: 'submit'; queue: number; what: number; length: number; kick: boolean }
  | { kind: 'kick' | 'used'; queue: number }
  | { kind: 'used-event'; queue: number; value: number }
  | { kind: 'break-ring'; queue: number }
  | { kind: 'common-read'; offset: number; size: 1 | 2 | 4 }
  | { kind: 'common-write'; offset: number; value: number }
  | { kind: 'host'; length: number }

/** A virtio device on its transport in a sim VM, the spec driver and its queues: the guest's side is copied, the device's restored. */
interface VirtioInstance extends Instance {
  vm: Vm
  d: VirtioDriver
  queues: (DriverQueue | undefined)[]
  /** The virtio device itself (`device` is the whole saved: transport, bus, guest). */
  dev: VirtioDevice
  transport: VirtioPci
}

/** MSI-X's Message Control in configuration space. */
function msixControl(d: VirtioDriver): number {
  return (d.config.capabilities().find((c) => c.id === 0x11) as { at: number }).at + 2
}

function virtioFixture(kind: VirtioKind): Fixture<VirtioOp> {
  const queueCount = kind === 'net' || kind === 'console' ? 2 : 1
  return {
    make() {
      const events: unknown[] = []
      const { vm, pc, host } = pcMachine(events)
      const disk = kind === 'blk' ? new MemoryDisk(16 * 512) : undefined
      if (disk) disk.bytes.forEach((_, i, b) => (b[i] = (i * 7) & 0xff))
      const device: VirtioDevice =
        kind === 'blk'
          ? new VirtioBlock(disk as MemoryDisk, { id: 'state' })
          : kind === 'net'
            ? new VirtioNet({ mac: '52:54:00:00:00:01' })
            : kind === 'console'
              ? new VirtioConsole({ onData: (b) => events.push(`console ${toHex(b)}`), inputLimit: 48 })
              : new VirtioRng((b) => b.forEach((_, i) => (b[i] = (b.byteOffset + i) & 0xff)))
      if (device instanceof VirtioNet) device.onPacket((f) => events.push(`frame ${toHex(f)}`))
      const transport = new VirtioPci(host, device)
      const slot = host.devices().find((x) => x.fn === transport.pci)?.slot as number
      const d = new VirtioDriver(vm, slot)
      const queues: (DriverQueue | undefined)[] = []
      const whole = {
        save: () => ({
          transport: transport.save(),
          host: host.save(),
          ioapic: pc.ioapic.save(),
          // The rest of a snapshot, as whoever restores brings it: guest RAM, the backend's sectors, the driver's own variables.
          guest: { ram: toHex(vm.read(GUEST_RAM, GUEST_SPAN)).replace(/(00)+$/, ''), disk: disk ? toHex(disk.bytes) : null, nextRam: (d as unknown as { nextRam: number }).nextRam, queues: Array.from(queues, (q) => q ?? null) },
        }),
        restore: (st: unknown) => {
          const x = st as ReturnType<typeof whole.save>
          vm.write(GUEST_RAM, fromHex(x.guest.ram.padEnd(2 * GUEST_SPAN, '0')))
          if (disk && x.guest.disk !== null) disk.bytes.set(fromHex(x.guest.disk))
          ;(d as unknown as { nextRam: number }).nextRam = x.guest.nextRam
          queues.length = 0
          for (const q of x.guest.queues) queues.push(q === null ? undefined : { ...q })
          transport.restore(x.transport)
          pc.ioapic.restore(x.ioapic)
          host.restore(x.host)
        },
      }
      const instance: VirtioInstance = { device: whole, dev: device, events, vm, d, queues, transport, close: () => vm.close() }
      return instance
    },
    op: fc.oneof(
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('bring-up' as const), indirect: fc.boolean(), eventIdx: fc.boolean(), msix: fc.boolean(), vector: fc.constantFrom(0, 1, 0xffff) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('negotiate' as const), indirect: fc.boolean(), eventIdx: fc.boolean() }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('setup' as const), queue: fc.integer({ min: 0, max: queueCount - 1 }), vector: fc.constantFrom(0, 1, 2, 0xffff, 7) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constantFrom('ready' as const, 'reset' as const, 'isr' as const, 'msix-off' as const) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('msix' as const), functionMask: fc.boolean(), masked: fc.integer({ min: 0, max: 7 }) }) },
      { weight: 6, arbitrary: fc.record({ kind: fc.constant('submit' as const), queue: fc.integer({ min: 0, max: queueCount - 1 }), what: fc.integer({ min: 0, max: 3 }), length: fc.integer({ min: 1, max: 40 }), kick: fc.boolean() }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constantFrom('kick' as const, 'used' as const), queue: fc.integer({ min: 0, max: queueCount - 1 }) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('used-event' as const), queue: fc.integer({ min: 0, max: queueCount - 1 }), value: fc.integer({ min: 0, max: 6 }) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('break-ring' as const), queue: fc.integer({ min: 0, max: queueCount - 1 }) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('common-read' as const), offset: fc.constantFrom(0, 4, 8, 12, 16, 18, 20, 21, 22, 24, 26, 28, 30, 32, 40), size: fc.constantFrom(1 as const, 2 as const, 4 as const) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('common-write' as const), offset: fc.constantFrom(0, 8, 16, 22, 26), value: fc.integer({ min: 0, max: 3 }) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('host' as const), length: fc.integer({ min: 0, max: 80 }) }) },
    ),
    apply(instance, op) {
      const m = instance as unknown as VirtioInstance
      const { d, vm, events, queues } = m
      const room = (bytes: number): boolean => (d as unknown as { nextRam: number }).nextRam + bytes + 64 < GUEST_RAM + GUEST_SPAN
      const fill = (at: number, length: number, seed: number): void => vm.write(at, Uint8Array.from({ length }, (_, i) => (seed + i * 13) & 0xff))
      switch (op.kind) {
        case 'bring-up': {
          // What a driver does at probe (3.1.1): features, MSI-X or not, every queue, DRIVER_OK.
          const features = feature(VIRTIO_F_VERSION_1) | (op.indirect ? feature(VIRTIO_F_INDIRECT_DESC) : 0n) | (op.eventIdx ? feature(VIRTIO_F_EVENT_IDX) : 0n)
          events.push(`negotiated ${d.negotiate(features)}`)
          this.apply(instance, op.msix ? { kind: 'msix', functionMask: false, masked: 0 } : { kind: 'msix-off' })
          for (let q = 0; q < queueCount; q++) this.apply(instance, { kind: 'setup', queue: q, vector: op.vector === 0 ? q + 1 : op.vector })
          d.ready()
          break
        }
        case 'negotiate':
          events.push(`negotiated ${d.negotiate(feature(VIRTIO_F_VERSION_1) | (op.indirect ? feature(VIRTIO_F_INDIRECT_DESC) : 0n) | (op.eventIdx ? feature(VIRTIO_F_EVENT_IDX) : 0n))}`)
          break
        case 'setup':
          if (room(0x400)) queues[op.queue] = d.setupQueue(op.queue, 8, op.vector)
          break
        case 'ready':
          d.ready()
          break
        case 'reset':
          d.setCommon(20, 1, 0)
          break
        case 'isr':
          events.push(`isr ${d.isr()}`)
          break
        case 'msix-off':
          d.config.write(msixControl(d), 2, 0)
          break
        case 'msix': {
          d.config.write(msixControl(d), 2, 0x8000 | (op.functionMask ? 0x4000 : 0))
          const table = d.bar(1)
          for (let v = 0; v < queueCount + 1; v++) {
            vm.bus.mmioWrite(table + BigInt(16 * v), 8, 0xfee0_0000n, CTX)
            vm.bus.mmioWrite(table + BigInt(16 * v + 8), 4, BigInt(0x30 + v), CTX)
            vm.bus.mmioWrite(table + BigInt(16 * v + 12), 4, BigInt((op.masked >> v) & 1), CTX)
          }
          break
        }
        case 'submit': {
          const q = queues[op.queue]
          if (!q || !room(2048)) break
          const seed = op.length * 31 + op.what
          if (kind === 'blk') {
            const type = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_FLUSH][op.what] as number
            const h = d.alloc(16)
            const header = new DataView(new ArrayBuffer(16))
            header.setUint32(0, type, true)
            header.setBigUint64(8, BigInt(op.length % 20), true)
            vm.write(h, new Uint8Array(header.buffer))
            const data = d.alloc(512)
            fill(data, 512, seed)
            const status = d.alloc(1)
            d.submit(q, [{ addr: h, len: 16 }, { addr: data, len: 512, write: type !== VIRTIO_BLK_T_OUT }, { addr: status, len: 1, write: true }])
          } else if (op.queue === 0) {
            // A receive (or rng) buffer: big enough for a frame or not.
            const length = kind === 'net' ? (op.what === 0 ? 40 : 1526) : op.length
            d.submit(q, [{ addr: d.alloc(length), len: length, write: true }])
          } else {
            const length = kind === 'net' ? 12 + 14 + op.length : op.length
            const at = d.alloc(length)
            fill(at, length, seed)
            d.submit(q, [{ addr: at, len: length }])
          }
          if (op.kick) d.notify(q)
          break
        }
        case 'kick': {
          const q = queues[op.queue]
          if (q) d.notify(q)
          break
        }
        case 'used': {
          const q = queues[op.queue]
          if (q) events.push(`used ${op.queue} ${JSON.stringify(d.used(q))}`)
          break
        }
        case 'used-event': {
          const q = queues[op.queue]
          if (q) vm.write(q.avail + 4 + 2 * q.size, [op.value, 0])
          break
        }
        case 'break-ring': {
          // The available index 100 entries on: a device error (DEVICE_NEEDS_RESET, a configuration change) at the next kick.
          const q = queues[op.queue]
          if (q) vm.write(q.avail + 2, [(q.availIdx + 100) & 0xff, ((q.availIdx + 100) >> 8) & 0xff])
          break
        }
        case 'common-read':
          events.push(`common ${op.offset} = ${d.common(op.offset, op.size)}`)
          break
        case 'common-write':
          d.setCommon(op.offset, op.offset === 16 || op.offset === 22 || op.offset === 26 ? 2 : 4, op.value)
          break
        case 'host':
          if (m.dev instanceof VirtioNet) events.push(`sent ${m.dev.send(Uint8Array.from({ length: 14 + op.length }, (_, i) => (i * 3 + op.length) & 0xff))}`)
          else if (m.dev instanceof VirtioConsole) events.push(`wrote ${m.dev.write(Uint8Array.from({ length: op.length }, (_, i) => (i + op.length) & 0xff))}`)
          break
      }
    },
  }
}

for (const kind of ['blk', 'net', 'console', 'rng'] as const) {
  test(`virtio-${kind} on PCI: the transport, its queues and the device saved and restored go on alike`, (t) => {
    sameAfterRestore(t, virtioFixture(kind), 30)
  })
}

for (const kind of ['net', 'console'] as const) {
  test(`virtio-${kind}: input waiting with receive buffers the driver has not kicked is delivered at the kick, not at restore`, (t) => {
    const f = virtioFixture(kind)
    const a = f.make(0) as VirtioInstance
    const b = f.make(0) as VirtioInstance
    try {
      f.apply(a, { kind: 'bring-up', indirect: false, eventIdx: true, msix: true, vector: 0 })
      f.apply(a, { kind: 'host', length: 20 })
      f.apply(a, { kind: 'submit', queue: 0, what: 1, length: 30, kick: false })
      const saved = a.device.save() as { transport: { device: { backlog?: string[]; input?: string } } }
      t.true((saved.transport.device.backlog?.length ?? saved.transport.device.input?.length ?? 0) > 0, 'input waits')
      b.events.length = 0
      b.device.restore(roundTrip(saved))
      t.deepEqual(b.device.save(), saved)
      t.deepEqual(b.events, [], 'nothing delivered, no interrupt')
      const before = a.events.length
      for (const m of [a, b]) f.apply(m, { kind: 'kick', queue: 0 })
      for (const m of [a, b]) f.apply(m, { kind: 'used', queue: 0 })
      t.true(b.events.some((e) => String(e).startsWith('msi')), 'the kick delivered it')
      t.deepEqual(b.events, a.events.slice(before))
      t.deepEqual(b.device.save(), a.device.save())
    } finally {
      a.close?.()
      b.close?.()
    }
  })
}

test('virtio: bad transport, queue and device states are EINVAL and change nothing', (t) => {
  const f = virtioFixture('net')
  const m = f.make(0) as VirtioInstance
  try {
    f.apply(m, { kind: 'bring-up', indirect: true, eventIdx: true, msix: true, vector: 0 })
    const transport = { device: m.transport, events: [] }
    const good = m.transport.save()
    refusesShape(t, transport)
    refuses(t, transport, withField(good, 'queues', good.queues.slice(1)), /queues must be an array of 2 queues/)
    refuses(t, transport, withField(good, 'queues.1.msixVector', 3), /queues\[1\]\.msixVector must be an MSI-X vector below 3 or 0xffff/)
    refuses(t, transport, withField(good, 'queues.0.desc', 0x4000_0000), /queues\[0\]: an enabled queue must be one the driver could enable: .*descriptor table/)
    refuses(t, transport, withField(good, 'queues.0.nextUsed', 0x10000), /queues\[0\]\.nextUsed must be an integer in 0..65535/)
    refuses(t, transport, withField(good, 'negotiated', '0x8000000000000000'), /negotiated must be features this device offers/)
    refuses(t, transport, withField(good, 'driverFeatures', 12), /driverFeatures must be a 0x hex string of at most 64 bits, got 12/)
    refuses(t, transport, withField(good, 'configVector', 9), /configVector must be an MSI-X vector below 3/)
    refuses(t, transport, withField(good, 'isr', 4), /isr must be an integer in 0..3/)
    refuses(t, transport, withField(good, 'msix.table', []), /msix\.table must be an array of 3/)
    refuses(t, transport, withField(good, 'pci.bars.4', 0x1234), /pci\.bars\[4\] must be an address .* aligned to BAR 4's 0x4000 bytes/)
    refuses(t, transport, withField(good, 'pciCfg.bar', 256), /pciCfg\.bar must be an integer in 0..255/)
    refuses(t, transport, withField(good, 'device', { version: 1, backlog: ['00'] }), /virtioNet\.restore: state\.backlog\[0\] must be 14..1518 bytes as lowercase hex/)
    refuses(t, transport, withField(good, 'device', null), /virtioNet\.restore: state must be an object, got null/)
    const queue = { device: m.transport.queues[0] as unknown as Instance['device'], events: [] }
    refusesShape(t, queue)
    // A disabled queue's address written all ones in both halves is 2^64 as a number: it restores.
    const spare = new Virtqueue(0, 8, m.vm.memory)
    spare.restore({ ...spare.save(), desc: 2 ** 64 })
    t.is(spare.desc, 2 ** 64)
    refuses(t, queue, withField(good.queues[0], 'size', 6), /an enabled queue must be one the driver could enable: queue 0: size 6 is not a power of two/)
    refuses(t, queue, withField(good.queues[0], 'eventIdx', 'yes'), /eventIdx must be a boolean/)
    const net = { device: m.dev as VirtioNet, events: [] }
    refusesShape(t, net)
    refuses(t, net, { version: 1, backlog: new Array(257).fill('00'.repeat(14)) }, /backlog must be an array of 0..256/)
    const console_ = { device: new VirtioConsole({ inputLimit: 4 }), events: [] }
    refusesShape(t, console_)
    refuses(t, console_, { version: 1, input: '0102030405' }, /input must be 0..4 bytes as lowercase hex/)
    for (const device of [new VirtioBlock(new MemoryDisk(512)), new VirtioRng()]) {
      refuses(t, { device, events: [] }, { version: 1, extra: 0 }, /field 'extra'/)
      refuses(t, { device, events: [] }, { version: 2 }, /version must be 1/)
    }
  } finally {
    m.close?.()
  }
})
