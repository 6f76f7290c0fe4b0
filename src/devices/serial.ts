/**
 * A 16550A UART (National Semiconductor PC16550D datasheet; interrupt priorities and
 * the THR-empty rules as QEMU's `hw/char/serial.c` models them): transmit to a
 * callback, receive from {@link Serial16550.feed}, loopback, and its interrupt on the
 * line it is given (IRQ 4 for COM1), gated by MCR.OUT2 as PC boards wire it.
 * @module
 */
import { InputQueue } from './input-queue.js'
import { checkObject } from '../check.js'
import type { PioDevice } from '../bus.js'
import type { IrqLine } from '../platform/irq.js'
import { MshvError, describe } from '../errors.js'

/** The conventional COM1 base port. */
export const COM1 = 0x3f8
/** COM1's ISA IRQ. */
export const COM1_IRQ = 4

const LSR_DR = 0x01
const LSR_OE = 0x02
const LSR_THRE = 0x20
const LSR_TEMT = 0x40
const LCR_DLAB = 0x80
const IER_RDI = 0x01
const IER_THRI = 0x02
const IER_RLSI = 0x04
const IIR_NONE = 0x01
const IIR_THRI = 0x02
const IIR_RDI = 0x04
const IIR_RLSI = 0x06
const IIR_FIFO = 0xc0
const FCR_ENABLE = 0x01
const FCR_CLEAR_RX = 0x02
const MCR_LOOP = 0x10
const MCR_OUT2 = 0x08
/** The receive FIFO's depth: bytes beyond it are lost (overrun). */
const RX_FIFO = 16

/** Options for {@link Serial16550}. */
export interface SerialOptions {
  /** Receives each byte the guest transmits. */
  onByte?: (byte: number) => void
  /** Bytes the guest will receive, in order. */
  input?: string | Uint8Array
  /** The interrupt line (COM1: ISA IRQ 4); without it the UART only polls. */
  irq?: IrqLine
  /**
   * How many of the last bytes the guest transmitted {@link Serial16550.text} keeps:
   * default 64 KiB without `onByte`, none with it (the callback has them).
   */
  keepOutput?: number
  /** Bytes of input {@link Serial16550.feed} holds before it takes no more (default 64 KiB). */
  inputLimit?: number
}

/** A 16550-compatible UART occupying 8 ports. */
export class Serial16550 implements PioDevice {
  /** Bytes waiting to enter the receive FIFO (what a terminal typed ahead). */
  private readonly input: InputQueue
  private readonly keep: number
  private readonly rx: number[] = []
  private ier = 0
  private lcr = 0x03
  private mcr = 0
  private fcr = 0
  private scr = 0
  private lsrErrors = 0
  private divisor = 12
  /** THR emptied since the guest last saw the THRE interrupt (QEMU's `thr_ipending`). */
  private thrPending = false
  private out: number[] = []

  constructor(
    /** Base port (0x3f8 for COM1). */
    readonly base: number = COM1,
    private readonly options: SerialOptions = {},
  ) {
    checkObject('Serial16550: options', options)
    const count = (what: string, v: unknown, dflt: number): number => {
      if (v === undefined) return dflt
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new MshvError('EINVAL', `Serial16550 ${what} must be a non-negative integer number of bytes, got ${describe(v)}`)
      return v
    }
    this.keep = count('keepOutput', options.keepOutput, options.onByte ? 0 : 64 * 1024)
    const inputLimit = count('inputLimit', options.inputLimit, 64 * 1024)
    // Input given up front is the script's own: all of it is kept.
    const initial = options.input === undefined ? undefined : typeof options.input === 'string' ? new TextEncoder().encode(options.input) : options.input
    this.input = new InputQueue(Math.max(inputLimit, initial?.length ?? 0))
    if (initial !== undefined) this.feed(initial)
  }

  /**
   * Queues bytes for the guest to read: they enter the 16-byte receive FIFO as the
   * guest drains it (as a terminal's flow control would keep them), and raise the
   * receive interrupt. Returns how many bytes were taken: fewer than given once
   * `inputLimit` bytes wait (back-pressure: give the rest later, as Firecracker stops
   * reading stdin while its FIFO is full).
   */
  feed(data: string | Uint8Array): number {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data
    if (!(bytes instanceof Uint8Array)) throw new MshvError('EINVAL', `feed takes bytes or a string, got ${describe(data)}`)
    const n = this.input.push(bytes)
    this.refill()
    this.update()
    return n
  }

  /** Bytes of input waiting for the guest (beyond its 16-byte FIFO). */
  get buffered(): number {
    return this.input.size
  }

  private refill(): void {
    while (this.rx.length < RX_FIFO && this.input.size > 0) this.rx.push(this.input.shift())
  }

  /**
   * Whether the guest takes receive interrupts (IER bit 0): a driver that opened the
   * port, such as Linux's once a shell opened its tty. Typed-ahead input can wait for it.
   */
  get receiving(): boolean {
    return (this.ier & IER_RDI) !== 0
  }

  /** What the guest has written, as text: its last `keepOutput` bytes (all of it, up to that bound). */
  text(): string {
    return new TextDecoder().decode(Uint8Array.from(this.out.length > this.keep ? this.out.slice(this.out.length - this.keep) : this.out))
  }

  private lsr(): number {
    return LSR_THRE | LSR_TEMT | (this.rx.length > 0 ? LSR_DR : 0) | this.lsrErrors
  }

  /** Modem status: in loopback the outputs come back (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD). */
  private msr(): number {
    if ((this.mcr & MCR_LOOP) === 0) return 0xb0 // DCD, DSR, CTS
    const m = this.mcr
    return ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
  }

  /** The highest-priority pending interrupt (IIR bits 3..0). */
  private iir(): number {
    if ((this.ier & IER_RLSI) !== 0 && this.lsrErrors !== 0) return IIR_RLSI
    if ((this.ier & IER_RDI) !== 0 && this.rx.length > 0) return IIR_RDI
    if ((this.ier & IER_THRI) !== 0 && this.thrPending) return IIR_THRI
    // Modem-status interrupts (IER bit 3) never fire: the modem lines never change.
    return IIR_NONE
  }

  /** Drives the line: an interrupt is pending and OUT2 lets it out. */
  private update(): void {
    this.options.irq?.set(this.iir() !== IIR_NONE && (this.mcr & MCR_OUT2) !== 0 && (this.mcr & MCR_LOOP) === 0)
  }

  ioRead(port: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0
    switch (port - this.base) {
      case 0: {
        if (dlab) return this.divisor & 0xff
        const b = this.rx.shift() ?? 0
        this.refill()
        this.update()
        return b
      }
      case 1:
        return dlab ? this.divisor >> 8 : this.ier
      case 2: {
        const id = this.iir()
        // Reading IIR while THRE is the source clears it.
        if (id === IIR_THRI) {
          this.thrPending = false
          this.update()
        }
        return id | ((this.fcr & FCR_ENABLE) !== 0 ? IIR_FIFO : 0)
      }
      case 3:
        return this.lcr
      case 4:
        return this.mcr
      case 5: {
        const v = this.lsr()
        this.lsrErrors = 0 // reading LSR clears the error bits
        this.update()
        return v
      }
      case 6:
        return this.msr()
      default:
        return this.scr
    }
  }

  ioWrite(port: number, _size: number, value: number): void {
    const v = value & 0xff
    const dlab = (this.lcr & LCR_DLAB) !== 0
    switch (port - this.base) {
      case 0:
        if (dlab) this.divisor = (this.divisor & 0xff00) | v
        else this.transmit(v)
        break
      case 1:
        if (dlab) this.divisor = (this.divisor & 0xff) | (v << 8)
        else {
          // Enabling the THRE interrupt with THR empty makes it pending at once.
          if ((v & IER_THRI) !== 0 && (this.ier & IER_THRI) === 0) this.thrPending = true
          this.ier = v & 0x0f
          this.update()
        }
        break
      case 2:
        this.fcr = v & 0xc9
        if ((v & FCR_CLEAR_RX) !== 0) {
          this.rx.length = 0
          this.refill()
        }
        this.update()
        break
      case 3:
        this.lcr = v
        break
      case 4:
        this.mcr = v & 0x1f
        this.update()
        break
      case 7:
        this.scr = v
        break
      default:
        break
    }
  }

  /** A byte written to THR leaves at once; THR is empty again, and says so. */
  private transmit(v: number): void {
    if ((this.mcr & MCR_LOOP) !== 0) {
      if (this.rx.length < RX_FIFO) this.rx.push(v)
      else this.lsrErrors |= LSR_OE
    } else {
      if (this.keep > 0) {
        this.out.push(v)
        // Trimmed in halves, so a flood costs amortized O(1) per byte and stays bounded.
        if (this.out.length >= 2 * this.keep) this.out = this.out.slice(this.out.length - this.keep)
      }
      this.options.onByte?.(v)
    }
    this.thrPending = true
    this.update()
  }
}
