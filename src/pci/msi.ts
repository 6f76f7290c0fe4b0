/**
 * MSI (PCI Local Bus Specification 3.0, 6.8.1): the 64-bit capability with per-vector
 * masking. The function signals vector `n` of the `2^MME` it was granted by writing the
 * message data with its low bits replaced by `n` (6.8.1.6), here through
 * `Vm.signalMsi`; a masked vector waits as a pending bit (6.8.1.8).
 * @module
 */
import { MshvError, describe, hex } from '../errors.js'
import { invalid } from '../check.js'
import { bool, int, noneLeft, parseState, u16, u32, version, type Check, type Saveable } from '../snapshot/device-state.js'
import { RegisterCapability } from './capability.js'

/** The capability ID of MSI. */
export const PCI_CAP_MSI = 0x05
const ENABLE = 1 << 0
const ADDRESS_64 = 1 << 7
const PER_VECTOR_MASKING = 1 << 8
/** Register offsets in the 64-bit, per-vector-masking layout (6.8.1, figure 6-9). */
const CONTROL = 2
const ADDRESS_LOW = 4
const ADDRESS_HIGH = 8
const DATA = 12
const MASK = 16
const PENDING = 20

/** What the guest wrote of an MSI capability, and the vectors pending ({@link Msi.save}). */
export interface MsiState {
  version: 1
  /** MSI enable (Message Control bit 0). */
  enabled: boolean
  /** Multiple Message Enable: the guest granted 2^this vectors (0..7; at most the function's count is used). */
  multipleMessageEnable: number
  /** The message address (low dword 4-byte aligned) and data. */
  addressLow: number
  addressHigh: number
  data: number
  /** Mask bits and pending bits, bit n for vector n. */
  mask: number
  pending: number
}

/** MSI's capability: 1, 2, 4, 8, 16 or 32 vectors. */
export class Msi extends RegisterCapability implements Saveable<MsiState> {
  readonly vectors: number
  private pendingBits = 0

  constructor(
    vectors: number,
    /** Sends a message: `vm.deviceMsi(address, data)` (or `vm.signalMsi`). */
    private readonly signal: (address: bigint, data: number) => void,
  ) {
    super(PCI_CAP_MSI, 24)
    const log2 = [1, 2, 4, 8, 16, 32].indexOf(vectors)
    if (log2 === -1) throw new MshvError('EINVAL', `MSI vectors must be 1, 2, 4, 8, 16 or 32, got ${describe(vectors)}`)
    this.vectors = vectors
    this.view.setUint16(CONTROL, ADDRESS_64 | PER_VECTOR_MASKING | (log2 << 1), true)
    this.allowWrite(CONTROL, 2, ENABLE | (0b111 << 4)) // enable, multiple message enable
    this.allowWrite(ADDRESS_LOW, 4, 0xffff_fffc)
    this.allowWrite(ADDRESS_HIGH, 4, 0xffff_ffff)
    this.allowWrite(DATA, 2, 0xffff)
    this.allowWrite(MASK, 4, vectors === 32 ? 0xffff_ffff : (1 << vectors) - 1)
  }

  /** Whether the guest enabled MSI. */
  get enabled(): boolean {
    return (this.view.getUint16(CONTROL, true) & ENABLE) !== 0
  }

  /** The vectors the guest granted (`2^MME`, at most what the function asked for). */
  get granted(): number {
    return Math.min(this.vectors, 1 << ((this.view.getUint16(CONTROL, true) >> 4) & 7))
  }

  /** Signals `vector` (0 .. granted - 1): sent, or left pending while it is masked. */
  notify(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.granted) throw new MshvError('EINVAL', `MSI vector must be in 0..${this.granted - 1}, got ${describe(vector)}`)
    if (((this.view.getUint32(MASK, true) >>> vector) & 1) !== 0) {
      this.pendingBits |= 1 << vector
      this.syncPending()
      return
    }
    this.send(vector)
  }

  private send(vector: number): void {
    const address = (BigInt(this.view.getUint32(ADDRESS_HIGH, true)) << 32n) | BigInt(this.view.getUint32(ADDRESS_LOW, true))
    const data = this.view.getUint16(DATA, true)
    const low = this.granted - 1
    this.signal(address, (data & ~low) | vector)
  }

  private syncPending(): void {
    this.view.setUint32(PENDING, this.pendingBits >>> 0, true)
  }

  protected override written(): void {
    if (!this.enabled) return
    const mask = this.view.getUint32(MASK, true)
    for (let v = 0; v < this.granted; v++) {
      if (((this.pendingBits >>> v) & 1) !== 0 && ((mask >>> v) & 1) === 0) {
        this.pendingBits &= ~(1 << v)
        this.send(v)
      }
    }
    this.syncPending()
  }

  /** The registers the guest wrote and the vectors pending. */
  save(): MsiState {
    const control = this.view.getUint16(CONTROL, true)
    return {
      version: 1,
      enabled: (control & ENABLE) !== 0,
      multipleMessageEnable: (control >> 4) & 7,
      addressLow: this.view.getUint32(ADDRESS_LOW, true),
      addressHigh: this.view.getUint32(ADDRESS_HIGH, true),
      data: this.view.getUint16(DATA, true),
      mask: this.view.getUint32(MASK, true),
      pending: this.pendingBits >>> 0,
    } satisfies MsiState
  }

  /** Restores what {@link save} gave, sending nothing; `EINVAL` (and nothing changed) for a bad state. */
  restore(state: MsiState): void {
    const vectors = this.vectors === 32 ? 0xffff_ffff : (1 << this.vectors) - 1
    const within = (mask: number): Check<number> => (what, v) => {
      const x = u32(what, v)
      if ((x & ~mask) !== 0) throw invalid(what, `bits within ${hex(mask)}`, x)
      return x
    }
    const { version: _, enabled, multipleMessageEnable, addressLow, addressHigh, data, mask, pending, ...rest } = parseState<MsiState>('msi.restore: state', state, {
      version: version(1),
      enabled: bool,
      multipleMessageEnable: int(0, 7),
      addressLow: within(0xffff_fffc),
      addressHigh: u32,
      data: u16,
      mask: within(vectors),
      pending: within(vectors),
    })
    noneLeft(rest)
    const v = this.view
    v.setUint16(CONTROL, (v.getUint16(CONTROL, true) & ~(ENABLE | (0b111 << 4))) | (enabled ? ENABLE : 0) | (multipleMessageEnable << 4), true)
    v.setUint32(ADDRESS_LOW, addressLow, true)
    v.setUint32(ADDRESS_HIGH, addressHigh, true)
    v.setUint16(DATA, data, true)
    v.setUint32(MASK, mask, true)
    this.pendingBits = pending | 0
    this.syncPending()
  }
}
