/**
 * MSI-X (PCI Local Bus Specification 3.0, 6.8.2): the capability, the vector table and
 * the pending-bit array in a BAR. A vector signals by writing its message (address,
 * data) — here `Vm.signalMsi`; while the function or the vector is masked the message
 * waits as a pending bit and goes out when it is unmasked (6.8.2.9).
 * @module
 */
import { checkFunction, checkInteger, checkObject, invalid } from '../check.js'
import type { WindowHandler } from '../bus.js'
import { MshvError, describe } from '../errors.js'
import { RegisterCapability } from './capability.js'
import { bool, int, list, noneLeft, record, u32, version, type Check, type Saveable } from '../snapshot/device-state.js'

/** The capability ID of MSI-X. */
export const PCI_CAP_MSIX = 0x11
const CONTROL_ENABLE = 1 << 15
const CONTROL_FUNCTION_MASK = 1 << 14
/** A table entry: message address (low, high), data, vector control. */
const ENTRY = 16
const VECTOR_MASKED = 1

/** Where the table and PBA live, and how many vectors. */
export interface MsixOptions {
  /** Vectors, 1..2048. */
  vectors: number
  /** The BAR holding the table, and its offset there (8-byte aligned). */
  tableBar: number
  tableOffset: number
  /** The BAR holding the pending-bit array, and its offset there (8-byte aligned). */
  pbaBar: number
  pbaOffset: number
  /** Sends a message: `vm.deviceMsi(address, data)` (or `vm.signalMsi`). */
  signal: (address: bigint, data: number) => void
}

/** Counters of an {@link Msix}. */
export interface MsixStats {
  /** Messages sent. */
  signalled: number
  /** Signals that found their vector masked and left it pending. */
  pended: number
}

/** One MSI-X table entry (6.8.2.6-9). */
export interface MsixEntryState {
  addressLow: number
  addressHigh: number
  data: number
  /** Vector Control's mask bit. */
  masked: boolean
}

/** The capability's control bits, the table and the pending vectors ({@link Msix.save}). */
export interface MsixState {
  version: 1
  /** Message Control: MSI-X enable and function mask. */
  enabled: boolean
  functionMasked: boolean
  /** One entry per vector. */
  table: MsixEntryState[]
  /** The vectors whose pending bit is set, in order. */
  pending: number[]
}

const ENTRY_STATE = record<MsixEntryState>({ addressLow: u32, addressHigh: u32, data: u32, masked: bool })

/** MSI-X's capability, table and PBA. */
export class Msix extends RegisterCapability implements Saveable<MsixState> {
  readonly vectors: number
  private readonly table: DataView
  private readonly pending: Uint8Array
  private readonly signal: (address: bigint, data: number) => void
  readonly stats: MsixStats = { signalled: 0, pended: 0 }

  constructor(options: MsixOptions) {
    super(PCI_CAP_MSIX, 12)
    const { vectors, tableBar, tableOffset, pbaBar, pbaOffset } = checkObject<MsixOptions>('Msix: options', options)
    checkFunction('Msix: signal', options.signal)
    checkInteger('Msix: tableBar', tableBar, 0, 5)
    checkInteger('Msix: pbaBar', pbaBar, 0, 5)
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > 2048) throw new MshvError('EINVAL', `MSI-X vectors must be an integer in 1..2048, got ${describe(vectors)}`)
    for (const [what, v] of [['tableOffset', tableOffset], ['pbaOffset', pbaOffset]] as const) {
      if (!Number.isInteger(v) || v < 0 || v % 8 !== 0) throw new MshvError('EINVAL', `MSI-X ${what} must be a multiple of 8, got ${describe(v)}`)
    }
    this.vectors = vectors
    this.signal = options.signal
    this.view.setUint16(2, vectors - 1, true) // table size, N-1
    this.view.setUint32(4, (tableOffset | tableBar) >>> 0, true)
    this.view.setUint32(8, (pbaOffset | pbaBar) >>> 0, true)
    this.allowWrite(2, 2, CONTROL_ENABLE | CONTROL_FUNCTION_MASK)
    this.table = new DataView(new ArrayBuffer(vectors * ENTRY))
    // Every vector starts masked (6.8.2.9, Vector Control's reset value).
    for (let v = 0; v < vectors; v++) this.table.setUint32(v * ENTRY + 12, VECTOR_MASKED, true)
    this.pending = new Uint8Array(vectors)
  }

  /** The table's size in bytes. */
  get tableSize(): number {
    return this.vectors * ENTRY
  }

  /** The PBA's size in bytes (QWORDs of pending bits). */
  get pbaSize(): number {
    return Math.ceil(this.vectors / 64) * 8
  }

  private get control(): number {
    return this.view.getUint16(2, true)
  }

  /** Whether the guest enabled MSI-X (then the function's INTx is not used). */
  get enabled(): boolean {
    return (this.control & CONTROL_ENABLE) !== 0
  }

  private masked(vector: number): boolean {
    return (this.control & CONTROL_FUNCTION_MASK) !== 0 || (this.table.getUint32(vector * ENTRY + 12, true) & VECTOR_MASKED) !== 0
  }

  /** Whether `vector`'s pending bit is set. */
  isPending(vector: number): boolean {
    checkInteger('isPending: vector', vector, 0, this.vectors - 1)
    return this.pending[vector] === 1
  }

  /**
   * Signals `vector`: sent now, or left pending while masked. A vector past the table
   * is `EINVAL` (a device bug); signalling with MSI-X disabled is the caller's to avoid.
   */
  notify(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) throw new MshvError('EINVAL', `MSI-X vector must be in 0..${this.vectors - 1}, got ${describe(vector)}`)
    if (this.masked(vector)) {
      this.pending[vector] = 1
      this.stats.pended++
      return
    }
    this.send(vector)
  }

  private send(vector: number): void {
    const at = vector * ENTRY
    const address = (BigInt(this.table.getUint32(at + 4, true)) << 32n) | BigInt(this.table.getUint32(at, true))
    this.pending[vector] = 0
    this.stats.signalled++
    this.signal(address, this.table.getUint32(at + 8, true))
  }

  /** Sends what waits on vectors no longer masked. */
  private flushPending(): void {
    if (!this.enabled) return
    for (let v = 0; v < this.vectors; v++) if (this.pending[v] === 1 && !this.masked(v)) this.send(v)
  }

  protected override written(): void {
    this.flushPending()
  }

  /** The table, for the BAR holding it: DWORD and QWORD accesses (6.8.2: other sizes are undefined; they read 0 here). */
  readonly tableHandler: WindowHandler = {
    read: (offset, size) => {
      if ((size !== 4 && size !== 8) || offset % size !== 0 || offset + size > this.tableSize) return 0n
      return size === 8 ? this.table.getBigUint64(offset, true) : BigInt(this.table.getUint32(offset, true))
    },
    write: (offset, size, value) => {
      if ((size !== 4 && size !== 8) || offset % size !== 0 || offset + size > this.tableSize) return
      if (size === 8) this.table.setBigUint64(offset, value, true)
      else this.table.setUint32(offset, Number(value), true)
      // Vector Control's reserved bits read as zero.
      const control = (Math.floor(offset / ENTRY) * ENTRY) + 12
      this.table.setUint32(control, this.table.getUint32(control, true) & VECTOR_MASKED, true)
      this.flushPending()
    },
  }

  /** The pending-bit array, for the BAR holding it: read-only. */
  readonly pbaHandler: WindowHandler = {
    read: (offset, size) => {
      let v = 0n
      for (let i = size * 8 - 1; i >= 0; i--) v = (v << 1n) | BigInt(this.pending[offset * 8 + i] ?? 0)
      return v
    },
    write: () => {},
  }

  /** The control bits, the table and the pending vectors. */
  save(): MsixState {
    const table: MsixEntryState[] = []
    const pending: number[] = []
    for (let v = 0; v < this.vectors; v++) {
      const at = v * ENTRY
      table.push({ addressLow: this.table.getUint32(at, true), addressHigh: this.table.getUint32(at + 4, true), data: this.table.getUint32(at + 8, true), masked: (this.table.getUint32(at + 12, true) & VECTOR_MASKED) !== 0 })
      if (this.pending[v] === 1) pending.push(v)
    }
    return { version: 1, enabled: this.enabled, functionMasked: (this.control & CONTROL_FUNCTION_MASK) !== 0, table, pending } satisfies MsixState
  }

  /** The check of a state of this capability (its table size). @internal */
  stateCheck(): Check<MsixState> {
    return record<MsixState>({
      version: version(1),
      enabled: bool,
      functionMasked: bool,
      table: list(ENTRY_STATE, this.vectors, this.vectors),
      pending: (what, v) => {
        const vectors = list(int(0, this.vectors - 1), 0, this.vectors)(what, v)
        vectors.forEach((x, i) => {
          if (i > 0 && x <= (vectors[i - 1] as number)) throw invalid(what, 'vector numbers in increasing order', v)
        })
        return vectors
      },
    })
  }

  /** Restores what {@link save} gave, sending nothing; `EINVAL` (and nothing changed) for a bad state or another table size. */
  restore(state: MsixState): void {
    const { version: _, enabled, functionMasked, table, pending, ...rest } = this.stateCheck()('msix.restore: state', state)
    noneLeft(rest)
    this.view.setUint16(2, (this.control & ~(CONTROL_ENABLE | CONTROL_FUNCTION_MASK)) | (enabled ? CONTROL_ENABLE : 0) | (functionMasked ? CONTROL_FUNCTION_MASK : 0), true)
    table.forEach((e, v) => {
      const at = v * ENTRY
      this.table.setUint32(at, e.addressLow, true)
      this.table.setUint32(at + 4, e.addressHigh, true)
      this.table.setUint32(at + 8, e.data, true)
      this.table.setUint32(at + 12, e.masked ? VECTOR_MASKED : 0, true)
    })
    this.pending.fill(0)
    for (const v of pending) this.pending[v] = 1
  }
}
