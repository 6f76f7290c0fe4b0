/**
 * Booting Linux: the kernel (bzImage or ELF) loaded and entered at its PVH entry
 * (`arch/x86/platform/pvh/enlighten.c` reads `hvm_start_info` version 1: the e820
 * map, the command line, the initrd as module 0, the RSDP), ACPI tables describing the
 * VM, and the PC platform's devices. The same machine on the sim and on mshv.
 * @module
 */
import { forkLinux, snapshotLinux } from './linux-snapshot.js'
import type { SnapshotInfo } from '../snapshot/vm-snapshot.js'
import { createVm, Vm } from '../vm.js'
import type { RunResult, Vcpu } from '../vcpu.js'
import { identityMap4G, segment } from '../guest.js'
import { addPcWithAcpi, bytesOf, checkCmdline, checkMemory, checkVcpus, e820, enterProtected32, MIB, writeAcpiTables, type PcMachineOptions } from './pc-machine.js'
import { MshvError, describe, hex } from '../errors.js'
import type { PcPlatform } from '../platform/pc.js'
import type { AcpiPm } from '../devices/acpi-pm.js'
import type { VmRunOptions, VmRunResult } from '../scheduler.js'
import { VmPort, VMPORT_PORT } from '../devices/vmport.js'
import { simClocks } from '../layout.js'
import type { CpuidEntry } from '../exits/cpuid.js'
import { readBzImage, readKernel, type KernelElf } from './image.js'
import type { PciHost } from '../pci/host.js'
import { VirtioPci } from '../virtio/pci.js'
import { VirtioBlock } from '../virtio/blk.js'
import { VirtioNet } from '../virtio/net.js'
import { VirtioRng } from '../virtio/rng.js'
import { VirtioConsole, type VirtioConsoleOptions } from '../virtio/console.js'
import type { NetworkBackend } from '../virtio/tap.js'
import { FileDisk, type BlockBackend } from '../virtio/disk.js'
import { checkInstance, checkNumber, checkObject } from '../check.js'

/** CPUID 0x40000000 of VMware: max hypervisor leaf 0x40000000, "VMwareVMware" (Linux's vmware_platform). */
const VMWARE_SIGNATURE: CpuidEntry = { leaf: 0x4000_0000, eax: 0x4000_0000, ebx: 0x6177_4d56, ecx: 0x4d56_6572, edx: 0x6572_6177 }

/** A disk for {@link LinuxOptions.disks}: a raw image file, or any {@link BlockBackend}. */
export interface DiskOptions {
  /** A raw disk image (a file system, or a partitioned disk). */
  path?: string
  /** Storage of your own instead of a file. */
  backend?: BlockBackend
  /** The guest may not write (VIRTIO_BLK_F_RO). */
  readOnly?: boolean
  /** The guest's writes go to a copy-on-write overlay, the file stays unchanged (QEMU's `-snapshot`). */
  overlay?: boolean
  /** The serial number the guest reads (`/sys/block/vdX/serial`). */
  id?: string
}

/** Options for {@link prepareLinux} and {@link bootLinux}. */
export interface LinuxOptions extends PcMachineOptions {
  /** The kernel: a bzImage or an ELF vmlinux with a PVH entry (bytes, or a file path). */
  kernel: Uint8Array | string
  /** The initramfs (bytes, or a file path). */
  initrd?: Uint8Array | string
  /** The kernel command line (default `console=ttyS0`). */
  cmdline?: string
  /** Guest RAM in bytes (default 256 MiB; at most 3 GiB, below the PCI hole). */
  memory?: number
  /** vCPUs (default 1). */
  vcpus?: number
  /**
   * Present the machine as VMware's: CPUID leaf 0x40000000 says `VMwareVMware` (max
   * leaf 0x40000000, so the kernel talks port I/O), and the backdoor at port 0x5658
   * answers GETHZ, so Linux's `vmware.c` takes the TSC and APIC frequencies from it.
   */
  vmware?: boolean
  /**
   * How the kernel is entered: `'pvh'` (default: a bzImage's payload unpacked natively,
   * the ELF entered at its PVH entry) or `'boot64'` (a bzImage's own 64-bit entry with
   * boot_params, the Linux x86 boot protocol: the guest runs the kernel's decompressor,
   * 4.5 billion instructions of Debian's xz kernel, which costs the sim about 30 s).
   */
  entry?: 'pvh' | 'boot64'
  /**
   * virtio-blk disks, in order: the guest's /dev/vda, /dev/vdb, ... A path is an image
   * the guest reads and writes; {@link DiskOptions} says more.
   */
  disks?: readonly (string | DiskOptions)[]
  /**
   * A virtio-net card: plugged into the switch given (in-process, with other VMs' cards)
   * or a host TAP interface ({@link TapDevice}), or unplugged with `true`.
   */
  network?: NetworkBackend | true
  /** The card's MAC address (default: a locally administered one). */
  mac?: string
  /** A virtio-rng device (the guest's /dev/hwrng). */
  rng?: boolean
  /** A virtio console (the guest's hvc0). */
  virtioConsole?: VirtioConsoleOptions | true
}

/** The virtio devices of a {@link LinuxMachine}, each on PCI bus 0. */
export interface LinuxDevices {
  /** The disks, as {@link LinuxOptions.disks} listed them. */
  readonly disks: readonly VirtioBlock[]
  readonly net: VirtioNet | undefined
  readonly rng: VirtioRng | undefined
  readonly console: VirtioConsole | undefined
  /** Every virtio device's PCI transport, by slot order. */
  readonly transports: readonly VirtioPci[]
}

/** A VM with Linux loaded, ready to {@link LinuxMachine.run}. */
export interface LinuxMachine {
  readonly vm: Vm
  readonly pc: PcPlatform
  readonly pm: AcpiPm
  /** What was loaded and where it starts. */
  readonly kernel: LoadedKernel
  /** The VMware backdoor, when `vmware` asked for it. */
  readonly vmport: VmPort | undefined
  /** PCI bus 0: add devices of your own with `new VirtioPci(machine.pci, device)` or `machine.pci.add(fn)`. */
  readonly pci: PciHost
  /** The virtio devices the options asked for. */
  readonly devices: LinuxDevices
  /** Runs every vCPU until poweroff, reboot, a fatal exit or the limits. */
  run(options?: VmRunOptions): Promise<VmRunResult>
  /** Closes the VM and the disk images it opened. */
  close(): void
  /**
   * Writes the machine's whole state, with its recipe, to `path` between runs
   * ({@link restoreLinux} builds it again and goes on from there); `parent`: only what
   * changed since that snapshot (the last one written or restored).
   */
  snapshot(path: string, options?: { parent?: string }): SnapshotInfo
  /**
   * `count` machines in this process from this one's state now, sharing its pages
   * copy-on-write until they write them; `each(i)` gives fork `i` options of its own
   * (its console's `onByte`, a network).
   */
  fork(count: number, each?: (i: number) => Partial<LinuxOptions>): Promise<LinuxMachine[]>
}

const START_INFO = 0x6000
const MODLIST = 0x6040
const MEMMAP = 0x6080
/** The zero page of the 64-bit boot protocol. */
const BOOT_PARAMS = 0x7000
const CMDLINE = 0x8000
/** The boot protocol's GDT and identity-mapping page tables (8 KiB). */
const BOOT_GDT = 0x500
const BOOT_TABLES = 0x9000
/** `hvm_start_info`'s magic (xen/include/public/arch-x86/hvm/start_info.h). */
const START_INFO_MAGIC = 0x336e_c578

/** Loads Linux into a new VM with the PC platform and ACPI; nothing runs yet. */
export function prepareLinux(options: LinuxOptions): LinuxMachine {
  return buildLinux(options, true)
}

/**
 * The machine {@link prepareLinux} builds; with `load` false, only the machine — RAM,
 * devices, vCPUs — with nothing loaded or set up in it: what a restore fills. @internal
 */
export function buildLinux(options: LinuxOptions, load: boolean): LinuxMachine {
  if (typeof options !== 'object' || options === null) throw new MshvError('EINVAL', `prepareLinux: options must be an object, got ${describe(options)}`)
  const memory = checkMemory(options.memory ?? 256 * MIB)
  const vcpus = checkVcpus(options.vcpus ?? 1)
  const cmdline = checkCmdline(options.cmdline ?? 'console=ttyS0')
  const kernel = load ? loadedKernel(options, memory) : RESTORED
  const initrd = load && options.initrd !== undefined ? bytesOf('initrd', options.initrd) : undefined
  const cpuid = options.vmware ? [...(Array.isArray(options.cpuid) ? options.cpuid : []), VMWARE_SIGNATURE] : options.cpuid
  if (options.vmware && options.cpuid !== undefined && !Array.isArray(options.cpuid)) {
    throw new MshvError('EINVAL', 'vmware: give cpuid as an array of entries to add the VMware signature to')
  }
  const vm = createVm({ backend: options.backend, policy: options.policy, clock: options.clock, cpu: options.cpu, cpuid })
  const opened: BlockBackend[] = []
  try {
    vm.addRam(0, memory)
    if (load) loadBoot(vm, kernel, initrd, memory, vcpus, cmdline)
    for (let i = 0; i < vcpus; i++) {
      const v = vm.createVcpu(i)
      if (!load) continue
      if (i === 0 && kernel.header) enterBoot64(vm, v, kernel.entry)
      else if (i === 0) enterPvh(v, kernel.entry)
      // An AP waits for the guest's INIT/SIPI (startup suspend), as on a PC.
      else v.regs.set('internalActivityState', 1n)
    }
    const { pc, pm } = addPcWithAcpi(vm, { serial: watchPanic(vm, options.serial, cmdline), rtc: options.rtcStart ? { start: options.rtcStart } : undefined })
    const devices = addVirtioDevices(pc.pci as PciHost, options, opened)
    let vmport: VmPort | undefined
    if (options.vmware) {
      // The sim's clocks are CPUID 0x15's; on mshv they are the host's, which only the
      // hypervisor knows: GETHZ then answers "unknown", as QEMU's does without them.
      vmport = new VmPort({ ramSize: () => memory, clocks: vm.backend === 'sim' ? simClocks : undefined })
      vm.bus.register(VMPORT_PORT, 1, vmport, 'vmport')
    }
    const close = (): void => {
      vm.close()
      for (const d of opened) d.close()
    }
    devices.transports.forEach((t, i) => vm.addState(`virtio${i}`, t))
    const machine: LinuxMachine = {
      vmport,
      vm,
      pc,
      pm,
      kernel,
      pci: pc.pci as PciHost,
      devices,
      run: (o) => vm.run(o),
      close,
      snapshot: (path, o) => snapshotLinux(machine, options, path, o?.parent),
      fork: (count, each) => forkLinux(machine, options, count, each),
    }
    return machine
  } catch (e) {
    vm.close()
    for (const d of opened) d.close()
    throw e
  }
}

/** What Linux prints when it panics (kernel/panic.c: `panic()`). */
const PANIC = 'Kernel panic - not syncing: '

/**
 * The console's options with a watch for Linux's panic line: once the line is whole,
 * the run ends with `{ reason: 'panic', message }` rather than a guest spinning in its
 * panic loop for ever (unless the command line's `panic=N` has the kernel reboot itself) (QEMU and Cloud Hypervisor learn of it from a pvpanic device,
 * which Debian's kernel has as a module only). The console's own callback and kept
 * output are as they were.
 */
function watchPanic(vm: Vm, serial: LinuxOptions['serial'], cmdline: string): LinuxOptions['serial'] {
  // `panic=N` (N not 0) has the kernel reboot itself after a panic: it ends the run then.
  if (/(?:^|\s)panic=-?[1-9]/.test(cmdline)) return serial
  const user = serial?.onByte
  let line = ''
  let panic: string | undefined
  const onByte = (b: number): void => {
    user?.(b)
    if (b === 0x0a) {
      if (panic === undefined && line.includes(PANIC)) {
        panic = line.slice(line.indexOf(PANIC)).trimEnd()
        vm.requestStop({ reason: 'panic', message: panic })
      }
      line = ''
    } else if (line.length < 1024) line += String.fromCharCode(b)
  }
  return { ...serial, onByte, keepOutput: serial?.keepOutput ?? (user ? 0 : 64 * 1024) }
}

/** What a restore builds instead of a kernel: nothing is loaded, the snapshot has it. */
const RESTORED: LoadedKernel = { description: 'restored from a snapshot', entry: 0, end: 0, load: () => {} }

/** The kernel of `options`, parsed and checked against `memory`. */
function loadedKernel(options: LinuxOptions, memory: number): LoadedKernel {
  const { bytes: kernelBytes, file: kernelFile } = bytesOf('kernel', options.kernel)
  const entry = options.entry ?? 'pvh'
  if (entry !== 'pvh' && entry !== 'boot64') throw new MshvError('EINVAL', `entry must be 'pvh' or 'boot64', got ${describe(entry)}`)
  const kernel = entry === 'pvh' ? pvhKernel(kernelBytes, kernelFile) : boot64Kernel(kernelBytes, kernelFile)
  if (kernel.end > memory) {
    throw new MshvError('EKERNEL', `${kernelFile}: the kernel ends at ${hex(kernel.end)}, past the ${memory / MIB} MiB of RAM: it needs ${Math.ceil(kernel.end / MIB) + 1} MiB or more (its initrd on top)`)
  }
  return kernel
}

/** The kernel, the initrd at the top of RAM, ACPI, the command line and the boot data, written into RAM. */
function loadBoot(vm: Vm, kernel: LoadedKernel, initrd: { bytes: Uint8Array; file: string } | undefined, memory: number, vcpus: number, cmdline: string): void {
  kernel.load(vm)
  // The initrd at the top of RAM, page-aligned, above the kernel.
  let initrdAt = 0
  if (initrd) {
    initrdAt = Math.floor((memory - initrd.bytes.length) / 0x1000) * 0x1000
    if (initrdAt < kernel.end) {
      throw new MshvError(
        'EKERNEL',
        `${initrd.file}: the initrd's ${initrd.bytes.length} bytes do not fit in RAM above the kernel (${hex(kernel.end)}..${hex(memory)}): give the VM ${Math.ceil((kernel.end + initrd.bytes.length) / MIB) + 1} MiB or more`,
      )
    }
    vm.write(initrdAt, initrd.bytes)
  }
  const rsdp = writeAcpiTables(vm, vcpus)
  const boot = { memory, cmdline, rsdp, initrd: initrd ? { at: initrdAt, size: initrd.bytes.length } : undefined }
  vm.write(CMDLINE, [...new TextEncoder().encode(cmdline), 0])
  if (kernel.header) writeBootParams(vm, kernel.header, boot)
  else writeStartInfo(vm, boot)
}

/** A disk's backend: the file it names (opened here, recorded in `opened`), or the one given. */
function diskBackend(d: string | DiskOptions, i: number, opened: BlockBackend[]): { backend: BlockBackend; id: string | undefined } {
  const o: DiskOptions = typeof d === 'string' ? { path: d } : d
  if (typeof o !== 'object' || o === null) throw new MshvError('EINVAL', `disks[${i}] must be a path or { path | backend, readOnly, overlay, id }, got ${describe(d)}`)
  if ((o.path === undefined) === (o.backend === undefined)) throw new MshvError('EINVAL', `disks[${i}] needs a path or a backend (one of them), got ${describe(d)}`)
  if (o.backend) return { backend: o.backend, id: o.id }
  const backend = new FileDisk(o.path as string, { readOnly: o.readOnly, overlay: o.overlay })
  opened.push(backend)
  return { backend, id: o.id }
}

/** The virtio devices `options` ask for, on `pci` in a fixed order: RNG, disks, network, console. */
function addVirtioDevices(pci: PciHost, options: LinuxOptions, opened: BlockBackend[]): LinuxDevices {
  const transports: VirtioPci[] = []
  const add = <T extends VirtioPci['device']>(device: T): T => {
    transports.push(new VirtioPci(pci, device))
    return device
  }
  const rng = options.rng ? add(new VirtioRng()) : undefined
  const list = options.disks ?? []
  if (!Array.isArray(list)) throw new MshvError('EINVAL', `disks must be an array, got ${describe(list)}`)
  const disks = list.map((d, i) => {
    const { backend, id } = diskBackend(d, i, opened)
    return add(new VirtioBlock(backend, { id: id ?? `mshv-vd${String.fromCharCode(0x61 + i)}` }))
  })
  let net: VirtioNet | undefined
  if (options.network !== undefined) {
    const backend = options.network
    if (backend !== true && (typeof backend !== 'object' || backend === null || typeof backend.connect !== 'function')) {
      throw new MshvError('EINVAL', `network must be a NetworkSwitch, a TapDevice or true, got ${describe(backend)}`)
    }
    net = add(new VirtioNet({ mac: options.mac }))
    if (backend !== true) backend.connect(net)
  }
  const c = options.virtioConsole
  const console = c === undefined ? undefined : add(new VirtioConsole(c === true ? {} : c))
  return { disks, net, rng, console, transports }
}

/** A kernel ready to load. */
export interface LoadedKernel {
  /** What it is (`bzImage (protocol 2.15, xz)`, `ELF vmlinux`) and how it is entered. */
  readonly description: string
  /** The entry point (physical): the PVH entry, or the bzImage's 64-bit entry. */
  readonly entry: number
  /** The highest physical address it needs. */
  readonly end: number
  /** The setup header for boot_params (the 64-bit boot protocol only). */
  readonly header?: Uint8Array
  /** Writes it into guest RAM. */
  load(vm: Vm): void
}

function pvhKernel(bytes: Uint8Array, file: string): LoadedKernel {
  const k: KernelElf = readKernel(bytes, file)
  return {
    description: `${k.description}, entered at its PVH entry`,
    entry: k.pvhEntry,
    end: k.end,
    // Only p_filesz is copied: the rest of each segment (its .bss) is RAM the VM just made,
    // zero already, so a header asking for gigabytes of it costs nothing.
    load: (vm) => {
      for (const s of k.segments) vm.write(s.paddr, s.data)
    },
  }
}

/** The bzImage's protected-mode kernel at `pref_address`, entered at +0x200 (boot.rst, "64-bit BOOT PROTOCOL"). */
function boot64Kernel(bytes: Uint8Array, file: string): LoadedKernel {
  if (bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46) {
    throw new MshvError('EKERNEL', `${file}: entry: an ELF vmlinux has no boot-protocol entry; enter it with entry 'pvh'`)
  }
  const b = readBzImage(bytes, file)
  return {
    description: `${b.description}, entered at its 64-bit entry (the guest decompresses it)`,
    entry: b.prefAddress + 0x200,
    end: b.prefAddress + Math.max(b.initSize, b.kernel.length),
    header: b.header,
    load: (vm) => vm.write(b.prefAddress, b.kernel),
  }
}

interface BootInfo {
  memory: number
  cmdline: string
  rsdp: number
  initrd?: { at: number; size: number }
}

/**
 * The zero page (`struct boot_params`, arch/x86/include/uapi/asm/bootparam.h): the
 * bzImage's setup header at 0x1f1 with the loader's fields filled in (boot.rst,
 * "THE REAL-MODE KERNEL HEADER"), the e820 table at 0x2d0, the RSDP at 0x070.
 */
function writeBootParams(vm: Vm, header: Uint8Array, o: BootInfo): void {
  const zp = new Uint8Array(0x1000)
  const dv = new DataView(zp.buffer)
  zp.set(header, 0x1f1)
  dv.setBigUint64(0x070, BigInt(o.rsdp), true) // acpi_rsdp_addr (protocol 2.14)
  const map = e820(o.memory)
  dv.setUint8(0x1e8, map.length) // e820_entries
  map.forEach(([addr, size, type], i) => {
    dv.setBigUint64(0x2d0 + i * 20, BigInt(addr), true)
    dv.setBigUint64(0x2d0 + i * 20 + 8, BigInt(size), true)
    dv.setUint32(0x2d0 + i * 20 + 16, type, true)
  })
  dv.setUint16(0x1fa, 0xffff, true) // vid_mode: normal
  dv.setUint8(0x210, 0xff) // type_of_loader: undefined boot loader
  dv.setUint8(0x211, dv.getUint8(0x211) | 0x01) // loadflags: LOADED_HIGH
  dv.setUint32(0x228, CMDLINE, true) // cmd_line_ptr
  if (o.initrd) {
    dv.setUint32(0x218, o.initrd.at, true) // ramdisk_image
    dv.setUint32(0x21c, o.initrd.size, true) // ramdisk_size
  }
  vm.write(BOOT_PARAMS, zp)
}

/**
 * The 64-bit boot protocol's entry state (boot.rst): long mode with the loaded kernel,
 * boot_params, the command line and the initrd identity-mapped (here: the first 4 GiB,
 * 1 GiB pages), a GDT with 4 GiB flat __BOOT_CS (0x10) and __BOOT_DS (0x18), CS/DS/ES/SS
 * loaded from them, interrupts off, RSI = boot_params.
 */
function enterBoot64(vm: Vm, v: Vcpu, entry: number): void {
  vm.write(BOOT_GDT, new Uint8Array(new BigUint64Array([0n, 0n, 0x00af_9b00_0000_ffffn, 0x00cf_9300_0000_ffffn]).buffer))
  identityMap4G(vm, BOOT_TABLES)
  const r = v.regs
  r.setRaw('gdtr', 31n << 48n, BigInt(BOOT_GDT))
  r.setRaw('cs', ...segment(0n, 0xffff_ffff, 0x10, 0xa09b))
  for (const s of ['ds', 'es', 'ss'] as const) r.setRaw(s, ...segment(0n, 0xffff_ffff, 0x18, 0xc093))
  r.set('cr3', BigInt(BOOT_TABLES))
  r.set('cr4', 1n << 5n) // PAE
  r.set('efer', (1n << 8n) | (1n << 10n)) // LME, LMA
  r.set('cr0', 0x8000_0011n) // PG, ET, PE
  r.set('rflags', 2n)
  r.set('rip', BigInt(entry))
  r.set('rsi', BigInt(BOOT_PARAMS))
}

/** `hvm_start_info` version 1 with its e820 map, command line and initrd module. */
function writeStartInfo(vm: Vm, o: BootInfo): void {
  const map = e820(o.memory)
  const mm = new DataView(new ArrayBuffer(map.length * 24))
  map.forEach(([addr, size, type], i) => {
    mm.setBigUint64(i * 24, BigInt(addr), true)
    mm.setBigUint64(i * 24 + 8, BigInt(size), true)
    mm.setUint32(i * 24 + 16, type, true)
  })
  vm.write(MEMMAP, new Uint8Array(mm.buffer))
  if (o.initrd) {
    const mod = new DataView(new ArrayBuffer(32))
    mod.setBigUint64(0, BigInt(o.initrd.at), true)
    mod.setBigUint64(8, BigInt(o.initrd.size), true)
    vm.write(MODLIST, new Uint8Array(mod.buffer))
  }
  const si = new DataView(new ArrayBuffer(56))
  si.setUint32(0, START_INFO_MAGIC, true)
  si.setUint32(4, 1, true) // version 1: memmap fields valid
  si.setUint32(12, o.initrd ? 1 : 0, true)
  si.setBigUint64(16, BigInt(o.initrd ? MODLIST : 0), true)
  si.setBigUint64(24, BigInt(CMDLINE), true)
  si.setBigUint64(32, BigInt(o.rsdp), true)
  si.setBigUint64(40, BigInt(MEMMAP), true)
  si.setUint32(48, map.length, true)
  vm.write(START_INFO, new Uint8Array(si.buffer))
}

/** The PVH entry state (Xen's `docs/misc/pvh.pandoc`): 32-bit protected mode, EBX = `hvm_start_info`. */
function enterPvh(v: Vcpu, entry: number): void {
  enterProtected32(v, entry)
  v.regs.set('rbx', BigInt(START_INFO))
}

/** A finished boot: how it ended and what it cost. */
export interface LinuxBootReport {
  readonly result: VmRunResult
  /** Host seconds the run took. */
  readonly seconds: number
  /** Exits handled, all vCPUs. */
  readonly exits: number
  readonly exitsByType: Record<string, number>
  readonly hypercalls: number
  readonly instructions: number
  /** Register reads and writes the register page served, and those that took hypercalls. */
  readonly pageReads: number
  readonly hypercallReads: number
  readonly pageWrites: number
  readonly hypercallWrites: number
  /** The guest time it took (ns). */
  readonly guestNs: number
  /** How guest time passed. */
  readonly clock: 'deterministic' | 'realtime'
}

/** Sums the vCPUs' counters into a report. */
export function bootReport(vm: Vm, result: VmRunResult, seconds: number): LinuxBootReport {
  checkInstance('bootReport: vm', vm, Vm)
  checkObject('bootReport: result', result)
  checkNumber('bootReport: seconds', seconds, 0, Number.MAX_VALUE)
  const sum = { exits: 0, hypercalls: 0, instructions: 0, pageReads: 0, hypercallReads: 0, pageWrites: 0, hypercallWrites: 0 }
  const byType: Record<string, number> = {}
  for (const v of vm.cpus) {
    const s = v.stats()
    for (const k of Object.keys(sum) as (keyof typeof sum)[]) sum[k] += s[k]
    for (const [t, n] of Object.entries(s.exitsByType)) byType[t] = (byType[t] ?? 0) + n
  }
  return { result, seconds, exitsByType: byType, guestNs: vm.guestTimeNs(), clock: vm.clock, ...sum }
}

/** Loads and runs Linux to its end (poweroff, reboot, a fatal exit or `timeoutMs`); the VM is closed after. */
export async function bootLinux(options: LinuxOptions & { timeoutMs?: number }): Promise<LinuxBootReport> {
  const m = prepareLinux(options)
  try {
    const start = performance.now()
    const result = await m.run({ timeoutMs: options.timeoutMs })
    return bootReport(m.vm, result, (performance.now() - start) / 1000)
  } finally {
    m.close()
  }
}

export type { RunResult }
