/**
 * Debian's GDB drives the stub (`vm.gdb()`) against a NASM-built ELF guest with
 * symbols: breakpoints on symbols, continue, registers, stepi, disassembly at $pc, a
 * watchpoint that fires, registers and memory written from GDB, the guest's end.
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createVm, enterLongMode, MshvError, type Vm } from '../index.js'

const run = promisify(execFile)
const BASE = 0x20_0000

/** Assembles and links the guest: the ELF (for GDB's symbols) and its flat image at BASE. */
async function buildGuest(): Promise<{ elf: string; image: Uint8Array }> {
  const dir = mkdtempSync(join(tmpdir(), 'mshv-gdb-'))
  const src = new URL('fixtures/gdb/counter.asm', import.meta.url).pathname
  await run('nasm', ['-f', 'elf64', '-g', '-o', join(dir, 'counter.o'), src])
  await run('ld', ['-Ttext=0x200000', '-Tdata=0x201000', '-o', join(dir, 'counter.elf'), join(dir, 'counter.o')])
  await run('objcopy', ['-O', 'binary', join(dir, 'counter.elf'), join(dir, 'counter.bin')])
  return { elf: join(dir, 'counter.elf'), image: readFileSync(join(dir, 'counter.bin')) }
}

function guest(image: Uint8Array): Vm {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, 4 << 20)
  vm.write(BASE, image)
  enterLongMode(vm.createVcpu(0), vm, BASE)
  return vm
}

async function gdb(elf: string, port: number, commands: string[]): Promise<string> {
  const args = ['-nx', '-batch', '-ex', 'set pagination off', '-ex', 'set confirm off', '-ex', `target remote 127.0.0.1:${port}`]
  for (const c of commands) args.push('-ex', c)
  const { stdout, stderr } = await run('gdb', [...args, elf], { timeout: 60_000 })
  return stdout + stderr
}

test('GDB breaks on a symbol, steps, disassembles, watches memory and sees the guest end', async (t) => {
  const { elf, image } = await buildGuest()
  const vm = guest(image)
  const server = await vm.gdb({ port: 0 })
  const out = await gdb(elf, server.port, [
    'break loop_top',
    'continue',
    'info registers rip rax',
    'stepi',
    'x/4i $pc',
    'continue',
    'print $rax',
    'print/x $cr0',
    'print/x $efer',
    'delete',
    'set can-use-hw-watchpoints 0',
    'watch *(long *)&counter',
    'continue',
    'delete',
    'set var *(long *)&counter = 100',
    'print *(long *)&counter',
    'set $rax = 9',
    'break done',
    'continue',
    'print $rax',
    'delete',
    'continue',
  ])
  t.log(out)
  t.regex(out, /Breakpoint 1 at 0x200002/)
  t.regex(out, /Breakpoint 1, loop_top \(\) at .*counter\.asm:11/)
  t.regex(out, /rip\s+0x200002\s+0x200002 <loop_top>/)
  t.regex(out, /rax\s+0x0\s+0/)
  t.regex(out, /^12\s+mov \[rel counter\], rax/m, 'stepi ran INC: the next source line')
  t.regex(out, /=> 0x200005 <loop_top\+3>:\s+mov\s+%rax,0xff4\(%rip\)/)
  t.regex(out, /0x200010 <loop_top\+14>:\s+jne\s+0x200002 <loop_top>/)
  t.regex(out, /\$1 = 1\b/, 'the second stop at loop_top: one round done')
  t.regex(out, /\$2 = 0x8\d{7}/, 'CR0 with PG set (the system feature)')
  t.regex(out, /\$3 = 0x5\d\d/, 'EFER with LME and LMA')
  t.regex(out, /Watchpoint 2: \*\(long \*\)&counter\s+Old value = 1\s+New value = 2/)
  t.regex(out, /\$4 = 100\b/, 'a memory write from GDB reads back')
  t.regex(out, /Breakpoint 3, done \(\) at .*counter\.asm:16/, 'RAX set to 9 from GDB: the loop ends one round later')
  t.regex(out, /\$5 = 10\b/)
  t.regex(out, /exited normally|exited with code 0/)
  t.deepEqual(await server.done, { reason: 'debug-exit', code: 0, vcpu: 0 })
  t.is(vm.read(0x20_1000, 1)[0], 10, 'the guest wrote its count')
  vm.close()
})

test('without wait the VM runs at once; GDB attaching stops it, Ctrl+C-free detach lets it run on', async (t) => {
  const { image } = await buildGuest()
  const vm = guest(image)
  vm.write(BASE + 0x10, [0xeb, 0xfe]) // `done:` becomes a spin loop: the guest runs until stopped
  const server = await vm.gdb({ port: 0, wait: false })
  const out = await gdb('', server.port, ['info registers rip', 'detach'])
  t.regex(out, /rip\s+0x20001[0-9a-f]/, 'attached to a running guest: it stopped somewhere in it')
  await new Promise((r) => setTimeout(r, 50))
  await server.close()
  t.deepEqual(await server.done, { reason: 'cancelled' })
  vm.close()
})

test('vm.gdb() options are checked', async (t) => {
  const vm = createVm({ backend: 'sim' })
  for (const bad of [{ port: -1 }, { port: 70000 }, { wait: 'yes' }, { host: 5 }, { nosuch: 1 }]) {
    const e = await t.throwsAsync(vm.gdb(bad as never), { instanceOf: MshvError })
    t.is(e?.code, 'EINVAL', JSON.stringify(bad))
  }
  vm.close()
})
