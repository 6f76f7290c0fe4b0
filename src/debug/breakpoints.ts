/**
 * A vCPU's breakpoints and single-step, as the VMM sets them (issue #29): the
 * hypervisor stops the vCPU before an instruction at a breakpoint's linear address or
 * after each instruction, with an intercepted #DB the guest never sees. On the sim
 * they are the processor's own (any number, at full speed outside the blocks that hold
 * one); on mshv DR0-DR3 (four at most) and RFLAGS.TF under a #DB intercept.
 * @module
 */
import type { NativeVcpu } from '../native.js'
import { invalid } from '../check.js'

/** An address the guest's code runs at: a linear address (CS base + RIP). */
export type CodeAddress = bigint | number

/**
 * Called when the vCPU stops at its breakpoint, between runs (registers readable and
 * writable, as in an exit handler): `'stop'` ends the run with `{ reason:
 * 'breakpoint' }`; anything else resumes it, running the instruction (Unicorn's
 * `hook_code` at one address).
 */
export type BreakpointHook = (address: bigint) => 'stop' | void

/** A linear address checked: an integer from 0 to 2^64-1. */
export function codeAddress(what: string, v: unknown): bigint {
  if (typeof v === 'bigint' && v >= 0n && v < 1n << 64n) return v
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v)
  throw invalid(what, 'a linear address (an integer from 0 to 2^64-1)', v)
}

/** Which accesses a watchpoint stops after: writes, reads (the sim only), or both. */
export type WatchKind = 'write' | 'read' | 'access'

/** A watched range of linear addresses. */
export interface Watchpoint {
  readonly address: bigint
  readonly length: number
  readonly kind: WatchKind
}

/** One vCPU's debug state, kept here and pushed to the hypervisor on each change. */
export class VcpuDebug {
  private readonly hooks = new Map<bigint, BreakpointHook | undefined>()
  /** In slot order (DR6's B0..B3 name them). */
  private watches: Watchpoint[] = []
  /** Addresses a run stops at for this run only ({@link Vcpu.run}'s `until`). */
  private readonly temporary = new Set<bigint>()
  private stepping = false

  constructor(private readonly native: NativeVcpu) {}

  /** Whether anything stops the vCPU (a run then takes the debug path). */
  get active(): boolean {
    return this.stepping || this.hooks.size > 0 || this.temporary.size > 0 || this.watches.length > 0
  }

  /** The watchpoints, in slot order. */
  watchpoints(): readonly Watchpoint[] {
    return this.watches
  }

  /** Adds a watchpoint (four at most); a refused one is not added. */
  watch(w: Watchpoint): void {
    const old = this.watches
    this.watches = [...old.filter((x) => !(x.address === w.address && x.length === w.length && x.kind === w.kind)), w]
    try {
      this.push()
    } catch (e) {
      this.watches = old
      throw e
    }
  }

  /** Removes a watchpoint; returns whether there was one. */
  unwatch(w: Watchpoint): boolean {
    const n = this.watches.length
    this.watches = this.watches.filter((x) => !(x.address === w.address && x.length === w.length && x.kind === w.kind))
    if (this.watches.length === n) return false
    this.push()
    return true
  }

  get singleStep(): boolean {
    return this.stepping
  }

  set singleStep(on: boolean) {
    if (typeof on !== 'boolean') throw invalid('singleStep', 'a boolean', on)
    this.stepping = on
    this.push()
  }

  /** The breakpoints set (not the temporary ones), in the order they were added. */
  list(): bigint[] {
    return [...this.hooks.keys()]
  }

  add(address: bigint, hook: BreakpointHook | undefined): void {
    const had = this.hooks.has(address)
    const old = this.hooks.get(address)
    this.hooks.set(address, hook)
    try {
      this.push()
    } catch (e) {
      // Refused (mshv has four): the breakpoint was never there.
      if (had) this.hooks.set(address, old)
      else this.hooks.delete(address)
      throw e
    }
  }

  /** Removes a breakpoint; returns whether there was one. */
  remove(address: bigint): boolean {
    const had = this.hooks.delete(address)
    if (had) this.push()
    return had
  }

  /** Stops at `address` until {@link endTemporary}. */
  addTemporary(address: bigint): void {
    this.temporary.add(address)
    this.push()
  }

  endTemporary(): void {
    if (this.temporary.size === 0) return
    this.temporary.clear()
    this.push()
  }

  isTemporary(address: bigint): boolean {
    return this.temporary.has(address)
  }

  /** The hook of the breakpoint at `address`, if it has one. */
  hook(address: bigint): BreakpointHook | undefined {
    return this.hooks.get(address)
  }

  private push(): void {
    const all = new Set([...this.hooks.keys(), ...this.temporary])
    this.native.setDebugState({
      breakpoints: BigUint64Array.from(all),
      watchAddresses: BigUint64Array.from(this.watches.map((w) => w.address)),
      watchLengths: BigUint64Array.from(this.watches.map((w) => BigInt(w.length))),
      watchKinds: this.watches.map((w) => w.kind),
      singleStep: this.stepping,
    })
  }
}
