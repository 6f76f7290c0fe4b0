/**
 * The PC's CMOS and real-time clock (Motorola MC146818A datasheet; the register
 * behaviour QEMU's `hw/rtc/mc146818rtc.c` models): index port 0x70 (bit 7 masks NMI),
 * data port 0x71, the wall clock in BCD or binary and 12- or 24-hour form, and the
 * periodic, alarm and update-ended interrupts on IRQ 8. The clock runs on guest time
 * from a start the VMM gives, so a deterministic VM reads the same dates every run.
 * @module
 */
import { checkFunction, checkInstance, checkInteger, checkObject } from '../check.js'
import type { PioDevice } from '../bus.js'
import { GuestTimers, type GuestTimer } from '../platform/timers.js'
import { restoreLine, type IrqLine } from '../platform/irq.js'
import { bool, bytes, fromHex, guestTime, int, noneLeft, nullable, parseState, toHex, version, type Saveable, type Schema } from '../snapshot/device-state.js'
import { MshvError, describe } from '../errors.js'

/** The index and data ports. */
export const CMOS_PORT = 0x70

const SECONDS = 0
const SECONDS_ALARM = 1
const MINUTES = 2
const MINUTES_ALARM = 3
const HOURS = 4
const HOURS_ALARM = 5
const DAY_OF_WEEK = 6
const DAY_OF_MONTH = 7
const MONTH = 8
const YEAR = 9
const REG_A = 10
const REG_B = 11
const REG_C = 12
const REG_D = 13
/** The century byte (ACPI's FADT names it; 0x32 on PCs). */
const CENTURY = 0x32

const A_UIP = 0x80
const B_SET = 0x80
const B_PIE = 0x40
const B_AIE = 0x20
const B_UIE = 0x10
const B_DM_BINARY = 0x04
const B_24H = 0x02
const C_IRQF = 0x80
const C_PF = 0x40
const C_AF = 0x20
const C_UF = 0x10
const D_VRT = 0x80

const NS = 1_000_000_000
/**
 * UIP is set this long before each once-a-second update (MC146818A datasheet: UIP
 * goes high t_BUC = 244 us before the update cycle; QEMU's `update_in_progress` holds it
 * for the last 8 / 32768 s of each second).
 */
const UIP_NS = 244_000
/** Register A's divider bits (DV2..DV0, 6:4): 000, 001 and 010 run the time base; 11x hold it in reset. */
const A_DV = 0x70
const A_DV_RUNNING_MAX = 0x20

/** Options for {@link Rtc}. */
export interface RtcOptions {
  /** The wall-clock time at guest time 0 (default: the host's time when the device is made). */
  start?: Date
  /** CMOS bytes to preset (index: value), e.g. memory sizes a firmware reads. */
  cmos?: Readonly<Record<number, number>>
}

/** The RTC's state ({@link Rtc.save}): CMOS, the clock's anchor and the armed timers. */
export interface RtcState {
  version: 1
  /** The 128 CMOS bytes, registers A-D among them, as hex (the time registers are computed from the clock). */
  cmos: string
  /** The register the index port selected (0..127). */
  index: number
  /** Whether the last index write set bit 7 (NMI disabled). */
  nmiMasked: boolean
  /** The clock: at guest time `setAt` (ns) it read `setTo` (ms since the epoch). */
  setAt: number
  setTo: number
  /** When the next periodic interrupt is due (guest ns), or null when none is armed. */
  periodicTimer: number | null
  /** When the current second ends (guest ns): the update-ended and alarm check. */
  updateTimer: number
}

/** The range of a JavaScript Date (ms from the epoch). */
const DATE_RANGE = 8.64e15

const STATE: Schema<RtcState> = {
  version: version(1),
  cmos: (what, v) => {
    const hex = bytes(128, 128)(what, v)
    if ((fromHex(hex)[REG_A] ?? 0) & A_UIP) throw new MshvError('EINVAL', `${what}: register A's UIP bit is computed, not stored, got ${describe(hex.slice(2 * REG_A, 2 * REG_A + 2))}`)
    return hex
  },
  index: int(0, 0x7f),
  nmiMasked: bool,
  setAt: guestTime,
  setTo: int(-DATE_RANGE, DATE_RANGE),
  periodicTimer: nullable(guestTime),
  updateTimer: guestTime,
}

/** The MC146818 RTC and 128 bytes of CMOS. */
export class Rtc implements PioDevice, Saveable<RtcState> {
  private readonly cmos = new Uint8Array(128)
  private index = 0
  /** Whether the last index write set bit 7 (NMI disabled). */
  nmiMasked = false
  /** The wall-clock time at guest time 0 (ms since the epoch). */
  private readonly startMs: number
  /** Guest time (ns) at which the clock was last set by the guest, and the time it was set to (ms). */
  private setAt = 0
  private setTo: number
  private periodic: GuestTimer | undefined
  private update: GuestTimer | undefined

  constructor(
    private readonly timers: GuestTimers,
    /** IRQ 8. */
    private readonly irq: IrqLine,
    options: RtcOptions = {},
  ) {
    checkInstance('Rtc: timers', timers, GuestTimers)
    checkFunction('Rtc: irq.set', checkObject<IrqLine>('Rtc: irq', irq).set)
    checkObject('Rtc: options', options)
    // The host's time to the whole second: each second then ends at a whole second of
    // guest time, so a deterministic VM's update interrupts come at the same instants.
    const start = options.start ?? new Date(Math.floor(Date.now() / 1000) * 1000)
    if (!(start instanceof Date) || Number.isNaN(start.getTime())) throw new MshvError('EINVAL', `rtc start must be a valid Date, got ${describe(start)}`)
    this.startMs = start.getTime()
    this.setTo = this.startMs
    this.setAt = 0
    this.cmos[REG_A] = 0x26 // 32.768 kHz base, 1024 Hz rate
    this.cmos[REG_B] = B_24H
    this.cmos[REG_D] = D_VRT
    for (const [k, v] of Object.entries(options.cmos ?? {})) {
      const i = Number(k)
      if (!Number.isInteger(i) || i < 14 || i > 127 || !Number.isInteger(v) || v < 0 || v > 255) {
        throw new MshvError('EINVAL', `rtc cmos presets must map indexes 14..127 to bytes, got ${describe(k)}: ${describe(v)}`)
      }
      this.cmos[i] = v
    }
    this.scheduleUpdate()
  }

  private now(): number {
    return this.timers.now()
  }

  /** The wall-clock time now (ms since the epoch), as the guest's clock has it. */
  time(): number {
    return this.setTo + Math.floor((this.now() - this.setAt) / 1_000_000)
  }

  /**
   * Whether register A's UIP reads 1: in the last {@link UIP_NS} of each second of the
   * clock, while the divider runs and SET does not hold the clock (MC146818A datasheet,
   * register A bit 7 and register B's SET). The position in the second is the guest
   * clock's to the nanosecond (the ms of {@link time} never come within 244 us of the
   * second's end), so a deterministic VM sees UIP at the same instants every run.
   */
  private updateInProgress(): boolean {
    if (((this.cmos[REG_B] ?? 0) & B_SET) !== 0 || ((this.cmos[REG_A] ?? 0) & A_DV) > A_DV_RUNNING_MAX) return false
    const mod = (v: number, m: number): number => ((v % m) + m) % m
    const ns = mod(mod(this.setTo, 1000) * 1_000_000 + mod(this.now() - this.setAt, NS), NS)
    return ns >= NS - UIP_NS
  }

  private bcd(): boolean {
    return ((this.cmos[REG_B] ?? 0) & B_DM_BINARY) === 0
  }

  private encode(v: number): number {
    return this.bcd() ? ((v / 10) << 4) | v % 10 : v
  }

  private decode(v: number): number {
    return this.bcd() ? (v >> 4) * 10 + (v & 0xf) : v
  }

  private encodeHour(h: number): number {
    if (((this.cmos[REG_B] ?? 0) & B_24H) !== 0) return this.encode(h)
    const pm = h >= 12 ? 0x80 : 0
    return this.encode(h % 12 === 0 ? 12 : h % 12) | pm
  }

  private decodeHour(v: number): number {
    if (((this.cmos[REG_B] ?? 0) & B_24H) !== 0) return this.decode(v)
    const h = this.decode(v & 0x7f) % 12
    return (v & 0x80) !== 0 ? h + 12 : h
  }

  /** The time registers' value now. */
  private clockRegister(i: number): number {
    const d = new Date(this.time())
    switch (i) {
      case SECONDS:
        return this.encode(d.getUTCSeconds())
      case MINUTES:
        return this.encode(d.getUTCMinutes())
      case HOURS:
        return this.encodeHour(d.getUTCHours())
      case DAY_OF_WEEK:
        return this.encode(d.getUTCDay() + 1)
      case DAY_OF_MONTH:
        return this.encode(d.getUTCDate())
      case MONTH:
        return this.encode(d.getUTCMonth() + 1)
      case YEAR:
        return this.encode(d.getUTCFullYear() % 100)
      default:
        return this.encode(Math.floor(d.getUTCFullYear() / 100))
    }
  }

  /** The guest wrote a time register (under SET): the clock takes the new value. */
  private setClockRegister(i: number, v: number): void {
    const d = new Date(this.time())
    const n = i === HOURS ? this.decodeHour(v) : this.decode(v)
    switch (i) {
      case SECONDS:
        d.setUTCSeconds(n)
        break
      case MINUTES:
        d.setUTCMinutes(n)
        break
      case HOURS:
        d.setUTCHours(n)
        break
      case DAY_OF_MONTH:
        d.setUTCDate(n)
        break
      case MONTH:
        d.setUTCMonth(n - 1)
        break
      case YEAR:
        d.setUTCFullYear(Math.floor(d.getUTCFullYear() / 100) * 100 + n)
        break
      case CENTURY:
        d.setUTCFullYear(n * 100 + (d.getUTCFullYear() % 100))
        break
      default:
        return
    }
    this.setTo = d.getTime()
    this.setAt = this.now()
  }

  private raise(flag: number): void {
    const c = (this.cmos[REG_C] ?? 0) | flag
    const enabled = ((this.cmos[REG_B] ?? 0) & (B_PIE | B_AIE | B_UIE) & (c & (C_PF | C_AF | C_UF))) !== 0
    this.cmos[REG_C] = enabled ? c | C_IRQF : c
    // IRQ 8 follows IRQF (an active-low level on real boards: raised until C is read).
    if (enabled) this.irq.set(true)
  }

  /** The periodic interrupt's period (ns) from register A (RS3..RS0): 32768 >> (rate - 1) Hz; undefined for none. */
  private period(): number | undefined {
    const rate = (this.cmos[REG_A] ?? 0) & 0xf
    if (rate === 0) return undefined
    const shift = rate <= 2 ? rate + 7 : rate - 1
    return Math.round((NS * (1 << shift)) / 32768)
  }

  private schedulePeriodic(): void {
    this.periodic?.cancel()
    this.periodic = undefined
    const period = this.period()
    // The flag is set whether or not PIE lets it interrupt; it needs a timer only when
    // the guest asked for interrupts (a poller reads C and sees PF from the schedule).
    if (period !== undefined && ((this.cmos[REG_B] ?? 0) & B_PIE) !== 0) this.armPeriodic(this.now() + period, period)
  }

  /** Arms the periodic interrupt's series from its edge at `first` (guest ns). */
  private armPeriodic(first: number, period: number): void {
    this.periodic = this.timers.every(
      (n) => first + period * (n - 1),
      () => this.raise(C_PF),
    )
  }

  /** Each second's end: the update-ended flag, and the alarm when it matches. */
  private scheduleUpdate(): void {
    const ms = this.time()
    this.armUpdate(this.now() + (1000 - (ms % 1000)) * 1_000_000)
  }

  /** Arms the end of the current second, due at `at` (guest ns). */
  private armUpdate(at: number): void {
    this.update?.cancel()
    this.update = this.timers.at(at, () => {
      if (((this.cmos[REG_B] ?? 0) & B_SET) === 0) {
        this.raise(C_UF)
        if (this.alarmMatches()) this.raise(C_AF)
      }
      this.scheduleUpdate()
    })
  }

  private alarmMatches(): boolean {
    // An alarm byte with its top two bits set matches any value ("don't care").
    const match = (alarm: number, now: number): boolean => (alarm & 0xc0) === 0xc0 || alarm === now
    return (
      match(this.cmos[SECONDS_ALARM] ?? 0, this.clockRegister(SECONDS)) &&
      match(this.cmos[MINUTES_ALARM] ?? 0, this.clockRegister(MINUTES)) &&
      match(this.cmos[HOURS_ALARM] ?? 0, this.clockRegister(HOURS))
    )
  }

  /** CMOS byte `i` as the guest reads it (reading register C clears it). */
  read(i: number): number {
    checkInteger('rtc.read: register', i, 0, 0x7f)
    return this.readRegister(i & 0x7f)
  }

  private readRegister(i: number): number {
    switch (i) {
      case SECONDS:
      case MINUTES:
      case HOURS:
      case DAY_OF_WEEK:
      case DAY_OF_MONTH:
      case MONTH:
      case YEAR:
      case CENTURY:
        return this.clockRegister(i)
      case REG_A:
        return ((this.cmos[REG_A] ?? 0) & ~A_UIP) | (this.updateInProgress() ? A_UIP : 0)
      case REG_C: {
        // Reading C clears it and lowers IRQ 8.
        const c = this.cmos[REG_C] ?? 0
        this.cmos[REG_C] = 0
        this.irq.set(false)
        return c
      }
      default:
        return this.cmos[i] ?? 0
    }
  }

  ioRead(port: number): number {
    if (port === CMOS_PORT) return 0xff
    return this.readRegister(this.index)
  }

  ioWrite(port: number, _size: number, value: number): void {
    const v = value & 0xff
    if (port === CMOS_PORT) {
      this.index = v & 0x7f
      this.nmiMasked = (v & 0x80) !== 0
      return
    }
    const i = this.index
    switch (i) {
      case SECONDS:
      case MINUTES:
      case HOURS:
      case DAY_OF_MONTH:
      case MONTH:
      case YEAR:
      case CENTURY:
        this.setClockRegister(i, v)
        this.scheduleUpdate()
        break
      case DAY_OF_WEEK:
        break
      case REG_A:
        this.cmos[REG_A] = v & 0x7f
        this.schedulePeriodic()
        break
      case REG_B:
        this.cmos[REG_B] = v
        this.schedulePeriodic()
        break
      case REG_C:
      case REG_D:
        break // read-only
      default:
        this.cmos[i] = v
        break
    }
  }

  /** CMOS, the clock and the armed timers. */
  save(): RtcState {
    return {
      version: 1,
      cmos: toHex(this.cmos),
      index: this.index,
      nmiMasked: this.nmiMasked,
      setAt: this.setAt,
      setTo: this.setTo,
      periodicTimer: this.periodic?.armed ? this.periodic.at : null,
      updateTimer: this.update?.armed ? this.update.at : this.now(),
    } satisfies RtcState
  }

  /**
   * Restores what {@link save} gave, its timers armed for the same guest times; `EINVAL`
   * (and nothing changed) for a bad state. IRQ 8 takes the level register C's IRQF says,
   * without an edge: its receivers restore their own view of it.
   */
  restore(state: RtcState): void {
    const { version: _, cmos, index, nmiMasked, setAt, setTo, periodicTimer, updateTimer, ...rest } = parseState('rtc.restore: state', state, STATE)
    noneLeft(rest)
    const data = fromHex(cmos)
    const rate = (data[REG_A] ?? 0) & 0xf
    if (periodicTimer !== null && (rate === 0 || ((data[REG_B] ?? 0) & B_PIE) === 0)) {
      throw new MshvError('EINVAL', `rtc.restore: state.periodicTimer is armed (${periodicTimer}) but register A sets no rate or register B no PIE`)
    }
    this.cmos.set(data)
    this.index = index
    this.nmiMasked = nmiMasked
    this.setAt = setAt
    this.setTo = setTo
    this.periodic?.cancel()
    this.periodic = undefined
    if (periodicTimer !== null) this.armPeriodic(periodicTimer, this.period() as number)
    this.armUpdate(updateTimer)
    restoreLine(this.irq, ((this.cmos[REG_C] ?? 0) & C_IRQF) !== 0)
  }
}
