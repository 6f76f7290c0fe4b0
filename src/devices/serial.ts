/**
 * A 16550A UART (National Semiconductor PC16550D datasheet; interrupt priorities and
 * the THR-empty rules as QEMU's `hw/char/serial.c` models them): transmit to a
 * callback, receive from {@link Serial16550.feed}, loopback, and its interrupt on the
 * line it is given (IRQ 4 for COM1), gated by MCR.OUT2 as PC boards wire it.
 * @module
 */
import { InputQueue } from './input-queue.js'
import { checkObject, invalid } from '../check.js'
import type { PioDevice } from '../bus.js'
import { restoreLine, type IrqLine } from '../platform/irq.js'
import { MshvError, describe, hex } from '../errors.js'
import { bool, bytes, fromHex, list, noneLeft, parseState, toHex, u16, u8, version, type Check, type Fields, type Saveable, type Schema } from '../snapshot/device-state.js'

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

/** The UART's state ({@link Serial16550.save}). */
export interface SerialState {
  version: 1
  /** The receive FIFO (at most 16 bytes), first to be read first. */
  rx: number[]
  /** Bytes waiting to enter the FIFO (typed ahead), as hex. */
  input: string
  ier: number
  lcr: number
  mcr: number
  fcr: number
  scr: number
  /** LSR's error bits (overrun), cleared by reading LSR. */
  lsrErrors: number
  /** The baud rate divisor latch. */
  divisor: number
  /** THR emptied since the guest last saw the THRE interrupt. */
  thrPending: boolean
}

/** A register whose bits outside `mask` are never set. */
function bits(mask: number): Check<number> {
  return (what, v) => {
    const x = u8(what, v)
    if ((x & ~mask) !== 0) throw invalid(what, `a byte within ${hex(mask)}`, x)
    return x
  }
}

/** A 16550-compatible UART occupying 8 ports. */
export class Serial16550 implements PioDevice, Saveable<SerialState> {
  /** Bytes waiting to enter the receive FIFO (what a terminal typed ahead). */
  private readonly input: InputQueue
  private readonly keep: number
  /** Every mutable register of the UART: its state but the typed-ahead input (rule 4 of device-state.ts). */
  private readonly r: Omit<Fields<SerialState>, 'input'> = {
    rx: [],
    ier: 0,
    lcr: 0x03,
    mcr: 0,
    fcr: 0,
    scr: 0,
    lsrErrors: 0,
    divisor: 12,
    thrPending: false,
  }
  /** What the guest transmitted, kept for {@link text}: the host's transcript, not the UART's state. */
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
    while (this.r.rx.length < RX_FIFO && this.input.size > 0) this.r.rx.push(this.input.shift())
  }

  /**
   * Whether the guest takes receive interrupts (IER bit 0): a driver that opened the
   * port, such as Linux's once a shell opened its tty. Typed-ahead input can wait for it.
   */
  get receiving(): boolean {
    return (this.r.ier & IER_RDI) !== 0
  }

  /** What the guest has written, as text: its last `keepOutput` bytes (all of it, up to that bound). */
  text(): string {
    return new TextDecoder().decode(Uint8Array.from(this.out.length > this.keep ? this.out.slice(this.out.length - this.keep) : this.out))
  }

  private lsr(): number {
    return LSR_THRE | LSR_TEMT | (this.r.rx.length > 0 ? LSR_DR : 0) | this.r.lsrErrors
  }

  /** Modem status: in loopback the outputs come back (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD). */
  private msr(): number {
    if ((this.r.mcr & MCR_LOOP) === 0) return 0xb0 // DCD, DSR, CTS
    const m = this.r.mcr
    return ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
  }

  /** The highest-priority pending interrupt (IIR bits 3..0). */
  private iir(): number {
    if ((this.r.ier & IER_RLSI) !== 0 && this.r.lsrErrors !== 0) return IIR_RLSI
    if ((this.r.ier & IER_RDI) !== 0 && this.r.rx.length > 0) return IIR_RDI
    if ((this.r.ier & IER_THRI) !== 0 && this.r.thrPending) return IIR_THRI
    // Modem-status interrupts (IER bit 3) never fire: the modem lines never change.
    return IIR_NONE
  }

  /** The line's level: an interrupt is pending and OUT2 lets it out. */
  private level(): boolean {
    return this.iir() !== IIR_NONE && (this.r.mcr & MCR_OUT2) !== 0 && (this.r.mcr & MCR_LOOP) === 0
  }

  /** Drives the line. */
  private update(): void {
    this.options.irq?.set(this.level())
  }

  ioRead(port: number): number {
    const dlab = (this.r.lcr & LCR_DLAB) !== 0
    switch (port - this.base) {
      case 0: {
        if (dlab) return this.r.divisor & 0xff
        const b = this.r.rx.shift() ?? 0
        this.refill()
        this.update()
        return b
      }
      case 1:
        return dlab ? this.r.divisor >> 8 : this.r.ier
      case 2: {
        const id = this.iir()
        // Reading IIR while THRE is the source clears it.
        if (id === IIR_THRI) {
          this.r.thrPending = false
          this.update()
        }
        return id | ((this.r.fcr & FCR_ENABLE) !== 0 ? IIR_FIFO : 0)
      }
      case 3:
        return this.r.lcr
      case 4:
        return this.r.mcr
      case 5: {
        const v = this.lsr()
        this.r.lsrErrors = 0 // reading LSR clears the error bits
        this.update()
        return v
      }
      case 6:
        return this.msr()
      default:
        return this.r.scr
    }
  }

  ioWrite(port: number, _size: number, value: number): void {
    const v = value & 0xff
    const dlab = (this.r.lcr & LCR_DLAB) !== 0
    switch (port - this.base) {
      case 0:
        if (dlab) this.r.divisor = (this.r.divisor & 0xff00) | v
        else this.transmit(v)
        break
      case 1:
        if (dlab) this.r.divisor = (this.r.divisor & 0xff) | (v << 8)
        else {
          // Enabling the THRE interrupt with THR empty makes it pending at once.
          if ((v & IER_THRI) !== 0 && (this.r.ier & IER_THRI) === 0) this.r.thrPending = true
          this.r.ier = v & 0x0f
          this.update()
        }
        break
      case 2:
        this.r.fcr = v & 0xc9
        if ((v & FCR_CLEAR_RX) !== 0) {
          this.r.rx.length = 0
          this.refill()
        }
        this.update()
        break
      case 3:
        this.r.lcr = v
        break
      case 4:
        this.r.mcr = v & 0x1f
        this.update()
        break
      case 7:
        this.r.scr = v
        break
      default:
        break
    }
  }

  /** A byte written to THR leaves at once; THR is empty again, and says so. */
  private transmit(v: number): void {
    if ((this.r.mcr & MCR_LOOP) !== 0) {
      if (this.r.rx.length < RX_FIFO) this.r.rx.push(v)
      else this.r.lsrErrors |= LSR_OE
    } else {
      if (this.keep > 0) {
        this.out.push(v)
        // Trimmed in halves, so a flood costs amortized O(1) per byte and stays bounded.
        if (this.out.length >= 2 * this.keep) this.out = this.out.slice(this.out.length - this.keep)
      }
      this.options.onByte?.(v)
    }
    this.r.thrPending = true
    this.update()
  }

  /** The registers, the receive FIFO and the typed-ahead input. */
  save(): SerialState {
    const r = this.r
    return {
      version: 1,
      rx: [...r.rx],
      input: toHex(this.input.peek()),
      ier: r.ier,
      lcr: r.lcr,
      mcr: r.mcr,
      fcr: r.fcr,
      scr: r.scr,
      lsrErrors: r.lsrErrors,
      divisor: r.divisor,
      thrPending: r.thrPending,
    } satisfies SerialState
  }

  /**
   * Restores what {@link save} gave; `EINVAL` (and nothing changed) for a bad state. The
   * interrupt line takes the level the registers say, without an edge: its receivers
   * restore their own view of it.
   */
  restore(state: SerialState): void {
    const schema: Schema<SerialState> = {
      version: version(1),
      rx: list(u8, 0, RX_FIFO),
      input: bytes(0, this.input.limit),
      ier: bits(0x0f),
      lcr: u8,
      mcr: bits(0x1f),
      fcr: bits(0xc9),
      scr: u8,
      lsrErrors: bits(LSR_OE),
      divisor: u16,
      thrPending: bool,
    }
    const { version: _, rx, input, ier, lcr, mcr, fcr, scr, lsrErrors, divisor, thrPending, ...rest } = parseState('serial.restore: state', state, schema)
    noneLeft(rest)
    if (input.length > 0 && rx.length < RX_FIFO) throw new MshvError('EINVAL', `serial.restore: state.input holds bytes while the receive FIFO has room (${rx.length} of ${RX_FIFO}): they would have entered it`)
    this.input.replace(fromHex(input))
    Object.assign(this.r, { rx, ier, lcr, mcr, fcr, scr, lsrErrors, divisor, thrPending } satisfies Omit<Fields<SerialState>, 'input'>)
    restoreLine(this.options.irq, this.level())
  }
}
