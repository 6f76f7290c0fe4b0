/**
 * The multiboot loader (Multiboot Specification 0.6.96) on synthetic kernels: the entry
 * state of section 3.2 and the information structure of 3.3 as the guest itself reads
 * them, both image kinds (ELF32/ELF64 program headers, the header's address fields),
 * and every bad image a coded error naming the file and the field. The loader's outside
 * judge is kvm-unit-tests (kvm-unit-tests.test.ts), which QEMU boots the same way.
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { assemble, isMultiboot, MshvError, MULTIBOOT_BOOTLOADER_MAGIC, parseMultiboot, prepareMultiboot, type Vcpu } from '../index.js'

const MAGIC = 0x1bad_b002
const LOAD = 0x20_0000

/** A multiboot header: magic, flags, checksum, and (flag 16) the five address fields. */
function header(flags: number, addresses?: [number, number, number, number, number]): Uint8Array {
  const h = new DataView(new ArrayBuffer(addresses ? 32 : 12))
  h.setUint32(0, MAGIC, true)
  h.setUint32(4, flags, true)
  h.setUint32(8, (-(MAGIC + flags) >>> 0) & 0xffff_ffff, true)
  addresses?.forEach((a, i) => h.setUint32(12 + i * 4, a, true))
  return new Uint8Array(h.buffer)
}

/**
 * A 32-bit guest that reports what the loader handed it on the debug-exit port, one
 * value per run: EAX, then the info flags, mem_upper, the command line's first 4
 * bytes, mods_count, the module's first 4 bytes, its string's first 4, the first
 * memory map entry's size field and type, CR0, and a reload of DS from the GDT.
 */
const REPORTER = `
  bits 32
  mov esp, ${LOAD + 0xf000}
  out 0xf4, eax               ; EAX at entry
  mov eax, [ebx]              ; flags
  out 0xf4, eax
  mov eax, [ebx + 8]          ; mem_upper (KiB above 1 MiB)
  out 0xf4, eax
  mov esi, [ebx + 16]         ; cmdline
  mov eax, [esi]
  out 0xf4, eax
  mov eax, [ebx + 20]         ; mods_count
  out 0xf4, eax
  mov esi, [ebx + 24]         ; mods_addr
  mov edi, [esi]              ; mod_start
  mov eax, [edi]
  out 0xf4, eax
  mov edi, [esi + 8]          ; the module's string
  mov eax, [edi]
  out 0xf4, eax
  mov esi, [ebx + 48]         ; mmap_addr
  mov eax, [esi]              ; the entry's size field
  out 0xf4, eax
  mov eax, [esi + 20]         ; its type
  out 0xf4, eax
  mov eax, cr0
  out 0xf4, eax
  mov ax, 0x10                ; the data selector, reloaded through GDTR
  mov ds, ax
  mov eax, [ebx + 4]          ; mem_lower
  out 0xf4, eax
`.replace(/;[^\n]*/g, '')

function code(address: number, source = REPORTER): Uint8Array {
  return assemble(source, { bitness: 32, address }).bytes
}

/** An image with the header's address fields (flag 16): header at the start, code after it. */
function kludgeImage(): Uint8Array {
  const body = code(LOAD + 32)
  const h = header(0x1_0002, [LOAD, LOAD, LOAD + 32 + body.length, LOAD + 0x1_0000, LOAD + 32])
  const image = new Uint8Array(32 + body.length)
  image.set(h)
  image.set(body, 32)
  return image
}

/** An ELF32 (or ELF64) image: the header in its first segment, the code linked at `vaddr` and loaded at `paddr`. */
function elfImage(bits: 32 | 64, vaddr = LOAD, paddr = LOAD, source = REPORTER): Uint8Array {
  const ehsize = bits === 32 ? 52 : 64
  const phsize = bits === 32 ? 32 : 56
  const offset = 0x100
  const body = code(vaddr + 16, source)
  const segment = new Uint8Array(16 + body.length)
  segment.set(header(0))
  segment.set(body, 16)
  const bytes = new Uint8Array(offset + segment.length)
  const dv = new DataView(bytes.buffer)
  bytes.set([0x7f, 0x45, 0x4c, 0x46, bits === 32 ? 1 : 2, 1, 1])
  dv.setUint16(16, 2, true)
  dv.setUint16(18, bits === 32 ? 3 : 62, true)
  if (bits === 32) {
    dv.setUint32(24, vaddr + 16, true)
    dv.setUint32(28, ehsize, true)
    dv.setUint16(42, phsize, true)
    dv.setUint16(44, 1, true)
    const h = ehsize
    dv.setUint32(h, 1, true)
    dv.setUint32(h + 4, offset, true)
    dv.setUint32(h + 8, vaddr, true)
    dv.setUint32(h + 12, paddr, true)
    dv.setUint32(h + 16, segment.length, true)
    dv.setUint32(h + 20, segment.length + 0x2000, true)
  } else {
    dv.setBigUint64(24, BigInt(vaddr + 16), true)
    dv.setBigUint64(32, BigInt(ehsize), true)
    dv.setUint16(54, phsize, true)
    dv.setUint16(56, 1, true)
    const h = ehsize
    dv.setUint32(h, 1, true)
    dv.setBigUint64(h + 8, BigInt(offset), true)
    dv.setBigUint64(h + 16, BigInt(vaddr), true)
    dv.setBigUint64(h + 24, BigInt(paddr), true)
    dv.setBigUint64(h + 32, BigInt(segment.length), true)
    dv.setBigUint64(h + 40, BigInt(segment.length + 0x2000), true)
  }
  bytes.set(segment, offset)
  return bytes
}

/** Boots `kernel` on the sim and collects the reporter's values. */
async function report(kernel: Uint8Array, memory = 64 << 20): Promise<number[]> {
  const m = prepareMultiboot({ kernel, backend: 'sim', memory, cmdline: 'test=1', modules: [{ data: new TextEncoder().encode('ENVF=1'), cmdline: 'envfile' }] })
  try {
    const values: number[] = []
    for (let i = 0; i < 11; i++) {
      const r = await m.run({ timeoutMs: 10_000 })
      if (r.reason !== 'debug-exit') throw new Error(`run ${i} ended with ${JSON.stringify(r)}`)
      values.push(r.code >>> 0)
    }
    return values
  } finally {
    m.close()
  }
}

const le = (s: string): number => new DataView(new TextEncoder().encode(s).buffer).getUint32(0, true)

/** What the reporter must see (spec 3.2 and 3.3) with 64 MiB of RAM. */
const EXPECTED = [
  MULTIBOOT_BOOTLOADER_MAGIC, // 3.2: EAX holds 0x2BADB002
  0x24d, // 3.3: mem, cmdline, mods, mmap and boot_loader_name are valid
  (64 - 1) * 1024, // mem_upper: KiB from 1 MiB to the end of RAM
  le('kern'), // the command line starts with the kernel's name, as QEMU's and GRUB's
  1,
  le('ENVF'),
  le('envf'),
  20, // an mmap entry's size field counts the 20 bytes after it
  1, // the first range, from 0, is RAM
  0x11, // 3.2: CR0.PG clear, PE set (ET as the processor keeps it)
  0x9_fc00 / 1024, // mem_lower: 639 KiB (the EBDA is not RAM)
]

test('multiboot 3.2/3.3: an ELF32 kernel is entered in protected mode with EAX 0x2BADB002 and reads its information through EBX', async (t) => {
  t.deepEqual(await report(elfImage(32)), EXPECTED)
})

test('multiboot: an ELF64 image loads the same way (QEMU refuses ELF64; GRUB and this loader take it)', async (t) => {
  t.deepEqual(await report(elfImage(64)), EXPECTED)
})

test('multiboot: an ELF linked at a virtual address other than its load address is entered at the physical entry', async (t) => {
  // Linked at 3 GiB (the higher half), loaded at 2 MiB: the code runs unpaged at its physical address.
  const image = elfImage(32, LOAD, LOAD)
  const dv = new DataView(image.buffer)
  dv.setUint32(52 + 8, 0xc020_0000, true) // p_vaddr
  dv.setUint32(24, 0xc020_0010, true) // e_entry, virtual
  const k = parseMultiboot(image)
  t.is(k.entry, LOAD + 16)
  t.deepEqual(await report(image), EXPECTED)
})

test('multiboot 3.1.3: an image with the header address fields (flag 16) is loaded by them, its bss inside RAM', async (t) => {
  const k = parseMultiboot(kludgeImage())
  t.is(k.entry, LOAD + 32)
  t.is(k.end, LOAD + 0x1_0000)
  t.true(k.description.includes('header addresses'))
  t.deepEqual(await report(kludgeImage()), EXPECTED)
})

test('multiboot: the information goes after the kernel, page-aligned (as QEMU places it), and more RAM shows in mem_upper', async (t) => {
  const m = prepareMultiboot({ kernel: elfImage(32), backend: 'sim', memory: 128 << 20 })
  // (no arguments: the command line is the kernel's name and a space, as QEMU writes it)
  try {
    t.is(m.info % 0x1000, 0)
    t.true(m.info >= m.kernel.end)
    const info = m.vm.read(m.info, 20)
    const dv = new DataView(info.buffer, info.byteOffset)
    t.is(dv.getUint32(8, true), 127 * 1024)
    t.is(new TextDecoder().decode(m.vm.read(dv.getUint32(16, true), 8)), 'kernel \0')
  } finally {
    m.close()
  }
  t.deepEqual((await report(elfImage(32), 256 << 20))[2], 255 * 1024)
})

test('multiboot: bad images are EKERNEL errors naming the file and the field', (t) => {
  const bad = (bytes: Uint8Array, field: RegExp): void => {
    const e = t.throws(() => parseMultiboot(bytes, 'k.bin'), { instanceOf: MshvError })
    t.is(e?.code, 'EKERNEL')
    t.regex(e?.message ?? '', field)
    t.regex(e?.message ?? '', /^k\.bin: /)
  }
  bad(new Uint8Array(64), /multiboot header: no header/)
  const wrongSum = header(0)
  wrongSum[8] = (wrongSum[8] as number) ^ 1
  bad(wrongSum, /no header/)
  bad(header(0x4), /video mode/)
  bad(header(0x8), /requirement bits 0x8/)
  bad(header(0), /not an ELF/)
  bad(header(0x1_0000, [LOAD, LOAD, LOAD + 0x1000, 0, LOAD]), /load_end_addr/)
  bad(header(0x1_0000, [LOAD, LOAD, LOAD + 32, 0, LOAD + 0x100]), /entry_addr/)
  const elf = elfImage(32)
  new DataView(elf.buffer).setUint32(24, 0x10, true)
  bad(elf, /e_entry: 0x10 lies in no PT_LOAD/)
  const truncated = elfImage(32).subarray(0, 0x110)
  bad(truncated, /program header 0/)
  t.false(isMultiboot(new Uint8Array(100)))
  t.true(isMultiboot(elfImage(64)))
})

test('prepareMultiboot: bad options are EINVAL naming the value; a kernel past RAM says how much it needs', (t) => {
  const e1 = t.throws(() => prepareMultiboot({ kernel: elfImage(32), memory: 1000 }), { instanceOf: MshvError })
  t.is(e1?.code, 'EINVAL')
  t.regex(e1?.message ?? '', /memory .* got 1000/)
  const e2 = t.throws(() => prepareMultiboot({ kernel: elfImage(32), vcpus: 0 }), { instanceOf: MshvError })
  t.regex(e2?.message ?? '', /vcpus .* got 0/)
  const e3 = t.throws(() => prepareMultiboot({ kernel: 42 as unknown as string }), { instanceOf: MshvError })
  t.regex(e3?.message ?? '', /kernel must be bytes/)
  const e4 = t.throws(() => prepareMultiboot({ kernel: '/nonexistent/k.flat' }), { instanceOf: MshvError })
  t.is(e4?.code, 'ENOENT')
  const high = elfImage(32, 0x500_0000, 0x500_0000)
  const e5 = t.throws(() => prepareMultiboot({ kernel: high, backend: 'sim', memory: 64 << 20 }), { instanceOf: MshvError })
  t.is(e5?.code, 'EKERNEL')
  t.regex(e5?.message ?? '', /ends at 0x5002059, past the 64 MiB of RAM: give the VM 82 MiB or more/)
  const e6 = t.throws(() => prepareMultiboot({ kernel: elfImage(32), modules: [42 as unknown as string] }), { instanceOf: MshvError })
  t.regex(e6?.message ?? '', /modules\[0\] must be bytes/)
})

test('mshv boot --kernel takes a multiboot kernel as QEMU -kernel does: its console on stdout, its debug-exit code the exit status', (t) => {
  const text = 'multiboot says hi\n'
  const source = `bits 32\nmov dx, 0x3f8\n${[...text].map((c) => `mov al, ${c.charCodeAt(0)}\nout dx, al`).join('\n')}\nmov eax, 5\nout 0xf4, eax\n`
  const dir = mkdtempSync(join(tmpdir(), 'mshv-mb-'))
  try {
    const file = join(dir, 'hello.elf')
    writeFileSync(file, elfImage(32, LOAD, LOAD, source))
    const cli = (...args: string[]): ReturnType<typeof spawnSync> => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/mshv.ts', 'boot', '--backend', 'sim', '--no-progress', '--kernel', file, ...args], { encoding: 'utf8', timeout: 60_000 })
    const r = cli('--cmdline', 'a b')
    t.is(r.status, 5, String(r.stderr))
    t.is(r.stdout, text)
    t.regex(String(r.stderr), /"reason":"debug-exit","code":5/)
    t.notRegex(String(r.stderr), /Debian's kernel/)
    const bad = cli('--busybox', '/bin/busybox')
    t.not(bad.status, 0)
    t.regex(String(bad.stderr), /--busybox is for Linux: .*hello\.elf is a multiboot kernel/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

/** 32-bit code that sets a stack and an IDT whose vector 8 (the BIOS's IRQ 0) is the label `tick`. */
const WITH_TICK_HANDLER = `bits 32
    mov esp, 0x2f0000
    mov eax, tick
    mov [0x300040], ax
    mov word [0x300042], 0x08
    mov word [0x300044], 0x8e00
    shr eax, 16
    mov [0x300046], ax
    mov word [0x2ff000], 2047
    mov dword [0x2ff002], 0x300000
    lidt [0x2ff000]`

test('multiboot: the PC is left as a BIOS leaves it (SeaBIOS pic_setup/pit_setup/smp_setup): the BSP APIC\'s virtual wire, the 8254 ticks at 18.2 Hz on IRQ 0, the 8259 maps it to vector 8', async (t) => {
  // A 32-bit IDT whose vector 8 reports the tick; sti; hlt.
  const source = `${WITH_TICK_HANDLER}
    sti
    hlt
    mov eax, 1
    out 0xf4, eax
  tick:
    mov eax, 8
    out 0xf4, eax
  `
  for (const biosState of [true, false]) {
    const m = prepareMultiboot({ kernel: elfImage(32, LOAD, LOAD, source), backend: 'sim', biosState })
    try {
      // The BSP's APIC: SeaBIOS smp_setup's virtual wire (SVR bit 8, LINT0 0x8700,
      // LINT1 0x8400), else what createVcpu's set_lint leaves (CH/QEMU, KVM's reset).
      const lapic = Buffer.from((m.vm.cpus[0] as Vcpu).state().lapic, 'hex')
      const apic = [0xf0, 0x350, 0x360].map((o) => lapic.readUInt32LE(o))
      t.deepEqual(apic, biosState ? [0x1ff, 0x8700, 0x8400] : [0xff, 0x700, 0x1_0400])
      if (biosState) {
        // The IVT's vector 8 points into the BIOS area, F000:xxxx.
        t.is(new DataView(m.vm.read(0x20, 4).buffer).getUint16(2, true), 0xf000)
      }
      const r = await m.run({ timeoutMs: biosState ? 10_000 : 500 })
      if (biosState) {
        t.deepEqual(r, { reason: 'debug-exit', code: 8, vcpu: 0 })
        // The first tick comes 65536 counts of the 1.193182 MHz clock after the start: 54.9 ms.
        t.true(Math.abs(m.vm.guestTimeNs() / 1e6 - 54.9) < 1, `${m.vm.guestTimeNs()} ns`)
      } else {
        t.not(r.reason, 'debug-exit', 'without the BIOS state nothing ticks')
      }
    } finally {
      m.close()
    }
  }
})

test("vm.run({ idle: 'sleep' }) on the deterministic clock: an idle guest's time passes on the host's clock (QEMU's -icount sleep=on), its exits those of a leaping run", async (t) => {
  // Ten ticks of the BIOS's 18.2 Hz timer, each awaited in HLT: 549 ms of guest time.
  const source = `${WITH_TICK_HANDLER}
    mov ecx, 10
  wait:
    sti
    hlt
    cli
    dec ecx
    jnz wait
    mov eax, 10
    out 0xf4, eax
  tick:
    mov al, 0x20
    out 0x20, al
    iret
  `
  const runs: { ms: number; guestMs: number; exits: number }[] = []
  for (const idle of ['leap', 'sleep'] as const) {
    const m = prepareMultiboot({ kernel: elfImage(32, LOAD, LOAD, source), backend: 'sim' })
    try {
      const start = performance.now()
      const r = await m.run({ timeoutMs: 20_000, idle })
      t.deepEqual(r, { reason: 'debug-exit', code: 10, vcpu: 0 })
      runs.push({ ms: performance.now() - start, guestMs: m.vm.guestTimeNs() / 1e6, exits: m.vm.cpus[0]?.stats().exits ?? -1 })
    } finally {
      m.close()
    }
  }
  const [leap, sleep] = runs as [(typeof runs)[number], (typeof runs)[number]]
  t.true(Math.abs(sleep.guestMs - leap.guestMs) < 1 && sleep.guestMs > 540, JSON.stringify(runs))
  t.is(sleep.exits, leap.exits, 'the same exits')
  t.true(sleep.ms >= 500, `sleeping took ${sleep.ms} ms of host time for ${sleep.guestMs} ms of guest time`)
  t.true(leap.ms < sleep.ms, JSON.stringify(runs))
  const vm = prepareMultiboot({ kernel: elfImage(32), backend: 'sim' })
  try {
    await t.throwsAsync(() => vm.run({ idle: 'nap' as 'sleep' }), { message: /idle must be 'leap' or 'sleep', got 'nap'/ })
  } finally {
    vm.close()
  }
})
