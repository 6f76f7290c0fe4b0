/**
 * What a block device reads and writes: guest memory ({@link MemoryDisk}) or a file
 * ({@link FileDisk}), read-only, read-write, or read-write into a copy-on-write overlay
 * that leaves the file untouched (QEMU's `-snapshot`). Reads go straight into the
 * guest's buffers: no copy in between.
 * @module
 */
import { checkBuffers, checkBytes, checkInteger, checkObject } from '../check.js'
import { closeSync, fstatSync, fsyncSync, mkdtempSync, openSync, readSync, readvSync, rmSync, unlinkSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MshvError, describe } from '../errors.js'

/** The storage behind a block device. Offsets and lengths are in bytes. */
export interface BlockBackend {
  /** Its size in bytes. */
  readonly size: number
  /** Whether writes are refused. */
  readonly readOnly: boolean
  /** Fills `into` from `offset` (the range lies inside `size`). */
  read(offset: number, into: Uint8Array): void
  /**
   * Fills `buffers` in order from `offset`, as one read: a request's scattered guest
   * pages in one system call (`preadv`). Optional: without it each buffer is a `read`.
   */
  readVectored?(offset: number, buffers: readonly Uint8Array[]): void
  /** Writes `data` at `offset` (inside `size`). */
  write(offset: number, data: Uint8Array): void
  /** Makes written data durable. */
  flush(): void
  /** The range's contents no longer matter (they may read as anything after). */
  discard(offset: number, length: number): void
  /** The range reads as zeros after. */
  writeZeroes(offset: number, length: number): void
  /** Releases what it holds (files). */
  close(): void
}

/** Calls `f` with each of `buffers` and the disk offset it starts at, from `offset` on. */
export function eachAt(offset: number, buffers: readonly Uint8Array[], f: (at: number, b: Uint8Array) => void): void {
  let at = offset
  for (const b of buffers) {
    f(at, b)
    at += b.length
  }
}

/**
 * Checks a request against a disk of `size` bytes: an integer `offset` from 0 and
 * `length` bytes that end inside the disk (virtio-blk refuses such requests before they
 * get here, with VIRTIO_BLK_S_IOERR; a caller of the backend gets `EINVAL`).
 */
function checkExtent(what: string, size: number, offset: unknown, length: unknown): void {
  checkInteger(`${what}: offset`, offset, 0, Number.MAX_SAFE_INTEGER)
  checkInteger(`${what}: length`, length, 0, Number.MAX_SAFE_INTEGER)
  if ((offset as number) + (length as number) > size) {
    throw new MshvError('EINVAL', `${what}: ${length as number} bytes at offset ${offset as number} end past the disk's ${size} bytes`)
  }
}

/** A disk held in memory: `size` zeroed bytes, or the bytes given (used in place). */
export class MemoryDisk implements BlockBackend {
  readonly bytes: Uint8Array
  readonly readOnly: boolean

  constructor(sizeOrBytes: number | Uint8Array, options: { readOnly?: boolean } = {}) {
    checkObject('MemoryDisk: options', options)
    if (sizeOrBytes instanceof Uint8Array) this.bytes = sizeOrBytes
    else {
      if (!Number.isSafeInteger(sizeOrBytes) || sizeOrBytes < 0) throw new MshvError('EINVAL', `MemoryDisk size must be a non-negative integer, got ${describe(sizeOrBytes)}`)
      try {
        this.bytes = new Uint8Array(sizeOrBytes)
      } catch (e) {
        // Past what a typed array can hold (2^32 bytes on Node 20), or more than the heap can get.
        throw new MshvError('ENOMEM', `MemoryDisk of ${sizeOrBytes} bytes cannot be allocated: ${(e as Error).message}`, { cause: e })
      }
    }
    this.readOnly = options.readOnly ?? false
  }

  get size(): number {
    return this.bytes.length
  }

  read(offset: number, into: Uint8Array): void {
    checkExtent('disk.read', this.size, offset, checkBytes('disk.read: into', into).length)
    into.set(this.bytes.subarray(offset, offset + into.length))
  }

  write(offset: number, data: Uint8Array): void {
    checkExtent('disk.write', this.size, offset, checkBytes('disk.write: data', data).length)
    if (this.readOnly) throw new MshvError('EROFS', 'the disk is read-only')
    this.bytes.set(data, offset)
  }

  flush(): void {}

  discard(offset: number, length: number): void {
    checkExtent('disk.discard', this.size, offset, length)
    this.bytes.fill(0, offset, offset + length)
  }

  writeZeroes(offset: number, length: number): void {
    checkExtent('disk.writeZeroes', this.size, offset, length)
    this.bytes.fill(0, offset, offset + length)
  }

  close(): void {}
}

/** Options for {@link FileDisk}. */
export interface FileDiskOptions {
  /** Refuse writes (the guest sees a read-only disk). */
  readOnly?: boolean
  /**
   * Write into a copy-on-write overlay (a deleted temporary file), never into the image:
   * the guest sees its writes, the file stays as it was.
   */
  overlay?: boolean
}

/** The granule of the overlay: a write of part of one copies the rest from the image first. */
const OVERLAY_BLOCK = 4096
const ZEROES = new Uint8Array(1 << 20)
/** The most buffers one `preadv` takes (Linux's UIO_MAXIOV). */
const IOV_MAX = 1024

/** Reads `into.length` bytes at `position` of `fd`, all of them (a short read past the end leaves zeros). */
function readFull(fd: number, into: Uint8Array, position: number): void {
  let done = 0
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done)
    if (n === 0) {
      into.fill(0, done)
      return
    }
    done += n
  }
}

function writeFull(fd: number, data: Uint8Array, position: number): void {
  let done = 0
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done)
}

/** A disk image file (raw), read and written with positioned I/O. */
export class FileDisk implements BlockBackend {
  readonly size: number
  readonly readOnly: boolean
  private readonly fd: number
  /** The overlay's file and which of its blocks hold data (1) or are still the image's (0). */
  private readonly overlay: { fd: number; written: Uint8Array } | undefined
  private closed = false

  constructor(
    /** The image's path. */
    readonly path: string,
    options: FileDiskOptions = {},
  ) {
    if (typeof path !== 'string') throw new MshvError('EINVAL', `FileDisk takes a file path, got ${describe(path)}`)
    checkObject('FileDisk: options', options)
    const readOnly = options.readOnly ?? false
    const overlay = options.overlay ?? false
    try {
      this.fd = openSync(path, readOnly || overlay ? 'r' : 'r+')
    } catch (e) {
      throw new MshvError('ENOENT', `disk image ${path}: ${(e as Error).message}`)
    }
    // A trailing partial sector is not addressable (QEMU rounds down too).
    this.size = Math.floor(fstatSync(this.fd).size / 512) * 512
    this.readOnly = readOnly
    if (overlay && !readOnly) {
      const dir = mkdtempSync(join(tmpdir(), 'mshv-overlay-'))
      const file = join(dir, 'overlay')
      const fd = openSync(file, 'w+')
      // Deleted at once: it lives as long as the descriptor, whatever ends the process.
      unlinkSync(file)
      rmSync(dir, { recursive: true })
      this.overlay = { fd, written: new Uint8Array(Math.ceil(this.size / OVERLAY_BLOCK)) }
    }
  }

  private check(): void {
    if (this.closed) throw new MshvError('ECLOSED', `disk image ${this.path} is closed`)
  }

  read(offset: number, into: Uint8Array): void {
    this.check()
    checkExtent('disk.read', this.size, offset, checkBytes('disk.read: into', into).length)
    const o = this.overlay
    if (!o) {
      readFull(this.fd, into, offset)
      return
    }
    // Runs of blocks from the same file, each read in one call.
    let at = 0
    while (at < into.length) {
      const block = Math.floor((offset + at) / OVERLAY_BLOCK)
      const fromOverlay = o.written[block] === 1
      let end = at
      while (end < into.length && (o.written[Math.floor((offset + end) / OVERLAY_BLOCK)] === 1) === fromOverlay) {
        end = Math.min(into.length, (Math.floor((offset + end) / OVERLAY_BLOCK) + 1) * OVERLAY_BLOCK - offset)
      }
      readFull(fromOverlay ? o.fd : this.fd, into.subarray(at, end), offset + at)
      at = end
    }
  }

  readVectored(offset: number, buffers: readonly Uint8Array[]): void {
    this.check()
    let length = 0
    for (const b of checkBuffers('disk.readVectored: buffers', buffers, 1 << 20)) length += b.length
    checkExtent('disk.readVectored', this.size, offset, length)
    const o = this.overlay
    // Blocks the overlay holds are read one by one; the image's in one preadv per IOV_MAX buffers.
    if (o && o.written.subarray(Math.floor(offset / OVERLAY_BLOCK), Math.floor((offset + length - 1) / OVERLAY_BLOCK) + 1).includes(1)) {
      eachAt(offset, buffers, (at, b) => this.read(at, b))
      return
    }
    let at = offset
    for (let i = 0; i < buffers.length; i += IOV_MAX) {
      const batch = buffers.slice(i, i + IOV_MAX)
      let want = 0
      for (const b of batch) want += b.length
      const n = readvSync(this.fd, batch, at)
      if (n < want) {
        // A short read (the end of the file, a signal): the rest one buffer at a time.
        let skip = n
        let pos = at
        for (const b of batch) {
          if (skip >= b.length) skip -= b.length
          else {
            readFull(this.fd, b.subarray(skip), pos + skip)
            skip = 0
          }
          pos += b.length
        }
      }
      at += want
    }
  }

  write(offset: number, data: Uint8Array): void {
    this.check()
    if (this.readOnly) throw new MshvError('EROFS', `disk image ${this.path} is read-only`)
    checkExtent('disk.write', this.size, offset, checkBytes('disk.write: data', data).length)
    const o = this.overlay
    if (!o) {
      writeFull(this.fd, data, offset)
      return
    }
    // A block written in part gets the rest of its bytes from the image first.
    const first = Math.floor(offset / OVERLAY_BLOCK)
    const last = Math.floor((offset + data.length - 1) / OVERLAY_BLOCK)
    for (const b of new Set([first, last])) {
      const start = b * OVERLAY_BLOCK
      const whole = offset <= start && offset + data.length >= start + OVERLAY_BLOCK
      if (o.written[b] !== 1 && !whole) {
        const copy = new Uint8Array(Math.min(OVERLAY_BLOCK, this.size - start))
        readFull(this.fd, copy, start)
        writeFull(o.fd, copy, start)
      }
    }
    writeFull(o.fd, data, offset)
    o.written.fill(1, first, last + 1)
  }

  flush(): void {
    this.check()
    // The overlay is thrown away at the end: nothing of it needs to reach the disk.
    if (!this.overlay && !this.readOnly) fsyncSync(this.fd)
  }

  discard(): void {
    // Discarded contents may read as anything (VIRTIO 1.2, 5.2.6.1): keeping them is allowed.
  }

  writeZeroes(offset: number, length: number): void {
    checkExtent('disk.writeZeroes', this.size, offset, length)
    for (let at = 0; at < length; at += ZEROES.length) this.write(offset + at, ZEROES.subarray(0, Math.min(ZEROES.length, length - at)))
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    closeSync(this.fd)
    if (this.overlay) closeSync(this.overlay.fd)
  }
}
