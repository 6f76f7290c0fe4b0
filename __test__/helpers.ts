import test from 'ava'
import { PassThrough } from 'node:stream'
import { assemble, createVm, enterLongMode, enterRealMode, fetchDebianLinux, loadInterruptTables, type DebianLinux, type Vm, type Vcpu, type SyncPolicy } from '../index.js'

/**
 * Debian's kernel and busybox (fetched once), or why they cannot be had: then the calling
 * file's tests skip saying so, and under CI a test that fails says why.
 */
export function debianLinuxOrSkip(file: string): DebianLinux | string {
  let linux: DebianLinux | string
  try {
    linux = fetchDebianLinux()
  } catch (e) {
    linux = e instanceof Error ? e.message : String(e)
  }
  if (typeof linux === 'string') {
    const why = linux
    if (process.env['CI']) test("Debian's kernel and busybox can be fetched (required in CI)", (t) => t.fail(why))
    else console.log(`${file} tests skipped: cannot fetch Debian's kernel and busybox: ${why}`)
  }
  return linux
}

export const POLICIES: readonly SyncPolicy[] = ['page', 'hypercall', 'eager']
export const PAGE_MODES = ['on', 'off', 'invalid'] as const
/** How a test vCPU's register page is set up. */
export type PageMode = (typeof PAGE_MODES)[number]

/** A sim VM with 1 MiB of RAM, `code` at 0x1000 and a real-mode vCPU about to run it. */
export function realModeGuest(
  code: readonly number[],
  policy: SyncPolicy = 'page',
  registerPage: PageMode = 'on',
): { vm: Vm; vcpu: Vcpu } {
  const vm = createVm({ backend: 'sim', registerPage, policy })
  vm.addRam(0, 1 << 20)
  vm.write(0x1000, code)
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  return { vm, vcpu }
}

export function u32(bytes: Uint8Array, off = 0): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(off, true)
}

/**
 * A sim VM with 1 MiB of RAM running `source` (64-bit, assembled at 0x10000) on
 * `vcpus` vCPUs in long mode, with a GDT and an IDT whose gate for each vector in
 * `handlers` goes to the label named there. vCPU 0 starts at `start`, vCPU i at
 * `cpu<i>`, each with its own stack.
 */
export function longModeVm(
  source: string,
  handlers: Readonly<Record<number, string>>,
  options: { vcpus?: number; clock?: 'deterministic' | 'realtime' } = {},
): Vm {
  const vm = createVm({ backend: 'sim', clock: options.clock })
  vm.addRam(0, 1 << 20)
  const code = assemble(source, { bitness: 64, address: 0x10000 })
  vm.write(0x10000, code.bytes)
  const gates: Record<number, bigint> = {}
  for (const [vector, label] of Object.entries(handlers)) {
    const h = code.labels.get(label)
    if (h === undefined) throw new Error(`no label ${label}`)
    gates[Number(vector)] = h
  }
  for (let i = 0; i < (options.vcpus ?? 1); i++) {
    const v = vm.createVcpu(i)
    const entry = code.labels.get(i === 0 ? 'start' : `cpu${i}`)
    if (entry === undefined) throw new Error(`no entry label for vCPU ${i}`)
    enterLongMode(v, vm, entry, { sp: 0x8_0000 - i * 0x1_0000 })
    loadInterruptTables(v, vm, gates)
  }
  return vm
}

/** Guest code (16, 32 or 64-bit alike) that starts PIT channel 0 in mode 2 at 1 kHz (count 1193). */
export const PIT_1KHZ = `
  mov al, 0x34
  out 0x43, al
  mov ax, 1193
  out 0x40, al
  mov al, ah
  out 0x40, al
`

/** Remaps the 8259 pair to vectors 0x20/0x28 (ICW1..ICW4) and unmasks `mask`'s zero bits on the master. */
export const PIC_INIT = (masterMask: number): string => `
  mov al, 0x11
  out 0x20, al
  out 0xa0, al
  mov al, 0x20
  out 0x21, al
  mov al, 0x28
  out 0xa1, al
  mov al, 4
  out 0x21, al
  mov al, 2
  out 0xa1, al
  mov al, 1
  out 0x21, al
  out 0xa1, al
  mov al, ${masterMask}
  out 0x21, al
  mov al, 0xff
  out 0xa1, al
`

/** The terminal of a CLI command under test: stdin to write to, and what it printed. */
export interface CapturedIo {
  readonly stdin: PassThrough
  readonly io: { stdin: NodeJS.ReadStream; stdout: { write(s: string | Uint8Array): boolean }; stderr: { write(s: string): boolean } }
  /** Everything printed to stdout (bytes as Latin-1) and stderr so far. */
  out(): string
  err(): string
}

/** A {@link CapturedIo} for `mshv boot` and the like. */
export function captureIo(): CapturedIo {
  const stdin = new PassThrough()
  let out = ''
  let err = ''
  return {
    stdin,
    io: {
      stdin: stdin as unknown as NodeJS.ReadStream,
      stdout: { write: (s) => ((out += typeof s === 'string' ? s : Buffer.from(s).toString('latin1')), true) },
      stderr: { write: (s) => ((err += s), true) },
    },
    out: () => out,
    err: () => err,
  }
}
