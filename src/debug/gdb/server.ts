/**
 * The GDB server of a VM (`vm.gdb()`, `mshv boot --gdb`): a TCP port GDB connects to
 * with `target remote`. As QEMU's `-s`/`-S`: with `wait` the VM stays stopped until
 * GDB connects and continues; without, it runs at once and GDB may attach later,
 * which stops it. A detach (or a dropped connection) lets the VM run on; `kill` leaves
 * it stopped and ends the server. One GDB at a time.
 * @module
 */
import { createServer, type Server, type Socket } from 'node:net'
import type { Vm } from '../../vm.js'
import type { VmRunResult } from '../../scheduler.js'
import { MshvError, describe } from '../../errors.js'
import { checkInteger, checkObject } from '../../check.js'
import { GdbStub } from './stub.js'

/** Options for {@link Vm.gdb}. */
export interface GdbOptions {
  /** TCP port (default 1234, GDB's and QEMU's habit; 0 picks a free one: see {@link GdbServer.port}). */
  port?: number
  /** Address to listen on (default 127.0.0.1: a debugger owns the guest, so not the network). */
  host?: string
  /** Keep the VM stopped until GDB connects and continues (QEMU's `-S`; default true). */
  wait?: boolean
}

const OPTIONS = ['port', 'host', 'wait'] as const

/** A VM served to GDB. */
export class GdbServer {
  /** Resolves with the VM's last run result once the guest ends the machine (or GDB kills it). */
  readonly done: Promise<VmRunResult>
  private resolve!: (r: VmRunResult) => void
  private reject!: (e: Error) => void
  private socket: Socket | undefined
  /** The VM's run while no GDB holds it. */
  private free: Promise<VmRunResult> | undefined
  private finished = false

  private constructor(
    private readonly vm: Vm,
    private readonly server: Server,
    /** The port GDB connects to. */
    readonly port: number,
  ) {
    this.done = new Promise((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
    // The server's own failures surface through `done`; unobserved, they are not fatal.
    this.done.catch(() => {})
    server.on('connection', (s) => void this.attach(s))
  }

  /** @internal Use {@link Vm.gdb}. */
  static async start(vm: Vm, options: GdbOptions = {}): Promise<GdbServer> {
    checkObject('vm.gdb(): options', options)
    for (const key of Object.keys(options)) {
      if (!(OPTIONS as readonly string[]).includes(key)) throw new MshvError('EINVAL', `vm.gdb(): unknown option '${key}' (options: ${OPTIONS.join(', ')})`)
    }
    const port = checkInteger('vm.gdb(): port', options.port ?? 1234, 0, 65535)
    const host = options.host ?? '127.0.0.1'
    if (typeof host !== 'string') throw new MshvError('EINVAL', `vm.gdb(): host must be a string, got ${describe(host)}`)
    const wait = options.wait ?? true
    if (typeof wait !== 'boolean') throw new MshvError('EINVAL', `vm.gdb(): wait must be a boolean, got ${describe(wait)}`)
    const server = createServer({ noDelay: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => reject(new MshvError(e.code ?? 'EIO', `vm.gdb(): cannot listen on ${host}:${port}: ${e.message}`)))
      server.listen(port, host, () => resolve())
    })
    const address = server.address()
    const g = new GdbServer(vm, server, typeof address === 'object' && address ? address.port : port)
    if (!wait) g.runFree()
    return g
  }

  /** The VM runs on its own until GDB attaches or the guest ends it. */
  private runFree(): void {
    if (this.finished || this.free) return
    const run = this.vm.run()
    this.free = run
    run.then(
      (r) => {
        this.free = undefined
        if (r.reason !== 'cancelled') this.finish(r)
      },
      (e: unknown) => {
        this.free = undefined
        this.fail(e)
      },
    )
  }

  private async attach(socket: Socket): Promise<void> {
    if (this.socket || this.finished) {
      socket.destroy()
      return
    }
    this.socket = socket
    socket.setNoDelay(true)
    // Attaching stops the VM (QEMU does the same).
    if (this.free) {
      this.vm.cancel()
      await this.free.catch(() => undefined)
    }
    if (this.finished) {
      socket.destroy()
      return
    }
    const stub = new GdbStub(this.vm, (b) => socket.write(b), {
      onDetach: (how) => {
        socket.end()
        if (how === 'kill') this.finish({ reason: 'cancelled' })
      },
      onEnd: (r) => (r instanceof Error ? this.fail(r) : this.finish(r)),
    })
    socket.on('data', (d: Buffer) => {
      try {
        stub.receive(d)
      } catch (e) {
        this.fail(e)
      }
    })
    socket.on('error', () => socket.destroy())
    socket.on('close', () => {
      stub.close()
      void this.detached(stub)
    })
  }

  /** GDB went: the VM runs on (unless it ended or was killed). */
  private async detached(stub: GdbStub): Promise<void> {
    this.socket = undefined
    if (stub.busy) {
      stub.interrupt()
      while (stub.busy) await new Promise((r) => setImmediate(r))
    }
    this.runFree()
  }

  private finish(r: VmRunResult): void {
    if (this.finished) return
    this.finished = true
    this.resolve(r)
    void this.close()
  }

  private fail(e: unknown): void {
    if (this.finished) return
    this.finished = true
    this.reject(e instanceof Error ? e : new Error(String(e)))
    void this.close()
  }

  /** Stops listening and drops GDB; a VM running on its own is stopped. */
  async close(): Promise<void> {
    this.socket?.destroy()
    if (this.free) {
      this.vm.cancel()
      await this.free.catch(() => undefined)
    }
    if (!this.finished) {
      this.finished = true
      this.resolve({ reason: 'cancelled' })
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
