import test from 'ava'
import fc from 'fast-check'
import { CodeExt, Decoder, DecoderOptions, EncodingKind, Formatter, FormatterSyntax, MemorySizeOptions, OpKind } from 'iced-x86'
import { assemble, MshvError } from '../index.js'

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

// Encodings as the Intel SDM and NASM give them.
const GOLDEN: readonly [16 | 32 | 64, string, string][] = [
  [16, 'out 0x80, al', 'e680'],
  [16, 'in al, dx', 'ec'],
  [16, 'lgdt [0x500]', '0f01160005'],
  [16, 'jmp 0x8:0x1234', 'ea34120800'],
  [16, 'mov al, [bx+si+5]', '8a4005'],
  [16, 'rep movsb', 'f3a4'],
  [16, 'pusha', '60'],
  [32, 'mov cr0, eax', '0f22c0'],
  [32, 'pushf', '9c'],
  [64, 'mov eax, ebx', '89d8'],
  [64, 'add eax, 5', '83c005'],
  [64, 'mov rax, 0x123456789', '48b88967452301000000'],
  [64, 'lock add [rbx], eax', 'f00103'],
  [64, 'mov al, fs:[rbx]', '648a03'],
  [64, 'mov al, [fs:rbx]', '648a03'],
  [64, 'mov dword ptr [rbx+rcx*4+8], 7', 'c7448b0807000000'],
  [64, 'mov r9b, 1', '41b101'],
  [64, 'rep stosq', 'f348ab'],
  [64, 'call $+5', 'e800000000'],
  [64, 'mov al, [rip+0x2000]', '8a05fa0f0000'],
  [64, 'cmovnz eax, ebx; setz al; jz $', '0f45c30f94c074fe'],
  [64, "db 1, 2, \"hi\", -1; dw 'A'; dq 0x1122334455667788", '01026869ff41008877665544332211'],
]

for (const [bits, source, expected] of GOLDEN) {
  test(`${bits}-bit ${source} encodes as ${expected}`, (t) => {
    t.is(hex(assemble(source, { bitness: bits, address: 0x1000 }).bytes), expected)
  })
}

test('labels: forward and backward branches, data addresses, bits switches, a listing', (t) => {
  const a = assemble(
    `
    bits 16
  start:
    mov si, msg       # forward reference to data
  .next:
    lodsb
    test al, al
    jz done
    out 0xe9, al
    jmp .next         // backward, short
  done: hlt
  msg: db "Hi", 0
    bits 64
  long: mov rax, long
  `,
    { bitness: 16, address: 0x7c00 },
  )
  t.is(a.labels.get('msg'), 0x7c0dn)
  t.is(a.labels.get('long'), 0x7c10n)
  t.is(hex(a.bytes), 'be0d7c' + 'ac' + '84c0' + '7404' + 'e6e9' + 'ebf7' + 'f4' + '486900' + '48c7c0107c0000')
  t.regex(a.listing(), /^00007c0a {2}eb f7 +jmp \.next/m)
})

test('a branch that outgrows rel8 is widened, and the labels after it move', (t) => {
  const a = assemble(`jmp far_away\n${'nop\n'.repeat(200)}far_away: hlt`, { bitness: 64 })
  t.is(hex(a.bytes.subarray(0, 5)), 'e9c8000000')
  t.is(a.labels.get('far_away'), 205n)
})

test('bad source is an EASM error naming the line and the problem', (t) => {
  const cases: [string, RegExp][] = [
    ['nop\ninc [rbx]', /^line 2: the operand size of 'inc \[rbx\]' is ambiguous: write byte, word, dword, qword/],
    ['mov eax, bl', /^line 1: no encoding of 'mov eax, bl' \(mov r32, r8\); its forms in 64-bit code: MOV r\/m8, r8 \|/],
    ['foo eax', /^line 1: unknown instruction 'foo'/],
    ['mov eax, [rbx', /^line 1: unexpected end of statement/],
    ['jmp nowhere', /^line 1: undefined label 'nowhere'/],
    ['x: nop\nx: nop', /^line 2: label 'x' is defined twice/],
    ['db 300', /^line 1: 300 does not fit in 1 byte/],
    ['mov al, [rbx*3]', /^line 1: scale must be 1, 2, 4 or 8, got 3/],
    ['out 0x100, al', /^line 1: 'out 0x100, al': the immediate 256 is out of range for OUT imm8, AL: it takes an imm8/],
    ['mov al, 256', /^line 1: 'mov al, 256': the immediate 256 is out of range for MOV r8, imm8: it takes an imm8 \(-128..255\)/],
    ['mov rax, 1', /^line 1: no encoding of 'mov rax, 1' .* in 16-bit code/],
  ]
  for (const [source, message] of cases) {
    const e = t.throws(() => assemble(source, { bitness: source === 'mov rax, 1' ? 16 : 64 }), { instanceOf: MshvError })
    t.is((e as MshvError).code, 'EASM', source)
    t.regex(e?.message ?? '', message, source)
  }
  t.like(t.throws(() => assemble('nop', { bitness: 8 as 16 })), { code: 'EINVAL', message: 'bitness must be 16, 32 or 64, got 8' })
})

test("a NASM ';' comment is read as a statement here, and its EASM error says so; a ';' in quotes or on another line adds nothing", (t) => {
  t.throws(() => assemble('mov eax, 1 ; load the answer'), {
    code: 'EASM',
    message: /^line 1: .*load the answer.* \(on this line ';' separates statements: comments start with '#' or '\/\/', not NASM's ';'\)$/,
  })
  t.is(assemble('mov eax, 1 # load the answer').bytes.length, 5, "'#' starts a comment")
  const e = t.throws(() => assemble('db "a;b", 0\nbogus eax'), { instanceOf: MshvError })
  t.is(e?.message, "line 2: unknown instruction 'bogus'")
})

// Differential: what iced-x86 decodes and formats in NASM syntax must assemble back to an
// instruction that formats the same (the encoding may differ: the shortest is chosen).
const formatter = new Formatter(FormatterSyntax.Nasm)
formatter.hexPrefix = '0x'
formatter.hexSuffix = ''
formatter.memorySizeOptions = MemorySizeOptions.Always
formatter.showBranchSize = false
formatter.spaceAfterOperandSeparator = true
formatter.smallHexNumbersInDecimal = false
const PLAIN = new Set([
  OpKind.Register,
  OpKind.Memory,
  OpKind.Immediate8,
  OpKind.Immediate16,
  OpKind.Immediate32,
  OpKind.Immediate64,
  OpKind.Immediate8to16,
  OpKind.Immediate8to32,
  OpKind.Immediate8to64,
  OpKind.Immediate32to64,
  OpKind.Immediate8_2nd,
  OpKind.NearBranch16,
  OpKind.NearBranch32,
  OpKind.NearBranch64,
  OpKind.FarBranch16,
  OpKind.FarBranch32,
])

function swapOperands(text: string): string {
  const m = /^(\S+) (.*), (.*)$/.exec(text)
  return m ? `${m[1]} ${m[3]}, ${m[2]}` : text
}

function decodeText(bits: number, bytes: Uint8Array): string | undefined {
  const d = new Decoder(bits, bytes, DecoderOptions.None)
  d.ip = 0x1000n
  const ins = d.decode()
  try {
    if (ins.isInvalid) return undefined
    const oc = CodeExt.opCode(ins.code)
    // Reserved NOPs (0F 18..1F) format as plain `nop` with operands no `nop` takes.
    const wanted = oc.encoding === EncodingKind.Legacy && !oc.isReservedNop
    oc.free()
    if (!wanted) return undefined
    for (let k = 0; k < ins.opCount; k++) if (!PLAIN.has(ins.opKind(k))) return undefined
    const text = formatter.format(ins)
    // Not in our syntax: NASM's address-size hints on absolute addresses (`[dword 0x0]`), and
    // standalone prefixes (MPX/CET/HLE, operand/address size, segment as branch hint).
    const prefixed = /^(bnd|notrack|xacquire|xrelease|o16|o32|o64|a16|a32|a64|es|cs|ss|ds|fs|gs) /.test(text)
    // NASM's `fadd to st1` spelling neither,
    // nor `ret`/`loop` with an operand or address size spelled out (`retd`, `loop x, ecx`);
    // `xchg ax, ax` is assembled as `nop` (90); `cmpeqps`-style pseudo-ops are not known.
    const spelling = text.includes(' to ') || /^(retf?[wdq]\b|loop.*, [er]?cx$|xchg (\w+), \2$|cmp(eq|lt|le|unord|neq|nlt|nle|ord)\w+ )/.test(text)
    return /\[(word|dword|qword) /.test(text) || prefixed || spelling ? undefined : text
  } finally {
    ins.free()
    d.free()
  }
}

// A fixed seed keeps CI deterministic; ASM_RUNS=60000 ASM_SEED=<n> searches wider.
test('property: legacy instructions iced-x86 decodes and formats assemble back to themselves', (t) => {
  let checked = 0
  fc.assert(
    fc.property(fc.constantFrom(16, 32, 64), fc.uint8Array({ minLength: 15, maxLength: 15 }), (bits, bytes) => {
      const text = decodeText(bits, bytes)
      if (text === undefined) return true
      checked++
      const again = decodeText(bits, assemble(text, { bitness: bits as 16 | 32 | 64, address: 0x1000 }).bytes)
      // `sal` is assembled as `shl` (D0 /4), as NASM does; D0 /6 decodes as `sal`;
      // `xchg`'s operands commute; its two encodings format them in opposite orders.
      // `[edx*1]` is encoded as `[edx]`; a branch target's zero padding follows the operand size.
      const plain = (x: string | undefined) => x?.replace(/^sal /, 'shl ').replace(/\*1\b/g, '').replace(/0x0+(?=[0-9a-f])/g, '0x')
      const same = plain(again) === plain(text) || (text.startsWith('xchg ') && plain(again) === plain(swapOperands(text)))
      if (!same) throw new Error(`${bits}-bit '${text}' came back as '${again}'`)
      return true
    }),
    { numRuns: Number(process.env.ASM_RUNS ?? 6000), seed: Number(process.env.ASM_SEED ?? 20261124) },
  )
  t.true(checked > 3000, `only ${checked} decodable legacy instructions were checked`)
})

test("NASM's equ, times, align, org and resb: a boot sector", (t) => {
  const a = assemble(
    `org 0x7c00
PORT equ 0xe9
start: mov al, 'A'
out PORT, al
align 8, db 0xcc
times 3 nop
buf: resb 4
times 510-($-$$) db 0
dw 0xaa55`,
    { bitness: 16 },
  )
  t.is(a.address, 0x7c00n, 'org sets the first address')
  t.is(a.bytes.length, 512)
  t.deepEqual([...a.bytes.subarray(0, 11)], [0xb0, 0x41, 0xe6, 0xe9, 0xcc, 0xcc, 0xcc, 0xcc, 0x90, 0x90, 0x90])
  t.deepEqual([...a.bytes.subarray(11, 15)], [0, 0, 0, 0], 'resb reserves zeroed bytes')
  t.deepEqual([...a.bytes.subarray(510)], [0x55, 0xaa])
  t.is(a.labels.get('PORT'), 0xe9n)
  t.is(a.labels.get('buf'), 0x7c00n + 11n)
  t.deepEqual([...assemble('align 4\nnop\nalign 4', { address: 0x1001 }).bytes], [0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90], 'NOP fill to the next multiple')
  for (const [source, message] of [
    ['nop\norg 0x100', /'org' must come before the first byte/],
    ['times -1 nop', /the count of 'times' must be in 0..16777216, got -1/],
    ['align 3', /'align' takes a power of two, got 3/],
    ['times 2', /'times' takes a count and a statement/],
    ['x equ', /'equ' needs an expression/],
  ] as const) {
    t.throws(() => assemble(source), { code: 'EASM', message })
  }
  t.like(t.throws(() => assemble(123 as unknown as string)), { code: 'EINVAL', message: 'assemble: source must be a string, got 123' })
})
