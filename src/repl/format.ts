/**
 * Text for the REPL: the register state as a table and guest memory as a hexdump.
 * Pure functions over values, so they are tested without a terminal.
 * @module
 */

const hex64 = (v: bigint): string => v.toString(16).padStart(16, '0')

/** The RFLAGS bits worth naming, low to high. */
const FLAGS: readonly [number, string][] = [
  [0, 'CF'],
  [2, 'PF'],
  [4, 'AF'],
  [6, 'ZF'],
  [7, 'SF'],
  [8, 'TF'],
  [9, 'IF'],
  [10, 'DF'],
  [11, 'OF'],
]

/** `0x246` -> `PF ZF IF`. */
export function flagNames(rflags: bigint): string {
  return FLAGS.filter(([bit]) => (rflags >> BigInt(bit)) & 1n)
    .map(([, name]) => name)
    .join(' ')
}

/** What {@link registerTable} shows: a reader of 64-bit values and of segment pairs. */
export interface RegisterSource {
  get(name: string): bigint
  getRaw(name: string): [bigint, bigint]
}

const ROWS: readonly (readonly string[])[] = [
  ['rax', 'rbx', 'rcx', 'rdx'],
  ['rsi', 'rdi', 'rsp', 'rbp'],
  ['r8', 'r9', 'r10', 'r11'],
  ['r12', 'r13', 'r14', 'r15'],
]

/** The register state as aligned text: GPRs, RIP/RFLAGS, segments, control registers. */
export function registerTable(regs: RegisterSource): string {
  const cell = (n: string) => `${n.padStart(3)} ${hex64(regs.get(n))}`
  const lines = ROWS.map((row) => row.map(cell).join('  '))
  const rflags = regs.get('rflags')
  lines.push(`${cell('rip')}  rflags ${hex64(rflags)} [${flagNames(rflags)}]`)
  for (const s of ['cs', 'ds', 'es', 'ss', 'fs', 'gs', 'tr', 'ldtr']) {
    const [base, packed] = regs.getRaw(s)
    const limit = Number(packed & 0xffff_ffffn)
    const selector = Number((packed >> 32n) & 0xffffn)
    const attributes = Number((packed >> 48n) & 0xffffn)
    lines.push(
      `${s.padStart(4)} sel ${selector.toString(16).padStart(4, '0')} base ${hex64(base)} limit ${limit.toString(16).padStart(8, '0')} attr ${attributes.toString(16).padStart(4, '0')}`,
    )
  }
  lines.push(['cr0', 'cr2', 'cr3', 'cr4'].map(cell).join('  '))
  lines.push(`efer ${hex64(regs.get('efer'))}`)
  return lines.join('\n')
}

/** Bytes as `address  hex bytes  |ascii|`, 16 per line. */
export function hexdump(bytes: Uint8Array, address: bigint): string {
  const lines: string[] = []
  for (let at = 0; at < bytes.length; at += 16) {
    const row = bytes.subarray(at, at + 16)
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0'))
    const left = hex.slice(0, 8).join(' ')
    const right = hex.slice(8).join(' ')
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('')
    lines.push(`${(address + BigInt(at)).toString(16).padStart(8, '0')}  ${left.padEnd(23)}  ${right.padEnd(23)}  |${ascii}|`)
  }
  return lines.join('\n')
}
