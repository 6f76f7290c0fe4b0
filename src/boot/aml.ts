/**
 * The few AML terms the DSDT needs (ACPI 6.4, chapter 20 "ACPI Machine Language
 * Specification", and 6.4 "Resource Data Types for ACPI"), encoded to bytes: names,
 * integers, packages, buffers, scopes, devices and the resource descriptors of a PCI
 * host bridge's `_CRS`. Each function returns the term's bytes.
 * @module
 */
import { MshvError } from '../errors.js'

/** A term's bytes. */
export type Aml = number[]

/** PkgLength (20.2.4): the length of what follows, itself included, in 1 to 4 bytes. */
function pkgLength(contents: number): Aml {
  if (contents + 1 < 0x40) return [contents + 1]
  for (let n = 2; n <= 4; n++) {
    const total = contents + n
    if (total < 2 ** (4 + 8 * (n - 1))) {
      const out = [((n - 1) << 6) | (total & 0xf)]
      for (let i = 1; i < n; i++) out.push((total >>> (4 + 8 * (i - 1))) & 0xff)
      return out
    }
  }
  throw new MshvError('EINVAL', `AML package of ${contents} bytes is too long`)
}

/** A term with a PkgLength: `op` bytes, the length, then `body`. */
function withLength(op: Aml, body: Aml): Aml {
  return [...op, ...pkgLength(body.length), ...body]
}

/**
 * A NameString (20.2.2): `\` for the root, then 4-character segments (padded with `_`),
 * more than one joined by DualNamePrefix or MultiNamePrefix: `\_SB_.PCI0`, `_HID`.
 */
export function nameString(path: string): Aml {
  const root = path.startsWith('\\')
  const segs = (root ? path.slice(1) : path).split('.').filter((s) => s.length > 0)
  const out: Aml = root ? [0x5c] : []
  if (segs.length === 2) out.push(0x2e)
  else if (segs.length > 2) out.push(0x2f, segs.length)
  for (const s of segs) {
    if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(s)) throw new MshvError('EINVAL', `AML name segment '${s}' must be 1-4 of A-Z, 0-9, _ (not starting with a digit)`)
    for (const c of s.padEnd(4, '_')) out.push(c.charCodeAt(0))
  }
  return out
}

/** An integer in its shortest form: Zero, One, Byte-, Word-, DWord- or QWordConst (20.2.3). */
export function integer(v: number): Aml {
  if (!Number.isSafeInteger(v) || v < 0) throw new MshvError('EINVAL', `AML integer must be a non-negative safe integer, got ${v}`)
  if (v === 0) return [0x00]
  if (v === 1) return [0x01]
  if (v < 0x100) return [0x0a, v]
  if (v < 0x1_0000) return [0x0b, ...le(v, 2)]
  if (v < 2 ** 32) return [0x0c, ...le(v, 4)]
  return [0x0e, ...le(v, 8)]
}

/** `v` little-endian in `n` bytes. */
function le(v: number, n: number): Aml {
  const out: Aml = []
  for (let i = 0; i < n; i++) out.push(Math.floor(v / 2 ** (8 * i)) & 0xff)
  return out
}

/**
 * An EISA ID (`EisaId("PNP0A08")`, 19.6.35) as the DWordConst iasl makes: three letters
 * in 5 bits each and four hex digits, stored big-endian.
 */
export function eisaId(id: string): Aml {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new MshvError('EINVAL', `EISA ID must be 3 capital letters and 4 hex digits, got '${id}'`)
  const c = (i: number): number => (id.charCodeAt(i) - 0x40) & 0x1f
  const v = ((c(0) << 26) | (c(1) << 21) | (c(2) << 16) | parseInt(id.slice(3), 16)) >>> 0
  const swapped = (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0
  return [0x0c, ...le(swapped, 4)]
}

/** `Name (name, value)` (20.2.5.1). */
export function name(path: string, value: Aml): Aml {
  return [0x08, ...nameString(path), ...value]
}

/** `Package () { elements }` (20.2.5.4). */
export function pkg(elements: readonly Aml[]): Aml {
  if (elements.length > 255) throw new MshvError('EINVAL', `an AML Package holds at most 255 elements, got ${elements.length}`)
  return withLength([0x12], [elements.length, ...elements.flat()])
}

/** `Buffer () { bytes }` (20.2.5.4). */
export function buffer(bytes: readonly number[]): Aml {
  return withLength([0x11], [...integer(bytes.length), ...bytes])
}

/** `Scope (path) { terms }` (20.2.5.1). */
export function scope(path: string, terms: readonly Aml[]): Aml {
  return withLength([0x10], [...nameString(path), ...terms.flat()])
}

/** `Device (path) { terms }` (20.2.5.2). */
export function device(path: string, terms: readonly Aml[]): Aml {
  return withLength([0x5b, 0x82], [...nameString(path), ...terms.flat()])
}

/** `ResourceTemplate () { descriptors }`: a Buffer of resource descriptors and the End Tag (6.4.2.9). */
export function resourceTemplate(descriptors: readonly Aml[]): Aml {
  return buffer([...descriptors.flat(), 0x79, 0x00])
}

/** General flags of an address space a bridge produces: MinFixed, MaxFixed, positive decode, producer (6.4.3.5). */
const PRODUCER_FIXED = 0x0c

/** `WordBusNumber` (6.4.3.5.3, resource type 2): buses `min..max` below the bridge. */
export function wordBusNumber(min: number, max: number): Aml {
  return [0x88, 0x0d, 0x00, 0x02, PRODUCER_FIXED, 0x00, ...le(0, 2), ...le(min, 2), ...le(max, 2), ...le(0, 2), ...le(max - min + 1, 2)]
}

/** `WordIO` (6.4.3.5.3, resource type 1): I/O ports `min..max` the bridge forwards (ISA and non-ISA ranges). */
export function wordIo(min: number, max: number): Aml {
  return [0x88, 0x0d, 0x00, 0x01, PRODUCER_FIXED, 0x03, ...le(0, 2), ...le(min, 2), ...le(max, 2), ...le(0, 2), ...le(max - min + 1, 2)]
}

/** `DWordMemory` (6.4.3.5.2, resource type 0): memory `min..max` the bridge forwards, read-write, non-cacheable. */
export function dwordMemory(min: number, max: number): Aml {
  return [0x87, 0x17, 0x00, 0x00, PRODUCER_FIXED, 0x01, ...le(0, 4), ...le(min, 4), ...le(max, 4), ...le(0, 4), ...le(max - min + 1, 4)]
}

/** `IO (Decode16, min, min, 1, length)` (6.4.2.5): fixed I/O ports the device itself decodes. */
export function io(min: number, length: number): Aml {
  return [0x47, 0x01, ...le(min, 2), ...le(min, 2), 0x01, length]
}
