/**
 * What a virtio device is, apart from its transport (Firecracker's `VirtioDevice` /
 * transport split): a type, queues, feature bits, a configuration space, and what it
 * does when a queue is kicked. The transport ({@link VirtioPci}) owns feature
 * negotiation, status, queue set-up, notifications and interrupts.
 * @module
 */
import { invalid } from '../check.js'
import type { GuestMemory } from '../guest-memory.js'
import type { Virtqueue } from './queue.js'
import type { JsonValue } from '../snapshot/device-state.js'

/** Device types (VIRTIO 1.2, 5 "Device Types"). */
export const VIRTIO_ID_NET = 1
export const VIRTIO_ID_BLOCK = 2
export const VIRTIO_ID_CONSOLE = 3
export const VIRTIO_ID_RNG = 4

/** Reserved feature bits the transport offers (6 "Reserved Feature Bits"). */
export const VIRTIO_F_INDIRECT_DESC = 28n
export const VIRTIO_F_EVENT_IDX = 29n
export const VIRTIO_F_VERSION_1 = 32n

/**
 * `size` bytes (1, 2 or 4) of a device configuration space at `offset`, little-endian
 * (VIRTIO 1.2, 4.1.3.1); past its end, 0.
 */
export function readConfigSpace(config: DataView, offset: number, size: number): number {
  if (offset + size > config.byteLength) return 0
  return size === 1 ? config.getUint8(offset) : size === 2 ? config.getUint16(offset, true) : config.getUint32(offset, true)
}

/** The bit `n` of a feature word. */
export function feature(n: bigint): bigint {
  if (typeof n !== 'bigint' || n < 0n || n > 127n) throw invalid('feature: the bit', 'a bigint in 0..127', n)
  return 1n << n
}

/** What an active device reaches through its transport. */
export interface VirtioContext {
  /** Guest memory, for the buffers of its chains. */
  readonly memory: GuestMemory
  /** The features the driver accepted. */
  readonly features: bigint
  /** Its queues, by index, as the driver set them up. */
  readonly queues: readonly Virtqueue[]
  /** Interrupts the driver for `queue`'s used buffers, if it wants one (2.7.7, 2.7.10). */
  usedBuffers(queue: Virtqueue): void
  /** Tells the driver the configuration space changed (4.1.4.5, 2.5.1). */
  configChanged(): void
  /**
   * Runs `f`, which works on the queues outside a notification (input that arrived from
   * the host): a broken queue then sets DEVICE_NEEDS_RESET, as it does in a notification.
   */
  guard(f: () => void): void
}

/** A virtio device's own side. */
export interface VirtioDevice {
  /** Its device type (5.x). */
  readonly type: number
  /** What listings and errors call it. */
  readonly name: string
  /** Each queue's largest size (powers of two). */
  readonly queueSizes: readonly number[]
  /** The device-specific feature bits it offers. */
  readonly features: bigint
  /** Bytes of device configuration space. */
  readonly configSize: number
  /** Reads `size` bytes of its configuration space at `offset` (inside `configSize`). */
  readConfig(offset: number, size: number): number
  /** The driver writes its configuration space. */
  writeConfig?(offset: number, size: number, value: number): void
  /** The driver set DRIVER_OK: the device may use its queues through `context` until {@link reset}. */
  activate(context: VirtioContext): void
  /** The driver notified `queue` (available buffers). */
  notify(queue: Virtqueue): void
  /** The device was reset: forget the context and anything in flight. */
  reset(): void
  /**
   * The device's own state, for its transport's {@link VirtioPci.save}: JSON data, a
   * `{ version }` object (not its backend's: a disk's sectors, a file or a TAP are
   * re-attached by whoever restores). A device without it has none.
   */
  save?(): JsonValue
  /**
   * Restores what {@link save} gave (`EINVAL`, and nothing changed, for a bad state).
   * `context` is the transport's when the device was active: the device takes it as
   * {@link activate} would, but touches no queue now (it was saved settled). A device
   * without it and without state is activated again with `activate()`.
   */
  restore?(state: JsonValue, context: VirtioContext | undefined): void
}
