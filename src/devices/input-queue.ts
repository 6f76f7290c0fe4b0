/**
 * Bytes a host hands a guest's device (a terminal's typing, a console's input) before
 * the guest takes them, bounded: what does not fit is refused and counted back to the
 * caller, who gives it again later (back-pressure, as Firecracker stops reading stdin
 * while its FIFO is full). The UART and virtio-console keep their input in one.
 * @module
 */
import { MshvError } from '../errors.js'

/** A bounded FIFO of bytes, kept as the chunks given (no copy per byte). */
export class InputQueue {
  private readonly chunks: Uint8Array[] = []
  /** Bytes of the first chunk already taken. */
  private at = 0
  private bytes = 0

  constructor(
    /** The most bytes it holds. */
    readonly limit: number,
  ) {}

  /** Bytes waiting. */
  get size(): number {
    return this.bytes
  }

  /** Queues as much of `data` as fits (a copy); returns how many bytes it took. */
  push(data: Uint8Array): number {
    const n = Math.min(data.length, this.limit - this.bytes)
    if (n <= 0) return 0
    this.chunks.push(data.slice(0, n))
    this.bytes += n
    return n
  }

  /** The next byte, taken (the queue must not be empty). */
  shift(): number {
    const chunk = this.chunks[0] as Uint8Array
    const b = chunk[this.at++] as number
    this.bytes--
    if (this.at === chunk.length) this.next()
    return b
  }

  /** Moves up to `into.length` bytes into `into`; returns how many. */
  take(into: Uint8Array): number {
    let done = 0
    while (done < into.length && this.bytes > 0) {
      const chunk = this.chunks[0] as Uint8Array
      const n = Math.min(chunk.length - this.at, into.length - done)
      into.set(chunk.subarray(this.at, this.at + n), done)
      done += n
      this.at += n
      this.bytes -= n
      if (this.at === chunk.length) this.next()
    }
    return done
  }

  /** A copy of the bytes waiting, in order, none taken (what its owner's state saves). */
  peek(): Uint8Array {
    const out = new Uint8Array(this.bytes)
    let at = 0
    this.chunks.forEach((c, i) => {
      const part = i === 0 ? c.subarray(this.at) : c
      out.set(part, at)
      at += part.length
    })
    return out
  }

  /** Holds exactly `data` (a copy; at most {@link limit} bytes): its owner's restore. */
  replace(data: Uint8Array): void {
    if (data.length > this.limit) throw new MshvError('EINVAL', `an input queue of ${this.limit} bytes cannot hold ${data.length}`)
    this.chunks.length = 0
    this.at = 0
    this.bytes = 0
    this.push(data)
  }

  private next(): void {
    this.chunks.shift()
    this.at = 0
  }
}
