/**
 * Reverse execution for the GDB stub (`reverse-stepi`, `reverse-continue`), on the sim
 * with the deterministic clock: snapshots taken as the debugger stops (checkpoints),
 * and replay — a guest on the deterministic clock given the same state does the same
 * thing — forward from the latest checkpoint to the instruction wanted. QEMU offers it
 * under record/replay only.
 *
 * A position is the number of guest instructions the VM has retired since the first
 * checkpoint; after a restore the vCPU's own counter goes on, so positions are kept as
 * an origin plus what the counter moved since.
 * @module
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Vm } from '../../vm.js'
import { retired, type VmRunResult } from '../../scheduler.js'

interface Checkpoint {
  readonly position: number
  readonly path: string
}

/** Instructions between two checkpoints at least: each is a snapshot of the whole VM. */
const MIN_GAP = 1_000_000

/** A VM's checkpoints and where it is between them. */
export class History {
  private readonly dir = mkdtempSync(join(tmpdir(), 'mshv-gdb-history-'))
  private readonly checkpoints: Checkpoint[] = []
  /** The position at the last restore (or 0), and the retired count then. */
  private origin = 0
  private counted = 0
  private serial = 0

  constructor(private readonly vm: Vm) {
    this.counted = retired(this.vm.cpus)
  }

  /** Whether this VM can go backwards: the sim, the deterministic clock, one vCPU. */
  static supported(vm: Vm): boolean {
    return vm.backend === 'sim' && vm.clock === 'deterministic' && vm.cpus.filter((v) => !v.closed).length === 1
  }

  /** Where the VM is now. */
  position(): number {
    return this.origin + retired(this.vm.cpus) - this.counted
  }

  /** The earliest position one can go back to. */
  get start(): number {
    return this.checkpoints[0]?.position ?? this.position()
  }

  /**
   * The VM stopped for the debugger: a checkpoint here unless one is near. Forward
   * execution after going back changes what comes after it: later checkpoints go.
   */
  stopped(): void {
    const at = this.position()
    while ((this.checkpoints.at(-1)?.position ?? -1) > at) this.checkpoints.pop()
    const last = this.checkpoints.at(-1)
    if (last && at - last.position < MIN_GAP && this.checkpoints.length > 0) return
    const path = join(this.dir, `${this.serial++}.snap`)
    this.vm.snapshot(path)
    this.checkpoints.push({ position: at, path })
  }

  /** Back to the latest checkpoint at or before `position`; returns where it is. */
  private restoreBefore(position: number): number {
    const c = [...this.checkpoints].reverse().find((k) => k.position <= position) ?? this.checkpoints[0]
    if (!c) throw new Error('no checkpoint')
    this.vm.restore(c.path)
    this.origin = c.position
    this.counted = retired(this.vm.cpus)
    return c.position
  }

  /** Runs forward `count` instructions, through breakpoints; calls `hit` at each stop at one. */
  private async forward(count: number, hit?: (at: number, address: bigint) => void): Promise<VmRunResult | undefined> {
    let left = count
    while (left > 0) {
      const before = this.position()
      const r = await this.vm.run({ maxInstructions: left })
      left -= this.position() - before
      if (r.reason === 'instructions') continue
      if (r.reason === 'breakpoint') {
        hit?.(this.position(), r.address)
        continue
      }
      // A watchpoint stops after its instruction: the replay goes on from there.
      if (r.reason === 'watchpoint') continue
      // The guest ended the machine (or the run was cancelled) on the way.
      return r
    }
    return undefined
  }

  /** Goes to `position` (not before {@link start}): the state the VM had there. */
  async goto(position: number): Promise<void> {
    const from = this.restoreBefore(Math.max(position, this.start))
    await this.forward(Math.max(position, this.start) - from)
  }

  /**
   * The latest stop at one of `addresses` before the current position: the VM is put
   * there and its address returned; none: the VM goes to {@link start} (undefined).
   */
  async lastHitBefore(addresses: ReadonlySet<bigint>): Promise<bigint | undefined> {
    const now = this.position()
    let end = now
    for (let i = this.checkpoints.length - 1; i >= 0; i--) {
      const c = this.checkpoints[i] as Checkpoint
      if (c.position >= end) continue
      let found: { at: number; address: bigint } | undefined
      this.restoreBefore(c.position)
      // A breakpoint at the checkpoint itself is a stop there too (the resume would pass it).
      const pc = this.vm.cpus.find((v) => !v.closed)
      const here = pc ? pc.regs.getRaw('cs')[0] + pc.regs.get('rip') : -1n
      if (addresses.has(here)) found = { at: c.position, address: here }
      await this.forward(end - c.position, (at, address) => {
        if (at < end && addresses.has(address)) found = { at, address }
      })
      if (found) {
        await this.goto(found.at)
        return found.address
      }
      end = c.position
    }
    await this.goto(this.start)
    return undefined
  }

  /** Deletes the checkpoints' files. */
  close(): void {
    rmSync(this.dir, { recursive: true, force: true })
  }
}
