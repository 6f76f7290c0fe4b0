/**
 * The boot loader's pieces on synthetic images: bzImage setup headers and their
 * payloads, ELF segments and the PVH note, the start info, the ACPI tables, the
 * initramfs, the ACPI PM device; and every bad image is a coded error naming the
 * file and the field.
 */
import test from 'ava'
import fc from 'fast-check'
import { gzipSync } from 'node:zlib'
import { AcpiPm, ACPI_BASE, buildAcpiTables, cpioArchive, MshvError, prepareLinux, readKernel } from '../index.js'

/** An ELF64 x86-64 image: one PT_LOAD of `code` at `paddr`, a PT_NOTE with the PVH entry. */
function elf(code: Uint8Array, paddr = 0x100_0000, entry = paddr): Uint8Array {
  const note = new Uint8Array(20)
  const nv = new DataView(note.buffer)
  nv.setUint32(0, 4, true) // namesz
  nv.setUint32(4, 4, true) // descsz
  nv.setUint32(8, 18, true) // XEN_ELFNOTE_PHYS32_ENTRY
  note.set([0x58, 0x65, 0x6e, 0], 12)
  nv.setUint32(16, entry, true)
  const phoff = 64
  const dataOff = phoff + 2 * 56
  const bytes = new Uint8Array(dataOff + note.length + code.length)
  const dv = new DataView(bytes.buffer)
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1])
  dv.setUint16(16, 2, true) // ET_EXEC
  dv.setUint16(18, 62, true) // x86-64
  dv.setBigUint64(32, BigInt(phoff), true)
  dv.setUint16(54, 56, true)
  dv.setUint16(56, 2, true)
  const ph = (i: number, type: number, off: number, pa: number, size: number, mem: number): void => {
    const h = phoff + i * 56
    dv.setUint32(h, type, true)
    dv.setBigUint64(h + 8, BigInt(off), true)
    dv.setBigUint64(h + 24, BigInt(pa), true)
    dv.setBigUint64(h + 32, BigInt(size), true)
    dv.setBigUint64(h + 40, BigInt(mem), true)
  }
  ph(0, 4, dataOff, 0, note.length, note.length)
  ph(1, 1, dataOff + note.length, paddr, code.length, code.length + 0x1000)
  bytes.set(note, dataOff)
  bytes.set(code, dataOff + note.length)
  return bytes
}

/** A bzImage (protocol `version`) whose payload is `payload`. */
function bzImage(payload: Uint8Array, version = 0x020f): Uint8Array {
  const setupSects = 4
  const bytes = new Uint8Array((setupSects + 1) * 512 + payload.length)
  const dv = new DataView(bytes.buffer)
  bytes[0x1f1] = setupSects
  dv.setUint16(0x1fe, 0xaa55, true)
  dv.setUint32(0x202, 0x5372_6448, true)
  dv.setUint16(0x206, version, true)
  dv.setUint32(0x248, 0, true)
  dv.setUint32(0x24c, payload.length, true)
  bytes.set(payload, (setupSects + 1) * 512)
  return bytes
}

const CODE = Uint8Array.of(0xf4, 0xeb, 0xfd) // hlt; jmp $-1

/** A bzImage for the 64-bit boot protocol: header end at 0x268, XLF_KERNEL_64, pref_address 16 MiB. */
function bzImage64(xloadflags = 1): Uint8Array {
  const b = bzImage(gzipSync(elf(CODE)))
  const dv = new DataView(b.buffer)
  b[0x201] = 0x66 // the jump's offset: the header ends at 0x202 + 0x66 = 0x268
  dv.setUint16(0x236, xloadflags, true)
  dv.setBigUint64(0x258, 0x100_0000n, true)
  dv.setUint32(0x260, 0x20_0000, true) // init_size
  return b
}

test('a bzImage payload is unpacked natively and its ELF loaded at the PVH entry', (t) => {
  const k = readKernel(bzImage(gzipSync(elf(CODE, 0x100_0000, 0x100_0000))), 'vmlinuz')
  t.is(k.pvhEntry, 0x100_0000)
  t.is(k.segments.length, 1)
  t.deepEqual([...(k.segments[0]?.data ?? [])], [...CODE])
  t.is(k.end, 0x100_0000 + CODE.length + 0x1000)
  t.regex(k.description, /bzImage \(protocol 2\.15, gzip\)/)
  t.is(readKernel(elf(CODE), 'vmlinux').description, 'ELF vmlinux')
})

test('bad images are EKERNEL errors naming the file and the field', (t) => {
  const bad = (bytes: Uint8Array, re: RegExp): void => {
    const e = t.throws(() => readKernel(bytes, 'vmlinuz-x'), { instanceOf: MshvError }) as MshvError
    t.is(e.code, 'EKERNEL')
    t.regex(e.message, /^vmlinuz-x/)
    t.regex(e.message, re)
  }
  const good = bzImage(gzipSync(elf(CODE)))
  bad(good.subarray(0, 0x100), /size: 256 bytes is too short/)
  bad(good.subarray(0, good.length - 10), /payload_offset\/payload_length \(0x248\).*truncated/)
  const noMagic = good.slice()
  noMagic[0x1fe] = 0
  bad(noMagic, /boot_flag \(0x1fe\)/)
  const noHdrS = good.slice()
  noHdrS[0x202] = 0x41
  bad(noHdrS, /header \(0x202\).*HdrS/)
  bad(bzImage(gzipSync(elf(CODE)), 0x0206), /version \(0x206\): boot protocol 2\.6 predates payload_offset/)
  bad(bzImage(Uint8Array.of(0x42, 0x5a, 0x68, 0x39, 1, 2, 3)), /payload: .*none of xz, gzip or zstd/)
  bad(bzImage(gzipSync(elf(CODE)).subarray(0, 30)), /payload: the gzip kernel payload is corrupt or truncated/)
  const noNote = elf(CODE)
  new DataView(noNote.buffer).setUint32(64, 0, true) // the note's header becomes PT_NULL
  bad(noNote, /notes: no XEN_ELFNOTE_PHYS32_ENTRY/)
})

test('hostile bzImages (#32): any setup-header or payload bytes give a kernel or a coded error, in bounded time', (t) => {
  const good = bzImage(gzipSync(elf(CODE)))
  // 64 MiB of zeros in a few KiB: unpacked within the unpacker's bound (512 MiB), then refused: not an ELF.
  const bomb = bzImage(gzipSync(new Uint8Array(64 << 20)))
  const e = t.throws(() => readKernel(bomb, 'bomb'), { instanceOf: MshvError }) as MshvError
  t.is(e.code, 'EKERNEL')
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.integer({ min: 0, max: good.length - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
      fc.array(fc.tuple(fc.constantFrom(0x1f1, 0x206, 0x211, 0x234, 0x236, 0x248, 0x24c, 0x258, 0x260, 0x264), fc.constantFrom(0, 0xff, 0x7fffffff, 0xffffffff, 0x80000000)), { maxLength: 3 }),
      (bytes, words) => {
        const image = good.slice()
        const dv = new DataView(image.buffer)
        for (const [at, b] of bytes) image[at] = b
        for (const [at, w] of words) dv.setUint32(at, w, true)
        const start = performance.now()
        try {
          readKernel(image, 'fuzzed')
        } catch (err) {
          if (!(err instanceof MshvError) || err.code !== 'EKERNEL') return false
        }
        return performance.now() - start < 2000
      },
    ),
    { numRuns: 300, seed: 0x5eed },
  )
})

test('prepareLinux writes hvm_start_info v1 (e820, cmdline, initrd module, RSDP) and enters PVH; APs wait for SIPI', (t) => {
  const initrd = new Uint8Array(10_000).fill(7)
  const m = prepareLinux({ kernel: elf(CODE), initrd, cmdline: 'console=ttyS0 quiet', memory: 64 << 20, vcpus: 2, backend: 'sim' })
  try {
    const si = new DataView(m.vm.read(0x6000, 56).buffer)
    t.is(si.getUint32(0, true), 0x336e_c578)
    t.is(si.getUint32(4, true), 1)
    t.is(si.getUint32(12, true), 1, 'one module: the initrd')
    const cmd = Number(si.getBigUint64(24, true))
    t.is(new TextDecoder().decode(m.vm.read(cmd, 19)), 'console=ttyS0 quiet')
    const mod = new DataView(m.vm.read(Number(si.getBigUint64(16, true)), 16).buffer)
    const at = Number(mod.getBigUint64(0, true))
    t.is(Number(mod.getBigUint64(8, true)), initrd.length)
    t.is(at % 4096, 0)
    t.deepEqual(m.vm.read(at, 4), Uint8Array.of(7, 7, 7, 7))
    const rsdp = Number(si.getBigUint64(32, true))
    t.is(new TextDecoder().decode(m.vm.read(rsdp, 8)), 'RSD PTR ')
    const entries = si.getUint32(48, true)
    const mm = new DataView(m.vm.read(Number(si.getBigUint64(40, true)), entries * 24).buffer)
    const ram = entries - 2
    t.is(Number(mm.getBigUint64(ram * 24, true)) + Number(mm.getBigUint64(ram * 24 + 8, true)), 64 << 20, 'RAM up to the top')
    // The ECAM, reserved: Linux takes MCFG's region only where firmware reserved it.
    t.deepEqual([Number(mm.getBigUint64((entries - 1) * 24, true)), Number(mm.getBigUint64((entries - 1) * 24 + 8, true)), mm.getUint32((entries - 1) * 24 + 16, true)], [0xe000_0000, 1 << 20, 2])
    const [bsp, ap] = m.vm.cpus
    t.is(bsp?.regs.get('rip'), 0x100_0000n)
    t.is(bsp?.regs.get('rbx'), 0x6000n)
    t.is(bsp?.regs.get('cr0'), 0x11n)
    t.is(ap?.regs.get('internalActivityState'), 1n, 'the AP is held for its SIPI')
  } finally {
    m.vm.close()
  }
  const e = t.throws(() => prepareLinux({ kernel: elf(CODE), initrd: new Uint8Array(70 << 20), memory: 64 << 20, backend: 'sim' }), { instanceOf: MshvError })
  t.regex(e?.message ?? '', /initrd: the initrd's 73400320 bytes do not fit in RAM/)
  t.throws(() => prepareLinux({ kernel: elf(CODE), memory: 1 << 20, backend: 'sim' }), { message: /memory must be a multiple of 4096 bytes from 64 MiB/ })
  t.throws(() => prepareLinux({ kernel: '/nonexistent/vmlinuz', backend: 'sim' }), { message: /kernel: cannot read \/nonexistent\/vmlinuz/ })
})

test('the ACPI tables check-sum to zero and describe every vCPU, the I/O APIC and the ISA overrides', (t) => {
  const { bytes, rsdp } = buildAcpiTables(3)
  const at = (addr: number): DataView => new DataView(bytes.buffer, addr - ACPI_BASE)
  const sum = (addr: number, len: number): number => bytes.subarray(addr - ACPI_BASE, addr - ACPI_BASE + len).reduce((a, b) => (a + b) & 0xff, 0)
  t.is(sum(rsdp, 20), 0)
  t.is(sum(rsdp, 36), 0)
  const xsdt = Number(at(rsdp).getBigUint64(24, true))
  const tables = new Map<string, number>()
  const xlen = at(xsdt).getUint32(4, true)
  t.is(sum(xsdt, xlen), 0)
  for (let p = 36; p < xlen; p += 8) {
    const addr = Number(at(xsdt).getBigUint64(p, true))
    const sig = new TextDecoder().decode(bytes.subarray(addr - ACPI_BASE, addr - ACPI_BASE + 4))
    t.is(sum(addr, at(addr).getUint32(4, true)), 0, `${sig} checksum`)
    tables.set(sig, addr)
  }
  t.deepEqual([...tables.keys()], ['FACP', 'APIC'])
  const madt = tables.get('APIC') as number
  const types: number[] = []
  const apicIds: number[] = []
  for (let p = 44; p < at(madt).getUint32(4, true); p += at(madt).getUint8(p + 1)) {
    types.push(at(madt).getUint8(p))
    if (at(madt).getUint8(p) === 0) apicIds.push(at(madt).getUint8(p + 3))
  }
  t.deepEqual(apicIds, [0, 1, 2])
  t.deepEqual(types, [0, 0, 0, 1, 2, 2, 4])
  const fadt = tables.get('FACP') as number
  const dsdt = Number(at(fadt).getBigUint64(140, true))
  t.is(sum(dsdt, at(dsdt).getUint32(4, true)), 0, 'DSDT checksum')
  t.is(at(fadt).getUint32(64, true), 0x604, 'PM1a control block')
  t.is(at(fadt).getUint8(128), 6, 'the reset value')
})

test('cpio newc: headers, 4-byte alignment and the trailer', (t) => {
  const a = cpioArchive([{ path: 'init', type: 'file', data: 'hi', mode: 0o755 }])
  const text = new TextDecoder().decode(a)
  t.true(text.startsWith('070701'))
  t.is(text.slice(6 + 8, 6 + 16), '000081ed', 'mode: regular file 0755')
  t.is(a.length % 4, 0)
  t.true(text.includes('TRAILER!!!'))
  t.throws(() => cpioArchive([{ path: '/abs', type: 'dir' }]), { message: /relative path/ })
})

test('ACPI PM: SCI_EN reads 1, S5 powers off, 0xCF9 bit 2 resets, the PM timer counts guest time', (t) => {
  let now = 0
  const events: string[] = []
  const pm = new AcpiPm(
    () => now,
    () => events.push('poweroff'),
    () => events.push('reset'),
  )
  t.is(pm.ioRead(0x604, 2) & 1, 1)
  pm.ioWrite(0x604, 2, (1 << 10) | (1 << 13)) // S1: ignored
  pm.ioWrite(0x604, 2, (5 << 10) | (1 << 13))
  pm.ioWrite(0xcf9, 1, 0x02)
  pm.ioWrite(0xcf9, 1, 0x06)
  t.deepEqual(events, ['poweroff', 'reset'])
  now = 1_000_000_000
  t.is(pm.ioRead(0x608, 4), 3_579_545)
})

test("the 64-bit boot protocol: boot_params with the setup header, e820, command line and initrd; long mode at the bzImage's entry + 0x200 with RSI", (t) => {
  const m = prepareLinux({ kernel: bzImage64(), entry: 'boot64', initrd: new Uint8Array(5000), cmdline: 'console=ttyS0', memory: 64 << 20, backend: 'sim' })
  try {
    const zp = m.vm.read(0x7000, 0x1000)
    const dv = new DataView(zp.buffer)
    t.is(dv.getUint32(0x202, true), 0x5372_6448, 'the setup header is copied')
    t.is(dv.getUint8(0x210), 0xff, 'type_of_loader')
    t.is(dv.getUint8(0x1e8), 5, 'e820_entries: RAM, EBDA, BIOS area, RAM, the ECAM')
    t.is(Number(dv.getBigUint64(0x2d0 + 3 * 20, true)) + Number(dv.getBigUint64(0x2d0 + 3 * 20 + 8, true)), 64 << 20)
    const cmd = dv.getUint32(0x228, true)
    t.is(new TextDecoder().decode(m.vm.read(cmd, 13)), 'console=ttyS0')
    t.is(dv.getUint32(0x21c, true), 5000, 'ramdisk_size')
    t.not(Number(dv.getBigUint64(0x070, true)), 0, 'acpi_rsdp_addr')
    const v = m.vm.cpus[0]
    t.is(v?.regs.get('rip'), 0x100_0200n)
    t.is(v?.regs.get('rsi'), 0x7000n)
    t.is((v?.regs.getRaw('cs')[1] ?? 0n) >> 32n & 0xffffn, 0x10n, '__BOOT_CS')
    t.is((v?.regs.get('efer') ?? 0n) & (1n << 10n), 1n << 10n, 'long mode active')
    t.regex(m.kernel.description, /64-bit entry/)
  } finally {
    m.vm.close()
  }
  t.throws(() => prepareLinux({ kernel: bzImage64(0), entry: 'boot64', backend: 'sim' }), { message: /xloadflags \(0x236\): 0x0: the kernel has no 64-bit entry point/ })
  t.throws(() => prepareLinux({ kernel: elf(CODE), entry: 'boot64', backend: 'sim' }), { message: /an ELF vmlinux has no boot-protocol entry; enter it with entry 'pvh'/ })
})
