/**
 * Debian 12's packaged kernel with a busybox initramfs boots on the sim to a marker
 * its /init prints, and powers off through ACPI (S5), on 1 and 2 vCPUs (4 in x2APIC
 * mode with KVM's CPUID signature); a
 * deterministic boot repeats exactly. The kernel and busybox come from Debian's
 * archive (`fetchDebianLinux`, cached outside the repository); where they
 * cannot be fetched the tests skip saying so, and under CI that is a failure.
 */
import test from 'ava'
import { boot as bootCommand } from '../src/cli/boot.js'
import { parseBootArgs } from '../src/cli/args.js'
import { bootLinux, busyboxInitramfs, codeBitness, createSession, prepareLinux, type LinuxBootReport } from '../index.js'
import { captureIo, debianLinuxOrSkip } from './helpers.js'

const MARKER = 'MSHV-BOOT-MARKER'
const INIT = `/bin/busybox echo ${MARKER}\n/bin/busybox poweroff -f\n`
/** cryptomgr.notests: the crypto self-tests are 740 million guest instructions of a 1.5 billion boot. */
const CMDLINE = 'console=ttyS0 cryptomgr.notests'

const linux = debianLinuxOrSkip('linux-boot')
const available = typeof linux !== 'string'
const boot = available ? test.serial : test.skip

async function bootToMarker(vcpus: number, clock?: 'deterministic' | 'realtime'): Promise<{ report: LinuxBootReport; console: string }> {
  if (typeof linux === 'string') throw new Error(linux)
  let out = ''
  const report = await bootLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: INIT }),
    cmdline: CMDLINE,
    vcpus,
    backend: 'sim',
    clock,
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
    // The wall clock is an input too: the kernel seeds its random pool with it.
    rtcStart: new Date(Date.UTC(2026, 10, 25, 12, 0, 0)),
    timeoutMs: 120_000,
  })
  return { report, console: out }
}

for (const vcpus of [1, 2]) {
  boot(`Debian's kernel boots on the sim to the initramfs marker and powers off (${vcpus} vCPU${vcpus > 1 ? 's' : ''})`, async (t) => {
    const { report, console } = await bootToMarker(vcpus)
    t.deepEqual(report.result, { reason: 'poweroff', vcpu: 0 }, console.slice(-2000))
    t.true(console.includes(MARKER), 'the marker reached the serial console')
    t.regex(console, /ACPI: PM: Preparing to enter system sleep state S5/)
    t.regex(console, new RegExp(`smp: Brought up 1 node, ${vcpus} CPU`))
    t.regex(console, /tsc: Detected 1000\.000 MHz processor/, 'the TSC frequency came from CPUID 0x15')
    t.log(`${report.seconds.toFixed(2)} s, ${report.exits} exits, ${(report.instructions / 1e6).toFixed(0)} M instructions, ${report.hypercalls} hypercalls`)
  })
}

boot('2 vCPUs on the real-time clock boot Debian\'s kernel through vm.run()\'s threaded path (each vCPU on a thread of its own, as on mshv)', async (t) => {
  const { report, console } = await bootToMarker(2, 'realtime')
  t.deepEqual(report.result, { reason: 'poweroff', vcpu: 0 }, console.slice(-2000))
  t.true(console.includes(MARKER), 'the marker reached the serial console')
  t.regex(console, /smp: Brought up 1 node, 2 CPUs/)
  t.is(report.clock, 'realtime')
  t.log(`${report.seconds.toFixed(2)} s, ${report.exits} exits, ${(report.instructions / 1e6).toFixed(0)} M instructions`)
})

boot('a deterministic boot repeats exactly: the same exits and instructions', async (t) => {
  const a = (await bootToMarker(1)).report
  const b = (await bootToMarker(1)).report
  t.is(b.exits, a.exits)
  t.is(b.instructions, a.instructions)
  t.deepEqual(b.exitsByType, a.exitsByType)
  t.is(b.guestNs, a.guestNs)
})

boot('`mshv boot`: the busybox shell on the console runs what is typed; the report counts the exits and where registers came from', async (t) => {
  if (typeof linux === 'string') return t.fail(linux)
  const { stdin, io, out: printed, err: errors } = captureIo()
  // Typed before the shell opens its tty: it waits for the guest's UART to be opened.
  stdin.write('echo typed-$((6*7))\nuname -r\npoweroff -f\n')
  const code = await bootCommand(parseBootArgs(['--backend', 'sim', '--kernel', linux.kernel, '--busybox', linux.busybox, '--cmdline', `${CMDLINE} quiet`]), io)
  const out = printed()
  const err = errors()
  t.is(code, 0, err)
  t.regex(out, /typed-42/)
  t.regex(out, /6\.1\.0-\d+-amd64/)
  t.regex(err, /boot \[page\]: \{"reason":"poweroff","vcpu":0\}/)
  t.regex(err, /exits: [\d,]+ \(ioPort [\d,]+, unmappedGpa [\d,]+\)/)
  t.regex(err, /register reads: [\d,]+ from the page, 0 by hypercall/)
})

boot('`mshv boot`: Ctrl+] ends the VM and the command succeeds, as QEMU\'s quit does', async (t) => {
  if (typeof linux === 'string') return t.fail(linux)
  const { stdin, io, err } = captureIo()
  stdin.write(Uint8Array.of(0x1d))
  const code = await bootCommand(parseBootArgs(['--backend', 'sim', '--kernel', linux.kernel, '--busybox', linux.busybox, '--cmdline', `${CMDLINE} quiet`, '--no-progress']), io)
  t.is(code, 0, err())
  t.regex(err(), /boot \[page\]: \{"reason":"cancelled"\}/)
})

boot("with VMware's CPUID signature the kernel finds the platform and takes the TSC and APIC bus clocks from the vmport backdoor (GETHZ)", async (t) => {
  if (typeof linux === 'string') return t.fail(linux)
  let out = ''
  const m = prepareLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: '/bin/busybox poweroff -f' }),
    cmdline: CMDLINE,
    backend: 'sim',
    vmware: true,
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
  })
  try {
    t.deepEqual(await m.run({ timeoutMs: 120_000 }), { reason: 'poweroff', vcpu: 0 })
    // arch/x86/kernel/cpu/vmware.c's messages, with the answers the backdoor gave.
    t.regex(out, /Hypervisor detected: VMware/)
    t.regex(out, /vmware: TSC freq read from hypervisor : 1000\.000 MHz/)
    t.regex(out, /vmware: Host bus clock speed read from hypervisor : 25000000 Hz/)
    t.regex(out, /Booting paravirtualized kernel on VMware hypervisor/)
    t.true((m.vmport?.commands.get(45) ?? 0) >= 1, 'GETHZ ran in the guest')
    // The device synchronized the whole state mid-exit: the registers the page lacks came by hypercall.
    t.true((m.vm.cpus[0]?.stats().hypercallReads ?? 0) > 0)
  } finally {
    m.vm.close()
  }
})

/**
 * KVM's CPUID signature (0x40000000 "KVMKVMKVM", no features at 0x40000001) is how a
 * Linux guest learns it may use x2APIC without interrupt remapping (6.1's
 * `try_to_enable_x2apic`: `x86_init.hyper.x2apic_available` is `kvm_para_available`);
 * the sim's CPUID has x2APIC, so 4 vCPUs boot in x2APIC mode, physical destinations:
 * the MSR interface, 32-bit ICR destinations and the I/O APIC's routing to x2APIC IDs
 * (SDM vol 3 11.12) under a real kernel. Without the signature Linux keeps xAPIC mode
 * ("x2apic: IRQ remapping doesn't support X2APIC mode"), as the boots above do.
 */
boot('with a KVM CPUID signature the kernel enters x2APIC mode and boots 4 vCPUs to the marker', async (t) => {
  if (typeof linux === 'string') return t.fail(linux)
  let out = ''
  const report = await bootLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: INIT }),
    cmdline: CMDLINE,
    vcpus: 4,
    backend: 'sim',
    cpuid: [
      { leaf: 0x4000_0000, eax: 0x4000_0001, ebx: 0x4b4d_564b, ecx: 0x564b_4d56, edx: 0x4d }, // "KVMKVMKVM\0\0\0"
      { leaf: 0x4000_0001, eax: 0, ebx: 0, ecx: 0, edx: 0 },
    ],
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
    timeoutMs: 120_000,
  })
  t.deepEqual(report.result, { reason: 'poweroff', vcpu: 0 }, out.slice(-2000))
  t.true(out.includes(MARKER), 'the marker reached the serial console')
  t.regex(out, /x2apic enabled/)
  t.regex(out, /Switched APIC routing to physical x2apic/)
  t.regex(out, /smp: Brought up 1 node, 4 CPUs/)
  t.log(`${report.seconds.toFixed(2)} s, ${report.exits} exits, ${(report.instructions / 1e6).toFixed(0)} M instructions`)
})

boot('the REPL session boots a kernel: step at the PVH entry, then run() to poweroff with the console in its output', async (t) => {
  if (typeof linux === 'string') return t.fail(linux)
  let out = ''
  const printed: string[] = []
  const session = createSession({
    backend: 'sim',
    output: { write: (s: string) => (out += s) },
    print: (s) => printed.push(s),
    linux: { kernel: linux.kernel, initrd: busyboxInitramfs({ busybox: linux.busybox, init: INIT }), cmdline: `${CMDLINE} quiet` },
  })
  try {
    t.is(codeBitness(session.vcpu), 32, 'PVH enters in 32-bit protected mode')
    t.is(session.step(3).reason, 'stepped')
    t.deepEqual(await session.run(), { reason: 'poweroff', vcpu: 0 })
    t.true(out.includes(MARKER))
    t.regex(printed.at(-1) ?? '', /exits \(vCPU 0\)/)
  } finally {
    session.close()
  }
})

boot("the bzImage's own 64-bit entry (the boot protocol's boot_params; the guest runs the kernel's xz decompressor) boots to the marker too", async (t) => {
  if (typeof linux === 'string') return t.fail(linux)
  let out = ''
  const report = await bootLinux({
    kernel: linux.kernel,
    entry: 'boot64',
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: INIT }),
    cmdline: `${CMDLINE} quiet`,
    backend: 'sim',
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
    timeoutMs: 300_000,
  })
  t.deepEqual(report.result, { reason: 'poweroff', vcpu: 0 }, out.slice(-2000))
  t.true(out.includes(MARKER))
  t.true(report.instructions > 4e9, `the decompressor ran in the guest: ${report.instructions} instructions`)
  t.log(`${report.seconds.toFixed(1)} s, ${(report.instructions / 1e9).toFixed(2)} billion instructions`)
})
