/**
 * `mshv COMMAND --help`: each command's options with their defaults and an example, as
 * QEMU's and Cloud Hypervisor's commands document theirs.
 * @module
 */

/** Help text by command. */
export const HELP: Readonly<Record<string, string>> = {
  boot: `mshv boot: boot Linux (or a multiboot kernel) with its console on this terminal (Ctrl+] ends the VM)

  --kernel FILE        a bzImage or an ELF vmlinux with a PVH entry (default: Debian's, fetched once
                       into $MSHV_LINUX_CACHE, default ~/.cache/mshv-linux); or a multiboot kernel
                       (ELF32/ELF64 or a.out kludge, as QEMU's -kernel boots it: --cmdline is its
                       command line, --initrd its module; the exit status is the code the guest
                       writes to the debug-exit port 0xf4, where QEMU's isa-debug-exit gives
                       (code << 1) | 1: kvm-unit-tests' x86/*.flat exit 0 when they pass; they
                       want --initrd with their environment, NR_CPUS=1 and MEMSIZE=128 lines,
                       where QEMU has fw_cfg)
  --initrd FILE        an initramfs (default: a busybox one made here)
  --busybox FILE       the static busybox of that initramfs (default: Debian's busybox-static)
  --init SCRIPT        its /init script, as text (default: an interactive busybox shell)
  --cmdline TEXT       the kernel command line (default 'console=ttyS0')
  --memory MiB         guest RAM (default 256; from 64, and the kernel and initrd must fit: the
                       error says how much they need)
  --vcpus N            vCPUs (default 1)
  --backend B          auto (default: mshv where /dev/mshv is, else the sim), sim or mshv
  --clock C            deterministic (replays exactly: the sim's default, but at a terminal; there
                       an idle guest's time passes on the host's clock, QEMU's icount sleep=on) or
                       realtime (the host's time: the default of an interactive boot at a terminal)
  --entry E            pvh (default) or boot64 (the bzImage's own 64-bit entry)
  --policy P           register sync policy: page (default), hypercall, eager, or all (each in turn)
  --disk IMAGE         a raw disk image as /dev/vda, /dev/vdb, ... (virtio-blk); repeatable
  --snapshot           the guest's disk writes go to overlays: the images stay unchanged
  --rng                a virtio-rng device (/dev/hwrng)
  --system             boot the Debian system image (mshv image) from /dev/vda
  --gdb [HOST]:PORT    serve the VM to GDB ('target remote :PORT'); HOST defaults to 127.0.0.1
  --gdb-wait           with --gdb: the VM waits for GDB to continue it
  --save-to FILE       with --save-on: where the machine is saved
  --save-on TEXT       save the machine when the console prints TEXT, and end the boot
  --json FILE          write the boot's report (exits, hypercalls, time) as JSON
  --trace FILE         write every run and exit (port, address, value) as a Chrome trace, for
                       ui.perfetto.dev (the first million per vCPU); each exit's RIP is named
                       (args.symbol: 'start_kernel+0x1a') by the kernel's own kallsyms, read from
                       guest memory after the boot, or by --symbols
  --symbols FILE       with --trace: a System.map, nm listing or ELF with symbols to name RIPs by
                       (Debian's /boot/System.map is a placeholder: the real one is in the -dbg package)
  --no-progress        no status line

example: mshv boot --backend sim --cmdline 'console=ttyS0 quiet'
         mshv boot --kernel kvm-unit-tests/x86/tsc.flat --initrd env --no-progress`,
  restore: `mshv restore FILE: go on from a machine saved with mshv boot --save-to (console attached)

  --no-progress        no status line
  --gdb [HOST]:PORT    serve the VM to GDB; --gdb-wait keeps it stopped until GDB continues it
  --save-to FILE       with --save-on: save again when the console prints TEXT
  --save-on TEXT

example: mshv boot --backend sim --save-to shell.snap --save-on 'busybox shell'
         mshv restore shell.snap`,
  repl: `mshv repl: a Node REPL with a VM, vCPU 0 and the session helpers in scope (help() lists them)

  --backend B          auto (default), sim or mshv
  --ram MiB            RAM of the bare VM (default 16)
  --kernel FILE|debian load Linux instead (debian: Debian's kernel and busybox, fetched once)
  --initrd FILE        with --kernel: an initramfs (default: a busybox one)
  --busybox FILE       with --kernel: the busybox of that initramfs
  --cmdline TEXT       with --kernel: the command line (default 'console=ttyS0')
  --vcpus N            with --kernel: vCPUs (default 1)
  --memory MiB         with --kernel: RAM (default 256)
  --symbols FILE       a System.map, nm listing or ELF with symbols for dis() and sym() (default with
                       --kernel: the kernel's own kallsyms, read from guest memory once it has booted)

example: mshv repl --backend sim --kernel debian
         mshv repl --kernel vmlinuz --symbols System.map   (then sym('start_kernel'), dis(5, 'start_kernel'))`,
  doctor: `mshv doctor: check this host: the backend checklist, the VMM checklist, the exit-cost experiment

  --backend B          auto (default), sim or mshv
  --json [FILE]        the report as JSON: to FILE as well, or alone on stdout without FILE
  --experiment-ms N    measuring time per experiment case (default 200; 0 leaves it out)

example: mshv doctor --backend mshv --json report.json`,
  image: `mshv image: build the Debian 12 system image (mmdebstrap) once into the cache

  --force              build it again

example: mshv image && mshv boot --system`,
  'fetch-linux': `mshv fetch-linux: fetch Debian's kernel and busybox into the cache ($MSHV_LINUX_CACHE,
default ~/.cache/mshv-linux) and print where they are, as JSON

example: mshv fetch-linux`,
}

/** Whether `args` ask for help (`--help` or `-h` anywhere). */
export function wantsHelp(args: readonly string[]): boolean {
  return args.includes('--help') || args.includes('-h')
}
