/**
 * virtio-net (VIRTIO 1.2, 5.1) with one queue pair and no offloads: each buffer is a
 * `virtio_net_hdr` (12 bytes with VIRTIO_F_VERSION_1, 5.1.6) and an Ethernet frame.
 * Frames the guest transmits go to `onPacket` listeners; {@link VirtioNet.send} hands a
 * frame to the guest, kept in a bounded queue while the driver has given no receive
 * buffer (a NIC's FIFO: when it is full, frames are dropped and counted).
 * @module
 */
import { checkBytes, checkObject, invalid } from '../check.js'
import { bytes, fromHex, list, noneLeft, parseState, toHex, version, type Saveable } from '../snapshot/device-state.js'
import { MshvError, describe } from '../errors.js'
import { VIRTIO_ID_NET, feature, readConfigSpace, type VirtioContext, type VirtioDevice } from './device.js'
import { gather, scatter, skipBytes, totalLength, type Virtqueue } from './queue.js'

const VIRTIO_NET_F_MAC = 5n
const VIRTIO_NET_F_STATUS = 16n
const VIRTIO_NET_S_LINK_UP = 1
/** `struct virtio_net_hdr_v1` (5.1.6): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const VIRTIO_NET_HDR_SIZE = 12
const RECEIVEQ = 0
/** Configuration space: mac, status, max_virtqueue_pairs, mtu (5.1.4). */
const CONFIG_SIZE = 12
/** The largest frame without offloads: 1514 bytes of Ethernet (no FCS), and a VLAN tag. */
const MAX_FRAME = 1518
const RX_BACKLOG = 256

/** Counters of a {@link VirtioNet}. */
export interface VirtioNetStats {
  txPackets: number
  txBytes: number
  rxPackets: number
  rxBytes: number
  /** Frames to the guest dropped: the backlog was full, or no buffer held them. */
  rxDropped: number
  /** Frames from the guest dropped: shorter than the header, or longer than a frame. */
  txDropped: number
}

/** Options for {@link VirtioNet}. */
export interface VirtioNetOptions {
  /** The MAC address (`52:54:00:12:34:56` or 6 bytes); default a locally administered one from a counter. */
  mac?: string | Uint8Array
}

let nextMac = 1

/**
 * `frame` as the guest will read it, header first: the one copy of the frame (the
 * caller may reuse its buffer). No checksum or GSO to describe, one buffer (num_buffers = 1).
 */
function packet(frame: Uint8Array): Uint8Array {
  const p = new Uint8Array(VIRTIO_NET_HDR_SIZE + frame.length)
  p[10] = 1
  p.set(frame, VIRTIO_NET_HDR_SIZE)
  return p
}

/** `mac` as 6 bytes. */
export function parseMac(mac: string | Uint8Array): Uint8Array {
  if (mac instanceof Uint8Array) {
    if (mac.length !== 6) throw new MshvError('EINVAL', `a MAC address is 6 bytes, got ${mac.length}`)
    return mac.slice()
  }
  const parts = typeof mac === 'string' ? mac.split(':') : []
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) throw new MshvError('EINVAL', `MAC address must be six hex bytes like 52:54:00:12:34:56, got ${describe(mac)}`)
  return new Uint8Array(parts.map((p) => parseInt(p, 16)))
}

/** `mac` as text. */
export function formatMac(mac: Uint8Array): string {
  if (checkBytes('formatMac: mac', mac).length !== 6) throw invalid('formatMac: mac', 'six bytes', mac)
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':')
}

/** virtio-net's own state: the frames for the guest waiting for its receive buffers. */
export type VirtioNetState = {
  version: 1
  /** Each frame (without its virtio-net header), as hex, first to be delivered first. */
  backlog: string[]
}

/** A network card: frames in and out through TypeScript. */
export class VirtioNet implements VirtioDevice, Saveable<VirtioNetState> {
  readonly type = VIRTIO_ID_NET
  readonly name = 'net'
  readonly queueSizes = [256, 256]
  readonly features = feature(VIRTIO_NET_F_MAC) | feature(VIRTIO_NET_F_STATUS)
  readonly configSize = CONFIG_SIZE
  /** Its MAC address. */
  readonly mac: Uint8Array
  readonly stats: VirtioNetStats = { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, rxDropped: 0, txDropped: 0 }
  private readonly listeners: ((frame: Uint8Array) => void)[] = []
  /** Frames for the guest, each behind its virtio-net header. */
  private readonly backlog: Uint8Array[] = []
  private readonly config = new DataView(new ArrayBuffer(CONFIG_SIZE))
  private context: VirtioContext | undefined

  constructor(options: VirtioNetOptions = {}) {
    checkObject('VirtioNet: options', options)
    if (options.mac !== undefined) this.mac = parseMac(options.mac)
    else {
      // 52:54:00 is QEMU's locally administered prefix; the rest counts up per card.
      const n = nextMac++
      this.mac = new Uint8Array([0x52, 0x54, 0x00, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff])
    }
    new Uint8Array(this.config.buffer).set(this.mac, 0)
    this.config.setUint16(6, VIRTIO_NET_S_LINK_UP, true)
    this.config.setUint16(8, 1, true) // max_virtqueue_pairs
    this.config.setUint16(10, 1500, true) // mtu (read only with VIRTIO_NET_F_MTU, which is not offered)
  }

  /** Calls `listener(frame)` for each frame the guest sends (a copy it may keep); returns a function that removes it. */
  onPacket(listener: (frame: Uint8Array) => void): () => void {
    if (typeof listener !== 'function') throw new MshvError('EINVAL', `onPacket takes a function, got ${describe(listener)}`)
    this.listeners.push(listener)
    return () => {
      const i = this.listeners.indexOf(listener)
      if (i !== -1) this.listeners.splice(i, 1)
    }
  }

  /**
   * Hands an Ethernet frame to the guest. Returns false when it was dropped: too long,
   * too short, or the receive backlog is full.
   */
  send(frame: Uint8Array): boolean {
    if (!(frame instanceof Uint8Array)) throw new MshvError('EINVAL', `VirtioNet.send takes a frame (Uint8Array), got ${describe(frame)}`)
    if (frame.length < 14 || frame.length > MAX_FRAME || this.backlog.length >= RX_BACKLOG) {
      this.stats.rxDropped++
      return false
    }
    this.backlog.push(packet(frame))
    this.context?.guard(() => this.receive())
    return true
  }

  readConfig(offset: number, size: number): number {
    return readConfigSpace(this.config, offset, size)
  }

  activate(context: VirtioContext): void {
    this.context = context
    this.receive()
  }

  reset(): void {
    this.context = undefined
    this.backlog.length = 0
  }

  notify(queue: Virtqueue): void {
    if (queue.index === RECEIVEQ) {
      this.receive()
      return
    }
    const ctx = this.context
    if (!ctx) return
    for (let chain = queue.pop(); chain; chain = queue.pop()) {
      const length = totalLength(chain.readable)
      const frameLength = length - VIRTIO_NET_HDR_SIZE
      if (frameLength < 14 || frameLength > MAX_FRAME) this.stats.txDropped++
      else {
        const frame = gather(skipBytes(chain.readable, VIRTIO_NET_HDR_SIZE), frameLength) as Uint8Array
        // Listeners get their own copy: the guest reuses its buffer once it is used.
        const copy = frame.slice()
        this.stats.txPackets++
        this.stats.txBytes += frameLength
        for (const l of this.listeners) l(copy)
      }
      queue.push(chain.head, 0)
    }
    ctx.usedBuffers(queue)
  }

  /** Fills the driver's receive buffers from the backlog. */
  private receive(): void {
    const ctx = this.context
    const q = ctx?.queues[RECEIVEQ]
    if (!ctx || !q?.enabled) return
    let pushed = false
    while (this.backlog.length > 0) {
      const chain = q.pop()
      if (!chain) break
      const packet = this.backlog.shift() as Uint8Array
      if (totalLength(chain.writable) < packet.length) {
        // Without VIRTIO_NET_F_MRG_RXBUF each buffer must hold a whole frame (5.1.6.3.1).
        this.stats.rxDropped++
        q.push(chain.head, 0)
        pushed = true
        continue
      }
      scatter(chain.writable, packet)
      this.stats.rxPackets++
      this.stats.rxBytes += packet.length - VIRTIO_NET_HDR_SIZE
      q.push(chain.head, packet.length)
      pushed = true
    }
    if (pushed) ctx.usedBuffers(q)
  }

  /** The frames waiting for the guest. */
  save(): VirtioNetState {
    return { version: 1, backlog: this.backlog.map((p) => toHex(p.subarray(VIRTIO_NET_HDR_SIZE))) } satisfies VirtioNetState
  }

  /**
   * Restores what {@link save} gave, active again with `context` when its transport
   * was, delivering nothing now; `EINVAL` (and nothing changed) for a bad state.
   */
  restore(state: VirtioNetState, context?: VirtioContext): void {
    const { version: _, backlog, ...rest } = parseState<VirtioNetState>('virtioNet.restore: state', state, { version: version(1), backlog: list(bytes(14, MAX_FRAME), 0, RX_BACKLOG) })
    noneLeft(rest)
    const ctx = context === undefined ? undefined : checkObject<VirtioContext>('virtioNet.restore: context', context)
    this.backlog.length = 0
    for (const frame of backlog) this.backlog.push(packet(fromHex(frame)))
    this.context = ctx
  }
}
