/**
 * An MMIO test device: a bank of 64-bit registers any guest access width can read and
 * write, with a log of accesses, for experiments with MMIO exits.
 * @module
 */
import type { MmioDevice } from '../bus.js'
import { MshvError, describe } from '../errors.js'

/** One access the bank saw. */
export interface BankAccess {
  readonly kind: 'read' | 'write'
  readonly offset: number
  readonly size: number
  readonly value: bigint
}

/** A bank of `count` little-endian 64-bit registers. */
export class RegisterBank implements MmioDevice {
  private readonly bytes: Uint8Array
  private readonly view: DataView
  /** Accesses in order (bounded by `logLimit`). */
  readonly log: BankAccess[] = []

  constructor(
    readonly count = 16,
    private readonly logLimit = 1024,
  ) {
    if (!Number.isInteger(count) || count < 1 || count > 1 << 20) throw new MshvError('EINVAL', `register count must be an integer in 1..${1 << 20}, got ${describe(count)}`)
    if (!Number.isInteger(logLimit) || logLimit < 0) throw new MshvError('EINVAL', `logLimit must be an integer from 0, got ${describe(logLimit)}`)
    this.bytes = new Uint8Array(count * 8)
    this.view = new DataView(this.bytes.buffer)
  }

  /** Size of the bank in bytes (the MMIO range to register). */
  get size(): number {
    return this.bytes.length
  }

  /** Register `i`'s value. */
  get(i: number): bigint {
    return this.view.getBigUint64(this.check(i) * 8, true)
  }

  /** Sets register `i`. */
  set(i: number, value: bigint): void {
    if (typeof value !== 'bigint') throw new MshvError('EINVAL', `registerBank.set: value must be a bigint, got ${describe(value)}`)
    this.view.setBigUint64(this.check(i) * 8, BigInt.asUintN(64, value), true)
  }

  mmioRead(offset: number, size: number): bigint {
    let v = 0n
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.bytes[offset + i] ?? 0xff)
    this.record({ kind: 'read', offset, size, value: v })
    return v
  }

  mmioWrite(offset: number, size: number, value: bigint): void {
    for (let i = 0; i < size && offset + i < this.bytes.length; i++) this.bytes[offset + i] = Number((value >> BigInt(8 * i)) & 0xffn)
    this.record({ kind: 'write', offset, size, value })
  }

  private record(a: BankAccess): void {
    if (this.log.length < this.logLimit) this.log.push(a)
  }

  private check(i: number): number {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) throw new MshvError('EINVAL', `register index ${describe(i)} is outside 0..${this.count - 1}`)
    return i
  }
}
