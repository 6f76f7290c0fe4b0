/**
 * The registers GDB sees, in its numbering: the target description we send (x86-64:
 * GDB's own `org.gnu.gdb.i386.core`, `.sse` and `.segments` features, whose register
 * names and order GDB's amd64 support requires; gdb/features/i386/64bit-*.xml) plus a
 * feature of the system registers a kernel debugger wants (as QEMU's x86 stub offers:
 * k_gs_base, cr0, cr2, cr3, cr4, cr8, efer). Values come from and go to the vCPU's
 * register cache, so they follow the sync policy like any exit handler's.
 * @module
 */
import type { Vcpu } from '../../vcpu.js'
import type { RegisterName } from '../../layout.js'

/** One register as GDB numbers it. */
interface GdbRegister {
  readonly name: string
  readonly bits: number
  /** The XML `type`, and `group` if any. */
  readonly type: string
  readonly group?: string
  get(v: Vcpu): bigint
  /** Undefined: read-only here (GDB's write is refused with an error). */
  set?(v: Vcpu, value: bigint): void
}

const u64 = (name: RegisterName, as = name as string, type = 'int64'): GdbRegister => ({
  name: as,
  bits: 64,
  type,
  get: (v) => v.regs.get(name),
  set: (v, x) => v.regs.set(name, x),
})

const SEGMENTS = ['cs', 'ss', 'ds', 'es', 'fs', 'gs'] as const

/** A segment register's selector; a write in real mode loads the base as the CPU would (selector × 16). */
const selector = (name: (typeof SEGMENTS)[number]): GdbRegister => ({
  name,
  bits: 32,
  type: 'int32',
  get: (v) => (v.regs.getRaw(name)[1] >> 32n) & 0xffffn,
  set: (v, x) => {
    const [base, hi] = v.regs.getRaw(name)
    const sel = x & 0xffffn
    const realMode = (v.regs.get('cr0') & 1n) === 0n
    v.regs.setRaw(name, realMode ? sel << 4n : base, (hi & ~(0xffffn << 32n)) | (sel << 32n))
  },
})

const segmentBase = (name: 'fs' | 'gs'): GdbRegister => ({
  name: `${name}_base`,
  bits: 64,
  type: 'int',
  get: (v) => v.regs.getRaw(name)[0],
  set: (v, x) => v.regs.setRaw(name, x, v.regs.getRaw(name)[1]),
})

const FP_NAMES = ['fpMmx0', 'fpMmx1', 'fpMmx2', 'fpMmx3', 'fpMmx4', 'fpMmx5', 'fpMmx6', 'fpMmx7'] as const
const MASK80 = (1n << 80n) - 1n

/** ST(i): the hypervisor's FP_MMXi (ST order, as FXSAVE keeps them), low 80 bits. */
const st = (i: number): GdbRegister => ({
  name: `st${i}`,
  bits: 80,
  type: 'i387_ext',
  get: (v) => {
    const [lo, hi] = v.regs.getRaw(FP_NAMES[i] as RegisterName)
    return ((hi << 64n) | lo) & MASK80
  },
  set: (v, x) => v.regs.setRaw(FP_NAMES[i] as RegisterName, x & ((1n << 64n) - 1n), x >> 64n),
})

/** A field of `hv_x64_fp_control_status_register` (FXSAVE bytes 0-15). */
const fpField = (name: string, shift: bigint, width: bigint, high: boolean): GdbRegister => ({
  name,
  bits: 32,
  type: 'int',
  group: 'float',
  get: (v) => (v.regs.getRaw('fpControlStatus')[high ? 1 : 0] >> shift) & ((1n << width) - 1n),
  set: (v, x) => {
    const raw = v.regs.getRaw('fpControlStatus')
    const m = ((1n << width) - 1n) << shift
    const i = high ? 1 : 0
    raw[i] = (raw[i] & ~m) | ((x << shift) & m)
    v.regs.setRaw('fpControlStatus', raw[0], raw[1])
  },
})

/** A field of `hv_x64_xmm_control_status_register` (FXSAVE bytes 16-31). */
const xmmField = (name: string, shift: bigint, width: bigint, high: boolean, type = 'int', group?: string): GdbRegister => ({
  name,
  bits: 32,
  type,
  group,
  get: (v) => (v.regs.getRaw('xmmControlStatus')[high ? 1 : 0] >> shift) & ((1n << width) - 1n),
  set: (v, x) => {
    const raw = v.regs.getRaw('xmmControlStatus')
    const m = ((1n << width) - 1n) << shift
    const i = high ? 1 : 0
    raw[i] = (raw[i] & ~m) | ((x << shift) & m)
    v.regs.setRaw('xmmControlStatus', raw[0], raw[1])
  },
})

/**
 * FTAG as GDB shows it: the full tag word (two bits per physical register: 0 valid,
 * 1 zero, 2 special, 3 empty; SDM vol 1 8.1.7), from the abridged tag byte FXSAVE
 * keeps and the registers' contents, as FSAVE would write it.
 */
const ftag: GdbRegister = {
  name: 'ftag',
  bits: 32,
  type: 'int',
  group: 'float',
  get: (v) => {
    const [lo] = v.regs.getRaw('fpControlStatus')
    const abridged = (lo >> 32n) & 0xffn
    const top = Number((lo >> 27n) & 7n)
    let word = 0n
    for (let phys = 0; phys < 8; phys++) {
      let tag = 3n
      if ((abridged >> BigInt(phys)) & 1n) {
        const [l, h] = v.regs.getRaw(FP_NAMES[(phys - top + 8) % 8] as RegisterName)
        const exp = h & 0x7fffn
        const mantissa = l
        if (exp === 0n && mantissa === 0n) tag = 1n
        else if (exp === 0x7fffn || exp === 0n || (mantissa >> 63n) === 0n) tag = 2n
        else tag = 0n
      }
      word |= tag << BigInt(2 * phys)
    }
    return word
  },
  set: (v, x) => {
    // Back to the abridged form: a register is valid unless its tag is 3 (empty).
    let abridged = 0n
    for (let phys = 0; phys < 8; phys++) if (((x >> BigInt(2 * phys)) & 3n) !== 3n) abridged |= 1n << BigInt(phys)
    const raw = v.regs.getRaw('fpControlStatus')
    v.regs.setRaw('fpControlStatus', (raw[0] & ~(0xffn << 32n)) | (abridged << 32n), raw[1])
  },
}

const xmm = (i: number): GdbRegister => ({
  name: `xmm${i}`,
  bits: 128,
  type: 'vec128',
  get: (v) => {
    const [lo, hi] = v.regs.getRaw(`xmm${i}` as RegisterName)
    return (hi << 64n) | lo
  },
  set: (v, x) => v.regs.setRaw(`xmm${i}` as RegisterName, x & ((1n << 64n) - 1n), x >> 64n),
})

const GP_ORDER = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const

/** The registers in GDB's numbering (the order of the target description below). */
export const GDB_REGISTERS: readonly GdbRegister[] = [
  ...GP_ORDER.map((n) => u64(n, n, n === 'rbp' || n === 'rsp' ? 'data_ptr' : 'int64')),
  u64('rip', 'rip', 'code_ptr'),
  { name: 'eflags', bits: 32, type: 'i386_eflags', get: (v) => v.regs.get('rflags') & 0xffff_ffffn, set: (v, x) => v.regs.set('rflags', x & 0xffff_ffffn) },
  ...SEGMENTS.map(selector),
  ...[0, 1, 2, 3, 4, 5, 6, 7].map(st),
  fpField('fctrl', 0n, 16n, false),
  fpField('fstat', 16n, 16n, false),
  ftag,
  fpField('fiseg', 32n, 16n, true),
  fpField('fioff', 0n, 32n, true),
  xmmField('foseg', 32n, 16n, false, 'int', 'float'),
  xmmField('fooff', 0n, 32n, false, 'int', 'float'),
  fpField('fop', 48n, 11n, false),
  ...Array.from({ length: 16 }, (_, i) => xmm(i)),
  xmmField('mxcsr', 0n, 32n, true, 'i386_mxcsr', 'vector'),
  segmentBase('fs'),
  segmentBase('gs'),
  u64('kernelGsBase', 'k_gs_base', 'int'),
  u64('cr0', 'cr0', 'int'),
  u64('cr2', 'cr2', 'int'),
  u64('cr3', 'cr3', 'int'),
  u64('cr4', 'cr4', 'int'),
  u64('cr8', 'cr8', 'int'),
  u64('efer', 'efer', 'int'),
]

/** Index of the first register of each feature in {@link GDB_REGISTERS}. */
const SSE_FIRST = 40
const SEGMENTS_FIRST = 57
const SYSTEM_FIRST = 59

function regXml(r: GdbRegister, regnum?: number): string {
  const group = r.group ? ` group="${r.group}"` : ''
  const num = regnum === undefined ? '' : ` regnum="${regnum}"`
  return `<reg name="${r.name}" bitsize="${r.bits}" type="${r.type}"${group}${num}/>`
}

const EFLAGS_FIELDS = [['CF', 0], ['', 1], ['PF', 2], ['AF', 4], ['ZF', 6], ['SF', 7], ['TF', 8], ['IF', 9], ['DF', 10], ['OF', 11], ['NT', 14], ['RF', 16], ['VM', 17], ['AC', 18], ['VIF', 19], ['VIP', 20], ['ID', 21]] as const
const MXCSR_FIELDS = [['IE', 0], ['DE', 1], ['ZE', 2], ['OE', 3], ['UE', 4], ['PE', 5], ['DAZ', 6], ['IM', 7], ['DM', 8], ['ZM', 9], ['OM', 10], ['UM', 11], ['PM', 12], ['FZ', 15]] as const

const fields = (list: readonly (readonly [string, number])[]): string => list.map(([n, b]) => `<field name="${n}" start="${b}" end="${b}"/>`).join('')

/** The target description (`qXfer:features:read:target.xml`). */
export const TARGET_XML = [
  '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0">',
  '<architecture>i386:x86-64</architecture>',
  '<feature name="org.gnu.gdb.i386.core">',
  `<flags id="i386_eflags" size="4">${fields(EFLAGS_FIELDS)}</flags>`,
  ...GDB_REGISTERS.slice(0, SSE_FIRST).map((r) => regXml(r)),
  '</feature><feature name="org.gnu.gdb.i386.sse">',
  '<vector id="v4f" type="ieee_single" count="4"/><vector id="v2d" type="ieee_double" count="2"/>',
  '<vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/>',
  '<vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/>',
  '<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union>',
  `<flags id="i386_mxcsr" size="4">${fields(MXCSR_FIELDS)}</flags>`,
  ...GDB_REGISTERS.slice(SSE_FIRST, SEGMENTS_FIRST).map((r, i) => regXml(r, i === 0 ? SSE_FIRST : undefined)),
  '</feature><feature name="org.gnu.gdb.i386.segments">',
  ...GDB_REGISTERS.slice(SEGMENTS_FIRST, SYSTEM_FIRST).map((r) => regXml(r)),
  '</feature><feature name="org.mshv.gdb.x86.system">',
  ...GDB_REGISTERS.slice(SYSTEM_FIRST).map((r) => regXml(r)),
  '</feature></target>',
].join('')
