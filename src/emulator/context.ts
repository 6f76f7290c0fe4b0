/**
 * What every MMIO instruction handler works on: the exit (the decoded instruction, its
 * GPA and GVA, RIP, the mode) and the machine (registers, linear and physical memory,
 * exception injection), and how a handler reads and writes memory through them.
 * @module
 */
import type { RegisterCache } from '../registers.js'
import type { Decoded } from './decode.js'
import type { LinearMemory, PhysicalMemory } from './memory.js'
import { operandLinear } from './address.js'

/** One MMIO access to complete. */
export interface MmioAccess {
  /** The decoded faulting instruction. */
  readonly ins: Decoded
  /** The GPA the guest accessed (the exit message's). */
  readonly gpa: bigint
  /** RIP of the instruction. */
  readonly rip: bigint
  /** The CPU mode it ran in. */
  readonly bitness: 16 | 32 | 64
  /** The linear address the exit's GPA translates from, when the message gives it. */
  readonly gva?: bigint | undefined
}

/** Where the emulator reads and writes. */
export interface MmioMachine {
  readonly regs: RegisterCache
  /** Guest memory by linear address (the operands the exit's GPA is not). */
  readonly memory: LinearMemory
  /** The physical memory at the exit's GPA: the device itself when the access is all inside the unmapped page. */
  readonly device: PhysicalMemory
  /** Makes the vCPU take exception `vector` (with `errorCode`) at the instruction when it resumes. */
  readonly inject: (vector: number, errorCode?: number) => void
}

/** A linear page the exit's GPA page is known to be the translation of. */
interface ExitPage {
  readonly linear: bigint
  readonly gpa: bigint
}

/**
 * The exit's page: the message's GVA names it; without one, an instruction whose `sole`
 * memory access is its operand, starting at linear `start` at the GPA's page offset, is
 * taken to have exited on that operand (as KVM's emulator takes the exit's GPA for an
 * access whose page offset matches it: emulator_read_write_onepage).
 */
function exitPage(a: MmioAccess, start: bigint, sole: boolean): ExitPage | undefined {
  if (a.gva !== undefined) return { linear: a.gva & ~0xfffn, gpa: a.gpa & ~0xfffn }
  if (sole && (start & 0xfffn) === (a.gpa & 0xfffn)) return { linear: start & ~0xfffn, gpa: a.gpa & ~0xfffn }
  return undefined
}

/** The GPA of `size` bytes at linear `lin` when they lie on the exit's page; else undefined. */
function onExitPage(page: ExitPage | undefined, lin: bigint, size: number): bigint | undefined {
  if (!page || (lin & ~0xfffn) !== page.linear || Number(lin & 0xfffn) + size > 0x1000) return undefined
  return page.gpa | (lin & 0xfffn)
}

/**
 * Reads `size` bytes (1..8) at linear `lin`: from the device at the GPA when they lie on
 * the exit's page (named by the message's GVA), else through the guest's paging (RAM,
 * another device, or both when the bytes cross a page: each byte where it lives).
 */
export function readLinear(a: MmioAccess, m: MmioMachine, lin: bigint, size: number): bigint {
  return readVia(m, exitPage(a, lin, false), lin, size)
}

/** Writes the low `size` bytes (1..8) of `value` at linear `lin`, as {@link readLinear} reads. */
export function writeLinear(a: MmioAccess, m: MmioMachine, lin: bigint, size: number, value: bigint): void {
  writeVia(m, exitPage(a, lin, false), lin, size, value)
}

function readVia(m: MmioMachine, page: ExitPage | undefined, lin: bigint, size: number): bigint {
  const gpa = onExitPage(page, lin, size)
  return gpa === undefined ? m.memory.read(lin, size) : m.device.read(gpa, size)
}

function writeVia(m: MmioMachine, page: ExitPage | undefined, lin: bigint, size: number, value: bigint): void {
  const gpa = onExitPage(page, lin, size)
  if (gpa === undefined) m.memory.write(lin, size, value)
  else m.device.write(gpa, size, value)
}

/**
 * The instruction's explicit memory operand (`delta` bytes past its address: BT's bit
 * base). `sole`: it is the instruction's only memory access (false for stack and
 * descriptor-table users), so without a GVA the exit's page offset identifies it.
 */
export class MemoryOperand {
  readonly linear: bigint
  private readonly page: ExitPage | undefined

  constructor(
    private readonly a: MmioAccess,
    private readonly m: MmioMachine,
    private readonly delta = 0n,
    sole = true,
  ) {
    this.linear = this.at(0n)
    this.page = exitPage(a, this.linear, sole)
  }

  /** The linear address `offset` bytes into the operand: it wraps as its address does. */
  private at(offset: bigint): bigint {
    return operandLinear(this.a.ins, this.m.regs, this.a.rip, this.a.bitness, this.delta + offset)
  }

  /** Reads `size` bytes (1..16) from `offset` bytes into the operand; 16 as two 8-byte accesses, low first. */
  read(size: number, offset = 0n): bigint {
    if (size > 8) return this.read(8, offset) | (this.read(size - 8, offset + 8n) << 64n)
    return readVia(this.m, this.page, offset === 0n ? this.linear : this.at(offset), size)
  }

  /** Writes `size` bytes (1..16) of `value` from `offset` bytes into the operand, as {@link read} reads. */
  write(size: number, value: bigint, offset = 0n): void {
    if (size > 8) {
      this.write(8, value & 0xffff_ffff_ffff_ffffn, offset)
      this.write(size - 8, value >> 64n, offset + 8n)
      return
    }
    writeVia(this.m, this.page, offset === 0n ? this.linear : this.at(offset), size, value & ((1n << BigInt(8 * size)) - 1n))
  }
}
