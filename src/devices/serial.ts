/**
 * A 16550 UART: enough of the chip for guests that poll LSR and write THR, with
 * receive from a string or callback.
 * @module
 */
import type { PioDevice } from '../bus.js'

/** The conventional COM1 base port. */
export const COM1 = 0x3f8

const LSR_DR = 0x01
const LSR_THRE = 0x20
const LSR_TEMT = 0x40
const LCR_DLAB = 0x80

/** Options for {@link Serial16550}. */
export interface SerialOptions {
  /** Receives each byte the guest transmits. */
  onByte?: (byte: number) => void
  /** Bytes the guest will receive, in order. */
  input?: string | Uint8Array
}

/** A 16550-compatible UART occupying 8 ports. */
export class Serial16550 implements PioDevice {
  private readonly rx: number[] = []
  private ier = 0
  private lcr = 0x03
  private mcr = 0
  private scr = 0
  private divisor = 12
  private readonly out: number[] = []

  constructor(
    /** Base port (0x3f8 for COM1). */
    readonly base: number = COM1,
    private readonly options: SerialOptions = {},
  ) {
    if (options.input !== undefined) this.feed(options.input)
  }

  /** Queues bytes for the guest to read. */
  feed(data: string | Uint8Array): void {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data
    this.rx.push(...bytes)
  }

  /** Everything the guest has written, as text. */
  text(): string {
    return new TextDecoder().decode(Uint8Array.from(this.out))
  }

  ioRead(port: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0
    switch (port - this.base) {
      case 0:
        return dlab ? this.divisor & 0xff : (this.rx.shift() ?? 0)
      case 1:
        return dlab ? this.divisor >> 8 : this.ier
      case 2:
        return 0xc1 // FIFOs enabled, no interrupt pending
      case 3:
        return this.lcr
      case 4:
        return this.mcr
      case 5:
        return LSR_THRE | LSR_TEMT | (this.rx.length > 0 ? LSR_DR : 0)
      case 6:
        return 0xb0 // DCD, DSR, CTS
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
        else {
          this.out.push(v)
          this.options.onByte?.(v)
        }
        break
      case 1:
        if (dlab) this.divisor = (this.divisor & 0xff) | (v << 8)
        else this.ier = v & 0x0f
        break
      case 3:
        this.lcr = v
        break
      case 4:
        this.mcr = v & 0x1f
        break
      case 7:
        this.scr = v
        break
      default:
        break
    }
  }
}
