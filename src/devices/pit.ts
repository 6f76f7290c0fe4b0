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
import { MshvError, describe } from '../errors.js'
import { restoreLine, type IrqLine } from '../platform/irq.js'
import { bool, guestTime, int, list, noneLeft, nullable, oneOf, parseState, record, u8, version, type Check, type Fields, type MutableDataKeys, type Saveable, type SameKeys, type Schema } from '../snapshot/device-state.js'
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

/** A channel's access mode (control word bits 5:4): low byte, high byte, or both in turn. */
export type PitAccess = 'lsb' | 'msb' | 'word'
/** The byte a channel's next read or write is: in word access, the low then the high. */
export type PitByte = 'lsb' | 'msb' | 'word-lsb' | 'word-msb'
/** The access code in the status byte (82C54 read-back, bits 5:4). */
const ACCESS_CODE: Readonly<Record<PitAccess, number>> = { lsb: 1, msb: 2, word: 3 }
const ACCESS_BY_CODE: readonly PitAccess[] = ['lsb', 'lsb', 'msb', 'word']
/** Where a new access mode starts reading and writing. */
const FIRST_BYTE: Readonly<Record<PitAccess, PitByte>> = { lsb: 'lsb', msb: 'msb', word: 'word-lsb' }

/** One channel's state ({@link Pit.save}). */
export interface PitChannelState {
  /** The count loaded (1..0x10000; 0 written is 0x10000). */
  count: number
  /** The count a latch command froze (0..0x10000), and how much of it is still to read ('none': no latch). */
  latchedCount: number
  countLatched: 'none' | PitAccess
  /** A read-back froze the status byte for the next read. */
  statusLatched: boolean
  status: number
  readState: PitByte
  writeState: PitByte
  /** The low byte written in word access, waiting for the high one. */
  writeLatch: number
  rwMode: PitAccess
  /** The counting mode, 0..5. */
  mode: number
  bcd: boolean
  gate: boolean
  /** Guest time (ns) the count was loaded, or the gate restarted it. */
  loadTime: number
  /** Whether a count was ever written (OUT is low before). */
  programmed: boolean
}

/** The 8254's state. */
export interface PitState {
  version: 1
  /** Channels 0, 1 and 2. */
  channels: PitChannelState[]
  /** Port 0x61's bits 0 (channel 2's gate) and 1 (the speaker). */
  speaker: number
  /** When channel 0's next IRQ 0 edge is due (guest ns), or null when none is armed. */
  irqTimer: number | null
  /** The level the PIT drives IRQ 0 at. */
  irq: boolean
}

const CHANNEL_STATE: Check<PitChannelState> = record<PitChannelState>({
  count: int(1, 0x10000),
  // Modes 2 and 3 read 0x10000 at the start of a period of 0x10000 (the bytes read 0, 0).
  latchedCount: int(0, 0x10000),
  countLatched: oneOf('none', 'lsb', 'msb', 'word'),
  statusLatched: bool,
  status: u8,
  readState: oneOf('lsb', 'msb', 'word-lsb', 'word-msb'),
  writeState: oneOf('lsb', 'msb', 'word-lsb', 'word-msb'),
  writeLatch: u8,
  rwMode: oneOf('lsb', 'msb', 'word'),
  mode: int(0, 5),
  bcd: bool,
  gate: bool,
  loadTime: guestTime,
  programmed: bool,
})

const STATE: Schema<PitState> = {
  version: version(1),
  channels: list(CHANNEL_STATE, 3, 3),
  speaker: int(0, 3),
  irqTimer: nullable(guestTime),
  irq: bool,
}

/** One counter; its public fields are exactly its state (checked below). */
class Channel implements Fields<PitChannelState> {
  count = 0x10000
  latchedCount = 0
  countLatched: 'none' | PitAccess = 'none'
  statusLatched = false
  status = 0
  readState: PitByte = 'lsb'
  writeState: PitByte = 'lsb'
  writeLatch = 0
  rwMode: PitAccess = 'lsb'
  mode = 0
  bcd = false
  gate: boolean
  loadTime = 0
  programmed = false

  constructor(gate: boolean) {
    this.gate = gate
  }

  save(): PitChannelState {
    const { count, latchedCount, countLatched, statusLatched, status, readState, writeState, writeLatch, rwMode, mode, bcd, gate, loadTime, programmed } = this
    return { count, latchedCount, countLatched, statusLatched, status, readState, writeState, writeLatch, rwMode, mode, bcd, gate, loadTime, programmed } satisfies PitChannelState
  }

  restore(s: PitChannelState): void {
    const { count, latchedCount, countLatched, statusLatched, status, readState, writeState, writeLatch, rwMode, mode, bcd, gate, loadTime, programmed, ...rest } = s
    noneLeft(rest)
    Object.assign(this, { count, latchedCount, countLatched, statusLatched, status, readState, writeState, writeLatch, rwMode, mode, bcd, gate, loadTime, programmed } satisfies Fields<PitChannelState>)
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

/** The channel's mutable fields are its state, no more, no less (rule 4 of device-state.ts). */
const CHANNEL_FIELDS_ARE_ITS_STATE: SameKeys<MutableDataKeys<Channel>, keyof Fields<PitChannelState>> = true
void CHANNEL_FIELDS_ARE_ITS_STATE

/** The 8254 with channel 0 on IRQ 0 and channel 2 behind port 0x61. */
export class Pit implements PioDevice, Saveable<PitState> {
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
    if (!this.channels[0].programmed) return
    this.irq.set(false)
    this.arm(1)
  }

  /** Arms channel 0's timer from its `first` edge (1: the first after the count was loaded). */
  private arm(first: number): void {
    const c = this.channels[0]
    const base = c.loadTime
    if (c.mode === 2 || c.mode === 3) {
      const period = c.count
      this.timer = this.timers.every(
        (n) => base + nanos(period * (n + first - 1)),
        () => this.irq.pulse(),
      )
    } else {
      this.timer = this.timers.at(base + nanos(c.count), () => {
        if (c.mode === 4 || c.mode === 5) this.irq.pulse()
        else this.irq.set(true)
      })
    }
  }

  /**
   * The edge of channel 0 (as {@link PitState.channels} has it) due at `at`: 1 for a
   * one-shot mode, the edge's number for a periodic one; undefined when none is due then.
   */
  private static edgeAt(c: PitChannelState, at: number): number | undefined {
    if (!c.programmed) return undefined
    if (c.mode !== 2 && c.mode !== 3) return at === c.loadTime + nanos(c.count) ? 1 : undefined
    // nanos() rounds up and clocks() down: clocks(nanos(k)) is k, so this finds the edge.
    const n = at >= c.loadTime ? clocks(at - c.loadTime) / c.count : 0
    return Number.isInteger(n) && n >= 1 && c.loadTime + nanos(c.count * n) === at ? n : undefined
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
          c.status = (c.out(this.now()) ? 0x80 : 0) | (ACCESS_CODE[c.rwMode] << 4) | (c.mode << 1) | (c.bcd ? 1 : 0)
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
    c.rwMode = ACCESS_BY_CODE[access] as PitAccess
    c.readState = FIRST_BYTE[c.rwMode]
    c.writeState = FIRST_BYTE[c.rwMode]
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
    if (c.countLatched !== 'none') return
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
    switch (c.countLatched) {
      case 'none':
        break
      case 'lsb':
        c.countLatched = 'none'
        return c.latchedCount & 0xff
      case 'msb':
        c.countLatched = 'none'
        return (c.latchedCount >> 8) & 0xff
      case 'word':
        c.countLatched = 'msb'
        return c.latchedCount & 0xff
    }
    const count = c.value(this.now())
    switch (c.readState) {
      case 'lsb':
        return count & 0xff
      case 'msb':
        return (count >> 8) & 0xff
      case 'word-lsb':
        c.readState = 'word-msb'
        return count & 0xff
      case 'word-msb':
        c.readState = 'word-lsb'
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
      case 'lsb':
        this.load(i, v)
        break
      case 'msb':
        this.load(i, v << 8)
        break
      case 'word-lsb':
        c.writeLatch = v
        c.writeState = 'word-msb'
        break
      case 'word-msb':
        this.load(i, c.writeLatch | (v << 8))
        c.writeState = 'word-lsb'
        break
    }
  }

  /** The channels, port 0x61 and channel 0's armed interrupt. */
  save(): PitState {
    return {
      version: 1,
      channels: this.channels.map((c) => c.save()),
      speaker: this.speaker,
      irqTimer: this.timer?.armed ? this.timer.at : null,
      irq: this.irq.asserted,
    } satisfies PitState
  }

  /**
   * Restores what {@link save} gave, channel 0's timer armed for the same guest time;
   * `EINVAL` (and nothing changed) for a bad state. IRQ 0 takes the saved level without
   * an edge: its receivers restore their own view of it.
   */
  restore(state: PitState): void {
    const { version: _, channels, speaker, irqTimer, irq, ...rest } = parseState('pit.restore: state', state, STATE)
    noneLeft(rest)
    const c0 = channels[0] as PitChannelState
    const first = irqTimer === null ? undefined : Pit.edgeAt(c0, irqTimer)
    if (irqTimer !== null && first === undefined) {
      throw new MshvError('EINVAL', `pit.restore: state.irqTimer ${describe(irqTimer)} is no edge of channel 0 (mode ${c0.mode}, count ${c0.count}, loaded at ${c0.loadTime})`)
    }
    this.channels.forEach((c, i) => c.restore(channels[i] as PitChannelState))
    this.speaker = speaker
    this.timer?.cancel()
    this.timer = undefined
    if (first !== undefined) this.arm(first)
    restoreLine(this.irq, irq)
  }
}
