/**
 * The 8254 programmable interval timer (Intel 82C54 datasheet; counting, output and
 * latch behaviour as QEMU's `hw/timer/i8254.c` and `i8254_common.c` model them) and
 * the PC's port 0x61 (channel 2's gate and output, the speaker, the refresh toggle).
 * Channel 0's output drives IRQ 0; channel 2 is what guests calibrate their TSC
 * against (Linux's `pit_calibrate_tsc`, arch/x86/kernel/tsc.c). Time is guest time.
 * @module
 */
import { checkInteger } from '../check.js'
import type { PioDevice } from '../bus.js'
import type { IrqLine } from '../platform/irq.js'
import type { GuestTimer, GuestTimers } from '../platform/timers.js'

/** The PIT's input clock: 1.193182 MHz. */
export const PIT_HZ = 1_193_182
/** Channel 0..2 data ports and the mode/command port. */
export const PIT_BASE = 0x40
/** The PC's system control port B. */
export const PORT_61 = 0x61

const NS = 1_000_000_000

/** PIT clocks in `ns` nanoseconds, exactly (no float rounding past 2^53). */
function clocks(ns: number): number {
  return Math.floor(ns / NS) * PIT_HZ + Math.floor(((ns % NS) * PIT_HZ) / NS)
}

/** Nanoseconds until `n` PIT clocks have passed (rounded up: the edge is not early). */
function nanos(n: number): number {
  return Math.floor(n / PIT_HZ) * NS + Math.ceil(((n % PIT_HZ) * NS) / PIT_HZ)
}

const RW_LSB = 1
const RW_MSB = 2
const RW_WORD0 = 3
const RW_WORD1 = 4

class Channel {
  /** The count loaded (1..0x10000). */
  count = 0x10000
  latchedCount = 0
  countLatched = 0
  statusLatched = false
  status = 0
  readState = RW_LSB
  writeState = RW_LSB
  writeLatch = 0
  rwMode = RW_LSB
  mode = 0
  bcd = false
  gate: boolean
  loadTime = 0
  /** Output level when nothing was programmed yet. */
  programmed = false

  constructor(gate: boolean) {
    this.gate = gate
  }

  /** Clocks since the count was loaded. */
  elapsed(now: number): number {
    return clocks(Math.max(0, now - this.loadTime))
  }

  value(now: number): number {
    const d = this.elapsed(now)
    switch (this.mode) {
      case 0:
      case 1:
      case 4:
      case 5:
        return (this.count - d) & 0xffff
      case 3:
        return this.count - ((2 * d) % this.count)
      default:
        return this.count - (d % this.count)
    }
  }

  /** The OUT pin at `now` (QEMU's `pit_get_out`). */
  out(now: number): boolean {
    if (!this.programmed) return false
    const d = this.elapsed(now)
    switch (this.mode) {
      case 1:
        return d < this.count
      case 2:
        return d % this.count !== 0 || d === 0
      case 3:
        return d % this.count < (this.count + 1) >> 1
      case 4:
      case 5:
        return d !== this.count
      default:
        return d >= this.count
    }
  }
}

/** The 8254 with channel 0 on IRQ 0 and channel 2 behind port 0x61. */
export class Pit implements PioDevice {
  private readonly channels = [new Channel(true), new Channel(true), new Channel(false)] as const
  private speaker = 0
  private timer: GuestTimer | undefined

  constructor(
    private readonly timers: GuestTimers,
    /** IRQ 0. */
    private readonly irq: IrqLine,
  ) {}

  private now(): number {
    return this.timers.now()
  }

  /** Channel `i`'s current count (for tests and the REPL). */
  counter(i: 0 | 1 | 2): number {
    checkInteger('pit.counter: channel', i, 0, 2)
    return this.channels[i].value(this.now())
  }

  /** Channel `i`'s OUT pin now. */
  output(i: 0 | 1 | 2): boolean {
    checkInteger('pit.output: channel', i, 0, 2)
    return this.channels[i].out(this.now())
  }

  private load(i: number, value: number): void {
    const c = this.channels[i] as Channel
    c.count = value === 0 ? 0x10000 : value
    c.loadTime = this.now()
    c.programmed = true
    if (i === 0) this.schedule()
  }

  /**
   * Channel 0's interrupts: IRQ 0 follows OUT. Modes 2 and 3 raise it once a period;
   * 0 and 1 once, at terminal count; 4 and 5 pulse once.
   */
  private schedule(): void {
    this.timer?.cancel()
    this.timer = undefined
    const c = this.channels[0]
    if (!c.programmed) return
    const base = c.loadTime
    if (c.mode === 2 || c.mode === 3) {
      this.irq.set(false)
      const period = c.count
      this.timer = this.timers.every(
        (n) => base + nanos(period * n),
        () => this.irq.pulse(),
      )
    } else {
      this.irq.set(false)
      this.timer = this.timers.at(base + nanos(c.count), () => {
        if (c.mode === 4 || c.mode === 5) this.irq.pulse()
        else this.irq.set(true)
      })
    }
  }

  private control(v: number): void {
    const i = v >> 6
    if (i === 3) {
      // Read-back (82C54): latch count and/or status of the channels selected.
      for (let k = 0; k < 3; k++) {
        if ((v & (2 << k)) === 0) continue
        const c = this.channels[k] as Channel
        if ((v & 0x20) === 0) this.latch(c)
        if ((v & 0x10) === 0 && !c.statusLatched) {
          c.status = (c.out(this.now()) ? 0x80 : 0) | (c.rwMode << 4) | (c.mode << 1) | (c.bcd ? 1 : 0)
          c.statusLatched = true
        }
      }
      return
    }
    const c = this.channels[i] as Channel
    const access = (v >> 4) & 3
    if (access === 0) {
      this.latch(c)
      return
    }
    c.rwMode = access
    c.readState = access
    c.writeState = access
    c.mode = (v >> 1) & 7
    if (c.mode > 5) c.mode -= 4 // 6 and 7 are 2 and 3
    c.bcd = (v & 1) !== 0
    if (i === 0) {
      // A new mode drives OUT to its initial level until a count is written.
      this.timer?.cancel()
      this.irq.set(c.mode !== 0 && c.programmed)
    }
  }

  private latch(c: Channel): void {
    if (c.countLatched !== 0) return
    c.latchedCount = c.value(this.now())
    c.countLatched = c.rwMode
  }

  ioRead(port: number): number {
    if (port === PORT_61) {
      const c2 = this.channels[2]
      // Bit 4 toggles with each DRAM refresh, every 15.085 us (as QEMU's pcspk does).
      const refresh = Math.floor(this.now() / 15_085) & 1
      return (this.speaker & 3) | (refresh << 4) | (c2.out(this.now()) ? 0x20 : 0)
    }
    const i = port - PIT_BASE
    if (i < 0 || i > 2) return 0xff
    const c = this.channels[i] as Channel
    if (c.statusLatched) {
      c.statusLatched = false
      return c.status
    }
    if (c.countLatched !== 0) {
      switch (c.countLatched) {
        case RW_LSB:
          c.countLatched = 0
          return c.latchedCount & 0xff
        case RW_MSB:
          c.countLatched = 0
          return (c.latchedCount >> 8) & 0xff
        default:
          c.countLatched = RW_MSB
          return c.latchedCount & 0xff
      }
    }
    const count = c.value(this.now())
    switch (c.readState) {
      case RW_LSB:
        return count & 0xff
      case RW_MSB:
        return (count >> 8) & 0xff
      case RW_WORD0:
        c.readState = RW_WORD1
        return count & 0xff
      default:
        c.readState = RW_WORD0
        return (count >> 8) & 0xff
    }
  }

  ioWrite(port: number, _size: number, value: number): void {
    const v = value & 0xff
    if (port === PORT_61) {
      const c2 = this.channels[2]
      const gate = (v & 1) !== 0
      // A rising gate restarts the count in modes 1, 2, 3 and 5 (QEMU's pit_set_gate).
      if (gate && !c2.gate && c2.programmed && c2.mode !== 0 && c2.mode !== 4) c2.loadTime = this.now()
      c2.gate = gate
      this.speaker = v & 3
      return
    }
    const i = port - PIT_BASE
    if (i === 3) {
      this.control(v)
      return
    }
    if (i < 0 || i > 2) return
    const c = this.channels[i] as Channel
    switch (c.writeState) {
      case RW_LSB:
        this.load(i, v)
        break
      case RW_MSB:
        this.load(i, v << 8)
        break
      case RW_WORD0:
        c.writeLatch = v
        c.writeState = RW_WORD1
        break
      default:
        this.load(i, c.writeLatch | (v << 8))
        c.writeState = RW_WORD0
        break
    }
  }
}
