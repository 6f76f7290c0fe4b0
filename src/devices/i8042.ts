/**
 * A minimal i8042 keyboard controller: the status and command ports guests probe,
 * its self-test, the command byte, and the CPU reset line (command 0xFE, or the output
 * port's bit 0 cleared through command 0xD1), the way PC guests reboot (Linux's
 * `reboot=k`, arch/x86/kernel/reboot.c). No keyboard or mouse is attached.
 * @module
 */
import type { PioDevice } from '../bus.js'

/** The data and status/command ports. */
export const I8042_DATA = 0x60
export const I8042_COMMAND = 0x64

const STATUS_OBF = 0x01
const STATUS_SYS = 0x04
const STATUS_CMD = 0x08

/** The i8042 controller; `onReset` is called when the guest pulses the CPU reset line. */
export class I8042 implements PioDevice {
  private output: number[] = []
  private commandByte = 0x45 // translation, system flag, keyboard interrupt
  /** The command whose data byte the next write to port 0x60 is. */
  private awaiting: number | undefined
  private lastWasCommand = false
  /** How many times the guest asked for a reset. */
  resets = 0

  constructor(private readonly onReset: () => void = () => {}) {}

  ioRead(port: number): number {
    if (port === I8042_COMMAND) {
      return (this.output.length > 0 ? STATUS_OBF : 0) | STATUS_SYS | (this.lastWasCommand ? STATUS_CMD : 0)
    }
    return this.output.shift() ?? 0
  }

  ioWrite(port: number, _size: number, value: number): void {
    const v = value & 0xff
    if (port === I8042_COMMAND) {
      this.lastWasCommand = true
      this.command(v)
      return
    }
    this.lastWasCommand = false
    const cmd = this.awaiting
    this.awaiting = undefined
    if (cmd === 0x60) this.commandByte = v
    else if (cmd === 0xd1 && (v & 1) === 0) this.reset()
    // Bytes for the keyboard itself go nowhere: none is attached.
  }

  private command(v: number): void {
    switch (v) {
      case 0x20:
        this.output.push(this.commandByte)
        break
      case 0x60:
      case 0xd1:
        this.awaiting = v
        break
      case 0xaa: // controller self-test: passed
        this.output.push(0x55)
        break
      case 0xab: // keyboard interface test: no error
        this.output.push(0x00)
        break
      case 0xd0: // read output port: A20 on, not in reset
        this.output.push(0x03)
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
}
