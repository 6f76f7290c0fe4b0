/**
 * The Intel VT-d unit (src/iommu/): its registers (Intel VT-d spec rev 4.x, chapter 10),
 * DMA remapping through legacy root and context tables and second-level page tables
 * (3.4.2, 9.1, 9.3, 9.8), fault recording (7.2.1, 10.4.14), queued invalidation (6.5.2),
 * interrupt remapping (5.1, 9.10), and what it costs a machine without it: nothing.
 * The guest's side is played here by writing tables into guest RAM and registers over
 * the bus, as a driver does; kvm-unit-tests' intel_iommu (kvm-unit-tests.test.ts) and
 * its edu device are the outside judge.
 */
import test from 'ava'
import { ACPI_BASE, addIntelIommu, addPcPlatform, buildAcpiTables, busyboxInitramfs, createVm, IntelIommu, ioapicMessage, PciFunction, prepareLinux, VTD_BASE, VTD_SIZE, type PcPlatform, type PciHost, type Vm } from '../index.js'
import { debianLinuxOrSkip } from './helpers.js'
import { CTX } from './virtio-driver.js'

/** Register offsets (10.4). */
const GCMD = 0x18
const GSTS = 0x1c
const RTADDR = 0x20
const CCMD = 0x28
const FSTS = 0x34
const FECTL = 0x38
const FEDATA = 0x3c
const FEADDR = 0x40
const IQH = 0x80
const IQT = 0x88
const IQA = 0x90
const ICS = 0x9c
const IECTL = 0xa0
const IEDATA = 0xa4
const IEADDR = 0xa8
const IRTA = 0xb8
const IOTLB = 0xf8
const FRCD = 0x220
const TE = 1 << 31
const SRTP = 1 << 30
const QIE = 1 << 26
const IRE = 1 << 25
const SIRTP = 1 << 24
const CFI = 1 << 23

/** Where the tests put their tables in guest RAM. */
const ROOT = 0x10_0000
const CONTEXT = 0x10_1000
const TABLES = 0x10_2000
const QUEUE = 0x20_0000
const IRT = 0x21_0000

interface Machine {
  vm: Vm
  pc: PcPlatform
  host: PciHost
  iommu: IntelIommu
  fn: PciFunction
  /** The unit's own event messages (fault, invalidation completion). */
  events: { address: bigint; data: number }[]
  /** Messages that reached the local APICs from PCI functions. */
  delivered: { address: bigint; data: number }[]
}

/** A PC with 16 MiB of RAM, a VT-d unit at 0xFED90000 and one PCI function in slot 1 (requester 00:01.0 = 0x0008). */
function machine(options: { addressWidth?: 39 | 48 } = {}): Machine {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 16 << 20)
  const pc = addPcPlatform(vm)
  const host = pc.pci as PciHost
  const events: Machine['events'] = []
  const delivered: Machine['delivered'] = []
  const iommu = new IntelIommu(vm, options, (address, data) => events.push({ address, data }))
  vm.bus.registerMmio(VTD_BASE, VTD_SIZE, iommu, 'VT-d')
  host.iommu = iommu
  const fn = new PciFunction({ name: 'dma-test', vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000 })
  host.add(fn, 1)
  vm.deviceMsi = (address, data) => void delivered.push({ address: BigInt(address), data })
  return { vm, pc, host, iommu, fn, events, delivered }
}

const readq = (m: Machine, reg: number): bigint => m.vm.bus.mmioRead(BigInt(VTD_BASE + reg), 8, CTX)
const readl = (m: Machine, reg: number): number => Number(m.vm.bus.mmioRead(BigInt(VTD_BASE + reg), 4, CTX))
const writeq = (m: Machine, reg: number, v: bigint): void => m.vm.bus.mmioWrite(BigInt(VTD_BASE + reg), 8, v, CTX)
const writel = (m: Machine, reg: number, v: number): void => m.vm.bus.mmioWrite(BigInt(VTD_BASE + reg), 4, BigInt(v >>> 0), CTX)
const put64 = (m: Machine, gpa: number, v: bigint): void => m.vm.memory.dataView(gpa, 8, true).setBigUint64(0, v, true)

/** GCMD as kvm-unit-tests' vtd_gcmd_or and Linux write it: the status now, with one command bit. */
function command(m: Machine, bit: number): void {
  writel(m, GCMD, (readl(m, GSTS) | bit) >>> 0)
}

/**
 * Legacy tables for requester 0x0008 (bus 0, devfn 8): a root entry (9.1), a context
 * entry (9.3) with address width `aw` (1: 39-bit 3-level, 2: 48-bit 4-level), and a
 * second-level walk mapping IOVA `iova` to `gpa` with permission `rw` (9.8: bit 0 R, bit 1 W).
 */
function map(m: Machine, iova: number, gpa: number, rw: bigint, aw = 1, fpd = false): void {
  put64(m, ROOT, BigInt(CONTEXT) | 1n)
  const levels = aw + 2
  put64(m, CONTEXT + 8 * 16, BigInt(TABLES) | (fpd ? 2n : 0n) | 1n)
  put64(m, CONTEXT + 8 * 16 + 8, BigInt(aw) | (8n << 8n)) // AW, DID 8
  let table = TABLES
  for (let level = levels; level > 1; level--) {
    const next = table + 0x1000
    const index = Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512
    put64(m, table + index * 8, BigInt(next) | 3n)
    table = next
  }
  put64(m, table + (Math.floor(iova / 4096) % 512) * 8, BigInt(gpa) | rw)
  writeq(m, RTADDR, BigInt(ROOT))
  command(m, SRTP)
  command(m, TE)
}

test('registers (10.4.1-10.4.3; QEMU 7.2 vtd_init with aw-bits=39, intremap=on): VER 1.0, CAP 0x00d2008c22260206, ECAP 0xf00f4a; 48-bit adds SAGAW 4-level', (t) => {
  const m = machine()
  t.is(readl(m, 0), 0x10)
  t.is(readq(m, 0x08), 0x00d2_008c_2226_0206n, 'FRO 0x220, ND 6, MGAW 38, SAGAW 39-bit, SLLPS, PSI, MAMV 18, DRD/DWD')
  t.is(readq(m, 0x10), 0xf0_0f4an, 'QI, IR, PT, IRO 0xF0, MHMV 15; no EIM (eim=off)')
  t.is(readl(m, GSTS), 0, 'translation, remapping and QI off at reset')
  t.is(readl(m, FECTL), 0x8000_0000, 'fault events masked at reset')
  m.vm.close()
  const wide = machine({ addressWidth: 48 })
  t.is((readq(wide, 0x08) >> 8n) & 0x1fn, 0b110n, 'SAGAW: 39-bit and 48-bit')
  t.is((readq(wide, 0x08) >> 16n) & 0x3fn, 47n, 'MGAW 48')
  wide.vm.close()
  t.throws(() => new IntelIommu(createVm({ backend: 'sim' }), { addressWidth: 52 as 48 }), { code: 'EINVAL', message: /addressWidth must be 39 or 48, got 52/ })
})

test('3.4.2, 9.1, 9.3, 9.8: a DMA through a 3-level second-level table reaches the page the leaf maps, across two pages the tables scatter', (t) => {
  const m = machine()
  map(m, 0x5000, 0x30_0000, 3n)
  // The next IOVA page maps to a page that is not the next GPA page: a copy spans both.
  put64(m, TABLES + 0x2000 + 6 * 8, 0x40_0000n | 3n)
  m.fn.configWrite(0x04, 2, 0x4) // bus master
  m.fn.dma.write(0x5ffe, new Uint8Array([1, 2, 3, 4]))
  t.deepEqual([...m.vm.memory.read(0x30_0ffe, 2)], [1, 2])
  t.deepEqual([...m.vm.memory.read(0x40_0000, 2)], [3, 4])
  t.deepEqual([...m.fn.dma.read(0x5ffe, 4)], [1, 2, 3, 4])
  t.throws(() => m.fn.dma.view(0x5ffe, 4), { code: 'EFAULT', message: /not contiguous/ }, 'a live view must be one run of RAM')
  t.is(m.iommu.stats.translated, 6)
  t.is(readl(m, FSTS), 0, 'no fault')
  m.vm.close()
})

test('3.7, 9.8: a 4-level table with addressWidth 48 (context AW 2), and a 2 MiB page (PS at level 2, CAP.SLLPS)', (t) => {
  const m = machine({ addressWidth: 48 })
  const iova = 0x80_0000_5000 // above 2^39: only a 4-level table reaches it
  map(m, iova, 0x30_0000, 3n, 2)
  m.vm.memory.write(0x30_0010, new Uint8Array([0xaa]))
  t.deepEqual([...m.fn.dma.read(iova + 0x10, 1)], [0xaa])
  // A 2 MiB page: the level-2 entry with PS (bit 7) maps 0x20_0000..0x3f_ffff of IOVA space.
  put64(m, TABLES + 0x2000 + 1 * 8, 0x60_0000n | 0x80n | 3n)
  m.vm.memory.write(0x61_2345, new Uint8Array([0xbb]))
  t.deepEqual([...m.fn.dma.read(0x80_0000_0000 + 0x21_2345, 1)], [0xbb])
  m.vm.close()
  const narrow = machine()
  map(narrow, 0x1000, 0x30_0000, 3n)
  t.throws(() => narrow.fn.dma.read(2 ** 39, 1), { code: 'EFAULT', message: /fault reason 0x4/ }, 'above the 39-bit width: fault 4h')
  narrow.vm.close()
})

test('7.2.1, 10.4.14: a DMA by a requester whose context entry is not present is not done; the fault record says F, read, reason 2h, SID 0x0008, the page; PPF and a fault event', (t) => {
  const m = machine()
  map(m, 0, 0x30_0000, 3n)
  put64(m, CONTEXT + 8 * 16, 0n) // not present
  writel(m, FEDATA, 0x41)
  writel(m, FEADDR, 0xfee0_0000)
  writel(m, FECTL, 0) // unmask fault events
  m.vm.memory.write(0x30_0000, new Uint8Array([9]))
  t.throws(() => m.fn.dma.read(0x1234, 1), { code: 'EFAULT', message: /DMA read at 0x1234 by requester 00:01\.0 blocked by the IOMMU: fault reason 0x2/ })
  t.is(readq(m, FRCD), 0x1000n, 'FI: the faulting page')
  const hi = readq(m, FRCD + 8)
  t.is(hi >> 63n, 1n, 'F')
  t.is((hi >> 62n) & 1n, 1n, 'T: a read')
  t.is((hi >> 32n) & 0xffn, 2n, 'FR 2h: context entry not present')
  t.is(hi & 0xffffn, 8n, 'SID 00:01.0')
  t.is(readl(m, FSTS), 0b10, 'PPF, FRI 0')
  t.deepEqual(m.events, [{ address: 0xfee0_0000n, data: 0x41 }], 'the fault event message')
  // A second fault from the same requester collapses into the pending one (10.4.14: "may collapse"); no second event.
  t.throws(() => m.fn.dma.write(0, new Uint8Array([1])), { code: 'EFAULT' })
  t.is(m.events.length, 1)
  t.is(m.iommu.stats.faultsRecorded, 1)
  // F is RW1C: clearing it clears PPF and FECTL.IP.
  writel(m, FRCD + 12, 0x8000_0000)
  t.is(readl(m, FSTS), 0)
  t.is(readl(m, FECTL) & (1 << 30), 0)
  t.deepEqual([...m.vm.memory.read(0, 1)], [0], 'nothing reached memory')
  m.vm.close()
})

test('9.3 FPD: a context entry with Fault Processing Disable blocks the DMA but records nothing (a qualified fault)', (t) => {
  const m = machine()
  map(m, 0, 0x30_0000, 1n, 1, true)
  t.throws(() => m.fn.dma.write(0, new Uint8Array([1])), { code: 'EFAULT', message: /fault reason 0x5/ })
  t.is(readl(m, FSTS), 0)
  t.is(m.iommu.stats.dmaBlocked, 1)
  m.vm.close()
})

test('9.8 permissions: a write to a read-only page is fault 5h (T = write) and writes nothing; a read of a write-only page is fault 6h', (t) => {
  const m = machine()
  map(m, 0x7000, 0x30_0000, 1n) // R only
  t.throws(() => m.fn.dma.write(0x7000, new Uint8Array([5, 6])), { code: 'EFAULT', message: /fault reason 0x5/ })
  t.deepEqual([...m.vm.memory.read(0x30_0000, 2)], [0, 0])
  t.is((readq(m, FRCD + 8) >> 62n) & 1n, 0n, 'T: a write')
  t.is((readq(m, FRCD + 8) >> 32n) & 0xffn, 5n)
  writel(m, FRCD + 12, 0x8000_0000)
  put64(m, TABLES + 0x2000 + 7 * 8, 0x30_0000n | 2n) // W only
  t.throws(() => m.fn.dma.read(0x7000, 1), { code: 'EFAULT', message: /fault reason 0x6/ })
  m.fn.dma.write(0x7000, new Uint8Array([7]))
  t.deepEqual([...m.vm.memory.read(0x30_0000, 1)], [7])
  // A reserved bit (SNP, bit 11: ECAP.SC is 0) in a present leaf is fault Ch.
  writel(m, FRCD + 12, 0x8000_0000)
  put64(m, TABLES + 0x2000 + 7 * 8, 0x30_0000n | 0x800n | 3n)
  t.throws(() => m.fn.dma.read(0x7000, 1), { code: 'EFAULT', message: /fault reason 0xc/ })
  m.vm.close()
})

test('6.5.2.8: a queued invalidation wait descriptor writes its status data and, with IF, sets ICS.IWC and sends the completion event', (t) => {
  const m = machine()
  writeq(m, IQA, BigInt(QUEUE)) // QS 0: 256 descriptors
  command(m, QIE)
  t.is(readl(m, GSTS) & QIE, QIE)
  writel(m, IEDATA, 0x42)
  writel(m, IEADDR, 0xfee0_0000)
  writel(m, IECTL, 0)
  // An IOTLB global invalidation (6.5.2.3), then a wait with SW and IF, status 0xcafe at 0x30_0100.
  put64(m, QUEUE, 0x2n | (1n << 4n))
  put64(m, QUEUE + 8, 0n)
  put64(m, QUEUE + 16, 0x5n | (1n << 4n) | (1n << 5n) | (0xcafen << 32n))
  put64(m, QUEUE + 24, 0x30_0100n)
  writeq(m, IQT, 2n << 4n)
  t.is(m.vm.memory.dataView(0x30_0100, 4).getUint32(0, true), 0xcafe)
  t.is(readq(m, IQH), 2n << 4n, 'IQH reached IQT')
  t.is(readl(m, ICS), 1, 'IWC')
  t.deepEqual(m.events, [{ address: 0xfee0_0000n, data: 0x42 }])
  writel(m, ICS, 1)
  t.is(readl(m, ICS), 0, 'IWC is RW1C')
  t.is(m.iommu.stats.descriptors, 2)
  m.vm.close()
})

test('6.5.2, 10.4.9: an invalid descriptor sets FSTS.IQE and stops the queue at it; the queue goes on once it is fixed and IQE cleared', (t) => {
  const m = machine()
  writeq(m, IQA, BigInt(QUEUE))
  command(m, QIE)
  put64(m, QUEUE, 0x3n) // a device-TLB invalidation: ECAP.DT is 0
  writeq(m, IQT, 1n << 4n)
  t.is(readl(m, FSTS) & 0x10, 0x10, 'IQE')
  t.is(readq(m, IQH), 0n, 'IQH at the erroneous descriptor')
  put64(m, QUEUE, 0x5n | (1n << 5n) | (7n << 32n))
  put64(m, QUEUE + 8, 0x30_0200n)
  writel(m, FSTS, 0x10)
  t.is(readq(m, IQH), 1n << 4n)
  t.is(m.vm.memory.dataView(0x30_0200, 4).getUint32(0, true), 7)
  // Disabling QI resets IQH (10.4.22).
  writel(m, GCMD, readl(m, GSTS) & ~QIE)
  t.is(readq(m, IQH), 0n)
  m.vm.close()
})

/** An IRTE (9.10) at `index`: present, `vector`, xAPIC destination `dest`, SID `sid` checked in full (SVT 01b). */
function irte(m: Machine, index: number, vector: number, dest: number, sid: number, svt = 1n): void {
  put64(m, IRT + index * 16, 1n | (BigInt(vector) << 16n) | (BigInt(dest) << 40n))
  put64(m, IRT + index * 16 + 8, BigInt(sid) | (svt << 18n))
}

function enableIr(m: Machine): void {
  writeq(m, IRTA, BigInt(IRT) | 7n) // 256 entries
  command(m, SIRTP)
  command(m, IRE)
}

test("5.1.2.2, 9.10: a function's remappable MSI is delivered with its IRTE's vector and destination; a requester the SID does not match is blocked (fault 26h)", (t) => {
  const m = machine()
  enableIr(m)
  irte(m, 5, 0x61, 3, 0x0008)
  // Handle 5 in address bits 19:5, format bit 4 (kvm-unit-tests' vtd_setup_msi).
  m.fn.sendMsi((0xfee0_0000 | (5 << 5) | (1 << 4)) >>> 0, 0)
  t.deepEqual(m.delivered, [{ address: 0xfee0_3000n, data: 0x61 }])
  irte(m, 6, 0x62, 0, 0x0010) // another requester's
  m.fn.sendMsi((0xfee0_0000 | (6 << 5) | (1 << 4)) >>> 0, 0)
  t.is(m.delivered.length, 1, 'blocked')
  t.is((readq(m, FRCD + 8) >> 32n) & 0xffn, 0x26n)
  t.is(readq(m, FRCD) >> 48n, 6n, 'FI: the interrupt index')
  t.is(m.iommu.stats.interruptsBlocked, 1)
  m.vm.close()
})

test('5.1.2.1: with remapping on, a compatibility-format MSI is blocked (fault 25h) unless GCMD.CFI set GSTS.CFIS', (t) => {
  const m = machine()
  enableIr(m)
  m.fn.sendMsi(0xfee0_1000, 0x30)
  t.is(m.delivered.length, 0)
  t.is((readq(m, FRCD + 8) >> 32n) & 0xffn, 0x25n)
  command(m, CFI)
  t.is(readl(m, GSTS) & CFI, CFI)
  m.fn.sendMsi(0xfee0_1000, 0x30)
  t.deepEqual(m.delivered, [{ address: 0xfee0_1000n, data: 0x30 }])
  m.vm.close()
})

test("5.1.5.1: a remappable I/O APIC entry's interrupt is delivered as its IRTE says; the I/O APIC's requests carry no source-id to check, as QEMU's", (t) => {
  const m = machine()
  writeq(m, IRTA, BigInt(IRT) | 0xfn) // 65536 entries
  command(m, SIRTP)
  command(m, IRE)
  irte(m, 0x4321, 0xed, 0, 0x0010) // a SID that is not the I/O APIC's: not checked
  // RTE: vector 0xed, index 14:0 at 63:49, format bit 48, index 15 at bit 11 (kvm-unit-tests' vtd_setup_ioapic_irq).
  const rte = 0xedn | (1n << 48n) | (BigInt(0x4321 & 0x7fff) << 49n)
  t.deepEqual(m.iommu.remapInterrupt(undefined, ioapicMessage(rte, 0xed)), { address: 0xfee0_0000n, data: 0xed })
  m.vm.close()
  // addIntelIommu wires the bus and the I/O APIC; one unit a bus.
  const vm = createVm({ backend: 'sim' })
  const pc = addPcPlatform(vm)
  const iommu = addIntelIommu(pc)
  t.is(pc.pci?.iommu, iommu)
  t.is(typeof pc.ioapic.interruptRemapping, 'function')
  t.throws(() => addIntelIommu(pc), { code: 'EBUSY', message: /has an IOMMU already/ })
  t.throws(() => addIntelIommu(addPcPlatform(createVm({ backend: 'sim' }), { pci: false })), { code: 'EINVAL', message: /no PCI bus/ })
  vm.close()
})

test('the IOMMU off costs nothing: without one a function DMAs to vm.memory itself; with one, translation off, a DMA reaches its address and MSIs pass unchanged', (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const pc = addPcPlatform(vm)
  const fn = new PciFunction({ name: 'plain', vendorId: 1, deviceId: 2, classCode: 0 })
  pc.pci?.add(fn)
  t.is(fn.dma, vm.memory, 'the same object: no layer between')
  vm.close()
  const m = machine()
  m.fn.dma.write(0x1000, new Uint8Array([1]))
  t.deepEqual([...m.vm.memory.read(0x1000, 1)], [1])
  m.fn.sendMsi(0xfee0_0000, 0x31)
  t.deepEqual(m.delivered, [{ address: 0xfee0_0000n, data: 0x31 }])
  t.is(m.iommu.stats.translated, 0)
  t.throws(() => new PciFunction({ name: 'loose', vendorId: 1, deviceId: 2, classCode: 0 }).dma, { code: 'EINVAL', message: /loose: DMA needs the function on a PCI bus/ })
  m.vm.close()
})

test('10.2, 10.4: bad register accesses: byte and misaligned accesses dropped, CAP read-only, GCMD reads 0, reserved RTADDR bits dropped, register-based invalidation completes at once', (t) => {
  const m = machine()
  m.vm.bus.mmioWrite(BigInt(VTD_BASE + RTADDR), 1, 0xffn, CTX)
  t.is(readq(m, RTADDR), 0n, 'a byte write is dropped')
  t.is(m.vm.bus.mmioRead(BigInt(VTD_BASE + 0x0a), 2, CTX), 0n, 'a 2-byte read reads 0')
  t.is(m.iommu.stats.badAccesses, 2)
  writeq(m, 0x08, 0n)
  t.is(readq(m, 0x08), 0x00d2_008c_2226_0206n, 'CAP is read-only')
  writeq(m, RTADDR, 0xffff_ffff_ffff_ffffn)
  t.is(readq(m, RTADDR), 0x7f_ffff_f000n, 'bits above the 39-bit width and 11:0 are reserved')
  writel(m, GCMD, SRTP)
  t.is(readl(m, GCMD), 0, 'GCMD is write-only')
  t.is(readl(m, GSTS), SRTP >>> 0, 'RTPS')
  writeq(m, CCMD, (1n << 63n) | (1n << 61n))
  t.is(readq(m, CCMD), (1n << 61n) | (1n << 59n), 'ICC cleared, CAIG = CIRG (global)')
  writeq(m, IOTLB, (1n << 63n) | (2n << 60n) | (5n << 32n))
  t.is(readq(m, IOTLB), (2n << 60n) | (2n << 57n) | (5n << 32n), 'IVT cleared, IAIG = IIRG (domain)')
  writel(m, FSTS, 0xffff_ffff)
  t.is(readl(m, FSTS), 0, 'FSTS: only RW1C bits, none set')
  m.vm.close()
})

test('snapshots: save() and restore() keep the programmed unit; a state with bits GSTS does not have is EINVAL', (t) => {
  const m = machine()
  map(m, 0x3000, 0x30_0000, 3n)
  enableIr(m)
  const state = m.iommu.save()
  const m2 = machine()
  m2.iommu.restore(JSON.parse(JSON.stringify(state)) as typeof state)
  t.deepEqual(m2.iommu.save(), state)
  m2.vm.memory.write(ROOT, m.vm.memory.read(ROOT, 0x10_0000))
  m2.vm.memory.write(0x30_0000, new Uint8Array([0x77]))
  t.deepEqual([...m2.fn.dma.read(0x3000, 1)], [0x77])
  t.is(readl(m2, GSTS), (TE | SRTP | SIRTP | IRE) >>> 0)
  t.throws(() => m2.iommu.restore({ ...state, gsts: 1 }), { code: 'EINVAL', message: /gsts must be GSTS bits/ })
  m.vm.close()
  m2.vm.close()
})

const linux = debianLinuxOrSkip('intel-iommu')
const boot = typeof linux === 'string' ? test.skip : test.serial

boot("Linux's intel_iommu driver (Debian 12's 6.1, intel_iommu=on) takes the unit from the DMAR table (8.1): version 1:0, QEMU's CAP/ECAP, IRQ remapping in xAPIC mode, queued invalidation", async (t) => {
  if (typeof linux === 'string') return
  t.timeout(300_000)
  let out = ''
  const B = '/bin/busybox'
  const m = prepareLinux({
    backend: 'sim',
    vcpus: 1,
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: `${B} dmesg | ${B} grep -e DMAR -e iommu; ${B} poweroff -f` }),
    cmdline: 'console=ttyS0 intel_iommu=on cryptomgr.notests',
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
  })
  try {
    const iommu = addIntelIommu(m.pc)
    // The machine's ACPI tables again, with the DMAR table (the RSDP stays where it was).
    m.vm.write(ACPI_BASE, buildAcpiTables(1, ACPI_BASE, { pci: true, iommu: { base: VTD_BASE, addressWidth: 39, interruptRemapping: true } }).bytes)
    const r = await m.run({ timeoutMs: 240_000 })
    t.is(r.reason, 'poweroff', out.slice(-2000))
    for (const line of [
      'DMAR: Host address width 39',
      'DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap d2008c22260206 ecap f00f4a',
      'DMAR-IR: IOAPIC id 0 under DRHD base  0xfed90000 IOMMU 0',
      'DMAR-IR: Enabled IRQ remapping in xapic mode',
      'DMAR: dmar0: Using Queued invalidation',
      'DMAR: Intel(R) Virtualization Technology for Directed I/O',
    ]) t.true(out.includes(line), `dmesg has ${JSON.stringify(line)}`)
    t.true(iommu.stats.interruptsRemapped > 0, 'the I/O APIC interrupts went through the IRTEs Linux wrote')
    t.true(iommu.stats.descriptors > 0, 'Linux invalidated through the queue')
    t.is(iommu.stats.interruptsBlocked + iommu.stats.faultsRecorded, 0)
    t.log(`${JSON.stringify(iommu.stats)}; GSTS ${iommu.status.toString(16)}`)
  } finally {
    m.close()
  }
})
