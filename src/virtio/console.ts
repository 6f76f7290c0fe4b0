/**
 * virtio-console (VIRTIO 1.2, 5.3) with one port, no multiport: receiveq0 carries bytes
 * to the guest, transmitq0 bytes from it; Linux makes it `hvc0`. Input waits in a
 * bounded buffer until the driver gives receive buffers (Firecracker bounds its serial
 * input the same way); output goes to `onData`. VIRTIO_CONSOLE_F_EMERG_WRITE lets the
 * driver write a byte through configuration space before the queues work (5.3.4).
 * @module
 */
import { InputQueue } from '../devices/input-queue.js'
import { checkObject } from '../check.js'
import { bytes, fromHex, noneLeft, parseState, toHex, version, type Saveable } from '../snapshot/device-state.js'
import { MshvError, describe } from '../errors.js'
import { VIRTIO_ID_CONSOLE, feature, readConfigSpace, type VirtioContext, type VirtioDevice } from './device.js'
import type { Virtqueue } from './queue.js'

const VIRTIO_CONSOLE_F_EMERG_WRITE = 2n
const RECEIVEQ = 0
/** Configuration space: cols, rows, max_nr_ports, emerg_wr (5.3.4). */
const CONFIG_SIZE = 12
const EMERG_WR = 8
/** 80x25, one port; emerg_wr reads as zero. */
const CONFIG = new DataView(new ArrayBuffer(CONFIG_SIZE))
CONFIG.setUint16(0, 80, true)
CONFIG.setUint16(2, 25, true)
CONFIG.setUint32(4, 1, true)

/** Options for {@link VirtioConsole}. */
export interface VirtioConsoleOptions {
  /** Receives what the guest writes to the console. */
  onData?: (bytes: Uint8Array) => void
  /** Bytes of input kept while the guest reads none (default 64 KiB); {@link VirtioConsole.write} takes no more. */
  inputLimit?: number
}

/** virtio-console's own state: the input waiting for the guest's receive buffers. */
export type VirtioConsoleState = {
  version: 1
  /** Bytes written to the console and not yet delivered, as hex. */
  input: string
}

/** A console the guest uses as `hvc0`. */
export class VirtioConsole implements VirtioDevice, Saveable<VirtioConsoleState> {
  readonly type = VIRTIO_ID_CONSOLE
  readonly name = 'console'
  readonly queueSizes = [64, 64]
  readonly features = feature(VIRTIO_CONSOLE_F_EMERG_WRITE)
  readonly configSize = CONFIG_SIZE
  private readonly onData: ((bytes: Uint8Array) => void) | undefined
  private readonly input: InputQueue
  private context: VirtioContext | undefined

  constructor(options: VirtioConsoleOptions = {}) {
    const { onData, inputLimit = 64 * 1024 } = checkObject<VirtioConsoleOptions>('VirtioConsole: options', options)
    if (onData !== undefined && typeof onData !== 'function') throw new MshvError('EINVAL', `VirtioConsole onData must be a function, got ${describe(onData)}`)
    if (!Number.isSafeInteger(inputLimit) || inputLimit < 1) throw new MshvError('EINVAL', `VirtioConsole inputLimit must be a positive integer, got ${describe(inputLimit)}`)
    this.onData = onData
    this.input = new InputQueue(inputLimit)
  }

  /** Bytes of input waiting for the guest. */
  get buffered(): number {
    return this.input.size
  }

  /**
   * Queues `data` (bytes, or a string as UTF-8) for the guest; returns how many bytes
   * were taken: fewer than given when the input buffer is full (back-pressure).
   */
  write(data: Uint8Array | string): number {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data
    if (!(bytes instanceof Uint8Array)) throw new MshvError('EINVAL', `VirtioConsole.write takes bytes or a string, got ${describe(data)}`)
    const n = this.input.push(bytes)
    this.context?.guard(() => this.deliver())
    return n
  }

  readConfig(offset: number, size: number): number {
    return readConfigSpace(CONFIG, offset, size)
  }

  writeConfig(offset: number, _size: number, value: number): void {
    if (offset === EMERG_WR) this.onData?.(new Uint8Array([value & 0xff]))
  }

  activate(context: VirtioContext): void {
    this.context = context
    this.deliver()
  }

  reset(): void {
    this.context = undefined
  }

  notify(queue: Virtqueue): void {
    if (queue.index === RECEIVEQ) {
      this.deliver()
      return
    }
    const ctx = this.context
    if (!ctx) return
    for (let chain = queue.pop(); chain; chain = queue.pop()) {
      for (const b of chain.readable) if (b.length > 0) this.onData?.(b.slice())
      queue.push(chain.head, 0)
    }
    ctx.usedBuffers(queue)
  }

  /** Moves waiting input into the driver's receive buffers. */
  private deliver(): void {
    const ctx = this.context
    const q = ctx?.queues[RECEIVEQ]
    if (!ctx || !q?.enabled || this.input.size === 0) return
    let pushed = false
    while (this.input.size > 0) {
      const chain = q.pop()
      if (!chain) break
      let written = 0
      for (const b of chain.writable) written += this.input.take(b)
      q.push(chain.head, written)
      pushed = true
    }
    if (pushed) ctx.usedBuffers(q)
  }

  /** The input waiting for the guest. */
  save(): VirtioConsoleState {
    return { version: 1, input: toHex(this.input.peek()) } satisfies VirtioConsoleState
  }

  /**
   * Restores what {@link save} gave (at most `inputLimit` bytes), active again with
   * `context` when its transport was, delivering nothing now; `EINVAL` (and nothing
   * changed) for a bad state.
   */
  restore(state: VirtioConsoleState, context?: VirtioContext): void {
    const { version: _, input, ...rest } = parseState<VirtioConsoleState>('virtioConsole.restore: state', state, { version: version(1), input: bytes(0, this.input.limit) })
    noneLeft(rest)
    const ctx = context === undefined ? undefined : checkObject<VirtioContext>('virtioConsole.restore: context', context)
    this.input.replace(fromHex(input))
    this.context = ctx
  }
}
