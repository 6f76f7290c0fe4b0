/**
 * Debian's GDB against Debian's kernel on the sim: a breakpoint at `start_kernel`,
 * whose address comes from the kernel's own kallsyms (a first boot with `nokaslr`
 * prints it from /proc/kallsyms; the second stops there under GDB).
 */
import test from 'ava'
import { execFile, spawnSync } from 'node:child_process'
import { promisify } from 'node:util'
import { bootLinux, busyboxInitramfs, prepareLinux } from '../index.js'
import { debianLinuxOrSkip } from './helpers.js'

const run = promisify(execFile)
const linux = debianLinuxOrSkip('gdb-linux')
const hasGdb = spawnSync('gdb', ['--version']).status === 0
if (!hasGdb && !process.env['CI']) console.log('gdb-linux tests skipped: no gdb (apt install gdb)')
const boot = typeof linux === 'string' || (!hasGdb && !process.env['CI']) ? test.skip : test.serial
const CMDLINE = 'console=ttyS0 cryptomgr.notests nokaslr'

boot('GDB stops Debian\'s kernel at start_kernel, at the address its kallsyms gives, and steps back there', async (t) => {
  if (typeof linux === 'string') return
  let out = ''
  const report = await bootLinux({
    kernel: linux.kernel,
    initrd: busyboxInitramfs({ busybox: linux.busybox, init: 'grep -w start_kernel /proc/kallsyms\npoweroff -f\n' }),
    cmdline: CMDLINE,
    backend: 'sim',
    serial: { onByte: (b) => (out += String.fromCharCode(b)) },
    timeoutMs: 120_000,
  })
  t.is(report.result.reason, 'poweroff', out.slice(-1000))
  const m = /([0-9a-f]{16}) T start_kernel/.exec(out)
  t.truthy(m, out.slice(-1000))
  const address = BigInt(`0x${m?.[1]}`)
  t.true(address >= 0xffff_ffff_8000_0000n, 'a kernel text address (nokaslr: its link address)')

  const machine = prepareLinux({ kernel: linux.kernel, cmdline: CMDLINE, backend: 'sim' })
  t.teardown(() => machine.close())
  const server = await machine.vm.gdb({ port: 0 })
  const { stdout } = await run(
    'gdb',
    ['-nx', '-batch', '-ex', 'set pagination off', '-ex', `target remote 127.0.0.1:${server.port}`, '-ex', `break *0x${address.toString(16)}`, '-ex', 'continue', '-ex', 'info registers rip cr0 cr3 efer', '-ex', 'x/2i $pc', '-ex', 'stepi', '-ex', 'stepi', '-ex', 'print/x $pc', '-ex', 'print/x $rsp', '-ex', 'stepi', '-ex', 'reverse-stepi', '-ex', 'print/x $pc', '-ex', 'print/x $rsp', '-ex', 'kill'],
    { timeout: 120_000 },
  )
  t.log(stdout)
  t.regex(stdout, new RegExp(`Breakpoint 1, 0x${address.toString(16)} in \\?\\? \\(\\)`))
  t.regex(stdout, new RegExp(`rip\\s+0x${address.toString(16)}`))
  t.regex(stdout, /cr0\s+0x8005003[0-9a-f]/, 'paging and protection on')
  t.regex(stdout, /efer\s+0x(?:d01|501)/, 'long mode active (SCE, LME, LMA; NXE)')
  // Two steps in, one more and back: the replay from the checkpoint at start_kernel
  // lands on the same instruction with the same stack.
  const [pc1, sp1, pc2, sp2] = [...stdout.matchAll(/^\$(\d+) = (0x[0-9a-f]+)$/gm)].map((m) => m[2])
  t.truthy(pc1)
  t.is(pc2, pc1, 'reverse-stepi came back to the instruction two steps in')
  t.is(sp2, sp1)
  t.deepEqual(await server.done, { reason: 'cancelled' })
})
