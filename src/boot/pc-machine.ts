/**
 * What every kernel loader here builds around its kernel: the PC platform with ACPI's
 * PM block, the e820 memory map the firmware would report, and the 32-bit protected
 * mode entry state that the PVH and multiboot entries share. {@link prepareLinux} and
 * {@link prepareMultiboot} differ only in what they load and what the entry registers
 * point to.
 * @module
 */
import { readFileSync } from 'node:fs'
import type { Vm, VmOptions } from '../vm.js'
import type { SyncPolicy } from '../registers.js'
import type { SerialOptions } from '../devices/serial.js'
import type { Vcpu } from '../vcpu.js'
import { segment } from '../guest.js'
import { MshvError, describe } from '../errors.js'
import { addPcPlatform, type PcPlatform, type PcPlatformOptions } from '../platform/pc.js'
import { AcpiPm, PM1A_EVT, PM1A_CNT, PM_TMR, RESET_PORT } from '../devices/acpi-pm.js'
import { PCI_ECAM_BASE, PCI_ECAM_SIZE } from '../pci/host.js'
import { buildAcpiTables, ACPI_BASE } from './acpi.js'

/** What every loader's machine takes beside its kernel: the VM and the PC's console and clock. */
export interface PcMachineOptions {
  /** `'auto'` (default), `'mshv'` or `'sim'`. */
  backend?: VmOptions['backend']
  /** The register sync policy (default `'page'`). */
  policy?: SyncPolicy
  /** The sim's clock (default deterministic). */
  clock?: VmOptions['clock']
  /** The sim's execution tier (default `'translator'`; see {@link VmOptions.cpu}). */
  cpu?: VmOptions['cpu']
  /** CPUID answers (e.g. a hypervisor signature at 0x40000000). */
  cpuid?: VmOptions['cpuid']
  /** COM1, the console: `onByte` receives what the kernel prints. */
  serial?: Omit<SerialOptions, 'irq'>
  /** The RTC's start (default: the host's time). */
  rtcStart?: Date
}

/** A mebibyte. */
export const MIB = 1 << 20
/** The most RAM a loader gives: below the PCI hole (the ECAM and PCI windows start at 3 GiB). */
export const MAX_MEMORY = 3 * 1024 * MIB
/** e820 (and multiboot memory map) types: usable RAM, reserved. */
export const E820_RAM = 1
export const E820_RESERVED = 2

/** `v`'s bytes: the array given, or the file it names (its name kept for messages). */
export function bytesOf(what: string, v: Uint8Array | string): { bytes: Uint8Array; file: string } {
  if (v instanceof Uint8Array) return { bytes: v, file: what }
  if (typeof v !== 'string') throw new MshvError('EINVAL', `${what} must be bytes (Uint8Array) or a file path, got ${describe(v)}`)
  try {
    return { bytes: readFileSync(v), file: v }
  } catch (e) {
    throw new MshvError('ENOENT', `${what}: cannot read ${v}: ${(e as Error).message}`)
  }
}

/** Checks a loader's `memory` option: a multiple of 4 KiB from 64 MiB to 3 GiB. */
export function checkMemory(memory: unknown): number {
  if (typeof memory !== 'number' || !Number.isSafeInteger(memory) || memory < 64 * MIB || memory > MAX_MEMORY || memory % 0x1000 !== 0) {
    throw new MshvError('EINVAL', `memory must be a multiple of 4096 bytes from 64 MiB to 3 GiB, got ${describe(memory)}`)
  }
  return memory
}

/** The longest command line a loader takes (bytes, its NUL beyond). */
const CMDLINE_MAX = 4096

/** Checks a loader's `cmdline` option: a string of fewer than 4096 bytes. */
export function checkCmdline(cmdline: unknown): string {
  if (typeof cmdline !== 'string' || cmdline.length >= CMDLINE_MAX) {
    throw new MshvError('EINVAL', `cmdline must be a string of fewer than ${CMDLINE_MAX} bytes, got ${typeof cmdline === 'string' ? `${cmdline.length} bytes` : describe(cmdline)}`)
  }
  return cmdline
}

/** Writes the ACPI tables for `vcpus` vCPUs and PCI bus 0 where a scan of 0xE0000-0xFFFFF finds them; returns the RSDP's address. */
export function writeAcpiTables(vm: Vm, vcpus: number): number {
  const acpi = buildAcpiTables(vcpus, ACPI_BASE, { pci: true })
  vm.write(ACPI_BASE, acpi.bytes)
  return acpi.rsdp
}

/** Checks a loader's `vcpus` option: 1 to 64. */
export function checkVcpus(vcpus: unknown): number {
  if (typeof vcpus !== 'number' || !Number.isInteger(vcpus) || vcpus < 1 || vcpus > 64) throw new MshvError('EINVAL', `vcpus must be an integer from 1 to 64, got ${describe(vcpus)}`)
  return vcpus
}

/**
 * The memory map firmware reports for `memory` bytes of RAM: RAM below the EBDA and
 * from 1 MiB, the BIOS area (where the ACPI tables are) and the PCI ECAM reserved.
 * `[address, size, type]` rows.
 */
export function e820(memory: number): [number, number, number][] {
  return [
    [0, 0x9_fc00, E820_RAM],
    [0x9_fc00, 0x400, E820_RESERVED],
    [0xe_0000, 0x2_0000, E820_RESERVED], // the ACPI tables and the BIOS area
    [MIB, memory - MIB, E820_RAM],
    // The ECAM: Linux takes MCFG's region only where firmware reserved it (arch/x86/pci/mmconfig-shared.c, pci_mmcfg_reserved).
    [PCI_ECAM_BASE, PCI_ECAM_SIZE, E820_RESERVED],
  ]
}

/**
 * The PC platform ({@link addPcPlatform}) with ACPI's PM block (the FADT's PM1a event and
 * control, PM timer and reset register): a guest's ACPI poweroff or reset ends the run
 * with `{ reason: 'poweroff' | 'reboot' }`.
 */
export function addPcWithAcpi(vm: Vm, options: PcPlatformOptions): { pc: PcPlatform; pm: AcpiPm } {
  const pc = addPcPlatform(vm, options)
  const pm = new AcpiPm(
    () => vm.guestTimeNs(),
    () => vm.requestStop({ reason: 'poweroff' }),
    () => vm.requestStop({ reason: 'reboot' }),
  )
  vm.bus.register(PM1A_EVT, 4, pm, 'ACPI PM1a event')
  vm.bus.register(PM1A_CNT, 2, pm, 'ACPI PM1a control')
  vm.bus.register(PM_TMR, 4, pm, 'ACPI PM timer')
  vm.bus.register(RESET_PORT, 1, pm, 'reset control')
  vm.addState('acpi-pm', pm)
  return { pc, pm }
}

/**
 * 32-bit protected mode without paging, flat 4 GiB code (selector 0x08) and data (0x10)
 * segments, a 32-bit TSS (0x18), interrupts off: the entry state both Xen's PVH
 * (`docs/misc/pvh.pandoc`) and multiboot (spec 0.6.96, 3.2 "Machine state") require.
 */
export function enterProtected32(v: Vcpu, entry: number): void {
  const r = v.regs
  r.setRaw('cs', ...segment(0n, 0xffff_ffff, 0x08, 0xc09b))
  for (const s of ['ds', 'es', 'ss', 'fs', 'gs'] as const) r.setRaw(s, ...segment(0n, 0xffff_ffff, 0x10, 0xc093))
  r.setRaw('tr', ...segment(0n, 0x67, 0x18, 0x8b))
  r.set('cr0', 0x11n) // PE, ET
  r.set('cr4', 0n)
  r.set('efer', 0n)
  r.set('rflags', 2n)
  r.set('rip', BigInt(entry))
}
