/**
 * virtio-blk (VIRTIO 1.2, 5.2): one request queue; each request is a header (type,
 * sector), data buffers and a status byte (5.2.6). Reads, writes, flush, get-id,
 * discard and write-zeroes, over a {@link BlockBackend}; a read-only backend offers
 * VIRTIO_BLK_F_RO and answers writes with an I/O error (5.2.6.2).
 * @module
 */
import { MshvError, describe } from '../errors.js'
import { VIRTIO_ID_BLOCK, feature, readConfigSpace, type VirtioContext, type VirtioDevice } from './device.js'
import { eachAt, type BlockBackend } from './disk.js'
import { gather, scatter, skipBytes, totalLength, type DescriptorChain, type Virtqueue } from './queue.js'
import { checkObject } from '../check.js'
import { noneLeft, parseState, version, type Saveable } from '../snapshot/device-state.js'

/** Feature bits (5.2.3). */
const VIRTIO_BLK_F_SEG_MAX = 2n
const VIRTIO_BLK_F_RO = 5n
const VIRTIO_BLK_F_BLK_SIZE = 6n
const VIRTIO_BLK_F_FLUSH = 9n
const VIRTIO_BLK_F_DISCARD = 13n
const VIRTIO_BLK_F_WRITE_ZEROES = 14n
/** Request types (5.2.6). */
export const VIRTIO_BLK_T_IN = 0
export const VIRTIO_BLK_T_OUT = 1
export const VIRTIO_BLK_T_FLUSH = 4
export const VIRTIO_BLK_T_GET_ID = 8
export const VIRTIO_BLK_T_DISCARD = 11
export const VIRTIO_BLK_T_WRITE_ZEROES = 13
/** Status values (5.2.6). */
export const VIRTIO_BLK_S_OK = 0
export const VIRTIO_BLK_S_IOERR = 1
export const VIRTIO_BLK_S_UNSUPP = 2
const SECTOR = 512
const HEADER = 16
/** The ID string's length (5.2.6: GET_ID writes 20 bytes). */
const ID_BYTES = 20
/** One discard / write-zeroes segment: sector, num_sectors, flags (5.2.6). */
const SEGMENT = 16
const QUEUE_SIZE = 256
/** Segments per request the driver may use (the queue less the header and status). */
const SEG_MAX = QUEUE_SIZE - 2
/** The most sectors one discard or write-zeroes request may name, and segments per request. */
const MAX_DISCARD_SECTORS = 0x40_0000
const MAX_DISCARD_SEG = 32
/** Configuration space (5.2.4) up to write_zeroes_may_unmap and its padding. */
const CONFIG_SIZE = 60

/** Options for {@link VirtioBlock}. */
export interface VirtioBlockOptions {
  /** The serial number GET_ID answers (at most 20 bytes; default `mshv`). */
  id?: string
}

/** Counters of a {@link VirtioBlock}. */
export interface VirtioBlockStats {
  reads: number
  writes: number
  bytesRead: number
  bytesWritten: number
  flushes: number
  discards: number
  /** Requests answered with an I/O error or "unsupported". */
  errors: number
}

/**
 * virtio-blk's own state: none but its version. Each request is answered before the
 * kick returns, so nothing is in flight; the sectors are the backend's.
 */
export type VirtioBlockState = { version: 1 }

/** A virtio block device over a backend. */
export class VirtioBlock implements VirtioDevice, Saveable<VirtioBlockState> {
  readonly type = VIRTIO_ID_BLOCK
  readonly name = 'blk'
  readonly queueSizes = [QUEUE_SIZE]
  readonly features: bigint
  readonly configSize = CONFIG_SIZE
  readonly stats: VirtioBlockStats = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, discards: 0, errors: 0 }
  private readonly config = new DataView(new ArrayBuffer(CONFIG_SIZE))
  private readonly id: Uint8Array
  private context: VirtioContext | undefined

  constructor(
    /** Where the sectors are. */
    readonly backend: BlockBackend,
    options: VirtioBlockOptions = {},
  ) {
    if (typeof backend !== 'object' || backend === null || typeof backend.read !== 'function') throw new MshvError('EINVAL', `VirtioBlock takes a BlockBackend, got ${describe(backend)}`)
    const id = new TextEncoder().encode(options.id ?? 'mshv')
    if (id.length > ID_BYTES) throw new MshvError('EINVAL', `virtio-blk id must be at most ${ID_BYTES} bytes, got ${id.length}`)
    this.id = id
    this.features =
      feature(VIRTIO_BLK_F_SEG_MAX) |
      feature(VIRTIO_BLK_F_BLK_SIZE) |
      feature(VIRTIO_BLK_F_FLUSH) |
      feature(VIRTIO_BLK_F_DISCARD) |
      feature(VIRTIO_BLK_F_WRITE_ZEROES) |
      (backend.readOnly ? feature(VIRTIO_BLK_F_RO) : 0n)
    const c = this.config
    c.setBigUint64(0, BigInt(Math.floor(backend.size / SECTOR)), true) // capacity
    c.setUint32(12, SEG_MAX, true) // seg_max
    c.setUint32(20, SECTOR, true) // blk_size
    c.setUint32(36, MAX_DISCARD_SECTORS, true)
    c.setUint32(40, MAX_DISCARD_SEG, true)
    c.setUint32(44, 1, true) // discard_sector_alignment
    c.setUint32(48, MAX_DISCARD_SECTORS, true)
    c.setUint32(52, MAX_DISCARD_SEG, true)
    c.setUint8(56, 0) // write_zeroes_may_unmap
  }

  readConfig(offset: number, size: number): number {
    return readConfigSpace(this.config, offset, size)
  }

  activate(context: VirtioContext): void {
    this.context = context
  }

  reset(): void {
    this.context = undefined
  }

  notify(queue: Virtqueue): void {
    const ctx = this.context
    if (!ctx) return
    for (let chain = queue.pop(); chain; chain = queue.pop()) queue.push(chain.head, this.handle(chain))
    ctx.usedBuffers(queue)
  }

  /** Does one request; returns the bytes written to its writable buffers (5.2.6: data read, and the status byte). */
  private handle(chain: DescriptorChain): number {
    const header = gather(chain.readable, HEADER)
    const last = chain.writable[chain.writable.length - 1]
    // No status byte to answer in: nothing can be said to the driver (5.2.6.1 requires one).
    if (!last || last.length === 0) {
      this.stats.errors++
      return 0
    }
    const statusAt = last.length - 1
    const writableData = [...chain.writable.slice(0, -1), last.subarray(0, statusAt)]
    if (!header) return this.finish(last, statusAt, VIRTIO_BLK_S_IOERR, 0)
    const h = new DataView(header.buffer, header.byteOffset, HEADER)
    const type = h.getUint32(0, true)
    const sector = h.getUint32(8, true) + h.getUint32(12, true) * 2 ** 32
    const readableData = skipBytes(chain.readable, HEADER)
    try {
      switch (type) {
        case VIRTIO_BLK_T_IN: {
          const length = totalLength(writableData)
          if (!this.inRange(sector, length)) return this.finish(last, statusAt, VIRTIO_BLK_S_IOERR, 0)
          if (this.backend.readVectored) this.backend.readVectored(sector * SECTOR, writableData)
          else eachAt(sector * SECTOR, writableData, (at, b) => this.backend.read(at, b))
          this.stats.reads++
          this.stats.bytesRead += length
          return this.finish(last, statusAt, VIRTIO_BLK_S_OK, length)
        }
        case VIRTIO_BLK_T_OUT: {
          const length = totalLength(readableData)
          if (this.backend.readOnly || !this.inRange(sector, length)) return this.finish(last, statusAt, VIRTIO_BLK_S_IOERR, 0)
          eachAt(sector * SECTOR, readableData, (at, b) => this.backend.write(at, b))
          this.stats.writes++
          this.stats.bytesWritten += length
          return this.finish(last, statusAt, VIRTIO_BLK_S_OK, 0)
        }
        case VIRTIO_BLK_T_FLUSH:
          this.backend.flush()
          this.stats.flushes++
          return this.finish(last, statusAt, VIRTIO_BLK_S_OK, 0)
        case VIRTIO_BLK_T_GET_ID: {
          // The ID, NUL-padded when shorter than the buffer's 20 bytes (5.2.6).
          const out = new Uint8Array(ID_BYTES)
          out.set(this.id)
          return this.finish(last, statusAt, VIRTIO_BLK_S_OK, scatter(writableData, out))
        }
        case VIRTIO_BLK_T_DISCARD:
        case VIRTIO_BLK_T_WRITE_ZEROES:
          return this.finish(last, statusAt, this.ranges(type, readableData), 0)
        default:
          return this.finish(last, statusAt, VIRTIO_BLK_S_UNSUPP, 0)
      }
    } catch (e) {
      if (!(e instanceof MshvError)) throw e
      // The backend failed (EROFS, an I/O error): the guest gets an I/O error, the VMM keeps running.
      return this.finish(last, statusAt, VIRTIO_BLK_S_IOERR, 0)
    }
  }

  /** Discard or write-zeroes: every segment checked first, then done (5.2.6.2). */
  private ranges(type: number, data: readonly Uint8Array[]): number {
    const bytes = gather(data, totalLength(data))
    if (!bytes || bytes.length === 0 || bytes.length % SEGMENT !== 0 || bytes.length / SEGMENT > MAX_DISCARD_SEG) return VIRTIO_BLK_S_UNSUPP
    if (this.backend.readOnly) return VIRTIO_BLK_S_IOERR
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length)
    const segments: [number, number][] = []
    for (let at = 0; at < bytes.length; at += SEGMENT) {
      const sector = v.getUint32(at, true) + v.getUint32(at + 4, true) * 2 ** 32
      const count = v.getUint32(at + 8, true)
      const flags = v.getUint32(at + 12, true)
      // Discard has no flags; write-zeroes has only UNMAP (bit 0). Others are unsupported.
      if ((type === VIRTIO_BLK_T_DISCARD ? flags : flags & ~1) !== 0) return VIRTIO_BLK_S_UNSUPP
      if (count > MAX_DISCARD_SECTORS || !this.inRange(sector, count * SECTOR)) return VIRTIO_BLK_S_IOERR
      segments.push([sector * SECTOR, count * SECTOR])
    }
    for (const [offset, length] of segments) {
      if (type === VIRTIO_BLK_T_DISCARD) this.backend.discard(offset, length)
      else this.backend.writeZeroes(offset, length)
    }
    this.stats.discards++
    return VIRTIO_BLK_S_OK
  }

  private inRange(sector: number, length: number): boolean {
    return Number.isSafeInteger(sector * SECTOR + length) && sector * SECTOR + length <= this.backend.size
  }

  /** Writes the status byte; the used length counts it and the data written before it. */
  private finish(last: Uint8Array, statusAt: number, status: number, dataWritten: number): number {
    last[statusAt] = status
    if (status !== VIRTIO_BLK_S_OK) this.stats.errors++
    return dataWritten + 1
  }

  /** Its state: nothing in flight, nothing of its own. */
  save(): VirtioBlockState {
    return { version: 1 } satisfies VirtioBlockState
  }

  /** Restores what {@link save} gave, active again with `context` when its transport was. */
  restore(state: VirtioBlockState, context?: VirtioContext): void {
    const { version: _, ...rest } = parseState<VirtioBlockState>('virtioBlock.restore: state', state, { version: version(1) })
    noneLeft(rest)
    this.context = context === undefined ? undefined : checkObject<VirtioContext>('virtioBlock.restore: context', context)
  }
}
