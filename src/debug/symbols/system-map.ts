/**
 * Symbol lists as text: a kernel's `System.map`, `nm`'s output and `/proc/kallsyms`,
 * one symbol a line: `ffffffff81000000 T _stext` (address in hex, `nm` type letter,
 * name; `/proc/kallsyms` adds `\t[module]` after a module's symbols, binutils' nm
 * prints undefined symbols with the address left blank).
 * @module
 */
import { checkString } from '../../check.js'
import { MshvError, describe } from '../../errors.js'
import { SymbolTable, type KernelSymbol } from './table.js'

/**
 * The one line Debian's kernel packages ship as `/boot/System.map-*` in place of the map
 * (the real one is in the `-dbg` package): `ffffffffffffffff B The real System.map is in
 * the linux-image-<version>-dbg package`, as read in linux-image-6.1.0-57-amd64's
 * `/boot/System.map-6.1.0-57-amd64`.
 */
const DEBIAN_PLACEHOLDER = /The real System\.map is in the (\S+) package/

const LINE = /^([0-9a-fA-F]{1,16})\s+([A-Za-z?-])\s+(\S+)(?:\s+\[(\S+)\])?\s*$/
/** An undefined symbol as nm prints it: no address, type `U`, `w` or `v`. */
const UNDEFINED = /^\s+[Uwv]\s+\S+\s*$/

/** The most bytes of text parsed (a distribution kernel's System.map is about 6 MiB). */
const MAX_TEXT = 256 << 20

/**
 * The symbols of a `System.map`, `nm` listing or `/proc/kallsyms` text. `ESYMBOLS` for
 * Debian's placeholder map (it names the `-dbg` package to install), for a line that is
 * not `ADDRESS TYPE NAME` (naming it and its number), and for text with no symbol.
 */
export function parseSystemMap(text: string, file = 'System.map'): SymbolTable {
  checkString('parseSystemMap: text', text, MAX_TEXT)
  checkString('parseSystemMap: file', file, 4096)
  const placeholder = DEBIAN_PLACEHOLDER.exec(text.slice(0, 4096))
  if (placeholder) {
    throw new MshvError(
      'ESYMBOLS',
      `${file}: Debian's placeholder System.map ('The real System.map is in the ${placeholder[1]} package'), not the kernel's symbols: give that package's System.map or vmlinux, or leave the file out to read the kernel's own kallsyms from guest memory`,
    )
  }
  const symbols: KernelSymbol[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).replace(/\r$/, '')
    if (line.trim() === '' || UNDEFINED.test(line)) continue
    const m = LINE.exec(line)
    if (!m) throw new MshvError('ESYMBOLS', `${file}: line ${i + 1} is not 'ADDRESS TYPE NAME' (System.map, nm or /proc/kallsyms): ${describe(line)}`)
    symbols.push({ address: BigInt(`0x${m[1] as string}`), type: m[2] as string, name: m[3] as string })
  }
  if (symbols.length === 0) throw new MshvError('ESYMBOLS', `${file}: no symbols (an empty System.map or nm listing)`)
  return new SymbolTable(symbols, file)
}
