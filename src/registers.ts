/**
 * The per-vCPU register cache and its state-sync policy: the heart of the package.
 *
 * Every register is unknown, clean or dirty. Reads are lazy: from the register page
 * when it is mapped and valid, else one batched get-register hypercall for the
 * register's whole group. Writes only mark dirty. `synchronize()` fetches everything
 * still unknown and never overwrites a dirty value. `flush()`, before each resume,
 * writes dirty page-resident classes to the page with their dirty bits and everything
 * else in one batched set-register hypercall, never both paths for one class.
 * @module
 */
import type { NativeVcpu } from './native.js'
import { page, registers, registerIndex, type RegisterDescriptor, type RegisterName } from './layout.js'
import { MshvError, describe } from './errors.js'
import { checkU32 } from './check.js'

/** The register sync policies: see {@link SyncPolicy}. */
export const POLICIES = ['page', 'hypercall', 'eager'] as const

/**
 * How a vCPU's registers travel: `page` (through the register page when it is valid,
 * else hypercalls), `hypercall` (never the page) or `eager` (every exit fetches and
 * stores the standard and special registers, as VMMs did before the page).
 */
export type SyncPolicy = (typeof POLICIES)[number]

const N = registers.length
const ISVALID = page('isvalid')
const DIRTY_OFFSET = page('dirty')

/** Registers the `eager` policy moves on every exit, as the pre-page VMMs did. */
const EAGER_GROUPS: readonly (readonly number[])[] = [
  registers.flatMap((r, i) => (r.group === 'general' ? [i] : [])),
  registers.flatMap((r, i) => (['segment', 'control', 'system'].includes(r.group) ? [i] : [])),
]

// The page is read as native-order u64 words: every napi target is little-endian, as the page is.
if (new Uint8Array(Uint16Array.of(1).buffer)[0] !== 1) throw new Error('mshv: the register page needs a little-endian host')
for (const r of registers) {
  if (r.pageOffset !== undefined && r.pageOffset % 8 !== 0) {
    throw new Error(`mshv: register '${r.name}' sits at unaligned page offset ${r.pageOffset} in the native layout`)
  }
}

/** Register indices by group. */
const GROUPS = new Map<string, number[]>()
registers.forEach((r, i) => {
  const g = GROUPS.get(r.group) ?? []
  g.push(i)
  GROUPS.set(r.group, g)
})

/** How registers were read and written, per vCPU. */
export interface SyncCounters {
  /** Register values read from the register page. */
  pageReads: number
  /** Register values read through get-register hypercalls. */
  hypercallReads: number
  /** Register values written through the register page. */
  pageWrites: number
  /** Register values written through set-register hypercalls. */
  hypercallWrites: number
}

/** A register index, checked: the `...At` methods are the hot path, so one compare. */
function checkIndex(i: number): number {
  if (!(typeof i === 'number' && i >>> 0 === i && i < N)) throw new MshvError('EINVAL_REGISTER', `register index must be an integer in 0..${N - 1}, got ${describe(i)}`)
  return i
}

function checkSize(size: number): 1 | 2 | 4 {
  if (size !== 1 && size !== 2 && size !== 4) throw new MshvError('EINVAL', `register write size must be 1, 2 or 4 bytes, got ${describe(size)}`)
  return size
}

function checkU64(name: string, v: bigint | number): bigint {
  // A whole number from 0 to 2^53-1 says its value unambiguously (the REPL's `regs.set('rax', 5)`).
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v)
  if (typeof v !== 'bigint' || BigInt.asUintN(64, v) !== v) {
    throw new MshvError('EINVAL', `value for ${name} must be a bigint in 0..2^64-1 or a whole number in 0..2^53-1, got ${describe(v)}`)
  }
  return v
}

const BUSY = 1
const CLOSED = 2

/**
 * Epochs step by two (clean = epoch, dirty = epoch + 1) and restart after this one,
 * before Int32 overflow.
 * @internal
 */
export const LAST_EPOCH = 0x7fff_0000

/** The register state of one vCPU during one exit. */
export class RegisterCache {
  private readonly lo = new BigUint64Array(N)
  private readonly hi = new BigUint64Array(N)
  /**
   * `lo` as u32 halves (low first): the per-exit port path reads, adds and copies
   * through these, as numbers, without making a BigInt.
   */
  private readonly lo32 = new Uint32Array(this.lo.buffer)
  /**
   * Per register: `epoch` when clean, `epoch + 1` when dirty, anything lower when
   * unknown. Forgetting everything at each resume is then one increment, not a pass
   * over every register: this runs on every exit.
   */
  private readonly state = new Int32Array(N)
  private epoch = 2
  /** Indices written since the last resume, each once: the first `dirtyCount`. */
  private readonly dirty = new Int32Array(N)
  private dirtyCount = 0
  private readonly view: DataView | null
  /** The page as u64 words: typed-array access is several times cheaper than a DataView's BigInt calls. */
  private readonly words: BigUint64Array | null
  /** The page as u32 halves, for copies that need no BigInt. */
  private readonly words32: Uint32Array | null
  /**
   * Hypercall argument arrays by register count, kept: a fresh small typed array is
   * allocated inside the JS heap, and handing it to native code moves it out (a
   * malloc and a handle, about a microsecond) on every call.
   */
  private readonly batches: { ids: Uint32Array; values: BigUint64Array }[] = []
  /** Counters of page and hypercall traffic. */
  readonly counters: SyncCounters = { pageReads: 0, hypercallReads: 0, pageWrites: 0, hypercallWrites: 0 }
  /** 0 while registers may be used; else why not (see {@link check}). */
  private blocked: 0 | typeof BUSY | typeof CLOSED = 0

  /**
   * @param native the native vCPU (hypercalls)
   * @param pageBuffer the mapped register page, or null without one
   * @param policy how registers travel
   */
  constructor(
    private readonly native: NativeVcpu,
    pageBuffer: ArrayBuffer | null,
    /** The active policy; may be changed between exits. */
    public policy: SyncPolicy = 'page',
  ) {
    this.view = pageBuffer ? new DataView(pageBuffer) : null
    this.words = pageBuffer ? new BigUint64Array(pageBuffer) : null
    this.words32 = pageBuffer ? new Uint32Array(pageBuffer) : null
  }

  /** Whether reads and writes may use the page now. */
  pageUsable(): boolean {
    return this.policy === 'page' && this.view !== null && this.view.getUint8(ISVALID) !== 0
  }

  /** Refuses access while the vCPU runs (`EBUSY`) or after it closed (`ECLOSED`): one compare on the hot path. */
  private check(): void {
    if (this.blocked !== 0) this.refuse()
  }

  private refuse(): never {
    if (this.blocked === CLOSED) throw new MshvError('ECLOSED', `vCPU ${this.native.index} is closed: its registers are gone`)
    throw new MshvError('EBUSY', `vCPU ${this.native.index} is running: its registers can be read and written between runs (in exit handlers, or after runAsync() settles)`)
  }

  /**
   * Set while the vCPU runs on a worker thread: its registers are then neither
   * readable (they would be stale) nor writable (the write would be lost).
   * @internal
   */
  set busy(running: boolean) {
    if (this.blocked !== CLOSED) this.blocked = running ? BUSY : 0
  }

  /** Ends access for good: the vCPU closed. @internal */
  close(): void {
    this.blocked = CLOSED
  }

  /** Reads a register's low 64 bits (the whole value for u64 registers). */
  get(name: RegisterName): bigint {
    return this.getAt(registerIndex(name))
  }

  /** {@link get} by index in {@link registers}. */
  getAt(i: number): bigint {
    this.check()
    if (this.unknown(checkIndex(i))) this.load(i)
    return this.lo[i] as bigint
  }

  /** The low 32 bits of register `i` (by index), as a number. */
  getLow32At(i: number): number {
    this.check()
    if (this.unknown(checkIndex(i))) this.load(i)
    return this.lo32[2 * i] as number
  }

  /**
   * The low 32 bits of register `i` (by index), read without caching it: from the cache
   * when known, else straight from the register page when it holds the register (no
   * BigInt made: the plain MMIO MOV's page check runs on every exit at page offset 0),
   * else loaded as {@link getLow32At} loads it.
   */
  peekLow32At(i: number): number {
    this.check()
    if (this.unknown(checkIndex(i))) {
      const offset = (registers[i] as RegisterDescriptor).pageOffset
      if (offset !== undefined && this.words32 !== null && this.pageUsable()) return this.words32[offset >>> 2] as number
      this.load(i)
    }
    return this.lo32[2 * i] as number
  }

  /**
   * Writes `value` to the low `size` bytes of register `i` as x86 does: a 1- or
   * 2-byte write keeps the other bits, a 4-byte write clears the upper half.
   */
  setSizedAt(i: number, size: 1 | 2 | 4, value: number): void {
    this.check()
    checkIndex(i)
    checkU32('setSizedAt: value', value)
    if (checkSize(size) === 4) {
      this.setWords(i, value, 0)
      return
    }
    const m = size === 1 ? 0xff : 0xffff
    const low = this.getLow32At(i)
    this.setWords(i, ((low & ~m) | (value & m)) >>> 0, this.lo32[2 * i + 1] as number)
  }

  /** Adds `n` (0..0xffffffff) to register `i`, wrapping at 2^64: RIP past an instruction. */
  addAt(i: number, n: number): void {
    this.check()
    checkU32('addAt: increment', n)
    const low = this.getLow32At(i) + n
    const high = (this.lo32[2 * i + 1] as number) + (low > 0xffff_ffff ? 1 : 0)
    this.setWords(i, low >>> 0, high >>> 0)
  }

  /** Writes a u64 register from its u32 halves; `i` is checked by the caller. */
  private setWords(i: number, low: number, high: number): void {
    const r = registers[i] as RegisterDescriptor
    if (r.kind !== 'u64' && this.unknown(i)) this.load(i)
    this.lo32[2 * i] = low
    this.lo32[2 * i + 1] = high
    this.markDirty(i)
  }

  /** Reads both 64-bit halves (XMM, segment and table registers). */
  getRaw(name: RegisterName): [bigint, bigint] {
    this.check()
    const i = registerIndex(name)
    if (this.unknown(i)) this.load(i)
    return [this.lo[i] as bigint, this.hi[i] as bigint]
  }

  /** Writes a register's 64-bit value; it reaches the vCPU at the next resume. */
  set(name: RegisterName, value: bigint | number): void {
    this.setAt(registerIndex(name), value)
  }

  /** {@link set} by index. For 128-bit registers the high half is kept. */
  setAt(i: number, value: bigint | number): void {
    this.check()
    const r = registers[checkIndex(i)] as RegisterDescriptor
    if (r.kind !== 'u64' && this.unknown(i)) this.load(i)
    this.lo[i] = checkU64(r.name, value)
    this.markDirty(i)
  }

  /** Writes both halves of a register. */
  setRaw(name: RegisterName, low: bigint, high: bigint): void {
    this.check()
    const i = registerIndex(name)
    this.lo[i] = checkU64(name, low)
    this.hi[i] = checkU64(name, high)
    this.markDirty(i)
  }

  /** Records a value the exit message carried (clean, no hypercall), unless known. */
  seed(i: number, value: bigint, high = 0n): void {
    this.check()
    if (this.unknown(checkIndex(i))) {
      const { name } = registers[i] as RegisterDescriptor
      this.lo[i] = checkU64(name, value)
      this.hi[i] = checkU64(name, high)
      this.state[i] = this.epoch
    }
  }

  /**
   * {@link seed} from a message's u32 halves at `words[at]`, `words[at + 1]` (a u64
   * field, little-endian), without making a BigInt.
   * @internal
   */
  seedWords(i: number, words: Uint32Array, at: number): void {
    this.check()
    if (this.unknown(checkIndex(i))) {
      this.lo32[2 * i] = words[at] as number
      this.lo32[2 * i + 1] = words[at + 1] as number
      this.hi[i] = 0n
      this.state[i] = this.epoch
    }
  }

  /** Whether a register has been written since the last resume. */
  isDirty(name: RegisterName): boolean {
    return this.state[registerIndex(name)] === this.epoch + 1
  }

  private unknown(i: number): boolean {
    return (this.state[i] as number) < this.epoch
  }

  private markDirty(i: number): void {
    if (this.state[i] === this.epoch + 1) return
    this.state[i] = this.epoch + 1
    // Kept in register order (an insertion; few are dirty at once): a batch is applied in its order.
    let k = this.dirtyCount++
    for (; k > 0 && (this.dirty[k - 1] as number) > i; k--) this.dirty[k] = this.dirty[k - 1] as number
    this.dirty[k] = i
  }

  /** Makes every register unknown and none dirty. */
  private forget(): void {
    this.epoch += 2
    if (this.epoch > LAST_EPOCH) {
      this.state.fill(0)
      this.epoch = 2
    }
    this.dirtyCount = 0
  }

  /**
   * Full state, as QEMU's `cpu_synchronize_state`: fetches every register not already
   * clean or dirty. A dirty value is never replaced by the hypervisor's older one.
   */
  synchronize(): void {
    this.check()
    for (const [, members] of GROUPS) {
      const first = members.find((i) => this.unknown(i))
      if (first !== undefined) this.load(first)
    }
  }

  /** Called at each exit: the eager policy fetches standard and special registers. */
  beginExit(): void {
    if (this.policy === 'eager') this.fetchEager()
  }

  private fetchEager(): void {
    for (const g of EAGER_GROUPS) this.fetch(g.filter((i) => this.unknown(i)))
  }

  /**
   * Writes dirty registers back before the vCPU resumes. This and the functions it
   * calls on the page path run on every exit and are kept small, so V8 inlines them
   * into the run loops; the other paths are functions of their own.
   */
  flush(): void {
    this.check()
    if (this.policy === 'eager') this.flushEager()
    else if (this.dirtyCount > 0) this.storeDirty(this.pageUsable())
    this.forget()
  }

  /** The pre-page behaviour: store back everything fetched, dirty or not. */
  private flushEager(): void {
    // Clean ones first: a dirty value stored after them wins.
    for (const g of EAGER_GROUPS) this.store(g.filter((i) => this.state[i] === this.epoch))
    this.storeDirty(false)
  }

  /** Forgets everything: the vCPU ran, so every cached value is stale. */
  reset(): void {
    this.forget()
  }

  /**
   * Mid-exit, before the vCPU's whole state is read by hypercall: every dirty register
   * is written by hypercall now (a write through the page would reach the vCPU only at
   * resume) and kept as the clean value it now is.
   */
  commit(): void {
    this.check()
    this.commitPage()
    if (this.dirtyCount === 0) return
    const dirty = Array.from(this.dirty.subarray(0, this.dirtyCount))
    this.store(dirty)
    for (const i of dirty) this.state[i] = this.epoch
    this.dirtyCount = 0
  }

  /**
   * Classes written through the page and not yet applied (a flush before a run that
   * was cancelled before it entered the guest: both hypervisors apply the page's dirty
   * classes only at a resume) are written by hypercall, and the page's dirty bits
   * cleared, so a hypercall read sees them.
   */
  private commitPage(): void {
    const view = this.view
    const words = this.words
    if (!view || !words) return
    const mask = view.getUint32(DIRTY_OFFSET, true)
    if (mask === 0) return
    const pending: number[] = []
    registers.forEach((r, i) => {
      if (r.dirtyBit !== undefined && (r.dirtyBit & mask) !== 0 && r.pageOffset !== undefined && this.state[i] !== this.epoch + 1) pending.push(i)
    })
    const { ids, values } = this.batch(pending.length)
    pending.forEach((i, k) => {
      const r = registers[i] as RegisterDescriptor
      const w = (r.pageOffset as number) >>> 3
      ids[k] = r.id
      values[2 * k] = words[w] as bigint
      values[2 * k + 1] = r.kind === 'u64' ? 0n : (words[w + 1] as bigint)
    })
    if (pending.length > 0) {
      this.native.setRegisters(ids, values)
      this.counters.hypercallWrites += pending.length
    }
    view.setUint32(DIRTY_OFFSET, 0, true)
  }

  /**
   * The vCPU's whole state was replaced mid-exit: what the cache and the page hold is
   * the old state's. Both are forgotten — the page's dirty bits cleared (a dirty class
   * would undo the new state at resume) and the page marked invalid for the rest of the
   * exit, so reads go by hypercall.
   */
  replaced(): void {
    this.check()
    const view = this.view
    if (view) {
      view.setUint32(DIRTY_OFFSET, 0, true)
      view.setUint8(ISVALID, 0)
    }
    this.forget()
  }

  private markPageDirty(mask: number): void {
    const view = this.view
    if (mask !== 0 && view) view.setUint32(DIRTY_OFFSET, view.getUint32(DIRTY_OFFSET, true) | mask, true)
  }

  /** Stores the dirty registers: page-resident ones through the page when `viaPage`. */
  private storeDirty(viaPage: boolean): void {
    // Made only when something needs a hypercall.
    let batch: number[] | undefined
    let mask = 0
    const { words, words32, lo32 } = this
    for (let k = 0; k < this.dirtyCount; k++) {
      const i = this.dirty[k] as number
      const r = registers[i] as RegisterDescriptor
      if (viaPage && words && words32 && r.dirtyBit !== undefined && r.pageOffset !== undefined) {
        const w = r.pageOffset >>> 2
        words32[w] = lo32[2 * i] as number
        words32[w + 1] = lo32[2 * i + 1] as number
        if (r.kind !== 'u64') words[(w >>> 1) + 1] = this.hi[i] as bigint
        mask |= r.dirtyBit
        this.counters.pageWrites++
      } else {
        ;(batch ??= []).push(i)
      }
    }
    this.markPageDirty(mask)
    if (batch) this.store(batch)
  }

  private store(indices: number[]): void {
    if (indices.length === 0) return
    const { ids, values } = this.batch(indices.length)
    indices.forEach((i, k) => {
      ids[k] = (registers[i] as RegisterDescriptor).id
      values[2 * k] = this.lo[i] as bigint
      values[2 * k + 1] = this.hi[i] as bigint
    })
    this.native.setRegisters(ids, values)
    this.counters.hypercallWrites += indices.length
  }

  /** The argument arrays for a batch of `count` registers, reused from call to call. */
  private batch(count: number): { ids: Uint32Array; values: BigUint64Array } {
    let b = this.batches[count]
    if (!b) {
      b = { ids: new Uint32Array(new ArrayBuffer(4 * count)), values: new BigUint64Array(new ArrayBuffer(16 * count)) }
      this.batches[count] = b
    }
    return b
  }

  /** Loads register `i`: from the page if possible, else its whole group by hypercall. */
  private load(i: number): void {
    const r = registers[i] as RegisterDescriptor
    if (r.pageOffset !== undefined && this.pageUsable()) {
      this.readPage(i)
      return
    }
    const group = GROUPS.get(r.group) ?? [i]
    const usePage = this.pageUsable()
    const wanted = group.filter((j) => {
      if (!this.unknown(j)) return false
      if (usePage && (registers[j] as RegisterDescriptor).pageOffset !== undefined) {
        this.readPage(j)
        return false
      }
      return true
    })
    this.fetch(wanted)
  }

  private readPage(i: number): void {
    const r = registers[i] as RegisterDescriptor
    const words = this.words as BigUint64Array
    const w = (r.pageOffset as number) >>> 3
    this.lo[i] = words[w] as bigint
    this.hi[i] = r.kind === 'u64' ? 0n : (words[w + 1] as bigint)
    this.state[i] = this.epoch
    this.counters.pageReads++
  }

  private fetch(indices: number[]): void {
    if (indices.length === 0) return
    const { ids, values: out } = this.batch(indices.length)
    indices.forEach((i, k) => (ids[k] = (registers[i] as RegisterDescriptor).id))
    try {
      this.native.getRegisters(ids, out)
    } catch (e) {
      const err = e as Error & { code?: string }
      throw new MshvError(err.code ?? 'EHYPERCALL', `reading ${indices.map((i) => registers[i]?.name).join(', ')}: ${err.message}`)
    }
    indices.forEach((i, k) => {
      this.lo[i] = out[2 * k] as bigint
      this.hi[i] = out[2 * k + 1] as bigint
      this.state[i] = this.epoch
    })
    this.counters.hypercallReads += indices.length
  }
}
