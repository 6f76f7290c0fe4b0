/**
 * Symbols from an ELF file's symbol table: `.symtab`, or `.dynsym` where the file was
 * stripped of it. Layouts as in the System V ABI (gABI "Sections", "Symbol Table");
 * type letters as binutils' `nm` gives them (bfd/syms.c `bfd_decode_symclass` and
 * `decode_section_type`), so a table read here lists what `nm --defined-only` lists.
 * @module
 */
import { checkBytes, checkString } from '../../check.js'
import { MshvError } from '../../errors.js'
import { elfHeader, type ElfHeader } from '../../boot/image.js'
import { SymbolTable, type KernelSymbol } from './table.js'

const SHT_SYMTAB = 2
const SHT_NOBITS = 8
const SHT_DYNSYM = 11
const SHF_WRITE = 1
const SHF_ALLOC = 2
const SHF_EXECINSTR = 4
const STT_NOTYPE = 0
const STT_OBJECT = 1
const STT_FUNC = 2
const STB_LOCAL = 0
const STB_WEAK = 2
const SHN_UNDEF = 0
const SHN_LORESERVE = 0xff00
const SHN_ABS = 0xfff1
const SHN_COMMON = 0xfff2

/** One section header's fields this reads. */
interface Section {
  readonly type: number
  readonly flags: number
  readonly offset: number
  readonly size: number
  readonly link: number
  readonly entsize: number
}

function fail(file: string, field: string, what: string): never {
  throw new MshvError('ESYMBOLS', `${file}: ${field}: ${what}`)
}

function sections(h: ElfHeader, size: number, file: string): Section[] {
  const { dv, bits, shoff, shentsize, shnum } = h
  if (shnum === 0 || shoff === 0) fail(file, 'e_shoff/e_shnum', 'no section headers (a stripped or truncated file has no symbol table)')
  if (shentsize < (bits === 64 ? 64 : 40) || shoff + shnum * shentsize > size) fail(file, 'e_shoff/e_shnum', `${shnum} section headers at offset ${shoff} run past the file's ${size} bytes (truncated?)`)
  const word = (o: number): number => (bits === 64 ? Number(dv.getBigUint64(o, true)) : dv.getUint32(o, true))
  const out: Section[] = []
  for (let i = 0; i < shnum; i++) {
    const s = shoff + i * shentsize
    const [flags, offset, sz] = bits === 64 ? [word(s + 8), word(s + 24), word(s + 32)] : [word(s + 8), word(s + 16), word(s + 20)]
    out.push({
      type: dv.getUint32(s + 4, true),
      flags,
      offset,
      size: sz,
      link: dv.getUint32(s + (bits === 64 ? 40 : 24), true),
      entsize: bits === 64 ? word(s + 56) : word(s + 36),
    })
  }
  return out
}

/** The `nm` letter of a defined symbol (binutils bfd/syms.c). */
function letter(info: number, shndx: number, section: Section | undefined): string {
  const bind = info >> 4
  const type = info & 0xf
  if (shndx === SHN_ABS) return bind === STB_LOCAL ? 'a' : 'A'
  if (shndx === SHN_COMMON) return 'C'
  if (bind === STB_WEAK) return type === STT_OBJECT ? 'V' : 'W'
  let c = '?'
  if (section) {
    if (section.flags & SHF_EXECINSTR) c = 't'
    else if (section.type === SHT_NOBITS && section.flags & SHF_ALLOC) c = 'b'
    else if (section.flags & SHF_ALLOC) c = section.flags & SHF_WRITE ? 'd' : 'r'
    else c = 'n'
  }
  return bind === STB_LOCAL ? c : c.toUpperCase()
}

/**
 * The defined function, object and untyped symbols of an ELF32 (i386) or ELF64
 * (x86-64) file's `.symtab` (else its `.dynsym`). `ESYMBOLS` naming the field for a file
 * that is not such an ELF, is truncated, or has no symbol table (a stripped vmlinux).
 */
export function elfSymbols(bytes: Uint8Array, file = 'ELF'): SymbolTable {
  checkBytes('elfSymbols: bytes', bytes)
  checkString('elfSymbols: file', file, 4096)
  const h = elfHeader(bytes, file, 'ESYMBOLS', true)
  const list = sections(h, bytes.length, file)
  const table = list.find((s) => s.type === SHT_SYMTAB) ?? list.find((s) => s.type === SHT_DYNSYM)
  if (!table) fail(file, 'sections', 'no .symtab or .dynsym: the file was stripped of its symbols')
  const entry = h.bits === 64 ? 24 : 16
  if (table.entsize !== entry) fail(file, 'symbol table', `sh_entsize ${table.entsize}, expected ${entry}`)
  if (table.offset + table.size > bytes.length) fail(file, 'symbol table', `${table.size} bytes at offset ${table.offset} run past the file's ${bytes.length} bytes (truncated?)`)
  const strings = list[table.link]
  if (!strings || strings.offset + strings.size > bytes.length) fail(file, 'symbol table', `its string table (section ${table.link}) is missing or runs past the file (truncated?)`)
  const names = bytes.subarray(strings.offset, strings.offset + strings.size)
  const decoder = new TextDecoder()
  const { dv } = h
  const symbols: KernelSymbol[] = []
  for (let p = table.offset + entry; p + entry <= table.offset + table.size; p += entry) {
    const [nameAt, info, shndx, value] =
      h.bits === 64 ? [dv.getUint32(p, true), dv.getUint8(p + 4), dv.getUint16(p + 6, true), dv.getBigUint64(p + 8, true)] : [dv.getUint32(p, true), dv.getUint8(p + 12), dv.getUint16(p + 14, true), BigInt(dv.getUint32(p + 4, true))]
    const type = info & 0xf
    if (shndx === SHN_UNDEF || (type !== STT_NOTYPE && type !== STT_OBJECT && type !== STT_FUNC)) continue
    if (shndx >= SHN_LORESERVE && shndx !== SHN_ABS && shndx !== SHN_COMMON) continue
    if (nameAt >= names.length) fail(file, 'symbol table', `a symbol's name at ${nameAt} lies past its string table's ${names.length} bytes`)
    const end = names.indexOf(0, nameAt)
    const name = decoder.decode(names.subarray(nameAt, end === -1 ? names.length : end))
    if (name === '') continue
    symbols.push({ name, address: value, type: letter(info, shndx, shndx < SHN_LORESERVE ? list[shndx] : undefined) })
  }
  if (symbols.length === 0) fail(file, 'symbol table', 'no defined function, object or untyped symbol')
  return new SymbolTable(symbols, `${file} (ELF${h.bits} ${table.type === SHT_SYMTAB ? '.symtab' : '.dynsym'})`)
}
