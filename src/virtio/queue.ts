/**
 * The split virtqueue (VIRTIO 1.2, 2.7): the device's side. Descriptor chains are
 * walked in guest memory through {@link GuestMemory} and handed to the device as
 * zero-copy views of the driver's buffers; indirect descriptors (2.7.5.3) and the
 * event index (2.7.10) are supported. Whatever the driver wrote — a loop, an index out
 * of range, a buffer past the end of RAM, an indirect table inside an indirect table —
 * is a {@link VirtioError}, which the transport turns into DEVICE_NEEDS_RESET (2.1.2):
 * never a crash, a hang or an access outside guest RAM.
 * @module
 */
import { checkBuffers, checkBytes, checkInstance, checkInteger, invalid } from '../check.js'
import { MshvError, hex } from '../errors.js'
import { bool, noneLeft, parseState, u16, version, type Check, type Saveable, type Schema } from '../snapshot/device-state.js'
import { GuestMemory } from '../guest-memory.js'

/** Descriptor flags (2.7.5). */
const VIRTQ_DESC_F_NEXT = 1
const VIRTQ_DESC_F_WRITE = 2
const VIRTQ_DESC_F_INDIRECT = 4
/** The driver asks for no interrupt (2.7.7, without the event index). */
const VIRTQ_AVAIL_F_NO_INTERRUPT = 1
/** The largest split queue (2.7: "Queue Size ... maximum is 32768"). */
export const VIRTQ_MAX_SIZE = 32768
const DESC_SIZE = 16

/** A driver's mistake the device cannot work around: the device needs a reset (VIRTIO 1.2, 2.1.2). */
export class VirtioError extends MshvError {
  constructor(message: string) {
    super('EVIRTIO', message)
  }
}

/** One request: the driver's buffers, readable ones first (2.7.4.2), as views of guest memory. */
export interface DescriptorChain {
  /** The head descriptor's index: what goes back in the used ring. */
  readonly head: number
  /** Buffers the device reads, in order. */
  readonly readable: readonly Uint8Array[]
  /** Buffers the device writes, in order. */
  readonly writable: readonly Uint8Array[]
}

/** The total length of `buffers`. */
export function totalLength(buffers: readonly Uint8Array[]): number {
  checkBuffers('totalLength: buffers', buffers)
  let n = 0
  for (const b of buffers) n += b.length
  return n
}

/** The first `length` bytes of `buffers`, gathered (a view when they lie in the first buffer); `undefined` if they hold fewer. */
export function gather(buffers: readonly Uint8Array[], length: number): Uint8Array | undefined {
  checkBuffers('gather: buffers', buffers)
  checkInteger('gather: length', length, 0, 2 ** 32 - 1)
  const first = buffers[0]
  if (first && first.length >= length) return first.subarray(0, length)
  const out = new Uint8Array(length)
  let at = 0
  for (const b of buffers) {
    if (at === length) break
    const n = Math.min(b.length, length - at)
    out.set(b.subarray(0, n), at)
    at += n
  }
  return at === length ? out : undefined
}

/** `buffers` without their first `skip` bytes (views). */
export function skipBytes(buffers: readonly Uint8Array[], skip: number): Uint8Array[] {
  checkBuffers('skipBytes: buffers', buffers)
  checkInteger('skipBytes: skip', skip, 0, Number.MAX_SAFE_INTEGER)
  const out: Uint8Array[] = []
  let left = skip
  for (const b of buffers) {
    if (left >= b.length) {
      left -= b.length
      continue
    }
    out.push(left > 0 ? b.subarray(left) : b)
    left = 0
  }
  return out
}

/** Copies `data` into `buffers` in order; returns the bytes written (fewer when they are shorter). */
export function scatter(buffers: readonly Uint8Array[], data: Uint8Array): number {
  checkBuffers('scatter: buffers', buffers)
  checkBytes('scatter: data', data)
  let at = 0
  for (const b of buffers) {
    if (at === data.length) break
    const n = Math.min(b.length, data.length - at)
    b.set(data.subarray(at, at + n), 0)
    at += n
  }
  return at
}

/** Counters of a queue. */
export interface VirtqueueStats {
  /** Chains taken from the available ring. */
  popped: number
  /** Chains returned in the used ring. */
  used: number
  /** Interrupts the queue asked for (after {@link Virtqueue.needsInterrupt}). */
  interrupts: number
  /** Interrupts the driver suppressed (flags or the event index). */
  suppressed: number
}

/** The `vring_need_event` test (2.7.10): has the used index passed `event` since `old`? */
function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff)
}

/**
 * A queue's state ({@link Virtqueue.save}): what the driver set up and the device's
 * side of the rings (the rings themselves are in guest memory).
 */
export interface VirtqueueState {
  version: 1
  /** The size the driver wrote (checked to be a power of two up to the maximum once enabled). */
  size: number
  /** Guest physical addresses of the descriptor table, driver area and device area. */
  desc: number
  driver: number
  device: number
  enabled: boolean
  /** Its MSI-X vector (0xFFFF: none). */
  msixVector: number
  /** Negotiated: indirect descriptors, the event index. */
  indirect: boolean
  eventIdx: boolean
  /** The next available-ring entry the device takes (QEMU's `last_avail_idx`). */
  nextAvail: number
  /** The used ring's index the device writes next (`used_idx`). */
  nextUsed: number
  /** The used index at the last interrupt decision (the event-index state, QEMU's `signalled_used`). */
  signalledUsed: number
}

/**
 * A guest physical address a driver can write in two dwords: a number, so one past 2^53
 * is rounded (to 2^64 itself from just below it) as the transport holds it.
 */
const address = (what: string, v: unknown): number => {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 2 ** 64) throw invalid(what, 'an address in 0..2^64', v)
  return v
}

const STATE: Schema<VirtqueueState> = {
  version: version(1),
  size: u16,
  desc: address,
  driver: address,
  device: address,
  enabled: bool,
  msixVector: u16,
  indirect: bool,
  eventIdx: bool,
  nextAvail: u16,
  nextUsed: u16,
  signalledUsed: u16,
}

/** One split virtqueue as the transport configures it and the device uses it. */
export class Virtqueue implements Saveable<VirtqueueState> {
  /** The size the driver chose (a power of two up to {@link maxSize}). */
  size: number
  /** Guest physical addresses of the descriptor table, the driver (available) and device (used) areas. */
  desc = 0
  driver = 0
  device = 0
  /** Whether the driver enabled it (`queue_enable`). */
  enabled = false
  /** Its MSI-X vector (0xFFFF: none). */
  msixVector = 0xffff
  /** Negotiated: indirect descriptors, the event index. */
  indirect = false
  eventIdx = false
  private nextAvail = 0
  private nextUsed = 0
  private signalledUsed = 0
  readonly stats: VirtqueueStats = { popped: 0, used: 0, interrupts: 0, suppressed: 0 }

  constructor(
    /** Its index in the device. */
    readonly index: number,
    /** The largest size the device allows. */
    readonly maxSize: number,
    private readonly memory: GuestMemory,
  ) {
    checkInteger('Virtqueue: index', index, 0, 0xffff)
    checkInteger('Virtqueue: maxSize', maxSize, 1, VIRTQ_MAX_SIZE)
    checkInstance('Virtqueue: memory', memory, GuestMemory)
    if (!Number.isInteger(maxSize) || maxSize < 1 || maxSize > VIRTQ_MAX_SIZE || (maxSize & (maxSize - 1)) !== 0) {
      throw new MshvError('EINVAL', `virtqueue size must be a power of two in 1..${VIRTQ_MAX_SIZE}, got ${maxSize}`)
    }
    this.size = maxSize
  }

  /** Back to the reset state (2.1.2, 4.1.4.3.2: every field reads its default). */
  reset(): void {
    this.size = this.maxSize
    this.desc = this.driver = this.device = 0
    this.enabled = false
    this.msixVector = 0xffff
    this.indirect = this.eventIdx = false
    this.nextAvail = this.nextUsed = this.signalledUsed = 0
  }

  /** Checks what the driver set up before it enables the queue: a power-of-two size, rings inside guest RAM. */
  validate(): void {
    this.checkSetup(this)
  }

  private checkSetup(q: { readonly size: number; readonly desc: number; readonly driver: number; readonly device: number }): void {
    const n = q.size
    if (n < 1 || n > this.maxSize || (n & (n - 1)) !== 0) throw new VirtioError(`queue ${this.index}: size ${n} is not a power of two in 1..${this.maxSize}`)
    const areas: [string, number, number][] = [
      ['descriptor table', q.desc, DESC_SIZE * n],
      ['driver area', q.driver, 6 + 2 * n],
      ['device area', q.device, 6 + 8 * n],
    ]
    for (const [what, at, len] of areas) {
      if (!this.memory.contains(at, len)) throw new VirtioError(`queue ${this.index}: the ${what} at ${hex(at)} (+${len}) is not inside guest RAM`)
    }
  }

  private ring(at: number, length: number, what: string, write = false): DataView {
    try {
      return this.memory.dataView(at, length, write)
    } catch (e) {
      throw this.driverFault(e, `the ${what}`)
    }
  }

  /** A view of guest memory refused for a driver's address (EFAULT, EINVAL): a device error naming `what`; anything else as it is. */
  private driverFault(e: unknown, what: string): unknown {
    return e instanceof MshvError && (e.code === 'EFAULT' || e.code === 'EINVAL') ? new VirtioError(`queue ${this.index}: ${what}: ${e.message}`) : e
  }

  /**
   * The next available chain, or `undefined` when the driver made none available.
   * With the event index, asks the driver to notify when it adds past this one.
   */
  pop(): DescriptorChain | undefined {
    const n = this.size
    const avail = this.ring(this.driver, 6 + 2 * n, 'driver area')
    const availIdx = avail.getUint16(2, true)
    if (availIdx === this.nextAvail) return undefined
    if (((availIdx - this.nextAvail) & 0xffff) > n) {
      throw new VirtioError(`queue ${this.index}: the available index moved from ${this.nextAvail} to ${availIdx}, more than the ${n} entries of the ring`)
    }
    const head = avail.getUint16(4 + 2 * (this.nextAvail % n), true)
    this.nextAvail = (this.nextAvail + 1) & 0xffff
    if (this.eventIdx) this.ring(this.device, 6 + 8 * n, 'device area', true).setUint16(4 + 8 * n, this.nextAvail, true)
    this.stats.popped++
    return this.walk(head)
  }

  /** Follows the chain from `head` (2.7.5), through one indirect table at most (2.7.5.3.1). */
  private walk(head: number): DescriptorChain {
    const n = this.size
    if (head >= n) throw new VirtioError(`queue ${this.index}: head descriptor ${head} is out of range (queue size ${n})`)
    let table = this.ring(this.desc, DESC_SIZE * n, 'descriptor table')
    let tableSize = n
    let inIndirect = false
    const readable: Uint8Array[] = []
    const writable: Uint8Array[] = []
    let total = 0
    let i = head
    // A chain visits each descriptor of its table once at most: a longer one is a loop.
    for (let count = 0; ; ) {
      if (++count > tableSize) throw new VirtioError(`queue ${this.index}: the chain from descriptor ${head} loops (more than ${tableSize} descriptors)`)
      const at = i * DESC_SIZE
      const addr = table.getUint32(at, true) + table.getUint32(at + 4, true) * 2 ** 32
      const len = table.getUint32(at + 8, true)
      const flags = table.getUint16(at + 12, true)
      const next = table.getUint16(at + 14, true)
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect) throw new VirtioError(`queue ${this.index}: descriptor ${i} is indirect, but VIRTIO_F_INDIRECT_DESC was not negotiated`)
        if (inIndirect) throw new VirtioError(`queue ${this.index}: an indirect table holds an indirect descriptor (2.7.5.3.1)`)
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) throw new VirtioError(`queue ${this.index}: descriptor ${i} is both indirect and chained (2.7.5.3.1)`)
        if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > VIRTQ_MAX_SIZE) throw new VirtioError(`queue ${this.index}: indirect table of ${len} bytes is not a whole number of 1..${VIRTQ_MAX_SIZE} descriptors`)
        table = this.ring(addr, len, `indirect table of descriptor ${i}`)
        tableSize = len / DESC_SIZE
        inIndirect = true
        i = 0
        count = 0
        continue
      }
      const write = (flags & VIRTQ_DESC_F_WRITE) !== 0
      if (!write && writable.length > 0) throw new VirtioError(`queue ${this.index}: a device-readable buffer follows a writable one in the chain from ${head} (2.7.4.2)`)
      total += len
      if (total > 2 ** 32) throw new VirtioError(`queue ${this.index}: the chain from ${head} is longer than 2^32 bytes (2.7.5.2)`)
      let view: Uint8Array
      try {
        view = this.memory.view(addr, len, write)
      } catch (e) {
        throw this.driverFault(e, `descriptor ${i}`)
      }
      ;(write ? writable : readable).push(view)
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) break
      if (next >= tableSize) throw new VirtioError(`queue ${this.index}: descriptor ${i} chains to ${next}, past the table's ${tableSize}`)
      i = next
    }
    return { head, readable, writable }
  }

  /** Returns chain `head` to the driver with `written` bytes written to its buffers (2.7.8.2). */
  push(head: number, written: number): void {
    checkInteger('queue.push: head', head, 0, this.size - 1)
    checkInteger('queue.push: written', written, 0, 0xffff_ffff)
    const n = this.size
    const used = this.ring(this.device, 6 + 8 * n, 'device area', true)
    const at = 4 + 8 * (this.nextUsed % n)
    used.setUint32(at, head, true)
    used.setUint32(at + 4, written >>> 0, true)
    this.nextUsed = (this.nextUsed + 1) & 0xffff
    // The index last: the driver reads the entry once it sees the index move.
    used.setUint16(2, this.nextUsed, true)
    this.stats.used++
  }

  /**
   * Whether the driver wants an interrupt for what was pushed since the last time this
   * said yes: its `used_event` with the event index (2.7.10), else its NO_INTERRUPT flag (2.7.7).
   */
  needsInterrupt(): boolean {
    if (this.nextUsed === this.signalledUsed) return false
    const n = this.size
    const avail = this.ring(this.driver, 6 + 2 * n, 'driver area')
    let want: boolean
    if (this.eventIdx) want = needEvent(avail.getUint16(4 + 2 * n, true), this.nextUsed, this.signalledUsed)
    else want = (avail.getUint16(0, true) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0
    this.signalledUsed = this.nextUsed
    if (want) this.stats.interrupts++
    else this.stats.suppressed++
    return want
  }

  /** What the driver set up and the device's ring indices. */
  save(): VirtqueueState {
    const { size, desc, driver, device, enabled, msixVector, indirect, eventIdx, nextAvail, nextUsed, signalledUsed } = this
    return { version: 1, size, desc, driver, device, enabled, msixVector, indirect, eventIdx, nextAvail, nextUsed, signalledUsed } satisfies VirtqueueState
  }

  /** The check of a state of this queue: an enabled one's size and rings are checked as enabling checks them. @internal */
  stateCheck(): Check<VirtqueueState> {
    return (what, v) => {
      const s = parseState(what, v, STATE)
      if (s.enabled) {
        try {
          this.checkSetup(s)
        } catch (e) {
          if (e instanceof VirtioError) throw new MshvError('EINVAL', `${what}: an enabled queue must be one the driver could enable: ${e.message}`)
          throw e
        }
      }
      return s
    }
  }

  /** Restores what {@link save} gave; `EINVAL` (and nothing changed) for a bad state. */
  restore(state: VirtqueueState): void {
    const { version: _, size, desc, driver, device, enabled, msixVector, indirect, eventIdx, nextAvail, nextUsed, signalledUsed, ...rest } = this.stateCheck()('virtqueue.restore: state', state)
    noneLeft(rest)
    this.size = size
    this.desc = desc
    this.driver = driver
    this.device = device
    this.enabled = enabled
    this.msixVector = msixVector
    this.indirect = indirect
    this.eventIdx = eventIdx
    this.nextAvail = nextAvail
    this.nextUsed = nextUsed
    this.signalledUsed = signalledUsed
  }
}
