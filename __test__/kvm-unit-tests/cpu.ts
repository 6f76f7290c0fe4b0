/**
 * A test's `-cpu MODEL[,options]` (x86/unittests.cfg `qemu_params`) as CPUID table
 * entries for the sim, so a test sees the CPU it asks QEMU for where the sim can be it:
 * the models' vendor, signature and brand as QEMU's table has them, their feature bits
 * where the sim has the feature (a model's feature the sim lacks is left out, as QEMU
 * and KVM filter features the accelerator lacks), `vendor=` and `-x2apic`. The sim's
 * instruction semantics follow the vendor the guest sees (sim-cpu `vendor.rs`), so an
 * AuthenticAMD model gets AMD's SYSCALL and legacy performance-counter MSRs.
 */
import { createVm, enterRealMode, type CpuidEntry, type CpuidResult } from '../../index.js'

/** The sim's own answer to CPUID `leaf` (subleaf 0), read by a guest. */
export function simCpuid(leaf: number): CpuidResult {
  const vm = createVm({ backend: 'sim' })
  try {
    vm.addRam(0, 0x10000)
    const imm = [leaf & 0xff, (leaf >>> 8) & 0xff, (leaf >>> 16) & 0xff, leaf >>> 24]
    // mov eax, leaf; xor ecx, ecx; cpuid; out 0xf4, al (16-bit code: 0x66 for 32-bit operands)
    vm.write(0x1000, [0x66, 0xb8, ...imm, 0x66, 0x31, 0xc9, 0x0f, 0xa2, 0xe6, 0xf4])
    const v = vm.createVcpu(0)
    enterRealMode(v, 0x1000)
    const r = v.run()
    if (r.reason !== 'debug-exit') throw new Error(`the CPUID probe ended with ${r.reason}`)
    const reg = (name: 'rax' | 'rbx' | 'rcx' | 'rdx'): number => Number(v.regs.get(name) & 0xffff_ffffn)
    return { eax: reg('rax'), ebx: reg('rbx'), ecx: reg('rcx'), edx: reg('rdx') }
  } finally {
    vm.close()
  }
}

/** A QEMU CPU model: target/i386/cpu.c `builtin_x86_defs`. */
interface CpuModel {
  readonly vendor: string
  readonly family: number
  readonly model: number
  readonly stepping: number
  /** The highest basic leaf (`.level`) and extended leaf (`.xlevel`). */
  readonly level: number
  readonly xlevel: number
  /** FEAT_1_EDX, FEAT_1_ECX, FEAT_8000_0001_EDX, FEAT_8000_0001_ECX. */
  readonly edx1: number
  readonly ecx1: number
  readonly edx81: number
  readonly ecx81: number
  /** `.model_id`: the brand string of leaves 0x80000002-0x80000004. */
  readonly modelId: string
}

const bits = (...n: number[]): number => n.reduce((a, b) => (a | (1 << b)) >>> 0, 0)

/** The models the suite asks for by name. */
const MODELS: Readonly<Record<string, CpuModel>> = {
  // builtin_x86_defs "Opteron_G1": .level 5, CPUID_VENDOR_AMD, family 15, model 6,
  // stepping 1; FEAT_1_EDX VME SSE2 SSE FXSR MMX CLFLUSH PSE36 PAT CMOV MCA PGE MTRR
  // SEP APIC CX8 MCE PAE MSR TSC PSE DE FP87; FEAT_1_ECX SSE3; FEAT_8000_0001_EDX LM
  // NX SYSCALL; .xlevel 0x80000008; model_id "AMD Opteron 240 (Gen 1 Class Opteron)".
  // Bit numbers: SDM vol 2 CPUID, Table 3-11 (leaf 1 EDX), Table 3-10 (ECX), and the
  // leaf 80000001H table.
  Opteron_G1: {
    vendor: 'AuthenticAMD',
    family: 15,
    model: 6,
    stepping: 1,
    level: 5,
    xlevel: 0x8000_0008,
    edx1: bits(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24, 25, 26),
    ecx1: bits(0),
    edx81: bits(11, 20, 29),
    ecx81: 0,
    modelId: 'AMD Opteron 240 (Gen 1 Class Opteron)',
  },
}

/**
 * CPUID.1:EAX for a family/model/stepping, as QEMU's `x86_cpu_set_version` (cpu.c)
 * and the SDM vol 2 CPUID Figure 3-6 compose it: a family above 0xF goes to the
 * extended family, a model's high nibble to the extended model.
 */
function signature(m: CpuModel): number {
  const family = m.family > 0xf ? 0xf | ((m.family - 0xf) << 20) : m.family
  return ((family << 8) | ((m.model & 0xf) << 4) | ((m.model >> 4) << 16) | m.stepping) >>> 0
}

/** A 12-byte vendor string as CPUID leaf 0's EBX, EDX, ECX (in that order, the string's). */
function vendorWords(vendor: string): { ebx: number; ecx: number; edx: number } {
  const b = new TextEncoder().encode(vendor.padEnd(12, ' ').slice(0, 12))
  const w = (i: number): number => ((b[i] as number) | ((b[i + 1] as number) << 8) | ((b[i + 2] as number) << 16) | ((b[i + 3] as number) << 24)) >>> 0
  return { ebx: w(0), edx: w(4), ecx: w(8) }
}

/** A brand string as the 12 registers of leaves 0x80000002-0x80000004, NUL padded. */
function brandEntries(brand: string): CpuidEntry[] {
  const b = new Uint8Array(48)
  b.set(new TextEncoder().encode(brand).slice(0, 47))
  const w = (i: number): number => ((b[i] as number) | ((b[i + 1] as number) << 8) | ((b[i + 2] as number) << 16) | ((b[i + 3] as number) << 24)) >>> 0
  return [0, 1, 2].map((k) => ({ leaf: 0x8000_0002 + k, eax: w(16 * k), ebx: w(16 * k + 4), ecx: w(16 * k + 8), edx: w(16 * k + 12) }))
}

/**
 * CPUID entries for a test's QEMU parameters, or undefined for the sim's own CPU:
 * `-cpu` with a model of {@link MODELS} (other names, `max`, `host`, `qemu64`, keep the
 * sim's), `vendor=NAME`, and `-x2apic` (CPUID.1:ECX bit 21; `+x2apic` leaves the
 * sim's, which has one).
 */
export function cpuidFor(params: string): CpuidEntry[] | undefined {
  const spec = /-cpu\s+(\S+)/.exec(params)?.[1]
  if (spec === undefined) return undefined
  const [name = '', ...options] = spec.split(',')
  const model = MODELS[name]
  const entries = new Map<number, CpuidEntry>()
  const entry = (leaf: number): CpuidEntry => {
    const e = entries.get(leaf) ?? { leaf }
    entries.set(leaf, e)
    return e
  }
  if (model) {
    const sim1 = simCpuid(1)
    const sim81 = simCpuid(0x8000_0001)
    const sig = signature(model)
    Object.assign(entry(0), { eax: model.level, ...vendorWords(model.vendor) })
    Object.assign(entry(1), { eax: sig, ecx: (model.ecx1 & sim1.ecx) >>> 0, edx: (model.edx1 & sim1.edx) >>> 0 })
    // AMD processors repeat the signature in 80000001H:EAX (QEMU's `cpu_x86_cpuid`
    // returns `cpuid_version` there), and the vendor in 80000000H.
    Object.assign(entry(0x8000_0000), { eax: model.xlevel, ...vendorWords(model.vendor) })
    Object.assign(entry(0x8000_0001), { eax: sig, ecx: (model.ecx81 & sim81.ecx) >>> 0, edx: (model.edx81 & sim81.edx) >>> 0 })
    for (const e of brandEntries(model.modelId)) entries.set(e.leaf, e)
  }
  const vendor = options.find((o) => o.startsWith('vendor='))?.slice('vendor='.length)
  if (vendor !== undefined) {
    Object.assign(entry(0), vendorWords(vendor))
    // With a model, its 80000000H names the vendor too; the sim's own (Intel's, where
    // EBX-EDX are reserved: SDM vol 2 CPUID) stays as it is.
    if (model) Object.assign(entry(0x8000_0000), vendorWords(vendor))
  }
  if (options.includes('-x2apic')) {
    const e = entry(1)
    e.ecx = ((e.ecx ?? simCpuid(1).ecx) & ~(1 << 21)) >>> 0
  }
  return entries.size > 0 ? [...entries.values()] : undefined
}
