/**
 * Interrupt lines: a device raises and lowers the line it was given, never knowing
 * which controllers are behind it (on a PC, ISA IRQ n reaches both the 8259's pin n
 * and an I/O APIC pin, as QEMU's `gsi_handler` wires them).
 * @module
 */
import { MshvError, describe } from '../errors.js'

/** The line a device drives. */
export interface IrqLine {
  /** Drives the line: a level-triggered input follows it, an edge-triggered one fires on each rising edge. */
  set(asserted: boolean): void
  /** One edge (assert, then deassert): an event of an edge-triggered device. */
  pulse(): void
  /** Whether the line is asserted now. */
  readonly asserted: boolean
  /**
   * Sets the level the line holds without telling its receivers: a restored device's
   * output, whose receivers (the 8259, the I/O APIC) restore their own view of the line.
   * A line without it is driven ({@link restoreLine}).
   */
  restoreLevel?(asserted: boolean): void
}

/** Puts `line` at `level` as a device's restore does: quietly where the line can, else by driving it. */
export function restoreLine(line: IrqLine | undefined, level: boolean): void {
  if (line === undefined) return
  if (typeof line !== 'object' || line === null || typeof line.set !== 'function') throw new MshvError('EINVAL', `restoreLine: line must be an IrqLine (with set()), got ${describe(line)}`)
  if (typeof level !== 'boolean') throw new MshvError('EINVAL', `restoreLine: level must be a boolean, got ${describe(level)}`)
  if (typeof line.restoreLevel === 'function') line.restoreLevel(level)
  else line.set(level)
}

/** An interrupt controller's inputs. */
export interface IrqSink {
  /** Input `pin` is now asserted or not. */
  setIrq(pin: number, asserted: boolean): void
}

/** One controller input a line reaches. */
export interface IrqTarget {
  readonly sink: IrqSink
  readonly pin: number
}

/** A line wired to the inputs `targets` (one or several controllers). */
export class WiredIrq implements IrqLine {
  private level = false

  constructor(
    private readonly targets: readonly IrqTarget[],
    /** What the line is called in errors and listings (`IRQ 4`). */
    readonly name = 'IRQ',
  ) {
    if (!Array.isArray(targets) || targets.length > 64) throw new MshvError('EINVAL', `${describe(name)}: targets must be an array of at most 64 { sink, pin }, got ${describe(targets)}`)
    if (typeof name !== 'string') throw new MshvError('EINVAL', `WiredIrq: name must be a string, got ${describe(name)}`)
    for (const t of targets) {
      if (typeof t?.sink?.setIrq !== 'function' || !Number.isInteger(t.pin) || t.pin < 0) {
        throw new MshvError('EINVAL', `${name}: each target needs a sink with setIrq() and a pin number, got ${describe(t)}`)
      }
    }
  }

  get asserted(): boolean {
    return this.level
  }

  set(asserted: boolean): void {
    const level = Boolean(asserted)
    if (level === this.level) return
    this.level = level
    for (const t of this.targets) t.sink.setIrq(t.pin, level)
  }

  pulse(): void {
    this.set(false)
    this.set(true)
    this.set(false)
  }

  restoreLevel(asserted: boolean): void {
    this.level = Boolean(asserted)
  }
}
