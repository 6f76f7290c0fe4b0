/**
 * An interactive session: a VM with RAM, a serial port and a real-mode vCPU, and the
 * helpers `mshv repl` puts in scope (`regs()`, `step()`, `run()`, `asm`, `dis()`,
 * `mem.hexdump()`, `sym()`, `symbols()`). Usable from any script or `tsx` REPL with full types.
 * @module
 */
import { checkInstance, checkUnsignedBigint } from '../check.js'
import type { Formatter } from 'iced-x86'
import { iced } from '../iced.js'
import { assemble, templateSource, type Assembly } from '../asm/assemble.js'
import { COM1, Serial16550 } from '../devices/serial.js'
import { MshvError, describe, hex } from '../errors.js'
import { enterRealMode } from '../guest.js'
import type { PioDevice } from '../bus.js'
import { ProgressLine, type ProgressStream } from '../progress.js'
import { Vcpu, type RunResult, type StepResult } from '../vcpu.js'
import { createVm, type Vm, type VmOptions } from '../vm.js'
import { hexdump, registerTable } from './format.js'
import { prepareLinux, type LinuxOptions } from '../boot/linux.js'
import { GuestSymbols } from '../debug/symbols/guest.js'
import { SymbolTable } from '../debug/symbols/table.js'

/** How {@link createSession} sets up its VM. */
export interface SessionOptions {
  /** Backend, as for {@link createVm} (default `'auto'`: mshv when present, else sim). */
  readonly backend?: VmOptions['backend']
  /** RAM at guest physical 0, in MiB (default 16). */
  readonly ramMiB?: number
  /** Where the vCPU starts in real mode, and where `asm` first writes (default 0x1000). */
  readonly origin?: number
  /** Where helpers print (default `console.log`). */
  readonly print?: (text: string) => void
  /** Where guest output (COM1 and port 0xe9) and the run progress line go (default `process.stdout`). */
  readonly output?: ProgressStream
  /**
   * Boot Linux instead ({@link prepareLinux}'s options; the console prints here):
   * `run()` then runs every vCPU with the PC platform, and `type()` types at the console.
   */
  readonly linux?: Omit<LinuxOptions, 'serial'>
  /**
   * Symbols for `dis()`'s labels and `sym()` (`readSymbols(file)`: a System.map or an
   * ELF). Without them a Linux session reads its kernel's own kallsyms from guest
   * memory once the kernel has booted.
   */
  readonly symbols?: SymbolTable
}

/** Guest physical memory helpers. */
export interface SessionMemory {
  /** Prints `length` bytes at `gpa` as a hexdump. */
  hexdump(gpa: number | bigint, length?: number): void
  /** Reads `length` bytes at `gpa`. */
  read(gpa: number | bigint, length: number): Uint8Array
  /** Writes bytes at `gpa`. */
  write(gpa: number | bigint, data: Uint8Array | readonly number[]): void
}

/** The VM, its vCPU and the helpers of an interactive session. */
export interface Session {
  readonly vm: Vm
  readonly vcpu: Vcpu
  readonly mem: SessionMemory
  /** Prints the registers as a table. */
  regs(): void
  /** Runs `count` instructions (sim), printing where the vCPU is after each stop. */
  step(count?: number): StepResult
  /** Runs until HLT, a debug-exit write or `cancel()`, with a progress line on a terminal. */
  run(): Promise<RunResult>
  /** Stops a `run()` in progress. */
  cancel(): void
  /** Types `text` (or raw bytes) at the guest's serial console (COM1's receive side). */
  type(text: string | Uint8Array): void
  /**
   * Tagged template: assembles at the vCPU's RIP in its current code size, writes the
   * bytes into guest memory there and returns the listing: `` asm`mov al, 'A'; out 0xe9, al; hlt` ``.
   */
  asm(source: TemplateStringsArray | string, ...values: unknown[]): Assembly
  /**
   * Prints `count` instructions from RIP (or from `at`: an address or a symbol's name),
   * each address and branch target labelled `name+0xoff` where symbols cover it.
   */
  dis(count?: number, at?: bigint | number | string): void
  /**
   * A symbol's address (`sym('start_kernel')`), or an address's label
   * (`sym(0xffffffff81000005n)` is `'_stext+0x5'`); `ESYMBOLS` for a name not in the table
   * or when there are no symbols.
   */
  sym(nameOrAddress: string | bigint | number): bigint | string
  /** Prints where the symbols come from and how many there are; returns the table (`undefined` while there is none). */
  symbols(): SymbolTable | undefined
  /** Prints what the helpers do. */
  help(): void
  /** Releases the VM. */
  close(): void
}

const EFER_LMA = 1n << 10n
const CR0_PE = 1n
const ATTR_L = 1n << 13n
const ATTR_DB = 1n << 14n

/** The code size the vCPU executes in now: from CR0.PE, EFER.LMA and CS.L/CS.D. */
export function codeBitness(vcpu: Vcpu): 16 | 32 | 64 {
  checkInstance('codeBitness: vcpu', vcpu, Vcpu)
  const r = vcpu.regs
  const attributes = r.getRaw('cs')[1] >> 48n
  if ((r.get('efer') & EFER_LMA) !== 0n && (attributes & ATTR_L) !== 0n) return 64
  if ((r.get('cr0') & CR0_PE) !== 0n && (attributes & ATTR_DB) !== 0n) return 32
  return 16
}

/** The linear address of the next instruction (CS base + RIP, as the code size wraps it). */
export function linearRip(vcpu: Vcpu): bigint {
  const rip = vcpu.regs.get('rip')
  const bits = codeBitness(vcpu)
  if (bits === 64) return rip
  const base = vcpu.regs.getRaw('cs')[0]
  return (base + (bits === 16 ? rip & 0xffffn : rip & 0xffff_ffffn)) & 0xffff_ffffn
}

/** Intel syntax as `assemble()` reads it: `out 0xe9, al`. */
function intelFormatter(): Formatter {
  const { Formatter, FormatterSyntax } = iced()
  const f = new Formatter(FormatterSyntax.Intel)
  f.hexPrefix = '0x'
  f.hexSuffix = ''
  f.uppercaseHex = false
  f.spaceAfterOperandSeparator = true
  f.smallHexNumbersInDecimal = false
  return f
}

const HELP = `helpers:
  regs()                  the registers as a table
  step(n = 1)             run n instructions (sim backend)
  await run()             run until HLT, a debug-exit write (port 0xf4) or Ctrl+C
  type('ls\\n')            type at the guest's serial console
  asm\`...\`                assemble at RIP (Intel syntax, ';' between statements) and write it there
  dis(n = 5, at = RIP)    disassemble n instructions (at: an address or a symbol's name)
  sym('start_kernel')     a symbol's address; sym(address) its label ('start_kernel+0x1a')
  symbols()               where the symbols come from (--symbols FILE, or the kernel's kallsyms)
  mem.hexdump(gpa, len)   guest physical memory; also mem.read(gpa, len), mem.write(gpa, bytes)
  vm, vcpu                the VM and its vCPU (vcpu.regs.get('rax'), vcpu.regs.set('rax', 1n), ...)
guest output: COM1 (0x3f8) and port 0xe9 print here.`

/** Exits and milliseconds per synchronous slice of {@link runInSlices}. */
const SLICE_EXITS = 100_000
const SLICE_MS = 100

/**
 * Runs until the guest stops. On the sim: synchronous slices (the fast exit loop) with
 * the event loop let in between, so Ctrl+C and timers still get through; on mshv,
 * whose runs cannot be time-sliced, on a worker thread.
 */
export async function runInSlices(vcpu: Vcpu, backend: string, output: ProgressStream): Promise<RunResult> {
  if (backend !== 'sim') return vcpu.runAsync({ progress: output })
  const progress = new ProgressLine(output)
  try {
    for (;;) {
      const result = vcpu.run({ maxExits: SLICE_EXITS, timeoutMs: SLICE_MS, progress })
      if (result.reason !== 'exits' && result.reason !== 'timeout') return result
      await new Promise((resolve) => setImmediate(resolve))
    }
  } finally {
    progress.finish()
  }
}

/** Creates a VM with RAM, COM1, a port-0xe9 console and a real-mode vCPU, and the session helpers over them. */
export function createSession(options: SessionOptions = {}): Session {
  const ramMiB = options.ramMiB ?? 16
  if (!Number.isInteger(ramMiB) || ramMiB < 1 || ramMiB > 4096) {
    throw new MshvError('EINVAL', `ramMiB must be an integer in 1..4096, got ${describe(ramMiB)}`)
  }
  const origin = options.origin ?? 0x1000
  const output = options.output ?? process.stdout
  /** Whether the guest's output stopped mid-line: a helper's report then starts on a new one. */
  let guestMidLine = false
  /** Whether {@link Session.run} is in progress (what Ctrl+C stops). */
  let running = false
  const printTo = options.print ?? ((text: string) => console.log(text))
  const print = (text: string): void => {
    if (guestMidLine) output.write('\n')
    guestMidLine = false
    printTo(text)
  }
  const emit = (b: number) => {
    guestMidLine = b !== 0x0a
    output.write(String.fromCharCode(b))
  }
  const linux = options.linux ? prepareLinux({ backend: options.backend, ...options.linux, serial: { onByte: emit } }) : undefined
  const vm = linux?.vm ?? createVm({ backend: options.backend ?? 'auto' })
  let serial: Serial16550
  if (linux) serial = linux.pc.serial
  else {
    try {
      // A multiplication: `<< 20` is a 32-bit shift (2048 << 20 is negative, 4352 << 20 is 256 MiB).
      vm.addRam(0, ramMiB * 1024 * 1024)
      serial = new Serial16550(COM1, { onByte: emit })
      vm.bus.register(COM1, 8, serial, 'COM1')
      const console0xe9: PioDevice = { ioWrite: (_port, _size, value) => emit(value & 0xff) }
      vm.bus.register(0xe9, 1, console0xe9, 'debug console')
    } catch (e) {
      vm.close()
      throw e
    }
  }
  const vcpu = linux ? (vm.cpus[0] as Vcpu) : vm.createVcpu(0)
  if (!linux) enterRealMode(vcpu, origin)
  let formatter: Formatter | undefined

  const where = (): string => `rip ${hex(vcpu.regs.get('rip'))}: ${disassemble(1)[0] ?? '?'}`
  if (options.symbols !== undefined) checkInstance('createSession: symbols', options.symbols, SymbolTable)
  // A Linux guest's kernel has its own symbols in memory once it booted; a bare VM has none.
  const symbols = new GuestSymbols(vm, options.symbols, linux !== undefined)

  /** `address` labelled: ` <name+0xoff>`, or nothing where no symbol covers it. */
  const label = (address: bigint): string => {
    const l = symbols.label(address)
    return l === undefined ? '' : ` <${l}>`
  }

  const disassemble = (count: number, from?: bigint): string[] => {
    const at = from ?? linearRip(vcpu)
    const memory = vcpu.memory()
    const bytes = new Uint8Array(count * 15)
    let readable = 0
    try {
      for (; readable < bytes.length; readable++) bytes[readable] = Number(memory.read(at + BigInt(readable), 1))
    } catch {
      // stop at the first byte that is not memory
    }
    formatter ??= intelFormatter()
    const { Decoder, DecoderOptions } = iced()
    const decoder = new Decoder(codeBitness(vcpu), bytes.subarray(0, readable), DecoderOptions.None)
    decoder.ip = at
    const out: string[] = []
    try {
      while (out.length < count && decoder.canDecode) {
        const ins = decoder.decode()
        // objdump's labels: the instruction's address, a branch's target, a RIP-relative operand's address.
        const target = ins.nearBranchTarget
        const operand = ins.isIpRelMemoryOperand ? label(ins.ipRelMemoryAddress) : ''
        out.push(`${ins.ip.toString(16).padStart(8, '0')}${label(ins.ip)}  ${formatter.format(ins)}${target !== 0n ? label(target) : ''}${operand === '' ? '' : ` ;${operand}`}`)
        ins.free()
      }
    } finally {
      decoder.free()
    }
    return out
  }

  /** The address of symbol `name`; `ESYMBOLS` when it is not known. */
  const symbolAddress = (name: string): bigint => {
    const table = symbols.table()
    const a = table?.address(name)
    if (a === undefined) throw new MshvError('ESYMBOLS', table ? `no symbol ${describe(name)} in ${table.source}` : `no symbols to find ${describe(name)} in (give --symbols FILE, or boot the kernel first)`)
    return a
  }

  const session: Session = {
    vm,
    vcpu,
    mem: {
      hexdump: (gpa, length = 128) => print(hexdump(vm.read(gpa, length), BigInt(gpa))),
      read: (gpa, length) => vm.read(gpa, length),
      write: (gpa, data) => vm.write(gpa, data),
    },
    regs: () => {
      vcpu.regs.synchronize()
      print(registerTable(vcpu.regs))
    },
    step: (count = 1) => {
      if (typeof count !== 'number' || !Number.isInteger(count) || count < 1) throw new MshvError('EINVAL', `step count must be a positive integer, got ${describe(count)}`)
      let result: StepResult = { reason: 'stepped' }
      for (let i = 0; i < count && result.reason === 'stepped'; i++) result = vcpu.step()
      print(where())
      return result
    },
    run: async () => {
      const before = vcpu.stats().exits
      running = true
      let result: RunResult
      try {
        result = linux ? await vm.run() : await runInSlices(vcpu, vm.backend, output)
      } finally {
        running = false
        // A cancel that came as the run ended would end the next step() at once.
        if (!vcpu.closed) vcpu.native.takeCancel()
      }
      const exits = vcpu.stats().exits - before
      print(`${exits} exit${exits === 1 ? '' : 's'}${linux ? ' (vCPU 0)' : ''}; ${where()}`)
      return result
    },
    // Ctrl+C stops a run; with none in progress there is nothing to stop (a cancel
    // latched then would end the next step() without stepping).
    cancel: () => {
      if (running) (linux ? vm.cancel() : vcpu.cancel())
    },
    type: (text) => {
      if (typeof text !== 'string' && !(text instanceof Uint8Array)) throw new MshvError('EINVAL', `type takes a string or bytes, got ${describe(text)}`)
      serial.feed(text)
    },
    asm: (strings, ...values) => {
      const at = linearRip(vcpu)
      // A tagged template (asm`nop`) or a plain string (asm('nop')).
      const source = typeof strings === 'string' ? strings : Array.isArray(strings) ? templateSource(strings as TemplateStringsArray, values) : undefined
      if (source === undefined) throw new MshvError('EINVAL', `asm takes a template (asm\`nop\`) or a string, got ${describe(strings)}`)
      const code = assemble(source, { bitness: codeBitness(vcpu), address: at })
      const memory = vcpu.memory()
      code.bytes.forEach((b, i) => memory.write(at + BigInt(i), 1, BigInt(b)))
      return code
    },
    dis: (count = 5, at) => {
      if (typeof count !== 'number' || !Number.isInteger(count) || count < 1 || count > 10_000) {
        throw new MshvError('EINVAL', `dis: count must be an integer in 1..10000, got ${describe(count)}`)
      }
      const from = at === undefined ? undefined : typeof at === 'string' ? symbolAddress(at) : addressOf('dis: at', at)
      print(disassemble(count, from).join('\n'))
    },
    sym: (nameOrAddress) => {
      if (typeof nameOrAddress === 'string') return symbolAddress(nameOrAddress)
      return symbols.format(addressOf('sym: address', nameOrAddress))
    },
    symbols: () => {
      const table = symbols.table()
      const search = symbols.lastSearch
      if (table) print(`${table.size.toLocaleString('en-US')} symbols: ${table.source}${search?.found ? ` (found in ${search.ms.toFixed(0)} ms)` : ''}`)
      else print(linux ? "no symbols yet: the kernel's kallsyms are read from guest memory once it has booted (await run()), or give --symbols FILE" : 'no symbols: give a table (createSession({ symbols: readSymbols(file) }), mshv repl --symbols FILE)')
      return table
    },
    help: () => print(HELP),
    close: () => vm.close(),
  }
  return session
}

/** An address argument: a bigint, or a non-negative safe integer. */
function addressOf(what: string, v: unknown): bigint {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v)
  return checkUnsignedBigint(what, v)
}
