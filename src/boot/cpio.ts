/**
 * An initramfs: a cpio archive in the "newc" format the kernel unpacks
 * (`Documentation/driver-api/early-userspace/buffer-format.rst`).
 * @module
 */
import { MshvError, describe } from '../errors.js'

/** One entry: a directory, a file (with its bytes), a symlink or a character device. */
export type CpioEntry =
  | { path: string; type: 'dir'; mode?: number }
  | { path: string; type: 'file'; data: Uint8Array | string; mode?: number }
  | { path: string; type: 'symlink'; target: string }
  | { path: string; type: 'char'; major: number; minor: number; mode?: number }

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const S_IFCHR = 0o020000

/** The most entries an archive takes (Debian's whole /lib/modules has ~6,000). */
const MAX_ENTRIES = 1 << 20

/** The archive of `entries`, ending with the TRAILER!!! entry. */
export function cpioArchive(entries: readonly CpioEntry[]): Uint8Array {
  const enc = new TextEncoder()
  const parts: Uint8Array[] = []
  let size = 0
  const push = (b: Uint8Array): void => {
    parts.push(b)
    size += b.length
    const pad = (4 - (size % 4)) % 4
    if (pad) {
      parts.push(new Uint8Array(pad))
      size += pad
    }
  }
  const add = (ino: number, name: string, mode: number, data: Uint8Array, rdev: [number, number] = [0, 0]): void => {
    const nameBytes = enc.encode(`${name}\0`)
    const fields = [ino, mode, 0, 0, 1, 0, data.length, 0, 0, rdev[0], rdev[1], nameBytes.length, 0]
    const header = `070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`
    const head = new Uint8Array(header.length + nameBytes.length)
    head.set(enc.encode(header))
    head.set(nameBytes, header.length)
    push(head)
    if (data.length) push(data)
  }
  // Bounded before the walk: a sparse array of 2^32-1 holes took minutes to walk.
  if (!Array.isArray(entries) || entries.length > MAX_ENTRIES) throw new MshvError('EINVAL', `cpioArchive takes an array of at most ${MAX_ENTRIES} entries, got ${describe(entries)}`)
  entries.forEach((e, i) => {
    const path: unknown = e?.path
    // A relative path of plain names: no '..' (it would climb out of the archive's root when
    // unpacked), no NUL (the name's terminator), not the trailer's name (it ends the archive).
    if (typeof path !== 'string' || path === '' || path.startsWith('/') || path.includes('\0') || path === 'TRAILER!!!' || path.split('/').includes('..')) {
      throw new MshvError('EINVAL', `cpio entry ${i}: path must be a relative path without '..', NUL or the name TRAILER!!!, got ${describe(path)}`)
    }
    const mode: unknown = (e as { mode?: unknown }).mode
    if (mode !== undefined && (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o7777)) {
      throw new MshvError('EINVAL', `cpio entry ${i} (${path}): mode must be permission bits in 0..0o7777, got ${describe(mode)}`)
    }
    if (e.type === 'char') {
      for (const [what, v] of [['major', e.major], ['minor', e.minor]] as const) {
        // newc's c_rdevmajor/c_rdevminor are 8 hex digits (buffer-format.rst).
        if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new MshvError('EINVAL', `cpio entry ${i} (${path}): ${what} must be an integer in 0..0xffffffff, got ${describe(v)}`)
      }
    }
    if (e.type === 'file' && typeof e.data !== 'string' && !(e.data instanceof Uint8Array)) throw new MshvError('EINVAL', `cpio entry ${i} (${path}): data must be bytes or a string, got ${describe(e.data)}`)
    if (e.type === 'symlink' && typeof e.target !== 'string') throw new MshvError('EINVAL', `cpio entry ${i} (${path}): target must be a string, got ${describe(e.target)}`)
    switch (e.type) {
      case 'dir':
        add(i + 1, e.path, S_IFDIR | (e.mode ?? 0o755), new Uint8Array())
        break
      case 'file':
        add(i + 1, e.path, S_IFREG | (e.mode ?? 0o644), typeof e.data === 'string' ? enc.encode(e.data) : e.data)
        break
      case 'symlink':
        add(i + 1, e.path, S_IFLNK | 0o777, enc.encode(e.target))
        break
      case 'char':
        add(i + 1, e.path, S_IFCHR | (e.mode ?? 0o600), new Uint8Array(), [e.major, e.minor])
        break
      default:
        throw new MshvError('EINVAL', `cpio entry ${i}: type must be 'dir', 'file', 'symlink' or 'char', got ${describe((e as { type?: unknown }).type)}`)
    }
  })
  add(0, 'TRAILER!!!', 0, new Uint8Array())
  const out = new Uint8Array(size)
  let p = 0
  for (const b of parts) {
    out.set(b, p)
    p += b.length
  }
  return out
}
