/**
 * A GDB remote stub for a VM (GDB manual, "Remote Protocol"): vCPUs are threads, the
 * registers of {@link GDB_REGISTERS}, memory by linear address through the guest's
 * page tables, software and hardware breakpoints as the hypervisor's own (the guest's
 * code is never patched, so nothing the guest reads changes), single-step, Ctrl+C,
 * detach, kill. The VM runs only when GDB says so (all-stop mode, as QEMU's stub):
 * continue runs the whole VM ({@link Vm.run}), a step runs the one vCPU.
 *
 * Written for this package rather than on the `gdbstub` crate: every call the
 * protocol makes lands in TypeScript — the run loop with its devices, the register
 * cache whose sync guarantees a native path around it would break, guest memory
 * through the emulator's translations — so the crate would only frame packets and
 * call back across the FFI for each register and memory access. Debian's GDB is the
 * judge (`__test__/gdb.test.ts`).
 * @module
 */
import type { Vm } from '../../vm.js'
import type { VmRunResult } from '../../scheduler.js'
import type { Vcpu } from '../../vcpu.js'
import type { Watchpoint } from '../breakpoints.js'
import { MshvError } from '../../errors.js'
import { PACKET_SIZE, PacketReader, frame, fromLeHex, leHex } from './packet.js'
import { GDB_REGISTERS, TARGET_XML } from './registers.js'
import { History } from './history.js'

/** Signals of stop replies (GDB's numbering). */
const SIGINT = 0x02
const SIGTRAP = 0x05

/** What the stub does with a VM whose run ended. */
export interface StubEvents {
  /** GDB asked the stub to go (`D` detach: the VM runs on; `k` kill: the VM stays stopped). */
  onDetach(how: 'detach' | 'kill'): void
  /** The VM's run ended for good (power-off, reset, a fatal error...): GDB was told. */
  onEnd(result: VmRunResult | Error): void
}

const hex2 = (n: number): string => n.toString(16).padStart(2, '0')

/** GDB's error reply. */
const E = (n: number): string => `E${hex2(n)}`

/** One GDB connection's view of one VM. */
export class GdbStub {
  private readonly reader = new PacketReader()
  private ack = true
  /** The vCPU register reads and writes go to (`Hg`), and the one a step steps (`Hc`). */
  private gThread = 0
  private cThread = 0
  /** The last stop reply, for `?`. */
  private lastStop: string
  /** Whether the VM (or a vCPU) is running for GDB now. */
  private running = false
  private stepping: Vcpu | undefined
  /** Breakpoints GDB inserted (Z0/Z1), and which kind, to say which in a stop reply. */
  private readonly inserted = new Map<bigint, 'swbreak' | 'hwbreak'>()
  private ended = false
  /** Checkpoints for reverse execution, where the VM can go back (the deterministic sim). */
  private readonly history: History | undefined

  constructor(
    private readonly vm: Vm,
    private readonly send: (bytes: Buffer) => void,
    private readonly events: StubEvents,
  ) {
    this.lastStop = this.stopReply(SIGTRAP, 0)
    this.history = History.supported(vm) ? new History(vm) : undefined
    this.history?.stopped()
  }

  /** The connection went: the checkpoints' files go. */
  close(): void {
    this.history?.close()
  }

  /** Bytes from GDB. */
  receive(data: Buffer): void {
    for (const item of this.reader.push(data)) {
      if (item.kind === 'interrupt') this.interrupt()
      else if (item.kind === 'bad-checksum') {
        if (this.ack) this.send(Buffer.from('-'))
      } else {
        if (this.ack) this.send(Buffer.from('+'))
        this.handle(item.payload)
      }
    }
  }

  private reply(payload: string | Buffer): void {
    this.send(frame(payload))
  }

  private get cpus(): readonly Vcpu[] {
    return this.vm.cpus
  }

  private vcpu(index: number): Vcpu | undefined {
    const v = this.cpus[index]
    return v && !v.closed ? v : undefined
  }

  private stopReply(signal: number, vcpu: number, extra = ''): string {
    return `T${hex2(signal)}thread:${(vcpu + 1).toString(16)};${extra}`
  }

  /** Thread ids are vCPU index + 1; `-1` (all) and `0` (any) are vCPU 0 here. */
  private thread(id: string): number | undefined {
    if (id === '-1' || id === '0') return 0
    const n = Number.parseInt(id, 16)
    return Number.isInteger(n) && n >= 1 && this.vcpu(n - 1) ? n - 1 : undefined
  }

  /** The stub stops a running VM: GDB attached, or pressed Ctrl+C. */
  interrupt(): void {
    if (!this.running) return
    if (this.stepping) this.stepping.cancel()
    else this.vm.cancel()
  }

  private handle(packet: Buffer): void {
    const p = packet.toString('latin1')
    if (this.ended && !/^(?:[?DkqQvH]|qSupported)/.test(p)) return this.reply(E(1))
    switch (p[0]) {
      case '?':
        return this.reply(this.lastStop)
      case 'g':
        return this.readAll()
      case 'G':
        return this.writeAll(p.slice(1))
      case 'p':
        return this.readOne(p.slice(1))
      case 'P':
        return this.writeOne(p.slice(1))
      case 'm':
        return this.readMemory(p.slice(1))
      case 'M':
        return this.writeMemory(p.slice(1), 'hex', packet)
      case 'X':
        return this.writeMemory(p.slice(1), 'binary', packet)
      case 'H':
        return this.selectThread(p)
      case 'T':
        return this.reply(this.thread(p.slice(1)) !== undefined ? 'OK' : E(1))
      case 'c':
        return this.resume(undefined)
      case 's':
        return this.resume(this.cThread)
      case 'Z':
      case 'z':
        return this.breakpoint(p)
      case 'b':
        return p === 'bs' || p === 'bc' ? this.reverse(p === 'bs' ? 'step' : 'continue') : this.reply('')
      case 'D':
        this.reply('OK')
        return this.events.onDetach('detach')
      case 'k':
        return this.events.onDetach('kill')
      case 'v':
        return this.vPacket(p)
      case 'q':
      case 'Q':
        return this.query(p)
      default:
        return this.reply('')
    }
  }

  private query(p: string): void {
    if (p.startsWith('qSupported')) {
      const reverse = this.history ? ';ReverseStep+;ReverseContinue+' : ''
      return this.reply(`PacketSize=${PACKET_SIZE.toString(16)};qXfer:features:read+;swbreak+;hwbreak+;vContSupported+;QStartNoAckMode+${reverse}`)
    }
    if (p === 'QStartNoAckMode') {
      this.reply('OK')
      this.ack = false
      return
    }
    if (p.startsWith('qXfer:features:read:target.xml:')) {
      const [off = '0', len = '0'] = p.slice('qXfer:features:read:target.xml:'.length).split(',')
      const o = Number.parseInt(off, 16)
      const l = Number.parseInt(len, 16)
      const chunk = TARGET_XML.slice(o, o + l)
      return this.reply((o + l >= TARGET_XML.length ? 'l' : 'm') + chunk)
    }
    if (p.startsWith('qXfer:')) return this.reply(E(0))
    if (p === 'qfThreadInfo') {
      const ids = this.cpus.flatMap((v, i) => (v.closed ? [] : [(i + 1).toString(16)]))
      return this.reply(`m${ids.join(',')}`)
    }
    if (p === 'qsThreadInfo') return this.reply('l')
    if (p === 'qC') return this.reply(`QC${(this.gThread + 1).toString(16)}`)
    if (p.startsWith('qAttached')) return this.reply('1')
    if (p.startsWith('qSymbol')) return this.reply('OK')
    if (p.startsWith('qThreadExtraInfo,')) {
      const t = this.thread(p.slice('qThreadExtraInfo,'.length))
      return this.reply(t === undefined ? E(1) : Buffer.from(`vCPU ${t}`).toString('hex'))
    }
    return this.reply('')
  }

  private vPacket(p: string): void {
    if (p === 'vCont?') return this.reply('vCont;c;C;s;S')
    if (p.startsWith('vCont;')) {
      // All-stop: a step action steps that vCPU alone; otherwise the VM continues.
      for (const action of p.slice('vCont;'.length).split(';')) {
        const [what = '', id] = action.split(':')
        if (what[0] === 's' || what[0] === 'S') {
          const t = id === undefined ? this.cThread : this.thread(id)
          return this.resume(t ?? this.cThread)
        }
      }
      return this.resume(undefined)
    }
    if (p === 'vMustReplyEmpty') return this.reply('')
    if (p.startsWith('vKill')) {
      this.reply('OK')
      return this.events.onDetach('kill')
    }
    return this.reply('')
  }

  private selectThread(p: string): void {
    const t = this.thread(p.slice(2))
    if (t === undefined) return this.reply(E(1))
    if (p[1] === 'g') this.gThread = t
    else this.cThread = t
    this.reply('OK')
  }

  private regsOf(): Vcpu | undefined {
    return this.vcpu(this.gThread)
  }

  private readAll(): void {
    const v = this.regsOf()
    if (!v) return this.reply(E(1))
    this.reply(GDB_REGISTERS.map((r) => leHex(r.get(v), r.bits / 8)).join(''))
  }

  private writeAll(data: string): void {
    const v = this.regsOf()
    if (!v) return this.reply(E(1))
    let at = 0
    for (const r of GDB_REGISTERS) {
      const n = r.bits / 4
      if (at + n > data.length) break
      const x = fromLeHex(data.slice(at, at + n))
      at += n
      if (x === undefined) return this.reply(E(2))
      if (r.set && x !== r.get(v)) r.set(v, x)
    }
    this.reply('OK')
  }

  private readOne(n: string): void {
    const v = this.regsOf()
    const r = GDB_REGISTERS[Number.parseInt(n, 16)]
    if (!v || !r) return this.reply(E(1))
    this.reply(leHex(r.get(v), r.bits / 8))
  }

  private writeOne(arg: string): void {
    const [n = '', value = ''] = arg.split('=')
    const v = this.regsOf()
    const r = GDB_REGISTERS[Number.parseInt(n, 16)]
    const x = fromLeHex(value)
    if (!v || !r || x === undefined || value.length !== r.bits / 4) return this.reply(E(1))
    if (!r.set) return this.reply(E(2))
    r.set(v, x)
    this.reply('OK')
  }

  /** `addr,len` as numbers; undefined when malformed. */
  private range(s: string): { addr: bigint; len: number } | undefined {
    const m = /^([0-9a-fA-F]+),([0-9a-fA-F]+)/.exec(s)
    if (!m) return undefined
    const len = Number.parseInt(m[2] as string, 16)
    return len > PACKET_SIZE ? undefined : { addr: BigInt(`0x${m[1]}`), len }
  }

  /**
   * Walks `len` bytes at linear `addr` page by page as vCPU `gThread` sees them:
   * `each(gpa, done, n)` for every piece within one 4 KiB page (a range crossing pages
   * may be discontiguous in guest-physical memory). Throws where a page is unmapped.
   */
  private eachPage(addr: bigint, len: number, write: boolean, each: (gpa: bigint, done: number, n: number) => void): void {
    const v = this.regsOf()
    if (!v) throw new MshvError('EINVAL', 'no vCPU')
    const mem = v.memory()
    let done = 0
    while (done < len) {
      const at = addr + BigInt(done)
      const n = Math.min(len - done, 0x1000 - Number(at & 0xfffn))
      each(mem.translate(at, write), done, n)
      done += n
    }
  }

  /** Bytes at linear `addr` as vCPU `gThread` sees them (RAM and ROM; not devices). */
  private read(addr: bigint, len: number): Uint8Array {
    const out = new Uint8Array(len)
    this.eachPage(addr, len, false, (gpa, done, n) => out.set(this.vm.read(gpa, n), done))
    return out
  }

  private readMemory(arg: string): void {
    const r = this.range(arg)
    if (!r) return this.reply(E(1))
    try {
      this.reply(Buffer.from(this.read(r.addr, r.len)).toString('hex'))
    } catch {
      // Unmapped, or not RAM: GDB shows "Cannot access memory".
      this.reply(E(0x0e))
    }
  }

  private writeMemory(arg: string, encoding: 'hex' | 'binary', packet: Buffer): void {
    const r = this.range(arg)
    const colon = packet.indexOf(0x3a)
    const v = this.regsOf()
    if (!r || colon < 0 || !v) return this.reply(E(1))
    const data = encoding === 'hex' ? Buffer.from(packet.subarray(colon + 1).toString('latin1'), 'hex') : packet.subarray(colon + 1)
    if (data.length !== r.len) return this.reply(E(1))
    try {
      this.eachPage(r.addr, r.len, true, (gpa, done, n) => this.vm.write(gpa, data.subarray(done, done + n)))
      this.reply('OK')
    } catch {
      this.reply(E(0x0e))
    }
  }

  /**
   * Z0/Z1 (and z): the hypervisor's breakpoints on every vCPU; Z2/Z3/Z4: its
   * watchpoints (write, read, access) of `kind` bytes.
   */
  private breakpoint(p: string): void {
    const m = /^([zZ])([0-4]),([0-9a-fA-F]+),([0-9a-fA-F]+)/.exec(p)
    if (!m) return this.reply(E(1))
    const kind = m[2] === '0' ? 'swbreak' : m[2] === '1' ? 'hwbreak' : undefined
    const addr = BigInt(`0x${m[3]}`)
    if (!kind) {
      const watch: Watchpoint = { address: addr, length: Number.parseInt(m[4] as string, 16), kind: m[2] === '2' ? 'write' : m[2] === '3' ? 'read' : 'access' }
      try {
        for (const v of this.cpus) {
          if (v.closed) continue
          if (m[1] === 'Z') v.addWatchpoint(watch.address, watch.length, watch.kind)
          else v.removeWatchpoint(watch)
        }
      } catch {
        return this.reply(E(0x1c))
      }
      return this.reply('OK')
    }
    try {
      for (const v of this.cpus) {
        if (v.closed) continue
        if (m[1] === 'Z') v.addBreakpoint(addr)
        else v.removeBreakpoint(addr)
      }
    } catch {
      return this.reply(E(0x1c))
    }
    if (m[1] === 'Z') this.inserted.set(addr, kind)
    else this.inserted.delete(addr)
    this.reply('OK')
  }

  /**
   * `bs`/`bc`: back one instruction, or back to the latest breakpoint before here, by
   * restoring a checkpoint and replaying forward; at the start of the history the stop
   * says `replaylog:begin` (GDB: "no more reverse-execution history").
   */
  private reverse(how: 'step' | 'continue'): void {
    const h = this.history
    if (!h) return this.reply(E(1))
    if (this.running) return
    this.running = true
    const go = async (): Promise<string> => {
      const vcpu = this.cpus.findIndex((v) => !v.closed)
      if (how === 'step') {
        if (h.position() <= h.start) return this.stopReply(SIGTRAP, vcpu, 'replaylog:begin;')
        await h.goto(h.position() - 1)
        return this.stopReply(SIGTRAP, vcpu)
      }
      const address = await h.lastHitBefore(new Set(this.inserted.keys()))
      if (address === undefined) return this.stopReply(SIGTRAP, vcpu, 'replaylog:begin;')
      return this.stopReply(SIGTRAP, vcpu, `${this.inserted.get(address) ?? 'swbreak'}:;`)
    }
    go().then(
      (reply) => {
        this.running = false
        this.lastStop = reply
        this.reply(reply)
      },
      (e: unknown) => this.stopped(e instanceof Error ? e : new Error(String(e))),
    )
  }

  /** `c` (every vCPU) or `s` (vCPU `step` alone); the stop reply comes when it stops. */
  private resume(step: number | undefined): void {
    if (this.running) return
    this.running = true
    const run = step === undefined ? this.vm.run() : this.stepOne(step)
    run.then(
      (r) => this.stopped(r),
      (e: unknown) => this.stopped(e instanceof Error ? e : new Error(String(e))),
    )
  }

  private async stepOne(index: number): Promise<VmRunResult> {
    const v = this.vcpu(index)
    if (!v) return { reason: 'cancelled' }
    this.stepping = v
    v.singleStep = true
    try {
      for (;;) {
        const r = await v.runAsync()
        // A device timer came due before the step: fired as a VM run fires it, then on.
        if (r.reason === 'clock') {
          this.vm.timers.fire()
          continue
        }
        return { ...r, vcpu: index }
      }
    } finally {
      this.stepping = undefined
      if (!v.closed) v.singleStep = false
    }
  }

  private stopped(r: VmRunResult | Error): void {
    this.running = false
    const vcpu = r instanceof Error ? 0 : (r.vcpu ?? this.gThread)
    let reply: string
    if (r instanceof Error) {
      reply = `X${hex2(6)}`
      this.ended = true
    } else if (r.reason === 'breakpoint') {
      const kind = this.inserted.get(r.address)
      reply = this.stopReply(SIGTRAP, vcpu, kind ? `${kind}:;` : '')
    } else if (r.reason === 'step') {
      reply = this.stopReply(SIGTRAP, vcpu)
    } else if (r.reason === 'watchpoint') {
      const what = r.watch.kind === 'write' ? 'watch' : r.watch.kind === 'read' ? 'rwatch' : 'awatch'
      reply = this.stopReply(SIGTRAP, vcpu, `${what}:${r.watch.address.toString(16)};`)
    } else if (r.reason === 'cancelled' || r.reason === 'timeout' || r.reason === 'exits' || r.reason === 'instructions' || r.reason === 'clock' || r.reason === 'idle') {
      reply = this.stopReply(SIGINT, vcpu)
    } else {
      // The guest ended the machine (power-off, reset, debug-exit, a halt nothing wakes).
      reply = `W${hex2(r.reason === 'debug-exit' ? r.code & 0xff : 0)}`
      this.ended = true
    }
    if (!this.ended) {
      this.gThread = vcpu
      this.cThread = vcpu
    }
    this.lastStop = reply
    if (!this.ended) this.history?.stopped()
    this.reply(reply)
    if (this.ended) this.events.onEnd(r)
  }

  /** Whether a run GDB started is in progress. */
  get busy(): boolean {
    return this.running
  }
}
