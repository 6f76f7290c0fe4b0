/**
 * A minimal i8042 keyboard controller: the status and command ports guests probe,
 * its self-test, the command byte, and the CPU reset line (command 0xFE, or the output
 * port's bit 0 cleared through command 0xD1), the way PC guests reboot (Linux's
 * `reboot=k`, arch/x86/kernel/reboot.c). No keyboard or mouse is attached.
 * @module
 */
import type { PioDevice } from '../bus.js'
import { bool, list, noneLeft, oneOf, parseState, u8, version, type Fields, type Saveable, type Schema } from '../snapshot/device-state.js'

/** The data and status/command ports. */
export const I8042_DATA = 0x60
export const I8042_COMMAND = 0x64

const STATUS_OBF = 0x01
const STATUS_SYS = 0x04
const STATUS_CMD = 0x08
/**
 * Bytes the output buffer holds: a guest that asks for answers and never reads them
 * loses the later ones (the chip has one byte; QEMU's PS/2 queue holds 16).
 */
const OUTPUT_LIMIT = 16

/** What the next write to the data port is: a byte for the keyboard, or the data of command 0x60 or 0xD1. */
export type I8042Awaiting = 'none' | 'command-byte' | 'output-port'

/** The controller's state ({@link I8042.save}). */
export interface I8042State {
  version: 1
  /** Bytes waiting in the output buffer, first to be read first (at most 16). */
  output: number[]
  /** The command byte (0x20 reads it, 0x60 writes it). */
  commandByte: number
  /** What the next data-port write is for. */
  awaiting: I8042Awaiting
  /** Whether the last write was to the command port (status bit 3). */
  lastWasCommand: boolean
}

const STATE: Schema<I8042State> = {
  version: version(1),
  output: list(u8, 0, OUTPUT_LIMIT),
  commandByte: u8,
  awaiting: oneOf('none', 'command-byte', 'output-port'),
  lastWasCommand: bool,
}

/** The i8042 controller; `onReset` is called when the guest pulses the CPU reset line. */
export class I8042 implements PioDevice, Saveable<I8042State> {
  /** Every mutable field of the controller: the state is these (rule 4 of device-state.ts). */
  private readonly r: Fields<I8042State> = {
    output: [],
    commandByte: 0x45, // translation, system flag, keyboard interrupt
    awaiting: 'none',
    lastWasCommand: false,
  }
  /** How many times the guest asked for a reset (a counter, not state). */
  resets = 0

  constructor(private readonly onReset: () => void = () => {}) {}

  ioRead(port: number): number {
    const r = this.r
    if (port === I8042_COMMAND) {
      return (r.output.length > 0 ? STATUS_OBF : 0) | STATUS_SYS | (r.lastWasCommand ? STATUS_CMD : 0)
    }
    return r.output.shift() ?? 0
  }

  ioWrite(port: number, _size: number, value: number): void {
    const v = value & 0xff
    const r = this.r
    if (port === I8042_COMMAND) {
      r.lastWasCommand = true
      this.command(v)
      return
    }
    r.lastWasCommand = false
    const awaiting = r.awaiting
    r.awaiting = 'none'
    if (awaiting === 'command-byte') r.commandByte = v
    else if (awaiting === 'output-port' && (v & 1) === 0) this.reset()
    // Bytes for the keyboard itself go nowhere: none is attached.
  }

  private answer(v: number): void {
    if (this.r.output.length < OUTPUT_LIMIT) this.r.output.push(v)
  }

  private command(v: number): void {
    switch (v) {
      case 0x20:
        this.answer(this.r.commandByte)
        break
      case 0x60:
        this.r.awaiting = 'command-byte'
        break
      case 0xd1:
        this.r.awaiting = 'output-port'
        break
      case 0xaa: // controller self-test: passed
        this.answer(0x55)
        break
      case 0xab: // keyboard interface test: no error
        this.answer(0x00)
        break
      case 0xd0: // read output port: A20 on, not in reset
        this.answer(0x03)
        break
      case 0xfe:
        this.reset()
        break
      default:
        // 0xAD/0xAE/0xA7/0xA8 (disable/enable ports) and pulses of other lines: nothing to do.
        if (v >= 0xf0 && (v & 1) === 0) this.reset() // pulse output bits: bit 0 is reset
        break
    }
  }

  private reset(): void {
    this.resets++
    this.onReset()
  }

  /** The controller's state. */
  save(): I8042State {
    const r = this.r
    return { version: 1, output: [...r.output], commandByte: r.commandByte, awaiting: r.awaiting, lastWasCommand: r.lastWasCommand } satisfies I8042State
  }

  /** Restores what {@link save} gave; `EINVAL` (and nothing changed) for a bad state. */
  restore(state: I8042State): void {
    const { version: _, output, commandByte, awaiting, lastWasCommand, ...rest } = parseState('i8042.restore: state', state, STATE)
    noneLeft(rest)
    Object.assign(this.r, { output, commandByte, awaiting, lastWasCommand } satisfies Fields<I8042State>)
  }
}
