import test from 'ava'
import fc from 'fast-check'
import { GuestTimers, I8042, IoApic, Pic, Pit, Rtc, Serial16550, WiredIrq, MshvError, type InterruptRequest } from '../index.js'

/** Guest time a test moves by hand. */
function clock(): { timers: GuestTimers; advance(ns: number): void } {
  let now = 0
  const timers = new GuestTimers(() => now)
  return {
    timers,
    advance(ns: number) {
      now += ns
      timers.fire(now)
    },
  }
}

/** A line whose level a test reads. */
function probe(): { line: WiredIrq; edges: () => number } {
  let edges = 0
  const line = new WiredIrq([{ sink: { setIrq: (_p, level) => void (level && edges++) }, pin: 0 }])
  return { line, edges: () => edges }
}

test('guest timers fire in time order, ties in the order set, cancelled ones never', (t) => {
  const { timers, advance } = clock()
  const seen: string[] = []
  timers.at(30, () => seen.push('c'))
  timers.at(10, () => seen.push('a'))
  timers.at(10, () => seen.push('b'))
  timers.at(20, () => seen.push('x')).cancel()
  t.is(timers.next(), 10)
  advance(25)
  t.deepEqual(seen, ['a', 'b'])
  advance(10)
  t.deepEqual(seen, ['a', 'b', 'c'])
  t.is(timers.next(), undefined)
})

test('guest timers: every() fires at each computed time, and cancelling it stops the series', (t) => {
  const { timers, advance } = clock()
  const seen: number[] = []
  const series = timers.every((n) => n * 1000 + (n % 2), (at) => seen.push(at))
  advance(3500)
  t.deepEqual(seen, [1001, 2000, 3001])
  t.is(series.at, 4000)
  series.cancel()
  advance(10_000)
  t.deepEqual(seen, [1001, 2000, 3001])
})

// ---- 8259 -------------------------------------------------------------------------

/** A PIC initialised as a BIOS or Linux does: vectors 0x20/0x28, cascade on IRQ 2. */
function pic(): { pic: Pic; vectors: number[] } {
  const vectors: number[] = []
  const p = new Pic((v) => vectors.push(v))
  for (const [port, v] of [[0x20, 0x11], [0x21, 0x20], [0x21, 4], [0x21, 1], [0xa0, 0x11], [0xa1, 0x28], [0xa1, 2], [0xa1, 1], [0x21, 0], [0xa1, 0]]) {
    p.ioWrite(port as number, 1, v as number)
  }
  return { pic: p, vectors }
}

test('8259: the highest-priority request is acknowledged; lower ones wait for its EOI, higher ones nest', (t) => {
  const { pic: p, vectors } = pic()
  p.setIrq(4, true)
  t.deepEqual(vectors, [0x24])
  p.setIrq(3, true) // higher than 4: nests at once
  t.deepEqual(vectors, [0x24, 0x23])
  p.setIrq(5, true) // lower than 4 and 3: waits
  t.deepEqual(vectors, [0x24, 0x23])
  p.ioWrite(0x20, 1, 0x20) // EOI: 3 done
  p.ioWrite(0x20, 1, 0x20) // EOI: 4 done, 5 goes
  t.deepEqual(vectors, [0x24, 0x23, 0x25])
  p.setIrq(12, true) // the slave, through IRQ 2
  t.deepEqual(vectors.at(-1), 0x2c)
  p.ioWrite(0x20, 1, 0x0b) // OCW3: read ISR
  t.is(p.ioRead(0x20) & 0x24, 0x24, 'master ISR: IRQ 5 and the cascade')
})

test('8259: masked requests wait in IRR; edge lines need a new edge; ELCR makes a line level-triggered', (t) => {
  const { pic: p, vectors } = pic()
  p.ioWrite(0x21, 1, 0x02) // mask IRQ 1
  p.setIrq(1, true)
  t.deepEqual(vectors, [])
  t.is(p.state.irr & 2, 2)
  p.ioWrite(0x21, 1, 0)
  t.deepEqual(vectors, [0x21])
  p.ioWrite(0x20, 1, 0x20)
  // Still high, edge-triggered: nothing more without a new edge.
  t.deepEqual(vectors, [0x21])
  p.ioWrite(0x4d0, 1, 0x20) // IRQ 5 level-triggered
  t.is(p.state.elcr, 0x20)
  p.setIrq(5, true)
  p.ioWrite(0x20, 1, 0x20)
  t.deepEqual(vectors, [0x21, 0x25, 0x25], 'a level line still high is taken again after its EOI')
  p.ioWrite(0x4d0, 1, 0x07)
  t.is(p.state.elcr & 0x07, 0, 'IRQ 0, 1 and 2 cannot be level-triggered')
  t.throws(() => p.setIrq(16, true), { instanceOf: MshvError, message: /got 16/ })
})

test('8259: specific EOI, rotation and the poll command', (t) => {
  const { pic: p, vectors } = pic()
  p.setIrq(6, true)
  p.ioWrite(0x20, 1, 0x66) // specific EOI for 6
  t.is(p.state.isr & 0x40, 0)
  p.ioWrite(0x20, 1, 0xc3) // set priority: IRQ 4 lowest, so 5 highest
  p.ioWrite(0x21, 1, 0xff) // mask all, then poll
  p.setIrq(7, true)
  p.ioWrite(0x21, 1, 0x00)
  t.is(vectors.at(-1), 0x27)
  t.is(p.ioRead(0x21), 0)
})

// ---- I/O APIC ---------------------------------------------------------------------

function ioapic(): { io: IoApic; got: InterruptRequest[] } {
  const got: InterruptRequest[] = []
  const io = new IoApic((r) => {
    if ((r.vector ?? 0) < 16) throw new MshvError('EINVAL', `vector ${r.vector} is reserved`)
    got.push(r)
  })
  return { io, got }
}

/** Writes a redirection entry high dword first, as Linux's `ioapic_write_entry` does (the low one unmasks). */
const program = (io: IoApic, pin: number, entry: bigint): void => {
  io.mmioWrite(0, 4, BigInt(0x11 + 2 * pin))
  io.mmioWrite(0x10, 4, entry >> 32n)
  io.mmioWrite(0, 4, BigInt(0x10 + 2 * pin))
  io.mmioWrite(0x10, 4, entry & 0xffff_ffffn)
}

test('I/O APIC: version 0x20 with 24 pins; every pin starts masked', (t) => {
  const { io, got } = ioapic()
  io.mmioWrite(0, 4, 1n)
  t.is(io.mmioRead(0x10, 4), 0x0017_0020n)
  for (let p = 0; p < 24; p++) t.is(io.entry(p) & (1n << 16n), 1n << 16n)
  program(io, 3, 0x0300_0000_0000_0941n) // dest 3, logical, lowest priority, vector 0x41
  io.setIrq(3, true)
  t.deepEqual(got, [{ kind: 'lowest-priority', vector: 0x41, destination: 3, logical: true, level: false }])
})

test('I/O APIC (82093AA datasheet, IOREDTBL mask bit): an edge on a masked pin is lost; a level pin still asserted at the unmask is delivered then', (t) => {
  const { io, got } = ioapic()
  // Edge pin 14, masked: kvm-unit-tests' ioapic.c test_ioapic_edge_mask.
  program(io, 14, (1n << 16n) | 0x81n)
  io.setIrq(14, true)
  io.setIrq(14, false)
  program(io, 14, 0x81n) // unmask
  t.deepEqual(got, [], 'the masked edge is not held for the unmask')
  io.setIrq(14, true)
  t.deepEqual(got, [{ kind: 'fixed', vector: 0x81, destination: 0, logical: false, level: false }], 'an edge after it is')
  io.setIrq(14, false)
  // Level pin 14, masked while asserted: test_ioapic_level_mask.
  got.length = 0
  program(io, 14, (1n << 16n) | (1n << 15n) | 0x82n)
  io.setIrq(14, true)
  t.deepEqual(got, [])
  program(io, 14, (1n << 15n) | 0x82n)
  t.deepEqual(got, [{ kind: 'fixed', vector: 0x82, destination: 0, logical: false, level: true }])
  // Masked again and lowered before the unmask: nothing.
  io.setIrq(14, false)
  io.eoi(0x82)
  program(io, 14, (1n << 16n) | (1n << 15n) | 0x82n)
  io.setIrq(14, true)
  io.setIrq(14, false)
  program(io, 14, (1n << 15n) | 0x82n)
  t.is(got.length, 1)
  // A line raised while its pin is still the reset default (masked, edge) is a level
  // the pin senses once the guest makes it level-triggered and unmasks it.
  io.setIrq(5, true)
  program(io, 5, (1n << 15n) | 0x35n)
  t.deepEqual(got.at(-1), { kind: 'fixed', vector: 0x35, destination: 0, logical: false, level: true })
})

test('I/O APIC: a level pin is not delivered again until EOI (remote IRR), then again while high', (t) => {
  const { io, got } = ioapic()
  program(io, 9, 0x8031n) // level, vector 0x31
  io.setIrq(9, true)
  t.is(got.length, 1)
  t.is(io.entry(9) & (1n << 14n), 1n << 14n, 'remote IRR set')
  io.eoi(0x31)
  t.is(got.length, 2, 'still high: again')
  io.setIrq(9, false)
  io.eoi(0x31)
  t.is(got.length, 2)
  t.is(io.entry(9) & (1n << 14n), 0n)
  // The EOI register (version 0x20) does the same as a local APIC's EOI message.
  io.setIrq(9, true)
  io.mmioWrite(0x40, 4, 0x31n)
  t.is(got.length, 4)
})

test('I/O APIC: remote IRR and delivery status are read-only; a vector the APIC refuses is counted, never thrown', (t) => {
  const { io } = ioapic()
  program(io, 1, (1n << 14n) | (1n << 12n) | 0x33n)
  t.is(io.entry(1) & ((1n << 14n) | (1n << 12n)), 0n)
  program(io, 2, 0x05n) // vector 5: the local APIC calls it illegal
  io.setIrq(2, true)
  t.deepEqual(io.stats, { delivered: 0, refused: 1 })
  t.throws(() => io.setIrq(24, true), { instanceOf: MshvError, message: /got 24/ })
})

// ---- 8254 -------------------------------------------------------------------------

test('8254: channel 0 in mode 2 pulses IRQ 0 once per period; counts read back through the latch', (t) => {
  const { timers, advance } = clock()
  const { line, edges } = probe()
  const pit = new Pit(timers, line)
  pit.ioWrite(0x43, 1, 0x34)
  pit.ioWrite(0x40, 1, 1193 & 0xff)
  pit.ioWrite(0x40, 1, 1193 >> 8)
  advance(10_000_000) // 10 ms: ten periods of 0.99985 ms
  t.is(edges(), 10)
  advance(500_000)
  pit.ioWrite(0x43, 1, 0x00) // latch channel 0
  const count = pit.ioRead(0x40) | (pit.ioRead(0x40) << 8)
  // 10.5 ms = 12528 clocks; 12528 mod 1193 = 598 elapsed in this period.
  t.is(count, 1193 - 598)
})

test('8254: channel 2 in mode 0 raises OUT (port 0x61 bit 5) at terminal count, as TSC calibration loops wait for', (t) => {
  const { timers, advance } = clock()
  const pit = new Pit(timers, probe().line)
  pit.ioWrite(0x61, 1, 0x01) // gate on, speaker off
  pit.ioWrite(0x43, 1, 0xb0) // channel 2, lo/hi, mode 0
  pit.ioWrite(0x42, 1, 0xff)
  pit.ioWrite(0x42, 1, 0xff)
  t.is(pit.ioRead(0x61) & 0x20, 0)
  advance(54_000_000) // 65535 clocks are 54.925 ms
  t.is(pit.ioRead(0x61) & 0x20, 0)
  advance(1_000_000)
  t.is(pit.ioRead(0x61) & 0x20, 0x20)
  // Read-back of channel 2's status: OUT high, lo/hi access, mode 0.
  pit.ioWrite(0x43, 1, 0xe8)
  t.is(pit.ioRead(0x42), 0x80 | 0x30)
})

// ---- RTC --------------------------------------------------------------------------

test('RTC: the date in BCD or binary, 24- or 12-hour, advancing with guest time', (t) => {
  const { timers, advance } = clock()
  const rtc = new Rtc(timers, probe().line, { start: new Date(Date.UTC(2026, 10, 25, 23, 59, 58)) })
  const read = (i: number): number => {
    rtc.ioWrite(0x70, 1, i)
    return rtc.ioRead(0x71)
  }
  t.deepEqual([read(4), read(2), read(0)], [0x23, 0x59, 0x58])
  advance(2_000_000_000)
  t.deepEqual([read(9), read(8), read(7), read(4), read(0)], [0x26, 0x11, 0x26, 0x00, 0x00])
  rtc.ioWrite(0x70, 1, 0x0b)
  rtc.ioWrite(0x71, 1, 0x04) // binary, 12-hour
  t.is(read(4), 12, 'midnight is 12 AM')
  t.is(read(7), 26)
  t.is(read(0x0d), 0x80, 'register D: the battery is fine')
})

test('RTC: the update-ended interrupt each second raises IRQ 8 until register C is read', (t) => {
  const { timers, advance } = clock()
  let level = false
  const line = new WiredIrq([{ sink: { setIrq: (_p, l) => (level = l) }, pin: 0 }])
  const rtc = new Rtc(timers, line, { start: new Date(Date.UTC(2026, 0, 1)) })
  rtc.ioWrite(0x70, 1, 0x0b)
  rtc.ioWrite(0x71, 1, 0x12) // UIE, 24-hour, BCD
  advance(999_000_000)
  t.false(level)
  advance(1_000_000)
  t.true(level)
  rtc.ioWrite(0x70, 1, 0x0c)
  t.is(rtc.ioRead(0x71), 0x90, 'IRQF and UF')
  t.false(level)
})

test('RTC (MC146818A datasheet, register A UIP): set for the last 244 us before each second ends, on guest time, unless SET or the divider holds the clock', (t) => {
  const { timers, advance } = clock()
  const rtc = new Rtc(timers, probe().line, { start: new Date(Date.UTC(2026, 0, 1)) })
  const uip = (): boolean => {
    rtc.ioWrite(0x70, 1, 0x0a)
    return (rtc.ioRead(0x71) & 0x80) !== 0
  }
  advance(999_755_000) // 245 us before the second ends
  t.false(uip())
  advance(2_000)
  t.true(uip(), '243 us before')
  advance(243_000 - 1)
  t.true(uip(), '1 ns before')
  advance(1)
  t.false(uip(), 'the update is done: the new second')
  // A clock set mid-second (SET held, then released) keeps its millisecond: its second
  // ends 600 ms after the write, and UIP comes 244 us before that.
  advance(400_123_456)
  rtc.ioWrite(0x70, 1, 0x0b)
  rtc.ioWrite(0x71, 1, 0x82) // SET, 24-hour
  t.false(uip(), 'SET stops updates')
  rtc.ioWrite(0x70, 1, 0x00)
  rtc.ioWrite(0x71, 1, 0x30) // 30 seconds, the sub-second part kept
  rtc.ioWrite(0x70, 1, 0x0b)
  rtc.ioWrite(0x71, 1, 0x02)
  advance(600_000_000 - 244_000 - 1)
  t.false(uip())
  advance(1)
  t.true(uip())
  // The divider in reset (DV = 110) stops the time base: no update, no UIP.
  rtc.ioWrite(0x70, 1, 0x0a)
  rtc.ioWrite(0x71, 1, 0x66)
  t.false(uip())
  rtc.ioWrite(0x70, 1, 0x0a)
  rtc.ioWrite(0x71, 1, 0x26)
  t.true(uip())
})

// ---- 16550 ------------------------------------------------------------------------

test('16550: THRE interrupt on enabling it and after each byte, cleared by reading IIR; receive has priority', (t) => {
  let level = false
  const line = new WiredIrq([{ sink: { setIrq: (_p, l) => (level = l) }, pin: 0 }])
  const s = new Serial16550(0x3f8, { irq: line })
  s.ioWrite(0x3fc, 1, 0x08) // OUT2
  s.ioWrite(0x3f9, 1, 0x02) // THRE interrupt
  t.true(level)
  t.is(s.ioRead(0x3fa) & 0x0f, 0x02)
  t.false(level, 'reading IIR cleared it')
  s.ioWrite(0x3f8, 1, 0x41)
  t.true(level, 'THR empty again after the byte left')
  s.ioWrite(0x3f9, 1, 0x03)
  s.feed('x')
  t.is(s.ioRead(0x3fa) & 0x0f, 0x04, 'received data outranks THRE')
  t.is(s.ioRead(0x3f8), 0x78)
  s.ioWrite(0x3fc, 1, 0x00)
  t.false(level, 'without OUT2 the line stays low')
  t.is(s.text(), 'A')
})

test('16550: loopback returns what is sent and mirrors the modem lines (the check Linux 8250 makes)', (t) => {
  const s = new Serial16550()
  s.ioWrite(0x3fc, 1, 0x1a) // loop, RTS, OUT2
  t.is(s.ioRead(0x3fe) & 0xf0, 0x90)
  s.ioWrite(0x3f8, 1, 0x55)
  t.is(s.ioRead(0x3fd) & 1, 1)
  t.is(s.ioRead(0x3f8), 0x55)
  t.is(s.text(), '', 'nothing reached the terminal')
})

test('16550: typed-ahead input waits beyond the 16-byte FIFO and is never lost', (t) => {
  fc.assert(
    fc.property(fc.string({ maxLength: 100 }), (text) => {
      const s = new Serial16550()
      s.feed(text)
      const bytes: number[] = []
      while (s.ioRead(0x3fd) & 1) bytes.push(s.ioRead(0x3f8))
      t.deepEqual(Buffer.from(bytes).toString(), text)
    }),
  )
})

// ---- i8042 ------------------------------------------------------------------------

test('i8042: self-test answers 0x55, the command byte round-trips, 0xFE and output-port bit 0 reset', (t) => {
  let resets = 0
  const k = new I8042(() => resets++)
  k.ioWrite(0x64, 1, 0xaa)
  t.is(k.ioRead(0x64) & 1, 1)
  t.is(k.ioRead(0x60), 0x55)
  k.ioWrite(0x64, 1, 0x60)
  k.ioWrite(0x60, 1, 0x47)
  k.ioWrite(0x64, 1, 0x20)
  t.is(k.ioRead(0x60), 0x47)
  k.ioWrite(0x64, 1, 0xfe)
  k.ioWrite(0x64, 1, 0xd1)
  k.ioWrite(0x60, 1, 0xfe)
  t.is(resets, 2)
})
