/**
 * A VM as the user scripts it: a backend, guest RAM, a device bus and vCPUs.
 * @module
 */
import { native, type NativeGuestMemory, type NativeVm } from './native.js'
import { IoBus } from './bus.js'
import { DebugExit, DEBUG_EXIT_PORT } from './devices/debug-exit.js'
import { MshvError, checkU32, hex } from './errors.js'
import type { SyncPolicy } from './registers.js'
import { Vcpu } from './vcpu.js'
import { CpuidTable, type CpuidEntry } from './exits/cpuid.js'
import type { MsrHandler, UnknownMsrPolicy } from './exits/msr.js'

/** Options for {@link createVm}. */
export interface VmOptions {
  /** 'auto' (default: mshv when /dev/mshv opens, else sim), 'mshv' or 'sim'. */
  backend?: 'auto' | 'mshv' | 'sim'
  /** 'on' (default), 'off', or 'invalid' (sim: mapped but never valid). */
  registerPage?: 'on' | 'off' | 'invalid'
  /** Register sync policy for new vCPUs (default 'page'). */
  policy?: SyncPolicy
  /**
   * Intercept CPUID and answer from this table (entries or a {@link CpuidTable}); leaves
   * and registers it leaves out keep the hypervisor's answer. Omitted: no CPUID exits.
   */
  cpuid?: readonly CpuidEntry[] | CpuidTable
  /** Handlers of MSRs by number; each is intercepted. */
  msrs?: Readonly<Record<number, MsrHandler>> | ReadonlyMap<number, MsrHandler>
  /** What MSRs nobody implements do (default `'gp'`); see {@link UnknownMsrPolicy}. */
  unknownMsr?: UnknownMsrPolicy
}

const UNKNOWN_MSR = { gp: 'fault', ignore: 'ignore', error: 'exit' } as const

function msrMap(msrs: VmOptions['msrs']): Map<number, MsrHandler> {
  const entries: [number | string, MsrHandler][] = msrs instanceof Map ? [...msrs] : Object.entries(msrs ?? {})
  return new Map(
    entries.map(([k, h]) => {
      // Record keys arrive as strings; the message names the key as given.
      const n = typeof k === 'number' ? k : Number(k)
      if (!Number.isInteger(n) || n < 0 || n > 0xffff_ffff) checkU32('MSR number', k)
      if (typeof h !== 'object' || h === null) throw new MshvError('EINVAL', `the handler of MSR ${hex(n)} must be an object with read/write`)
      return [n, h]
    }),
  )
}

/** A region of guest RAM with zero-copy access. */
export class GuestRam {
  /** The region's bytes (a view over the host memory the guest uses). */
  readonly bytes: Uint8Array
  /**
   * First guest physical address. Kept here: RAM lookups run on every emulated access,
   * and a native getter costs a napi-rs borrow check (about 220 ns) per read.
   */
  readonly gpa: bigint

  /** @internal */
  constructor(readonly native: NativeGuestMemory) {
    this.bytes = new Uint8Array(native.buffer())
    this.gpa = native.gpa
  }
}

/** A virtual machine. */
export class Vm {
  /** Port I/O devices. */
  readonly bus = new IoBus()
  /** The debug-exit port device (port 0xf4). */
  readonly debugExit = new DebugExit()
  private readonly ram: GuestRam[] = []
  private readonly vcpus: Vcpu[] = []

  /** @internal */
  constructor(
    /** The native VM. */
    readonly native: NativeVm,
    /** 'mshv' or 'sim'. */
    readonly backend: string,
    private readonly policy: SyncPolicy,
    /** The answers to intercepted CPUID; edit it between runs. */
    readonly cpuid: CpuidTable = new CpuidTable(),
    /** The MSR handlers (the intercepted MSRs are fixed when the VM is created). */
    readonly msrs: ReadonlyMap<number, MsrHandler> = new Map(),
  ) {
    this.bus.register(DEBUG_EXIT_PORT, 1, this.debugExit, 'debug-exit')
  }

  /** Maps `size` bytes of zeroed RAM at `gpa`. */
  addRam(gpa: number | bigint, size: number): GuestRam {
    const r = new GuestRam(this.native.mapMemory(BigInt(gpa), size))
    this.ram.push(r)
    return r
  }

  /** Total RAM mapped, in bytes. */
  ramSize(): number {
    return this.ram.reduce((n, r) => n + r.bytes.length, 0)
  }

  /** The RAM bytes holding `[gpa, gpa + length)`, or undefined when that is not all RAM. */
  findRam(gpa: bigint, length: number): { bytes: Uint8Array; offset: number } | undefined {
    for (const r of this.ram) {
      const off = gpa - r.gpa
      if (off >= 0n && off + BigInt(length) <= BigInt(r.bytes.length)) return { bytes: r.bytes, offset: Number(off) }
    }
    return undefined
  }

  private locate(gpa: bigint, length: number): { bytes: Uint8Array; offset: number } {
    const found = this.findRam(gpa, length)
    if (!found) throw new MshvError('ENOTMAPPED', `guest range ${hex(gpa)} (+${length}) is not inside one RAM region`)
    return found
  }

  /** Copies `data` into guest RAM at `gpa`. */
  write(gpa: number | bigint, data: Uint8Array | readonly number[]): void {
    const { bytes, offset } = this.locate(BigInt(gpa), data.length)
    bytes.set(data, offset)
  }

  /** Copies `length` bytes of guest RAM at `gpa`. */
  read(gpa: number | bigint, length: number): Uint8Array {
    const { bytes, offset } = this.locate(BigInt(gpa), length)
    return bytes.slice(offset, offset + length)
  }

  /** Creates a vCPU with the VM's (or the given) sync policy. */
  createVcpu(index = 0, policy: SyncPolicy = this.policy): Vcpu {
    const v = new Vcpu(this.native.createVcpu(index), { bus: this.bus, debugExit: this.debugExit, ram: this, cpuid: this.cpuid, msrs: this.msrs }, policy)
    this.vcpus.push(v)
    return v
  }

  /**
   * Closes every vCPU and the VM, and releases its RAM: views over it are detached,
   * so a script that kept one gets a TypeError, never stale memory.
   */
  close(): void {
    for (const v of this.vcpus) v.close()
    this.native.close()
    for (const r of this.ram) r.native.release()
  }
}

/** Creates a VM on the chosen backend. */
export function createVm(options: VmOptions = {}): Vm {
  const unknown = options.unknownMsr ?? 'gp'
  if (!Object.hasOwn(UNKNOWN_MSR, unknown)) throw new MshvError('EINVAL', `unknownMsr must be 'gp', 'ignore' or 'error', got '${String(unknown)}'`)
  const msrs = msrMap(options.msrs)
  const cpuid = options.cpuid instanceof CpuidTable ? options.cpuid : new CpuidTable(options.cpuid ?? [])
  const hv = native.Hypervisor.open(options.backend ?? 'auto')
  const vm = hv.createVm({
    registerPage: options.registerPage ?? 'on',
    interceptCpuid: options.cpuid !== undefined,
    interceptMsrs: [...msrs.keys()],
    unknownMsr: UNKNOWN_MSR[unknown],
  })
  return new Vm(vm, hv.backend, options.policy ?? 'page', cpuid, msrs)
}
