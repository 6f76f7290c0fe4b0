/**
 * Kernel images: a bzImage's setup header (Linux x86 boot protocol,
 * `Documentation/arch/x86/boot.rst`) and an ELF `vmlinux`'s loadable segments and PVH
 * entry (`XEN_ELFNOTE_PHYS32_ENTRY`, the note Cloud Hypervisor and Firecracker boot
 * through). A bzImage's compressed kernel is unpacked natively, so the guest never
 * runs the decompressor (4.5 billion instructions of Debian's xz kernel).
 * @module
 */
import { MshvError, hex } from '../errors.js'
import { native } from '../native.js'
import { checkBytes, checkString } from '../check.js'

/** A kernel ready to load: its segments at their physical addresses and its PVH entry. */
export interface KernelElf {
  /** Where each loadable segment goes (its `p_paddr`), and its bytes; `memSize` past them is zeroed. */
  readonly segments: readonly { paddr: number; data: Uint8Array; memSize: number }[]
  /** The 32-bit PVH entry point (physical). */
  readonly pvhEntry: number
  /** The highest physical address the image occupies. */
  readonly end: number
  /** What the image was (`bzImage (protocol 2.15, xz)` or `ELF`), for reports. */
  readonly description: string
}

const HDR_MAGIC = 0x5372_6448 // "HdrS"
/** The boot protocol that added `payload_offset`/`payload_length` (2.08) is the oldest this reads. */
const MIN_PROTOCOL = 0x0208
/** PT_LOAD and PT_NOTE. */
const PT_LOAD = 1
const PT_NOTE = 4
/** `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h). */
const XEN_ELFNOTE_PHYS32_ENTRY = 18
/** The most a kernel may unpack to: far beyond any distribution kernel (Debian's: 63 MiB). */
const MAX_KERNEL = 512 << 20

function fail(file: string, field: string, what: string): never {
  throw new MshvError('EKERNEL', `${file}: ${field}: ${what}`)
}

/** Reads `file`'s bytes as a kernel: a bzImage (unpacked here) or an ELF vmlinux. */
export function readKernel(bytes: Uint8Array, file = 'kernel'): KernelElf {
  checkBytes('readKernel: bytes', bytes)
  checkString('readKernel: file', file, 4096)
  if (bytes.length >= 4 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46) {
    return parseElf(bytes, file, 'ELF vmlinux')
  }
  const { payload, description } = bzImagePayload(bytes, file)
  let elf: Uint8Array
  try {
    elf = native.unpackKernelPayload(payload, MAX_KERNEL) as Uint8Array
  } catch (e) {
    fail(file, 'payload', e instanceof Error ? e.message : String(e))
  }
  return parseElf(elf, `${file} (unpacked payload)`, description)
}

/** The compressed kernel inside a bzImage, checked field by field. */
export function bzImagePayload(bytes: Uint8Array, file = 'kernel'): { payload: Uint8Array; description: string; protocol: number } {
  checkBytes('bzImagePayload: bytes', bytes)
  checkString('bzImagePayload: file', file, 4096)
  if (bytes.length < 0x270) fail(file, 'size', `${bytes.length} bytes is too short for a bzImage's setup header (0x270 bytes)`)
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (dv.getUint16(0x1fe, true) !== 0xaa55) fail(file, 'boot_flag (0x1fe)', `0x${dv.getUint16(0x1fe, true).toString(16)}, expected 0xaa55: not a bzImage or an ELF`)
  if (dv.getUint32(0x202, true) !== HDR_MAGIC) fail(file, 'header (0x202)', `0x${dv.getUint32(0x202, true).toString(16)}, expected "HdrS" (0x53726448)`)
  const protocol = dv.getUint16(0x206, true)
  if (protocol < MIN_PROTOCOL) {
    fail(file, 'version (0x206)', `boot protocol ${protocol >> 8}.${protocol & 0xff} predates payload_offset (2.08 and later are supported)`)
  }
  const setupSects = bytes[0x1f1] || 4 // 0 means 4 (boot.rst)
  const payloadOffset = dv.getUint32(0x248, true)
  const payloadLength = dv.getUint32(0x24c, true)
  const start = (setupSects + 1) * 512 + payloadOffset
  if (payloadLength === 0 || start + payloadLength > bytes.length) {
    fail(file, 'payload_offset/payload_length (0x248)', `payload at ${start} + ${payloadLength} bytes runs past the file's ${bytes.length} bytes (truncated?)`)
  }
  const payload = bytes.subarray(start, start + payloadLength)
  const format = payload[0] === 0xfd ? 'xz' : payload[0] === 0x1f ? 'gzip' : payload[0] === 0x28 ? 'zstd' : 'unknown compression'
  return { payload, description: `bzImage (protocol ${protocol >> 8}.${protocol & 0xff}, ${format})`, protocol }
}

/** A bzImage for the 64-bit boot protocol (`Documentation/arch/x86/boot.rst`, "64-bit BOOT PROTOCOL"). */
export interface BzImage {
  /** The setup header (from 0x1f1 to its end), to copy into boot_params. */
  readonly header: Uint8Array
  /** The protected-mode kernel (the decompressor and its payload), loaded at `prefAddress`. */
  readonly kernel: Uint8Array
  /** Where the kernel is loaded (`pref_address`, 0x258). */
  readonly prefAddress: number
  /** How much memory from `prefAddress` the kernel needs while it decompresses itself (`init_size`, 0x260). */
  readonly initSize: number
  readonly protocol: number
  readonly description: string
}

/** `xloadflags` (0x236) bit 0: the kernel has the 64-bit entry point at +0x200. */
const XLF_KERNEL_64 = 1

/** A bzImage checked for the 64-bit boot protocol (2.12+, XLF_KERNEL_64). */
export function readBzImage(bytes: Uint8Array, file = 'kernel'): BzImage {
  const { description, protocol } = bzImagePayload(bytes, file)
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (protocol < 0x020c) fail(file, 'version (0x206)', `boot protocol ${protocol >> 8}.${protocol & 0xff} has no xloadflags: the 64-bit entry needs 2.12 or later`)
  const xloadflags = dv.getUint16(0x236, true)
  if ((xloadflags & XLF_KERNEL_64) === 0) fail(file, 'xloadflags (0x236)', `0x${xloadflags.toString(16)}: the kernel has no 64-bit entry point (XLF_KERNEL_64)`)
  const setupSects = bytes[0x1f1] || 4
  const headerEnd = 0x202 + (bytes[0x201] as number)
  return {
    header: bytes.subarray(0x1f1, headerEnd),
    kernel: bytes.subarray((setupSects + 1) * 512),
    prefAddress: Number(dv.getBigUint64(0x258, true)),
    initSize: dv.getUint32(0x260, true),
    protocol,
    description,
  }
}

/** The fields of an ELF file's header this package reads (the System V ABI's `Elf32_Ehdr`/`Elf64_Ehdr`). @internal */
export interface ElfHeader {
  /** 64 for ELF64 (x86-64), 32 for ELF32 (i386). */
  readonly bits: 32 | 64
  /** The whole file, little-endian. */
  readonly dv: DataView
  readonly phoff: number
  readonly phentsize: number
  readonly phnum: number
  readonly shoff: number
  readonly shentsize: number
  readonly shnum: number
  readonly shstrndx: number
}

/**
 * An x86 ELF's header, checked: little-endian, ELF64 for x86-64 (e_machine 62), or with
 * `elf32` also ELF32 for i386 (3); offsets as in the System V ABI (gABI "ELF Header").
 * Errors are `code` (`EKERNEL` for a kernel, `ESYMBOLS` for a symbol file) naming the
 * field. The kernel loader and the symbol reader share it. @internal
 */
export function elfHeader(bytes: Uint8Array, file: string, code: string, elf32: boolean): ElfHeader {
  const bad = (field: string, what: string): never => {
    throw new MshvError(code, `${file}: ${field}: ${what}`)
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (bytes.length < 4 || dv.getUint32(0, false) !== 0x7f45_4c46) bad('ELF header', 'no ELF magic (0x7f "ELF")')
  const bits = bytes[4] === 2 ? 64 : bytes[4] === 1 && elf32 ? 32 : bad('EI_CLASS', `${bytes[4]}, expected ${elf32 ? '1 (ELF32) or ' : ''}2 (ELF64)`)
  if (bytes.length < (bits === 64 ? 64 : 52)) bad('ELF header', 'truncated')
  if (bytes[5] !== 1) bad('EI_DATA', `${bytes[5]}, expected 1 (little-endian)`)
  const machine = dv.getUint16(18, true)
  if (machine !== (bits === 64 ? 62 : 3)) bad('e_machine', `${machine}, expected ${bits === 64 ? '62 (x86-64)' : '3 (i386)'}`)
  const word = (o: number): number => (bits === 64 ? Number(dv.getBigUint64(o, true)) : dv.getUint32(o, true))
  const half = (o64: number, o32: number): number => dv.getUint16(bits === 64 ? o64 : o32, true)
  return {
    bits,
    dv,
    phoff: word(bits === 64 ? 32 : 28),
    shoff: word(bits === 64 ? 40 : 32),
    phentsize: half(54, 42),
    phnum: half(56, 44),
    shentsize: half(58, 46),
    shnum: half(60, 48),
    shstrndx: half(62, 50),
  }
}

/** An ELF64 x86-64 executable's PT_LOAD segments and its PVH entry note. */
export function parseElf(bytes: Uint8Array, file: string, description: string): KernelElf {
  checkBytes('parseElf: bytes', bytes)
  checkString('parseElf: file', file, 4096)
  checkString('parseElf: description', description, 4096)
  const { dv, phoff, phentsize, phnum } = elfHeader(bytes, file, 'EKERNEL', false)
  if (phentsize < 56 || phoff + phnum * phentsize > bytes.length) fail(file, 'e_phoff/e_phnum', 'the program headers run past the file (truncated?)')
  const segments: { paddr: number; data: Uint8Array; memSize: number }[] = []
  let pvhEntry: number | undefined
  let end = 0
  for (let i = 0; i < phnum; i++) {
    const h = phoff + i * phentsize
    const type = dv.getUint32(h, true)
    const offset = Number(dv.getBigUint64(h + 8, true))
    const paddr = Number(dv.getBigUint64(h + 24, true))
    const fileSize = Number(dv.getBigUint64(h + 32, true))
    const memSize = Number(dv.getBigUint64(h + 40, true))
    if (offset + fileSize > bytes.length) fail(file, `program header ${i}`, `its ${fileSize} bytes at offset ${offset} run past the file (truncated?)`)
    if (type === PT_LOAD) {
      if (memSize < fileSize) fail(file, `program header ${i}`, `p_memsz ${memSize} is less than p_filesz ${fileSize}`)
      segments.push({ paddr, data: bytes.subarray(offset, offset + fileSize), memSize })
      end = Math.max(end, paddr + memSize)
    } else if (type === PT_NOTE) {
      pvhEntry ??= pvhNote(dv, offset, fileSize, file)
    }
  }
  checkLoadSegments(segments, file)
  if (pvhEntry === undefined) fail(file, 'notes', 'no XEN_ELFNOTE_PHYS32_ENTRY: the kernel was built without CONFIG_PVH')
  return { segments, pvhEntry, end, description }
}

/**
 * An ELF's PT_LOAD segments as a loader takes them: at least one, and none overlapping
 * another (it would overwrite its bytes; the loader copies only p_filesz, guest RAM being
 * zero already, so the rest costs nothing). The ELF and multiboot loaders share it. @internal
 */
export function checkLoadSegments(segments: readonly { paddr: number; memSize: number }[], file: string): void {
  if (segments.length === 0) fail(file, 'program headers', 'no PT_LOAD segment')
  const sorted = [...segments].sort((a, b) => a.paddr - b.paddr)
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1] as (typeof sorted)[number]
    const b = sorted[i] as (typeof sorted)[number]
    if (a.paddr + a.memSize > b.paddr) fail(file, 'program headers', `PT_LOAD segments at ${hex(a.paddr)} (+${hex(a.memSize)}) and ${hex(b.paddr)} overlap`)
  }
}

/**
 * The PHYS32_ENTRY value among the notes at `[offset, offset + size)` (ELF's note format:
 * namesz, descsz, type, then the name and the descriptor, each padded to 4 bytes). The
 * arithmetic is on numbers, not 32-bit integers, and every field is checked to lie inside
 * the notes before it is read, as rust-vmm's `linux-loader` does: a note naming 2^31
 * bytes ends the walk instead of wrapping it back.
 */
function pvhNote(dv: DataView, offset: number, size: number, file: string): number | undefined {
  const end = offset + size
  const align = (n: number): number => Math.ceil(n / 4) * 4
  let p = offset
  while (p + 12 <= end) {
    const nameSize = dv.getUint32(p, true)
    const descSize = dv.getUint32(p + 4, true)
    const type = dv.getUint32(p + 8, true)
    const name = p + 12
    const desc = name + align(nameSize)
    const next = desc + align(descSize)
    if (next > end) fail(file, 'notes', `the note at offset ${p} (name ${nameSize} bytes, descriptor ${descSize}) runs past its segment's end at ${end}`)
    const isXen = nameSize === 4 && dv.getUint32(name, true) === 0x006e_6558 // "Xen\0"
    if (isXen && type === XEN_ELFNOTE_PHYS32_ENTRY && descSize >= 4) return dv.getUint32(desc, true)
    p = next
  }
  return undefined
}
