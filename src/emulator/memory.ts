/**
 * Guest memory as the emulators see it: physical accesses that go to RAM or to MMIO
 * devices, and linear accesses translated through the guest's paging.
 * @module
 */
import type { NativeVcpu } from '../native.js'
import { translateFlag, translateResult } from '../layout.js'
import type { RegisterCache } from '../registers.js'
import { MshvError, describe, hex } from '../errors.js'
import type { AccessContext, IoBus } from '../bus.js'

const VALIDATE_READ = translateFlag('validateRead')
const VALIDATE_WRITE = translateFlag('validateWrite')
/** Translation results that still name a GPA: RAM, or device memory. */
const TRANSLATED = new Set(['success', 'gpaUnmapped', 'intercept'].map(translateResult))
const CR0_PG = 1n << 31n

/** Physical guest memory: RAM where mapped, MMIO devices elsewhere. */
export interface PhysicalMemory {
  /** Reads `size` bytes (1..8) at `gpa`, little-endian. */
  read(gpa: bigint, size: number): bigint
  /** Writes the low `size` bytes (1..8) of `value` at `gpa`. */
  write(gpa: bigint, size: number, value: bigint): void
  /**
   * The RAM or ROM byte at `gpa`, or undefined where there is none: instruction bytes
   * are fetched with it, and a device must not see reads the guest never made.
   */
  ramByte(gpa: bigint): number | undefined
}

/** Receives a guest write to ROM: the offset from the ROM's start, the size (1..8) and the value. */
export type RomWriteHandler = (offset: number, size: number, value: bigint) => void

/** Guest memory holding a range: a region's bytes and the range's offset in them. */
export interface RamRegion {
  bytes: Uint8Array
  offset: number
  /** Set for ROM: guest writes go here instead of to `bytes`. */
  rom?: RomWriteHandler | undefined
}

/** Where guest RAM is, for {@link GuestPhysical}. */
export interface RamLookup {
  /** The RAM (or ROM) holding `[gpa, gpa + length)` and the offset of `gpa` in it. */
  findRam(gpa: bigint, length: number): RamRegion | undefined
  /** Whether any byte of `[gpa, gpa + length)` is RAM or ROM. */
  touchesRam(gpa: bigint, length: number): boolean
  /** `[gpa, gpa + length)` of RAM was written by the VMM (its dirty pages). */
  noteWrite?(gpa: bigint, length: number): void
}

/** Guest physical memory: RAM through its zero-copy views, the rest through the MMIO bus. */
export class GuestPhysical implements PhysicalMemory {
  constructor(
    private readonly ram: RamLookup,
    private readonly bus: IoBus,
    private readonly ctx: AccessContext,
  ) {}

  read(gpa: bigint, size: number): bigint {
    const r = this.ram.findRam(gpa, size)
    if (!r) {
      if (this.ram.touchesRam(gpa, size)) return this.bytewise(gpa, size)
      return this.bus.mmioRead(gpa, size, this.ctx)
    }
    let v = 0n
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(r.bytes[r.offset + i] ?? 0)
    return v
  }

  write(gpa: bigint, size: number, value: bigint): void {
    const r = this.ram.findRam(gpa, size)
    if (!r) {
      if (this.ram.touchesRam(gpa, size)) {
        for (let i = 0; i < size; i++) this.write(gpa + BigInt(i), 1, (value >> BigInt(8 * i)) & 0xffn)
        return
      }
      this.bus.mmioWrite(gpa, size, value, this.ctx)
      return
    }
    if (r.rom) {
      r.rom(r.offset, size, value)
      return
    }
    this.ram.noteWrite?.(gpa, size)
    for (let i = 0; i < size; i++) r.bytes[r.offset + i] = Number((value >> BigInt(8 * i)) & 0xffn)
  }

  ramByte(gpa: bigint): number | undefined {
    const r = this.ram.findRam(gpa, 1)
    return r ? r.bytes[r.offset] : undefined
  }

  /** An access straddling RAM and device memory: each byte where it lives. */
  private bytewise(gpa: bigint, size: number): bigint {
    let v = 0n
    for (let i = 0; i < size; i++) v |= this.read(gpa + BigInt(i), 1) << BigInt(8 * i)
    return v
  }
}

/**
 * The device side of a memory intercept: accesses wholly inside the unmapped page the
 * exit reported, which no RAM can hold, go straight to the MMIO bus (no RAM lookup).
 */
export class DevicePhysical implements PhysicalMemory {
  constructor(
    private readonly bus: IoBus,
    private readonly ctx: AccessContext,
  ) {}

  read(gpa: bigint, size: number): bigint {
    return this.bus.mmioRead(gpa, size, this.ctx)
  }

  write(gpa: bigint, size: number, value: bigint): void {
    this.bus.mmioWrite(gpa, size, value, this.ctx)
  }

  ramByte(): number | undefined {
    return undefined
  }
}

/** A linear access's arguments: an address (bigint, 0..2^64-1) and a size of 1..8 bytes. */
function checkAccess(linear: unknown, size: unknown): void {
  if (typeof linear !== 'bigint' || linear < 0n || linear > 0xffff_ffff_ffff_ffffn) throw new MshvError('EINVAL', `memory access: the linear address must be a bigint in 0..2^64-1, got ${describe(linear)}`)
  if (typeof size !== 'number' || !Number.isInteger(size) || size < 1 || size > 8) throw new MshvError('EINVAL', `memory access: size must be 1..8 bytes, got ${describe(size)}`)
}

/** Linear (virtual) guest memory of one vCPU at one exit. */
export class LinearMemory {
  /** Translations made at this exit, made on the first miss: most MMIO exits never translate. */
  private pagesMade: Map<bigint, bigint> | undefined
  /** The exit's own access, from its message: see {@link learn}. */
  private known: { readonly linear: bigint; readonly gpa: bigint; readonly write: boolean } | undefined

  constructor(
    private readonly regs: RegisterCache,
    private readonly vcpu: NativeVcpu,
    readonly phys: PhysicalMemory,
  ) {}

  /**
   * Records that `linear` maps to `gpa` for reads (and writes, if `write`): what a
   * memory intercept message says of the access that exited, so the emulator needs no
   * translation hypercall for its page. Kept as given and consulted only on a miss:
   * most MMIO instructions never translate.
   */
  learn(linear: bigint, gpa: bigint, write: boolean): void {
    this.known = { linear, gpa, write }
  }

  /** The GPA of `linear`: identity without paging, else the backend's translation. */
  translate(linear: bigint, write: boolean): bigint {
    if ((this.regs.get('cr0') & CR0_PG) === 0n) return linear & 0xffff_ffffn
    const page = linear & ~0xfffn
    const key = write ? page | 1n : page
    const pages = (this.pagesMade ??= new Map())
    let base = pages.get(key)
    const known = this.known
    if (base === undefined && known && (known.linear & ~0xfffn) === page && (known.write || !write)) {
      base = known.gpa & ~0xfffn
      pages.set(key, base)
    }
    if (base === undefined) {
      const t = this.vcpu.translateGva(page, write ? VALIDATE_WRITE : VALIDATE_READ)
      if (!TRANSLATED.has(t.result)) {
        throw new MshvError(
          'EGUEST_FAULT',
          `guest ${write ? 'write' : 'read'} at linear ${hex(linear)} does not translate (result ${t.result}); page fault injection is not emulated`,
        )
      }
      base = t.gpa & ~0xfffn
      pages.set(key, base)
    }
    return base | (linear & 0xfffn)
  }

  /** Reads `size` bytes (1..8) at `linear`, splitting at page boundaries. */
  read(linear: bigint, size: number): bigint {
    checkAccess(linear, size)
    if (((linear & 0xfffn) + BigInt(size)) <= 0x1000n) return this.phys.read(this.translate(linear, false), size)
    let v = 0n
    for (let i = 0; i < size; i++) v |= this.phys.read(this.translate(linear + BigInt(i), false), 1) << BigInt(8 * i)
    return v
  }

  /**
   * Up to `max` instruction bytes from `linear` (wrapping within `addressMask`), stopping
   * before the first byte that does not translate or is not RAM.
   */
  fetch(linear: bigint, max: number, addressMask: bigint): Uint8Array {
    const out = new Uint8Array(max)
    for (let i = 0; i < max; i++) {
      let gpa: bigint
      try {
        gpa = this.translate((linear + BigInt(i)) & addressMask, false)
      } catch (e) {
        if (e instanceof MshvError && e.code === 'EGUEST_FAULT') return out.subarray(0, i)
        throw e
      }
      const b = this.phys.ramByte(gpa)
      if (b === undefined) return out.subarray(0, i)
      out[i] = b
    }
    return out
  }

  /** Writes the low `size` bytes (1..8) of `value` at `linear`, splitting at page boundaries. */
  write(linear: bigint, size: number, value: bigint): void {
    checkAccess(linear, size)
    if (typeof value !== 'bigint') throw new MshvError('EINVAL', `memory.write: value must be a bigint, got ${describe(value)}`)
    if (((linear & 0xfffn) + BigInt(size)) <= 0x1000n) {
      this.phys.write(this.translate(linear, true), size, value)
      return
    }
    for (let i = 0; i < size; i++) this.phys.write(this.translate(linear + BigInt(i), true), 1, (value >> BigInt(8 * i)) & 0xffn)
  }
}
