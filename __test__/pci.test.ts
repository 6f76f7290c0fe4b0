/**
 * PCI configuration space as the guest reaches it (mechanism #1 at 0xCF8/0xCFC, ECAM),
 * BAR sizing and moves (PCI Local Bus Specification 3.0, 6.2.5.1), the capability list
 * (6.7), MSI (6.8.1) and MSI-X (6.8.2), INTx (6.2.2, 6.2.3), and the ACPI description
 * of the host bridge, read back by ACPICA's disassembler.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  addPcPlatform,
  assemble,
  buildAcpiTables,
  createVm,
  enterRealMode,
  Msi,
  Msix,
  MshvError,
  PCI_ECAM_BASE,
  PCI_INTX_GSI_BASE,
  PCI_MMIO_START,
  PciFunction,
  pciIntxGsi,
  type PcPlatform,
  type PciHost,
  type WindowHandler,
} from '../index.js'
import { CTX, ConfigPorts } from './virtio-driver.js'

/** A window handler that remembers what it saw. */
function recorder(): WindowHandler & { log: string[] } {
  const log: string[] = []
  return {
    log,
    read: (offset, size) => {
      log.push(`r ${offset} ${size}`)
      return 0x1234n
    },
    write: (offset, size, value) => {
      log.push(`w ${offset} ${size} ${value}`)
    },
  }
}

function machine(): { pc: PcPlatform; host: PciHost; vm: ReturnType<typeof createVm> } {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  const pc = addPcPlatform(vm)
  return { vm, pc, host: pc.pci as PciHost }
}

test('the host bridge answers on bus 0 slot 0 through 0xCF8/0xCFC; absent functions read all ones', (t) => {
  const { vm } = machine()
  const cfg = new ConfigPorts(vm, 0)
  t.is(cfg.read(0, 4), 0x0d57_8086)
  t.is(cfg.read(0x0a, 2), 0x0600, 'class: host bridge')
  t.is(new ConfigPorts(vm, 7).read(0, 4), 0xffff_ffff)
  // CONFIG_ADDRESS reads back what was written (Linux's pci_check_type1 relies on it).
  vm.bus.write(0xcf8, 4, 0x8000_0000, CTX)
  t.is(vm.bus.read(0xcf8, 4, CTX), 0x8000_0000)
  // With the enable bit clear, CONFIG_DATA reads all ones.
  vm.bus.write(0xcf8, 4, 0, CTX)
  t.is(vm.bus.read(0xcfc, 4, CTX), 0xffff_ffff)
  vm.close()
})

test('ECAM reaches the same registers as mechanism #1', (t) => {
  const { vm, host } = machine()
  const fn = new PciFunction({ name: 'test', vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000 })
  const slot = host.add(fn)
  t.is(Number(vm.bus.mmioRead(BigInt(PCI_ECAM_BASE + (slot << 15)), 4, CTX)), 0x5678_1234)
  vm.bus.mmioWrite(BigInt(PCI_ECAM_BASE + (slot << 15) + 0x3c), 1, 11n, CTX)
  t.is(new ConfigPorts(vm, slot).read(0x3c, 1), 11, 'interrupt line written through ECAM, read through ports')
  t.is(Number(vm.bus.mmioRead(BigInt(PCI_ECAM_BASE + (slot << 15) + 0x100), 4, CTX)), 0, 'no extended capabilities')
  vm.close()
})

test('BAR sizing: writing all ones reads back the size mask and the type bits (6.2.5.1)', (t) => {
  const { vm, host } = machine()
  const fn = new PciFunction({
    name: 'bars',
    vendorId: 1,
    deviceId: 2,
    classCode: 0,
    bars: [
      { kind: 'mmio32', size: 0x1000, handler: recorder() },
      { kind: 'io', size: 0x20, handler: recorder() },
      { kind: 'mmio64', size: 0x4000, prefetchable: true, handler: recorder() },
    ],
  })
  const cfg = new ConfigPorts(vm, host.add(fn))
  const size = (bar: number): number => {
    const old = cfg.read(0x10 + 4 * bar, 4)
    cfg.write(0x10 + 4 * bar, 4, 0xffff_ffff)
    const v = cfg.read(0x10 + 4 * bar, 4)
    cfg.write(0x10 + 4 * bar, 4, old)
    return v
  }
  t.is(size(0), 0xffff_f000, '4 KiB, 32-bit memory')
  t.is(size(1), 0x0000_ffe1, '32 ports, I/O (bit 0)')
  t.is(size(2), 0xffff_c00c, '16 KiB, 64-bit (bits 2:1 = 10), prefetchable (bit 3)')
  t.is(size(3), 0xffff_ffff, 'the upper half of a 64-bit BAR of less than 4 GiB: all address bits')
  t.is(size(4), 0, 'an unimplemented BAR reads 0')
  vm.close()
})

test('a BAR the guest reprograms moves its window; disabling decode unmaps it; the handler sees offsets', (t) => {
  const { vm, host } = machine()
  const h = recorder()
  const fn = new PciFunction({ name: 'mover', vendorId: 1, deviceId: 2, classCode: 0, bars: [{ kind: 'mmio64', size: 0x1000, handler: h }] })
  const cfg = new ConfigPorts(vm, host.add(fn))
  const first = fn.barAddress(0) as number
  t.true(first >= PCI_MMIO_START, 'firmware assigned it in the window')
  t.is(vm.bus.mmioRead(BigInt(first + 8), 4, CTX), 0x1234n)
  t.deepEqual(h.log, ['r 8 4'])
  // A 64-bit move: low half, then high half (above 4 GiB).
  cfg.write(0x10, 4, 0xd000_0000)
  cfg.write(0x14, 4, 0x1)
  const moved = 0x1_d000_0000n
  t.is(fn.barAddress(0), Number(moved))
  t.is(vm.bus.mmioRead(BigInt(first + 8), 4, CTX), 0xffff_ffffn, 'the old address no longer decodes')
  vm.bus.mmioWrite(moved + 0x10n, 2, 7n, CTX)
  t.deepEqual(h.log.at(-1), 'w 16 2 7')
  cfg.write(0x04, 2, 0) // memory space off
  t.is(vm.bus.mmioRead(moved, 4, CTX), 0xffff_ffffn, 'decode disabled: unmapped')
  cfg.write(0x04, 2, 2)
  t.is(vm.bus.mmioRead(moved, 4, CTX), 0x1234n)
  vm.close()
})

test('an I/O BAR maps a port window; a BAR moved onto another device stays unmapped and is counted', (t) => {
  const { vm, host } = machine()
  const h = recorder()
  const fn = new PciFunction({ name: 'io', vendorId: 1, deviceId: 2, classCode: 0, bars: [{ kind: 'io', size: 8, handler: h }] })
  const cfg = new ConfigPorts(vm, host.add(fn))
  const port = fn.barAddress(0) as number
  vm.bus.write(port + 3, 1, 0x5a, CTX)
  t.deepEqual(h.log, ['w 3 1 90'])
  cfg.write(0x10, 4, 0x3f8 | 1) // onto COM1
  t.is(fn.windowConflicts, 1)
  cfg.write(0x10, 4, 0xd000 | 1)
  vm.bus.read(0xd001, 1, CTX)
  t.deepEqual(h.log.at(-1), 'r 1 1')
  vm.close()
})

test('the capability list is walkable from 0x34 and the status register says it exists', (t) => {
  const { vm, host } = machine()
  const msix = new Msix({ vectors: 3, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, signal: () => {} })
  const msi = new Msi(4, () => {})
  const fn = new PciFunction({ name: 'caps', vendorId: 1, deviceId: 2, classCode: 0, bars: [{ kind: 'mmio32', size: 0x1000, handler: msix.tableHandler }], capabilities: [msix, msi] })
  const cfg = new ConfigPorts(vm, host.add(fn))
  t.is(cfg.read(0x06, 2) & 0x10, 0x10)
  const caps = cfg.capabilities()
  t.deepEqual(caps.map((c) => c.id), [0x11, 0x05])
  const at = (caps[0] as { at: number }).at
  t.is(cfg.read(at + 2, 2) & 0x7ff, 2, 'MSI-X table size N-1')
  t.is(cfg.read(at + 8, 4), 0x800, 'PBA offset and BIR')
  vm.close()
})

test('MSI-X: vectors start masked; a masked signal sets its pending bit and goes out on unmask (6.8.2.9)', (t) => {
  const sent: [bigint, number][] = []
  const msix = new Msix({ vectors: 2, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, signal: (a, d) => sent.push([a, d]) })
  // Program vector 1: address, data, and leave it masked.
  msix.tableHandler.write(16, 8, 0xfee0_1000n, CTX)
  msix.tableHandler.write(24, 4, 0x41n, CTX)
  msix.write(2, 2, 0x8000) // enable
  msix.notify(1)
  t.deepEqual(sent, [])
  t.true(msix.isPending(1))
  t.is(msix.pbaHandler.read(0, 8, CTX), 0b10n)
  msix.tableHandler.write(28, 4, 0n, CTX) // unmask
  t.deepEqual(sent, [[0xfee0_1000n, 0x41]])
  t.false(msix.isPending(1))
  // The function mask holds every vector.
  msix.write(2, 2, 0xc000)
  msix.notify(1)
  t.is(sent.length, 1)
  msix.write(2, 2, 0x8000)
  t.is(sent.length, 2)
  t.is(msix.tableHandler.read(28, 4, CTX), 0n)
  t.throws(() => msix.notify(2), { instanceOf: MshvError, message: /vector must be in 0\.\.1, got 2/ })
  // Sizes other than DWORD and QWORD read as zero (undefined by 6.8.2).
  t.is(msix.tableHandler.read(0, 2, CTX), 0n)
})

test('MSI: the granted vectors replace the data low bits; per-vector masking pends (6.8.1)', (t) => {
  const sent: [bigint, number][] = []
  const msi = new Msi(4, (a, d) => sent.push([a, d]))
  msi.write(4, 4, 0xfee0_0000)
  msi.write(12, 2, 0x40)
  msi.write(2, 2, 1 | (2 << 4)) // enable, 4 vectors granted
  t.is(msi.granted, 4)
  msi.notify(3)
  t.deepEqual(sent, [[0xfee0_0000n, 0x43]])
  msi.write(16, 4, 0b100) // mask vector 2
  msi.notify(2)
  t.is(sent.length, 1)
  t.is(msi.read(20, 4), 0b100, 'pending bit')
  msi.write(16, 4, 0)
  t.deepEqual(sent.at(-1), [0xfee0_0000n, 0x42])
  t.throws(() => new Msi(3, () => {}), { instanceOf: MshvError })
})

test('INTx reaches the I/O APIC pin the _PRT names, unless the command register disables it', (t) => {
  const { vm, pc, host } = machine()
  const fn = new PciFunction({ name: 'intx', vendorId: 1, deviceId: 2, classCode: 0, interruptPin: 2 })
  const slot = host.add(fn)
  const gsi = pciIntxGsi(slot, 1)
  t.true(gsi >= PCI_INTX_GSI_BASE && gsi < PCI_INTX_GSI_BASE + 8)
  const seen: boolean[] = []
  const ioapic = pc.ioapic as unknown as { setIrq: (pin: number, level: boolean) => void }
  const original = ioapic.setIrq.bind(pc.ioapic)
  ioapic.setIrq = (pin, level) => {
    if (pin === gsi) seen.push(level)
    original(pin, level)
  }
  const cfg = new ConfigPorts(vm, slot)
  fn.setIntx(true)
  t.is(cfg.read(0x06, 2) & 0x8, 0x8, 'status: interrupt pending')
  cfg.write(0x04, 2, cfg.read(0x04, 2) | 0x400) // INTx disable
  fn.setIntx(false)
  fn.setIntx(true)
  cfg.write(0x04, 2, cfg.read(0x04, 2) & ~0x400)
  t.deepEqual(seen, [true, false, true])
  vm.close()
})

test('bad declarations are EINVAL naming the value', (t) => {
  const h = recorder()
  t.throws(() => new PciFunction({ name: 'x', vendorId: 0x10000, deviceId: 0, classCode: 0 }), { message: /vendorId must be an integer in 0\.\.0xffff, got 65536/ })
  t.throws(() => new PciFunction({ name: 'x', vendorId: 0, deviceId: 0, classCode: 0, bars: [{ kind: 'mmio32', size: 3000, handler: h }] }), { message: /BAR 0 size must be a power of two/ })
  t.throws(() => new PciFunction({ name: 'x', vendorId: 0, deviceId: 0, classCode: 0, bars: [undefined, undefined, undefined, undefined, undefined, { kind: 'mmio64', size: 0x1000, handler: h }] }), { message: /64-bit BAR 5 needs BAR 6/ })
  const { vm, host } = machine()
  t.throws(() => host.add(new PciFunction({ name: 'y', vendorId: 0, deviceId: 0, classCode: 0 }), 0), { code: 'EBUSY' })
  vm.close()
})

test('a real-mode guest reads the host bridge ID through port-I/O exits', async (t) => {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 1 << 20)
  addPcPlatform(vm)
  const code = assemble(
    `
      mov dx, 0xcf8
      mov eax, 0x80000000
      out dx, eax
      mov dx, 0xcfc
      in eax, dx
      mov ebx, eax
      mov al, 0
      out 0xf4, al
    `,
    { bitness: 16 },
  )
  vm.write(0x1000, code.bytes)
  const v = vm.createVcpu(0)
  enterRealMode(v, 0x1000)
  t.deepEqual(v.run(), { reason: 'debug-exit', code: 0 })
  t.is(v.regs.get('rbx'), 0x0d57_8086n)
  vm.close()
})

const iasl = (() => {
  try {
    execFileSync('iasl', ['-v'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()
if (!iasl && process.env['CI']) test('iasl (acpica-tools) is installed (required in CI)', (t) => t.fail('iasl not found'))
const withIasl = iasl ? test : test.skip

withIasl('ACPICA disassembles the DSDT: PCI0 is a PNP0A08 root with _CRS windows and a 128-entry _PRT; MCFG names the ECAM', (t) => {
  const { bytes } = buildAcpiTables(1, 0xe_0000, { pci: true })
  const find = (sig: string): Uint8Array => {
    for (let i = 0; i + 4 <= bytes.length; i += 16) {
      if (String.fromCharCode(...bytes.subarray(i, i + 4)) === sig) {
        const len = new DataView(bytes.buffer, bytes.byteOffset + i + 4, 4).getUint32(0, true)
        return bytes.subarray(i, i + len)
      }
    }
    throw new Error(`no ${sig}`)
  }
  const dir = mkdtempSync(join(tmpdir(), 'mshv-acpi-'))
  writeFileSync(join(dir, 'dsdt.dat'), find('DSDT'))
  writeFileSync(join(dir, 'mcfg.dat'), find('MCFG'))
  execFileSync('iasl', ['-d', 'dsdt.dat', 'mcfg.dat'], { cwd: dir, stdio: 'pipe' })
  const dsdt = readFileSync(join(dir, 'dsdt.dsl'), 'utf8')
  t.regex(dsdt, /Device \(PCI0\)/)
  t.regex(dsdt, /Name \(_HID, EisaId \("PNP0A08"\)/)
  t.regex(dsdt, /Name \(_CID, EisaId \("PNP0A03"\)/)
  t.regex(dsdt, /WordBusNumber \(ResourceProducer, MinFixed, MaxFixed, PosDecode,\s+0x0000,\s+\/\/ Granularity\s+0x0000,\s+\/\/ Range Minimum\s+0x0000,/)
  t.regex(dsdt, /DWordMemory \(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,\s+0x00000000,\s+\/\/ Granularity\s+0xC0000000,\s+\/\/ Range Minimum\s+0xDFFFFFFF,/)
  t.is((dsdt.match(/Package \(0x04\)\s*\{\s*0x(?:[0-9A-F]{4})?FFFF,/g) ?? []).length, 128, 'four pins of 32 slots')
  t.regex(dsdt, /0x0002FFFF,\s+One,\s+Zero,\s+0x13/, 'slot 2 INTB# -> GSI 19')
  t.notRegex(readFileSync(join(dir, 'dsdt.dsl'), 'utf8'), /Error|Unknown/)
  const mcfg = readFileSync(join(dir, 'mcfg.dsl'), 'utf8')
  t.regex(mcfg, /Base Address : 00000000E0000000/)
  t.regex(mcfg, /End Bus Number : 00/)
})
