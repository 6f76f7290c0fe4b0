/**
 * The ACPI fixed hardware a guest powers off and resets through (ACPI 6.4, 4.8): the
 * PM1a event block (status and enable), the PM1a control block (SCI_EN reads 1: the
 * machine is always in ACPI mode; SLP_TYP + SLP_EN enter a sleep state: S5 is
 * poweroff), the 3.579545 MHz PM timer on guest time, and the reset register at 0xCF9
 * (as on PIIX/ICH chipsets; QEMU's `pc` machine answers 0xCF9 the same way).
 * @module
 */
import { checkNumber } from '../check.js'
import { MshvError, hex } from '../errors.js'
import type { PioDevice } from '../bus.js'
import { noneLeft, parseState, u16, version, type Fields, type Saveable, type Schema } from '../snapshot/device-state.js'

/** The ports, as the FADT gives them (`buildAcpiTables`). */
export const PM1A_EVT = 0x600
export const PM1A_CNT = 0x604
export const PM_TMR = 0x608
export const RESET_PORT = 0xcf9
/** What the FADT tells the guest to write to the reset register. */
export const RESET_VALUE = 0x06
/** The SCI's ISA IRQ (the FADT's SCI_INT, GSI 9 in the MADT). */
export const SCI_IRQ = 9
/** The SLP_TYP of S5 in the DSDT's `_S5` package. */
export const SLP_TYP_S5 = 5

const PM_TIMER_HZ = 3_579_545
const SCI_EN = 1 << 0
const SLP_EN = 1 << 13

/**
 * The PM registers the guest wrote ({@link AcpiPm.save}). The PM timer is guest time,
 * the VM's clock: nothing of it is the device's.
 */
export interface AcpiPmState {
  version: 1
  /** PM1a_STS (write 1 to clear). */
  status: number
  /** PM1a_EN. */
  enable: number
  /** PM1a_CNT, SCI_EN always set, SLP_EN never held. */
  control: number
}

const STATE: Schema<AcpiPmState> = {
  version: version(1),
  status: u16,
  enable: u16,
  control: (what: string, v: unknown) => {
    const c = u16(what, v)
    if ((c & SCI_EN) === 0 || (c & SLP_EN) !== 0) throw new MshvError('EINVAL', `${what} must have SCI_EN set and SLP_EN clear, got ${hex(c)}`)
    return c
  },
}

/** The ACPI PM registers and the reset register; `onPowerOff`/`onReset` hear the guest. */
export class AcpiPm implements PioDevice, Saveable<AcpiPmState> {
  private readonly r: Fields<AcpiPmState> = { status: 0, enable: 0, control: SCI_EN }

  constructor(
    /** Guest time now (ns): the PM timer counts it. */
    private readonly now: () => number,
    private readonly onPowerOff: () => void,
    private readonly onReset: () => void,
  ) {}

  /** The PM timer's 32-bit count at guest time `ns`. */
  timer(ns = this.now()): number {
    checkNumber('acpiPm.timer: ns', ns, 0, Number.MAX_SAFE_INTEGER)
    const whole = Math.floor(ns / 1e9)
    return (whole * PM_TIMER_HZ + Math.floor(((ns % 1e9) * PM_TIMER_HZ) / 1e9)) >>> 0
  }

  ioRead(port: number, size: number): number {
    switch (port) {
      case PM1A_EVT:
        return size === 4 ? this.r.status | (this.r.enable << 16) : this.r.status
      case PM1A_EVT + 2:
        return this.r.enable
      case PM1A_CNT:
        return this.r.control
      case PM_TMR:
        return this.timer()
      default:
        return 0
    }
  }

  ioWrite(port: number, size: number, value: number): void {
    switch (port) {
      case PM1A_EVT:
        this.r.status &= ~(value & 0xffff) // write 1 to clear
        if (size === 4) this.r.enable = (value >>> 16) & 0xffff
        break
      case PM1A_EVT + 2:
        this.r.enable = value & 0xffff
        break
      case PM1A_CNT:
        this.r.control = (value & ~SLP_EN & 0xffff) | SCI_EN
        if ((value & SLP_EN) !== 0 && ((value >> 10) & 7) === SLP_TYP_S5) this.onPowerOff()
        break
      case RESET_PORT:
        // Bit 2 starts the reset (PIIX4 datasheet, "Reset Control Register").
        if ((value & 0x04) !== 0) this.onReset()
        break
      default:
        break
    }
  }

  /** The registers' state. */
  save(): AcpiPmState {
    return { version: 1, ...this.r } satisfies AcpiPmState
  }

  /** Restores what {@link save} gave; `EINVAL` (and nothing changed) for a bad state. */
  restore(state: AcpiPmState): void {
    const { version: _, status, enable, control, ...rest } = parseState('acpiPm.restore: state', state, STATE)
    noneLeft(rest)
    Object.assign(this.r, { status, enable, control } satisfies Fields<AcpiPmState>)
  }
}
