/**
 * virtio-rng (VIRTIO 1.2, 5.4): one request queue whose device-writable buffers the
 * device fills with random bytes — here the host's CSPRNG (`crypto.randomFillSync`),
 * as QEMU's default `rng-random` backend reads the host's /dev/urandom.
 * @module
 */
import { randomFillSync } from 'node:crypto'
import { VIRTIO_ID_RNG, type VirtioContext, type VirtioDevice } from './device.js'
import type { Virtqueue } from './queue.js'
import { checkObject } from '../check.js'
import { noneLeft, parseState, version, type Saveable } from '../snapshot/device-state.js'

/** Counters of a {@link VirtioRng}. */
export interface VirtioRngStats {
  /** Random bytes given to the guest. */
  bytes: number
}

/** virtio-rng's own state: none but its version (each request is filled before the kick returns). */
export type VirtioRngState = { version: 1 }

/** A source of entropy for the guest (`/dev/hwrng`). */
export class VirtioRng implements VirtioDevice, Saveable<VirtioRngState> {
  readonly type = VIRTIO_ID_RNG
  readonly name = 'rng'
  readonly queueSizes = [256]
  readonly features = 0n
  readonly configSize = 0
  readonly stats: VirtioRngStats = { bytes: 0 }
  private context: VirtioContext | undefined

  constructor(
    /** Fills a buffer with random bytes (default: the host's CSPRNG). Tests give a deterministic one. */
    private readonly fill: (buffer: Uint8Array) => void = (b) => randomFillSync(b),
  ) {}

  readConfig(): number {
    return 0
  }

  activate(context: VirtioContext): void {
    this.context = context
  }

  notify(queue: Virtqueue): void {
    const ctx = this.context
    if (!ctx) return
    for (let chain = queue.pop(); chain; chain = queue.pop()) {
      let n = 0
      for (const b of chain.writable) {
        this.fill(b)
        n += b.length
      }
      this.stats.bytes += n
      queue.push(chain.head, n)
    }
    ctx.usedBuffers(queue)
  }

  reset(): void {
    this.context = undefined
  }

  /** Its state: nothing in flight, nothing of its own. */
  save(): VirtioRngState {
    return { version: 1 } satisfies VirtioRngState
  }

  /** Restores what {@link save} gave, active again with `context` when its transport was. */
  restore(state: VirtioRngState, context?: VirtioContext): void {
    const { version: _, ...rest } = parseState<VirtioRngState>('virtioRng.restore: state', state, { version: version(1) })
    noneLeft(rest)
    this.context = context === undefined ? undefined : checkObject<VirtioContext>('virtioRng.restore: context', context)
  }
}
