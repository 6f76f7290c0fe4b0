/**
 * The running kernel's own symbol table, found in guest physical memory: the kallsyms
 * tables a kernel built with CONFIG_KALLSYMS carries in its .rodata (what
 * `/proc/kallsyms` reads), found without knowing where they are, the way
 * vmlinux-to-elf's kallsyms_finder.py (github marin-m/vmlinux-to-elf) finds them in an
 * image: by the token table's run of single digits, then each neighbour checked against
 * the others.
 *
 * The tables, as scripts/kallsyms.c's write_src() emits them (each label `.balign 8`):
 * - `kallsyms_token_table`: 256 NUL-terminated strings; a byte of a compressed name
 *   stands for the token of its number, and a character that occurs in names is its own
 *   one-character token at its own code (insert_real_symbols_in_table), so "0".."9"
 *   lie at 0x30..0x39, one after another.
 * - `kallsyms_token_index`: 256 u16, each token's offset in the table; it follows the
 *   token table in every version.
 * - `kallsyms_names`: per symbol a length (1 byte, or 2 as ULEB128 past 127: Linux 6.1's
 *   "big" symbols) and that many token bytes; the first character expanded is the
 *   symbol's `nm` type letter.
 * - `kallsyms_markers`: u32 per 256 symbols, the offset of each 256th name.
 * - `kallsyms_num_syms`: u32, 8 bytes before the names.
 * - `kallsyms_offsets`: s32 per symbol, with `kallsyms_relative_base` (u64) after it
 *   (CONFIG_KALLSYMS_BASE_RELATIVE, x86-64's default). With
 *   CONFIG_KALLSYMS_ABSOLUTE_PERCPU (Debian's 6.1 amd64 config) an offset >= 0 is an
 *   absolute value (a per-CPU symbol) and a negative one means `relative_base - 1 -
 *   offset`; without it each is an unsigned offset from `relative_base`
 *   (kernel/kallsyms.c, kallsyms_sym_address()).
 * - `kallsyms_seqs_of_names`: 3 bytes per symbol, big-endian (Linux 6.2, Zhen Lei's
 *   "kallsyms: Reduce the memory occupied by kallsyms_seqs_of_names[]"; in Debian's
 *   6.1.192 too, by a backport: found between the markers and the token table in
 *   linux-image-6.1.0-57).
 *
 * Their order changed: up to 6.3, offsets, relative_base, num_syms, names, markers,
 * [seqs_of_names,] token_table, token_index; from 6.4 (Masahiro Yamada's "scripts/kallsyms:
 * change the output order", March 2023), num_syms, names, markers,
 * token_table, token_index, offsets, relative_base, seqs_of_names. Both are tried.
 *
 * Under KASLR the decompressor relocates `kallsyms_relative_base` (it is `_text + off`,
 * a relocated quad), so the tables read from memory give the run-time addresses, as
 * `/proc/kallsyms` does; with `nokaslr` (or the PVH entry, which skips the decompressor)
 * the link addresses. Kernels whose offsets are place-relative and have no
 * `kallsyms_relative_base` (newer than 6.12) are not read.
 * @module
 */
import { SymbolTable, type KernelSymbol } from './table.js'
import { hex } from '../../errors.js'
import { checkBytes, checkInteger, invalid } from '../../check.js'

/** One stretch of guest physical memory to search. */
export interface MemoryRegion {
  /** Its first guest physical address. */
  readonly start: number
  /** Its bytes. */
  readonly bytes: Uint8Array
}

/** Where the kallsyms tables were found, and what they hold. */
export interface KallsymsFound {
  readonly table: SymbolTable
  /** Guest physical address of `kallsyms_names`. */
  readonly names: number
  /** Guest physical address of `kallsyms_token_table`. */
  readonly tokenTable: number
  /** `'6.1'` (offsets before the names: Linux up to 6.3) or `'6.4'` (offsets after the token index). */
  readonly layout: '6.1' | '6.4'
  /** Whether the offsets use CONFIG_KALLSYMS_ABSOLUTE_PERCPU's encoding. */
  readonly absolutePercpu: boolean
  /** `kallsyms_relative_base` as read (the run-time value under KASLR). */
  readonly relativeBase: bigint
}

/** "0\0" .. "9\0": the one-character tokens 0x30..0x39 of the token table. */
const DIGITS = Uint8Array.from([...'0123456789'].flatMap((c) => [c.charCodeAt(0), 0]))
/** scripts/kallsyms.c refuses names longer than 0x3FFF (two ULEB128 bytes). */
const MAX_NAME_BYTES = 0x3fff
/** The most symbols read (a distribution kernel has about 200,000). */
const MAX_SYMS = 1 << 22
/** How far below the token table the markers are looked for: past seqs_of_names (4 bytes a symbol at most). */
const MARKER_WINDOW = 5 * MAX_SYMS
/** The last 256 names take at most this many bytes in the tables of any real kernel (each is a few tokens). */
const LAST_GROUP_MAX = 256 * 256
/** The most regions searched (a VM has at most a few hundred). */
const MAX_REGIONS = 4096
/** Kernel addresses are in the upper half: kallsyms_relative_base must be one. */
const KERNEL_HALF = 0xffff_8000_0000_0000n

const align8 = (n: number): number => (n + 7) & ~7

/** A bounds-checked little-endian reader over one region. */
class Reader {
  readonly dv: DataView
  constructor(readonly bytes: Uint8Array) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  }
  u16(o: number): number | undefined {
    return o >= 0 && o + 2 <= this.bytes.length ? this.dv.getUint16(o, true) : undefined
  }
  u32(o: number): number | undefined {
    return o >= 0 && o + 4 <= this.bytes.length ? this.dv.getUint32(o, true) : undefined
  }
  i32(o: number): number | undefined {
    return o >= 0 && o + 4 <= this.bytes.length ? this.dv.getInt32(o, true) : undefined
  }
  u64(o: number): bigint | undefined {
    return o >= 0 && o + 8 <= this.bytes.length ? this.dv.getBigUint64(o, true) : undefined
  }
}

/**
 * Searches `regions` (guest physical memory, e.g. every RAM region of a VM whose kernel
 * has booted) for the kernel's kallsyms tables; `undefined` when none are found (no
 * kernel there yet, a kernel without CONFIG_KALLSYMS, or a layout this does not read).
 */
export function findKallsyms(regions: readonly MemoryRegion[]): KallsymsFound | undefined {
  if (!Array.isArray(regions) || regions.length > MAX_REGIONS) throw invalid('findKallsyms: regions', `an array of at most ${MAX_REGIONS} { start, bytes }`, regions)
  regions.forEach((region: unknown, i) => {
    const r = region as Partial<MemoryRegion> | null
    if (typeof r !== 'object' || r === null) throw invalid(`findKallsyms: regions[${i}]`, 'a { start, bytes }', region)
    checkInteger(`findKallsyms: regions[${i}].start`, r.start, 0, Number.MAX_SAFE_INTEGER)
    checkBytes(`findKallsyms: regions[${i}].bytes`, r.bytes)
  })
  for (const region of regions) {
    const r = new Reader(region.bytes)
    const buf = Buffer.from(region.bytes.buffer, region.bytes.byteOffset, region.bytes.byteLength)
    for (let at = buf.indexOf(DIGITS); at !== -1; at = buf.indexOf(DIGITS, at + 1)) {
      const found = atDigits(r, region.start, at)
      if (found) return found
    }
  }
  return undefined
}

/** The tables around a token table whose "0" is at `at`, if they check out. */
function atDigits(r: Reader, base: number, at: number): KallsymsFound | undefined {
  const bytes = r.bytes
  // Back 0x30 strings to token 0.
  let t = at
  for (let k = 0; k < 0x30; k++) {
    if (t < 1 || bytes[t - 1] !== 0) return undefined
    let q = t - 2
    while (q >= 0 && bytes[q] !== 0 && t - q < 256) q--
    if (q >= 0 && bytes[q] !== 0) return undefined
    t = q + 1
  }
  if ((base + t) % 8 !== 0) return undefined
  // 256 strings, and the index of their offsets right after them.
  const tokens: string[] = []
  const offsets: number[] = []
  let p = t
  for (let k = 0; k < 256; k++) {
    const end = bytes.indexOf(0, p)
    if (end === -1 || end - p > 255) return undefined
    offsets.push(p - t)
    tokens.push(Buffer.from(bytes.buffer, bytes.byteOffset + p, end - p).toString('latin1'))
    p = end + 1
  }
  const index = align8(base + p) - base
  for (let k = 0; k < 256; k++) if (r.u16(index + 2 * k) !== offsets[k]) return undefined
  return belowTokens(r, base, t, index, tokens)
}

/** The markers and names below the token table at `t`, then the addresses. */
function belowTokens(r: Reader, base: number, t: number, index: number, tokens: readonly string[]): KallsymsFound | undefined {
  for (let m = align8(base + t - 8) - base; m >= 0 && t - m <= MARKER_WINDOW; m -= 8) {
    if (r.u32(m) !== 0) continue
    // The run of increasing markers from m: each 256 names take at least 512 bytes (a
    // length byte and a token each) and at most 256 * (2 + MAX_NAME_BYTES).
    const markers = [0]
    for (let o = m + 4; o < t; o += 4) {
      const v = r.u32(o) as number
      const step = v - (markers[markers.length - 1] as number)
      if (step < 512 || step > 256 * (2 + MAX_NAME_BYTES)) break
      markers.push(v)
    }
    for (let k = markers.length; k >= Math.max(1, markers.length - 2); k--) {
      const found = withMarkers(r, base, m, markers.slice(0, k), t, index, tokens)
      if (found) return found
    }
  }
  return undefined
}

/** Names that end at the markers at `m` (the `k` of them given), with num_syms 8 bytes before them. */
function withMarkers(r: Reader, base: number, m: number, markers: readonly number[], t: number, index: number, tokens: readonly string[]): KallsymsFound | undefined {
  const k = markers.length
  const last = markers[k - 1] as number
  for (let n = align8(base + m - last - 2) - base; n >= 8 && m - last - n <= LAST_GROUP_MAX; n -= 8) {
    const count = r.u32(n - 8) as number
    if (count <= 256 * (k - 1) || count > 256 * k || count > MAX_SYMS || r.u32(n - 4) !== 0) continue
    const names = decodeNames(r, n, count, markers, m, tokens)
    if (!names) continue
    const addresses = readAddresses(r, base, n, count, index)
    if (!addresses) continue
    const symbols: KernelSymbol[] = names.map((full, i) => ({ type: full[0] as string, name: full.slice(1), address: addresses.values[i] as bigint }))
    const layout = addresses.layout
    const table = new SymbolTable(symbols, `kallsyms in guest RAM at ${hex(base + n)} (the Linux ${layout === '6.1' ? '<= 6.3' : '>= 6.4'} layout)`)
    return { table, names: base + n, tokenTable: base + t, layout, absolutePercpu: addresses.absolutePercpu, relativeBase: addresses.relativeBase }
  }
  return undefined
}

/** `count` names from `n`, each 256th at its marker, ending within the 8 bytes below `m`; `undefined` where they do not. */
function decodeNames(r: Reader, n: number, count: number, markers: readonly number[], m: number, tokens: readonly string[]): string[] | undefined {
  const bytes = r.bytes
  const out: string[] = new Array<string>(count)
  let p = n
  for (let i = 0; i < count; i++) {
    if ((i & 0xff) === 0 && p - n !== markers[i >> 8]) return undefined
    if (p >= m) return undefined
    let len = bytes[p++] as number
    if (len & 0x80) len = (len & 0x7f) | ((bytes[p++] as number) << 7)
    if (len === 0 || p + len > m) return undefined
    let s = ''
    for (let j = 0; j < len; j++) s += tokens[bytes[p + j] as number]
    if (s.length < 2) return undefined
    out[i] = s
    p += len
  }
  return m - p < 8 ? out : undefined
}

/** The symbols' addresses from kallsyms_offsets and kallsyms_relative_base, in either layout. */
function readAddresses(r: Reader, base: number, n: number, count: number, index: number): { values: bigint[]; layout: '6.1' | '6.4'; absolutePercpu: boolean; relativeBase: bigint } | undefined {
  // Up to 6.3: relative_base just below num_syms; from 6.4: offsets after token_index.
  const o64 = align8(base + index + 512) - base
  const candidates: { offsets: number; baseAt: number; layout: '6.1' | '6.4' }[] = [
    { offsets: n - 16 - align8(4 * count), baseAt: n - 16, layout: '6.1' },
    { offsets: o64, baseAt: align8(base + o64 + 4 * count) - base, layout: '6.4' },
  ]
  for (const c of candidates) {
    const relativeBase = r.u64(c.baseAt)
    if (relativeBase === undefined || relativeBase < KERNEL_HALF || r.i32(c.offsets) === undefined || r.i32(c.offsets + 4 * count - 4) === undefined) continue
    let negative = 0
    for (let i = 0; i < count; i++) if ((r.i32(c.offsets + 4 * i) as number) < 0) negative++
    const absolutePercpu = negative > count / 2
    const values: bigint[] = new Array<bigint>(count)
    let previous = 0n
    let sorted = true
    for (let i = 0; i < count && sorted; i++) {
      const v = r.i32(c.offsets + 4 * i) as number
      const a = !absolutePercpu ? relativeBase + BigInt(v >>> 0) : v >= 0 ? BigInt(v) : relativeBase - 1n - BigInt(v)
      // The table is sorted by address (scripts/kallsyms.c sort_symbols).
      sorted = a >= previous
      previous = a
      values[i] = a
    }
    if (sorted) return { values, layout: c.layout, absolutePercpu, relativeBase }
  }
  return undefined
}
