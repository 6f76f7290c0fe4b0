/**
 * A symbol file by its contents: an ELF (its `.symtab` or `.dynsym`) or a text listing
 * (`System.map`, `nm`, `/proc/kallsyms`).
 * @module
 */
import { readFileSync } from 'node:fs'
import { checkString } from '../../check.js'
import { MshvError } from '../../errors.js'
import { elfSymbols } from './elf.js'
import { parseSystemMap } from './system-map.js'
import type { SymbolTable } from './table.js'

/** The most bytes a symbol file may have (a vmlinux with debug info is a few hundred MiB). */
const MAX_FILE = 1 << 30

/**
 * Reads `path` as symbols: an ELF file by its magic, else `System.map`/`nm` text.
 * `ESYMBOLS` for a file that is neither (or Debian's placeholder map), `ENOENT`-style
 * codes (from the file system) for one that cannot be read.
 */
export function readSymbols(path: string): SymbolTable {
  checkString('readSymbols: path', path, 4096)
  let bytes: Buffer
  try {
    bytes = readFileSync(path)
  } catch (e) {
    const code = (e as { code?: unknown }).code
    throw new MshvError(typeof code === 'string' ? code : 'EIO', `symbols: cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e })
  }
  if (bytes.length > MAX_FILE) throw new MshvError('ESYMBOLS', `${path}: ${bytes.length} bytes is more than a symbol file of ${MAX_FILE} bytes`)
  const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)
  if (bytes.length >= 4 && bytes.readUInt32BE(0) === 0x7f45_4c46) return elfSymbols(view, path)
  if (bytes.includes(0)) throw new MshvError('ESYMBOLS', `${path}: neither an ELF file nor text (System.map, nm): it holds NUL bytes`)
  return parseSystemMap(bytes.toString('utf8'), path)
}
