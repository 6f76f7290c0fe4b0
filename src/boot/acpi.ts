/**
 * The ACPI tables a Linux guest reads (ACPI 6.4 spec, chapter 5): RSDP, XSDT, FADT
 * with PM1 event/control blocks, the PM timer and the reset register (so `poweroff`
 * and `reboot` reach the VMM), FACS, a DSDT holding `_S5`, and a MADT listing every
 * vCPU's local APIC, the I/O APIC and the ISA overrides (IRQ 0 on GSI 2, the SCI on
 * GSI 9 level-triggered, as QEMU's `pc` machine describes them). Built from the VM's
 * configuration.
 * @module
 */
import { IOAPIC_BASE } from '../devices/ioapic.js'
import { MshvError, describe } from '../errors.js'
import { PCI_CONFIG_ADDRESS, PCI_ECAM_BASE, PCI_IO_END, PCI_MMIO_END, PCI_MMIO_START, PCI_SLOTS, pciIntxGsi } from '../pci/host.js'
import { device, eisaId, integer, io, name, pkg, resourceTemplate, scope, wordBusNumber, wordIo, dwordMemory, type Aml } from './aml.js'
import { PM1A_EVT, PM1A_CNT, PM_TMR, RESET_PORT, RESET_VALUE, SCI_IRQ, SLP_TYP_S5 } from '../devices/acpi-pm.js'

/** Where the tables go: the BIOS area below 1 MiB, which the e820 map reserves. */
export const ACPI_BASE = 0xe_0000
const OEM_ID = 'MSHVJS'
const OEM_TABLE = 'MSHVTBLS'
const LAPIC_BASE = 0xfee0_0000

/** One table being written: little-endian fields by offset. */
class Table {
  readonly bytes: Uint8Array
  private readonly dv: DataView

  constructor(length: number) {
    this.bytes = new Uint8Array(length)
    this.dv = new DataView(this.bytes.buffer)
  }

  u8(off: number, v: number): this {
    this.dv.setUint8(off, v)
    return this
  }
  u16(off: number, v: number): this {
    this.dv.setUint16(off, v, true)
    return this
  }
  u32(off: number, v: number): this {
    this.dv.setUint32(off, v >>> 0, true)
    return this
  }
  u64(off: number, v: number): this {
    this.dv.setBigUint64(off, BigInt(v), true)
    return this
  }
  text(off: number, s: string): this {
    for (let i = 0; i < s.length; i++) this.bytes[off + i] = s.charCodeAt(i)
    return this
  }
  /** A Generic Address Structure (5.2.3.2): system I/O space, `bits` wide. */
  gas(off: number, port: number, bits: number, accessSize: number): this {
    return this.u8(off, 1).u8(off + 1, bits).u8(off + 2, 0).u8(off + 3, accessSize).u64(off + 4, port)
  }
  /** The 36-byte system description header (5.2.6), checksum last. */
  header(signature: string, revision: number): this {
    return this.text(0, signature).u32(4, this.bytes.length).u8(8, revision).text(10, OEM_ID).text(16, OEM_TABLE).u32(24, 1).text(28, 'MSHV').u32(32, 1)
  }
  /** Sets the byte at `at` so the bytes `[0, length)` sum to zero. */
  checksum(at = 9, length = this.bytes.length): this {
    this.bytes[at] = 0
    let sum = 0
    for (let i = 0; i < length; i++) sum += this.bytes[i] as number
    this.bytes[at] = (0x100 - (sum & 0xff)) & 0xff
    return this
  }
}

/** `Name (_S5_, Package (4) { 5, 5, 0, 0 })` in AML (ACPI 6.4, 20.2.5): S5's SLP_TYP for PM1a and PM1b. */
const S5_AML = [0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04, 0x0a, SLP_TYP_S5, 0x0a, SLP_TYP_S5, 0x00, 0x00]

/**
 * `\_SB.PCI0`, the host bridge of {@link PciHost} (ACPI 6.4, 6.1 and 6.2; PCI Firmware
 * Specification 3.2, 4.1): a PCI Express root (`PNP0A08`, compatible `PNP0A03`) on
 * segment 0 with bus 0, `_CRS` giving its bus, I/O and memory windows (the ports of
 * mechanism #1 its own), and `_PRT` routing each slot's INTA#-INTD# straight to a GSI
 * (a source of Zero: the index is the GSI, level-triggered, active low).
 */
function pciRootAml(): Aml {
  const routes: Aml[] = []
  for (let slot = 0; slot < PCI_SLOTS; slot++) {
    for (let pin = 0; pin < 4; pin++) routes.push(pkg([integer(slot * 0x1_0000 + 0xffff), integer(pin), integer(0), integer(pciIntxGsi(slot, pin))]))
  }
  // A Package holds at most 255 elements: the _PRT's 128 fit.
  return scope('\\_SB_', [
    device('PCI0', [
      name('_HID', eisaId('PNP0A08')),
      name('_CID', eisaId('PNP0A03')),
      name('_ADR', integer(0)),
      name('_SEG', integer(0)),
      name('_UID', integer(0)),
      name('_BBN', integer(0)),
      name(
        '_CRS',
        resourceTemplate([
          wordBusNumber(0, 0),
          io(PCI_CONFIG_ADDRESS, 8),
          wordIo(0, PCI_CONFIG_ADDRESS - 1),
          wordIo(PCI_CONFIG_ADDRESS + 8, PCI_IO_END - 1),
          dwordMemory(PCI_MMIO_START, PCI_MMIO_END - 1),
        ]),
      ),
      name('_PRT', pkg(routes)),
    ]),
  ])
}

/** The MCFG table (PCI Firmware Specification 3.2, 4.1.2): ECAM of segment 0, bus 0. */
function mcfgTable(): Table {
  return new Table(44 + 16).header('MCFG', 1).u64(44, PCI_ECAM_BASE).u16(52, 0).u8(54, 0).u8(55, 0).checksum()
}

/**
 * The DMAR table (Intel VT-d rev 4.x, 8.1 "DMA Remapping Reporting Structure"; as QEMU's
 * `build_dmar_q35` builds it): the host address width (N - 1), INTR_REMAP, and one DRHD
 * (8.3) for segment 0 with INCLUDE_PCI_ALL, its registers at `base`, and the I/O APIC in
 * its scope (8.3.1: type 3, enumeration ID 0, path 0xFF:00.0, QEMU's
 * `Q35_PSEUDO_BUS_PLATFORM`), which Linux needs to turn interrupt remapping on.
 */
function dmarTable(iommu: NonNullable<AcpiOptions['iommu']>): Table {
  const t = new Table(48 + 16 + 8).header('DMAR', 1)
  t.u8(36, iommu.addressWidth - 1).u8(37, iommu.interruptRemapping ? 1 : 0)
  t.u16(48, 0).u16(50, 16 + 8).u8(52, 1).u16(54, 0).u64(56, iommu.base)
  t.u8(64, 3).u8(65, 8).u8(68, 0).u8(69, 0xff).u8(70, 0).u8(71, 0)
  return t.checksum()
}

/** What {@link buildAcpiTables} describes besides the processors. */
export interface AcpiOptions {
  /** PCI bus 0 (a {@link PciHost}): the DSDT's host bridge and the MCFG table. */
  pci?: boolean
  /** An Intel VT-d unit ({@link addIntelIommu}): the DMAR table. */
  iommu?: { readonly base: number; readonly addressWidth: number; readonly interruptRemapping: boolean }
}

/** The tables for `vcpus` processors, laid out from `base`: the bytes to write there and the RSDP's address. */
export function buildAcpiTables(vcpus: number, base = ACPI_BASE, options: AcpiOptions = {}): { bytes: Uint8Array; rsdp: number } {
  // A MADT processor local APIC entry has an 8-bit APIC ID (ACPI 6.4, 5.2.12.2), and 0xFF is
  // the broadcast ID: 255 processors at most; the tables must fit below 1 MiB.
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 255) throw new MshvError('EINVAL', `buildAcpiTables: vcpus must be an integer in 1..255, got ${describe(vcpus)}`)
  if (!Number.isInteger(base) || base < 0 || base > 0xf_0000 || base % 16 !== 0) throw new MshvError('EINVAL', `buildAcpiTables: base must be a 16-byte-aligned address below 0xf0000, got ${describe(base)}`)
  const rsdp = new Table(36)
  const facs = new Table(64).text(0, 'FACS').u32(4, 64).u8(32, 2)
  const aml = [...S5_AML, ...(options.pci ? pciRootAml() : [])]
  const dsdt = new Table(36 + aml.length).header('DSDT', 2)
  dsdt.bytes.set(aml, 36)
  dsdt.checksum()
  const madt = madtTable(vcpus)
  const fadt = new Table(276).header('FACP', 6)
  const mcfg = options.pci ? mcfgTable() : undefined
  const dmar = options.iommu ? dmarTable(options.iommu) : undefined
  const extra = [...(mcfg ? [mcfg] : []), ...(dmar ? [dmar] : [])]
  const xsdt = new Table(36 + (2 + extra.length) * 8).header('XSDT', 1)
  // Layout: RSDP, FACS (64-byte aligned), DSDT, FADT, MADT, [MCFG], [DMAR], XSDT.
  const order = [rsdp, facs, dsdt, fadt, madt, ...extra, xsdt]
  const at = new Map<Table, number>()
  let p = base
  for (const t of order) {
    p = (p + 63) & ~63
    at.set(t, p)
    p += t.bytes.length
  }
  const addr = (t: Table): number => at.get(t) as number
  fadt
    .u32(36, addr(facs))
    .u32(40, addr(dsdt))
    .u8(45, 0) // preferred PM profile: unspecified
    .u16(46, SCI_IRQ)
    .u32(48, 0) // SMI_CMD 0: ACPI mode is always on (SCI_EN reads 1)
    .u32(56, PM1A_EVT)
    .u32(64, PM1A_CNT)
    .u32(76, PM_TMR)
    .u8(88, 4) // PM1_EVT_LEN
    .u8(89, 2) // PM1_CNT_LEN
    .u8(91, 4) // PM_TMR_LEN
    .u16(96, 0x65) // P_LVL2_LAT > 100: no C2
    .u16(98, 0x3e9) // P_LVL3_LAT > 1000: no C3
    .u8(108, 0x32) // the RTC's century byte
    .u16(109, 1 << 0) // IAPC_BOOT_ARCH: legacy devices (RTC, PIT)
    // Flags: WBINVD, PROC_C1, PWR_BUTTON and SLP_BUTTON absent, TMR_VAL_EXT (32-bit timer), RESET_REG_SUP.
    .u32(112, (1 << 0) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 10))
    .gas(116, RESET_PORT, 8, 1)
    .u8(128, RESET_VALUE)
    .u8(131, 4) // FADT minor version: 6.4
    .u64(132, addr(facs))
    .u64(140, addr(dsdt))
    .gas(148, PM1A_EVT, 32, 2)
    .gas(172, PM1A_CNT, 16, 2)
    .gas(208, PM_TMR, 32, 3)
    .checksum()
  xsdt.u64(36, addr(fadt)).u64(44, addr(madt))
  extra.forEach((t, i) => xsdt.u64(52 + 8 * i, addr(t)))
  xsdt.checksum()
  rsdp.text(0, 'RSD PTR ').text(9, OEM_ID).u8(15, 2).u32(16, 0).u32(20, 36).u64(24, addr(xsdt))
  rsdp.checksum(8, 20).checksum(32, 36)
  const bytes = new Uint8Array(p - base)
  for (const t of order) bytes.set(t.bytes, addr(t) - base)
  return { bytes, rsdp: addr(rsdp) }
}

/** The MADT (5.2.12): a local APIC per vCPU, the I/O APIC, the ISA overrides, LINT1 as NMI. */
function madtTable(vcpus: number): Table {
  const entries: number[][] = []
  for (let i = 0; i < vcpus; i++) entries.push([0, 8, i, i, 1, 0, 0, 0]) // processor local APIC, enabled
  const io = IOAPIC_BASE
  entries.push([1, 12, 0, 0, io & 0xff, (io >> 8) & 0xff, (io >> 16) & 0xff, io >>> 24, 0, 0, 0, 0]) // I/O APIC 0, GSI base 0
  entries.push([2, 10, 0, 0, 2, 0, 0, 0, 0, 0]) // IRQ 0 -> GSI 2, bus default polarity and trigger
  entries.push([2, 10, 0, SCI_IRQ, SCI_IRQ, 0, 0, 0, 0x0d, 0]) // the SCI: active high, level-triggered
  entries.push([4, 6, 0xff, 0, 0, 1]) // every processor's LINT1 is NMI
  const length = 44 + entries.reduce((n, e) => n + e.length, 0)
  const t = new Table(length).header('APIC', 5).u32(36, LAPIC_BASE).u32(40, 1) // PCAT_COMPAT: 8259s present
  let p = 44
  for (const e of entries) {
    t.bytes.set(e, p)
    p += e.length
  }
  return t.checksum()
}
