/**
 * Booting a multiboot kernel (Multiboot Specification 0.6.96, "version 1"), as QEMU's
 * `-kernel` and GRUB's `multiboot` do: many hobby and test kernels boot this way, the
 * KVM community's kvm-unit-tests among them. The image is an ELF (32- or 64-bit; its
 * PT_LOAD segments at their physical addresses) or carries its load addresses in its
 * header (flag 16, the "a.out kludge"). The boot information (memory map, command line,
 * modules, boot loader name) goes after the kernel, page-aligned, as QEMU's
 * `hw/i386/multiboot.c` places it; ACPI tables where a scan of 0xE0000-0xFFFFF finds
 * them; the PC platform as for Linux.
 * @module
 */
import { createVm, type Vm } from '../vm.js'
import type { AcpiPm } from '../devices/acpi-pm.js'
import type { PcPlatform } from '../platform/pc.js'
import type { PciHost } from '../pci/host.js'
import type { VmRunOptions, VmRunResult } from '../scheduler.js'
import { MshvError, describe, hex } from '../errors.js'
import { checkLoadSegments } from './image.js'
import { checkBytes, checkString } from '../check.js'
import { leaveAsBios } from './bios-state.js'
import { addPcWithAcpi, bytesOf, checkCmdline, checkMemory, checkVcpus, e820, enterProtected32, MIB, writeAcpiTables, type PcMachineOptions } from './pc-machine.js'

/** The header's magic (spec 3.1.2) and the magic EAX holds at entry (3.2). */
export const MULTIBOOT_HEADER_MAGIC = 0x1bad_b002
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2bad_b002
/** The header lies in the image's first 8192 bytes, 32-bit aligned (3.1.1). */
const HEADER_SEARCH = 8192
/** Header flags (3.1.2): modules page-aligned, memory information, video mode, the address fields. */
const HF_PAGE_ALIGN = 1 << 0
const HF_MEMORY_INFO = 1 << 1
const HF_VIDEO_MODE = 1 << 2
const HF_ADDRESSES = 1 << 16
/** Information flags (3.3): mem_*, cmdline, mods_*, mmap_*, boot_loader_name. */
const MBI_MEMORY = 1 << 0
const MBI_CMDLINE = 1 << 2
const MBI_MODS = 1 << 3
const MBI_MMAP = 1 << 6
const MBI_LOADER_NAME = 1 << 9
/** The information structure's size up to and including `boot_loader_name` (3.3). */
const MBI_SIZE = 72
const PAGE = 0x1000
const PT_LOAD = 1
/** Where the entry GDT goes: flat 32-bit code at 0x08, data at 0x10, a TSS at 0x18 (the selectors {@link enterProtected32} loads). */
const ENTRY_GDT = 0x500
const LOADER_NAME = 'mshv'

/** A module for the kernel: its bytes (or a file) and its string (3.3 "mods"). */
export interface MultibootModule {
  /** The module's contents (bytes, or a file path). */
  data: Uint8Array | string
  /** Its string, e.g. its name and arguments (default: the file path, or empty). */
  cmdline?: string
}

/** Options for {@link prepareMultiboot}. */
export interface MultibootOptions extends PcMachineOptions {
  /** The kernel: a multiboot ELF (32- or 64-bit) or an image with the header's load addresses (bytes, or a file path). */
  kernel: Uint8Array | string
  /**
   * The kernel's arguments (QEMU's `-append`; default none). The command line the kernel
   * reads starts with its file's name (`kernel` for bytes), as QEMU's and GRUB's do
   * (QEMU hw/i386/multiboot.c: `"%s %s", kernel_filename, kernel_cmdline`): programs
   * that take it as argv, kvm-unit-tests among them, skip argv[0].
   */
  cmdline?: string
  /** Modules, loaded page-aligned after the kernel in this order (QEMU's `-initrd a,b`). */
  modules?: readonly (Uint8Array | string | MultibootModule)[]
  /** Guest RAM in bytes (default 128 MiB, QEMU's; from 64 MiB to 3 GiB). */
  memory?: number
  /** vCPUs (default 1): the APs wait for the guest's INIT/SIPI, as on a PC. */
  vcpus?: number
  /**
   * Leave the PC as a BIOS does before its boot loader runs (default true): the real-mode
   * interrupt vector table, the 8259s initialized (vectors 0x08 and 0x70, the timer
   * unmasked) and the 8254 ticking at 18.2 Hz, as under GRUB or QEMU's SeaBIOS. `false`:
   * the devices in their reset state, RAM below 1 MiB zero.
   */
  biosState?: boolean
}

/** A loadable piece of the image: bytes at a physical address, then `memSize - data.length` zero bytes. */
interface Segment {
  readonly paddr: number
  readonly data: Uint8Array
  readonly memSize: number
}

/** A multiboot kernel, parsed and checked. */
export interface MultibootImage {
  /** What it is (`multiboot ELF32`, `multiboot a.out-kludge image`) and its header flags. */
  readonly description: string
  /** The header's flags (3.1.2). */
  readonly flags: number
  /** The entry point (physical). */
  readonly entry: number
  /** The highest physical address the kernel occupies (its bss included). */
  readonly end: number
  /** Its pieces at their physical addresses. */
  readonly segments: readonly Segment[]
}

/** A VM with a multiboot kernel loaded, ready to {@link MultibootMachine.run}. */
export interface MultibootMachine {
  readonly vm: Vm
  readonly pc: PcPlatform
  readonly pm: AcpiPm
  /** PCI bus 0, where devices of your own go (`machine.pci.add(fn)`). */
  readonly pci: PciHost
  /** The kernel as loaded. */
  readonly kernel: MultibootImage
  /** Where the boot information structure is (EBX at entry). */
  readonly info: number
  /** Runs every vCPU until the guest ends the run (debug-exit, poweroff, reset, a fatal exit) or the limits. */
  run(options?: VmRunOptions): Promise<VmRunResult>
  /** Closes the VM. */
  close(): void
}

function fail(file: string, field: string, what: string): never {
  throw new MshvError('EKERNEL', `${file}: ${field}: ${what}`)
}

/** The offset of the multiboot header in `bytes` (the first 8 KiB, 4-byte aligned, checksum right), or undefined. */
function findHeader(dv: DataView): number | undefined {
  const limit = Math.min(HEADER_SEARCH, dv.byteLength) - 12
  for (let at = 0; at <= limit; at += 4) {
    if (dv.getUint32(at, true) !== MULTIBOOT_HEADER_MAGIC) continue
    const flags = dv.getUint32(at + 4, true)
    if (((MULTIBOOT_HEADER_MAGIC + flags + dv.getUint32(at + 8, true)) & 0xffff_ffff) === 0) return at
  }
  return undefined
}

/** Whether `bytes` carry a multiboot header (magic and checksum in the first 8 KiB, 4-byte aligned). */
export function isMultiboot(bytes: Uint8Array): boolean {
  checkBytes('isMultiboot: bytes', bytes)
  return findHeader(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)) !== undefined
}

/**
 * Reads a multiboot kernel: finds its header, refuses a requirement this loader cannot
 * meet (spec 3.1.2: "if the boot loader does not understand all the requirements in
 * bits 0-15, it must fail"; a video mode is one), and takes its pieces from the
 * header's addresses (flag 16) or its ELF program headers.
 */
export function parseMultiboot(bytes: Uint8Array, file = 'kernel'): MultibootImage {
  checkBytes('parseMultiboot: bytes', bytes)
  checkString('parseMultiboot: file', file, 4096)
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const at = findHeader(dv)
  if (at === undefined) fail(file, 'multiboot header', `no header (magic ${hex(MULTIBOOT_HEADER_MAGIC)} with a valid checksum) in the first ${HEADER_SEARCH} bytes: not a multiboot kernel`)
  const flags = dv.getUint32(at + 4, true)
  if (flags & HF_VIDEO_MODE) fail(file, 'multiboot header flags', `${hex(flags)} asks for a video mode (bit 2): this loader has no framebuffer to give`)
  const unknown = flags & 0xffff & ~(HF_PAGE_ALIGN | HF_MEMORY_INFO | HF_VIDEO_MODE)
  if (unknown) fail(file, 'multiboot header flags', `${hex(flags)} has requirement bits ${hex(unknown)} this loader does not know (spec 3.1.2: it must refuse)`)
  const image = flags & HF_ADDRESSES ? kludgeImage(dv, at, bytes, file) : elfImage(dv, bytes, file)
  return { ...image, flags, description: `${image.description}, header flags ${hex(flags)}` }
}

/** The image by the header's address fields (3.1.3): the file from `header_addr`'s offset loaded at `load_addr`. */
function kludgeImage(dv: DataView, at: number, bytes: Uint8Array, file: string): Omit<MultibootImage, 'flags'> {
  if (at + 32 > dv.byteLength) fail(file, 'multiboot header', 'flag 16 is set but the address fields run past the file')
  const [headerAddr, loadAddr, loadEnd, bssEnd, entry] = [12, 16, 20, 24, 28].map((o) => dv.getUint32(at + o, true)) as [number, number, number, number, number]
  if (loadAddr > headerAddr) fail(file, 'load_addr', `${hex(loadAddr)} is above header_addr ${hex(headerAddr)}`)
  const offset = at - (headerAddr - loadAddr)
  if (offset < 0) fail(file, 'header_addr', `${hex(headerAddr)} puts the load start before the file's first byte`)
  const size = loadEnd === 0 ? bytes.length - offset : loadEnd - loadAddr
  if (size <= 0 || offset + size > bytes.length) fail(file, 'load_end_addr', `${hex(loadEnd)}: ${size} bytes from offset ${offset} do not lie in the file's ${bytes.length}`)
  const end = bssEnd === 0 ? loadAddr + size : bssEnd
  if (end < loadAddr + size) fail(file, 'bss_end_addr', `${hex(bssEnd)} is below the loaded end ${hex(loadAddr + size)}`)
  if (entry < loadAddr || entry >= end) fail(file, 'entry_addr', `${hex(entry)} lies outside the loaded ${hex(loadAddr)}..${hex(end)}`)
  return { description: 'multiboot image (header addresses)', entry, end, segments: [{ paddr: loadAddr, data: bytes.subarray(offset, offset + size), memSize: end - loadAddr }] }
}

/**
 * The image by its ELF program headers: PT_LOAD segments at `p_paddr`; the entry
 * `e_entry`, moved from the segment's virtual to its physical address when they differ
 * (GRUB's loader does the same; QEMU enters at `e_entry` and refuses ELF64 altogether,
 * which is why kvm-unit-tests ships its tests as ELF32 copies of 64-bit code).
 */
function elfImage(dv: DataView, bytes: Uint8Array, file: string): Omit<MultibootImage, 'flags'> {
  if (bytes.length < 52 || dv.getUint32(0, false) !== 0x7f45_4c46) fail(file, 'ELF header', 'the header has no address fields (flag 16) and the file is not an ELF')
  const elf64 = bytes[4] === 2
  if (bytes[4] !== 1 && !elf64) fail(file, 'EI_CLASS', `${bytes[4]}, expected 1 (ELF32) or 2 (ELF64)`)
  if (bytes[5] !== 1) fail(file, 'EI_DATA', `${bytes[5]}, expected 1 (little-endian)`)
  if (elf64 && bytes.length < 64) fail(file, 'ELF header', 'truncated')
  const machine = dv.getUint16(18, true)
  if (machine !== 3 && machine !== 62) fail(file, 'e_machine', `${machine}, expected 3 (i386) or 62 (x86-64)`)
  const word = (o: number): number => (elf64 ? Number(dv.getBigUint64(o, true)) : dv.getUint32(o, true))
  const entryV = word(24)
  const phoff = word(elf64 ? 32 : 28)
  const phentsize = dv.getUint16(elf64 ? 54 : 42, true)
  const phnum = dv.getUint16(elf64 ? 56 : 44, true)
  if (phentsize < (elf64 ? 56 : 32) || phoff + phnum * phentsize > bytes.length) fail(file, 'e_phoff/e_phnum', 'the program headers run past the file (truncated?)')
  const segments: (Segment & { vaddr: number })[] = []
  for (let i = 0; i < phnum; i++) {
    const h = phoff + i * phentsize
    if (dv.getUint32(h, true) !== PT_LOAD) continue
    const [offset, vaddr, paddr, fileSize, memSize] = elf64 ? [8, 16, 24, 32, 40].map((o) => word(h + o)) : [4, 8, 12, 16, 20].map((o) => word(h + o))
    if ((offset as number) + (fileSize as number) > bytes.length) fail(file, `program header ${i}`, `its ${fileSize} bytes at offset ${offset} run past the file (truncated?)`)
    if ((memSize as number) < (fileSize as number)) fail(file, `program header ${i}`, `p_memsz ${memSize} is less than p_filesz ${fileSize}`)
    if ((memSize as number) === 0) continue
    segments.push({ paddr: paddr as number, vaddr: vaddr as number, data: bytes.subarray(offset, (offset as number) + (fileSize as number)), memSize: memSize as number })
  }
  checkLoadSegments(segments, file)
  const home = segments.find((s) => entryV - s.vaddr >= 0 && entryV - s.vaddr < s.memSize)
  const entry = home ? home.paddr + (entryV - home.vaddr) : entryV
  if (!segments.some((s) => entry >= s.paddr && entry < s.paddr + s.memSize)) fail(file, 'e_entry', `${hex(entryV)} lies in no PT_LOAD segment`)
  const end = Math.max(...segments.map((s) => s.paddr + s.memSize))
  return { description: `multiboot ELF${elf64 ? 64 : 32}`, entry, end, segments: segments.map(({ paddr, data, memSize }) => ({ paddr, data, memSize })) }
}

/** Bump allocation in guest RAM after the kernel, as QEMU lays the boot information out. */
class Layout {
  constructor(
    private at: number,
    private readonly limit: number,
  ) {}
  take(size: number, align: number, what: string): number {
    const start = Math.ceil(this.at / align) * align
    if (start + size > this.limit) {
      throw new MshvError('EKERNEL', `${what} (${size} bytes) does not fit in RAM after the kernel (${hex(start)}..${hex(this.limit)}): give the VM ${Math.ceil((start + size) / MIB) + 1} MiB or more`)
    }
    this.at = start + size
    return start
  }
}

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(`${s}\0`)

/**
 * Writes the boot information (3.3) after `kernelEnd`: memory sizes, the memory map,
 * the command line, the modules and the loader's name. Returns its address.
 */
function writeInfo(vm: Vm, kernelEnd: number, memory: number, cmdline: string, modules: readonly { bytes: Uint8Array; name: string }[]): number {
  const mem = new Layout(Math.ceil(kernelEnd / PAGE) * PAGE, memory)
  const info = mem.take(MBI_SIZE, PAGE, 'the multiboot information')
  const map = e820(memory)
  const mmap = mem.take(map.length * 24, 8, 'the memory map')
  const mm = new DataView(new ArrayBuffer(map.length * 24))
  map.forEach(([addr, size, type], i) => {
    mm.setUint32(i * 24, 20, true) // size: of the entry after this field
    mm.setBigUint64(i * 24 + 4, BigInt(addr), true)
    mm.setBigUint64(i * 24 + 12, BigInt(size), true)
    mm.setUint32(i * 24 + 20, type, true)
  })
  vm.write(mmap, new Uint8Array(mm.buffer))
  const string = (s: string, what: string): number => {
    const b = utf8(s)
    const at = mem.take(b.length, 1, what)
    vm.write(at, b)
    return at
  }
  const cmdlineAt = string(cmdline, 'the command line')
  const nameAt = string(LOADER_NAME, "the boot loader's name")
  const list = new DataView(new ArrayBuffer(modules.length * 16))
  const listAt = mem.take(list.byteLength, 8, 'the module list')
  modules.forEach((m, i) => {
    const nameOf = string(m.name, `module ${i}'s string`)
    // Page-aligned whether or not the header's flag 0 asks (QEMU and GRUB do the same).
    const at = mem.take(m.bytes.length, PAGE, `module ${i}`)
    vm.write(at, m.bytes)
    list.setUint32(i * 16, at, true)
    list.setUint32(i * 16 + 4, at + m.bytes.length, true)
    list.setUint32(i * 16 + 8, nameOf, true)
  })
  vm.write(listAt, new Uint8Array(list.buffer))
  const mbi = new DataView(new ArrayBuffer(MBI_SIZE))
  mbi.setUint32(0, MBI_MEMORY | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME, true)
  mbi.setUint32(4, 0x9_fc00 / 1024, true) // mem_lower: KiB from 0 (640 less the EBDA)
  mbi.setUint32(8, (memory - MIB) / 1024, true) // mem_upper: KiB from 1 MiB
  mbi.setUint32(12, 0xffff_ffff, true) // boot_device: none (its flag is clear anyway)
  mbi.setUint32(16, cmdlineAt, true)
  mbi.setUint32(20, modules.length, true)
  mbi.setUint32(24, listAt, true)
  mbi.setUint32(44, map.length * 24, true)
  mbi.setUint32(48, mmap, true)
  mbi.setUint32(64, nameAt, true)
  vm.write(info, new Uint8Array(mbi.buffer))
  return info
}

function moduleOf(m: Uint8Array | string | MultibootModule, i: number): { bytes: Uint8Array; name: string } {
  if (typeof m === 'object' && m !== null && !(m instanceof Uint8Array)) {
    const { bytes, file } = bytesOf(`modules[${i}]`, m.data)
    if (m.cmdline !== undefined && typeof m.cmdline !== 'string') throw new MshvError('EINVAL', `modules[${i}].cmdline must be a string, got ${describe(m.cmdline)}`)
    return { bytes, name: m.cmdline ?? (typeof m.data === 'string' ? file : '') }
  }
  const { bytes, file } = bytesOf(`modules[${i}]`, m)
  return { bytes, name: typeof m === 'string' ? file : '' }
}

/**
 * Loads a multiboot kernel into a new VM with the PC platform and ACPI; nothing runs
 * yet. The BSP starts at the kernel's entry in 32-bit protected mode without paging
 * (spec 3.2): EAX = 0x2BADB002, EBX = the boot information, flat 4 GiB segments, a GDT
 * that backs them, interrupts off; the APs wait for INIT/SIPI.
 */
export function prepareMultiboot(options: MultibootOptions): MultibootMachine {
  if (typeof options !== 'object' || options === null) throw new MshvError('EINVAL', `prepareMultiboot: options must be an object, got ${describe(options)}`)
  const memory = checkMemory(options.memory ?? 128 * MIB)
  const vcpus = checkVcpus(options.vcpus ?? 1)
  const cmdline = checkCmdline(options.cmdline ?? '')
  const modules = options.modules ?? []
  if (!Array.isArray(modules)) throw new MshvError('EINVAL', `modules must be an array, got ${describe(modules)}`)
  const { bytes, file } = bytesOf('kernel', options.kernel)
  const kernel = parseMultiboot(bytes, file)
  if (kernel.segments.some((s) => s.paddr < MIB && s.paddr + s.memSize > 0x9_fc00)) {
    fail(file, 'load address', 'a segment overlaps the BIOS area (0x9fc00..0x100000), where the ACPI tables are')
  }
  if ((options.biosState ?? true) && kernel.segments.some((s) => s.paddr < 0x500)) {
    fail(file, 'load address', 'a segment overlaps the interrupt vector table and BIOS data area (0..0x500) a BIOS leaves: load it higher, or give biosState: false')
  }
  if (kernel.end > memory) fail(file, 'size', `the kernel ends at ${hex(kernel.end)}, past the ${memory / MIB} MiB of RAM: give the VM ${Math.ceil(kernel.end / MIB) + 1} MiB or more`)
  const loaded = modules.map((m, i) => moduleOf(m, i))
  const vm = createVm({ backend: options.backend, policy: options.policy, clock: options.clock, cpu: options.cpu, cpuid: options.cpuid })
  try {
    vm.addRam(0, memory)
    for (const s of kernel.segments) vm.write(s.paddr, s.data)
    writeAcpiTables(vm, vcpus)
    const info = writeInfo(vm, kernel.end, memory, `${file} ${cmdline}`, loaded)
    // The spec leaves GDTR undefined; a GDT backing the loaded selectors lets a kernel
    // that reloads a segment register before its own lgdt keep running.
    vm.write(ENTRY_GDT, new Uint8Array(new BigUint64Array([0n, 0x00cf_9b00_0000_ffffn, 0x00cf_9300_0000_ffffn, 0x0000_8b00_0000_0067n]).buffer))
    for (let i = 0; i < vcpus; i++) {
      const v = vm.createVcpu(i)
      if (i > 0) {
        v.regs.set('internalActivityState', 1n) // waits for INIT/SIPI (startup suspend)
        continue
      }
      enterProtected32(v, kernel.entry)
      v.regs.setRaw('gdtr', 31n << 48n, BigInt(ENTRY_GDT))
      v.regs.set('rax', BigInt(MULTIBOOT_BOOTLOADER_MAGIC))
      v.regs.set('rbx', BigInt(info))
    }
    const { pc, pm } = addPcWithAcpi(vm, { serial: options.serial, rtc: options.rtcStart ? { start: options.rtcStart } : undefined })
    if (options.biosState ?? true) leaveAsBios(vm, pc)
    return { vm, pc, pm, pci: pc.pci as PciHost, kernel, info, run: (o) => vm.run(o), close: () => vm.close() }
  } catch (e) {
    vm.close()
    throw e
  }
}
