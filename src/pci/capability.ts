/**
 * A capability whose registers are bytes with a writable mask: the common case (MSI's,
 * MSI-X's and virtio's capabilities are each a few such fields and a hook on write).
 * @module
 */
import { checkInteger } from '../check.js'
import type { PciCapability } from './function.js'

/** A capability held as its register bytes; bits outside `writable` keep their value. */
export class RegisterCapability implements PciCapability {
  /** The capability's bytes, the ID and next-pointer bytes (owned by the function) included. */
  readonly bytes: Uint8Array
  private readonly writable: Uint8Array
  protected readonly view: DataView

  constructor(
    readonly id: number,
    readonly length: number,
  ) {
    checkInteger('capability id', id, 0, 0xff)
    // A capability lives in the 256-byte configuration space, after its 64-byte header.
    checkInteger('capability length', length, 2, 192)
    this.bytes = new Uint8Array(length)
    this.writable = new Uint8Array(length)
    this.view = new DataView(this.bytes.buffer)
  }

  /** Lets the guest write the bits of `mask` in the `size` bytes at `offset`. */
  protected allowWrite(offset: number, size: number, mask: number): void {
    for (let i = 0; i < size; i++) this.writable[offset + i] = (mask >>> (i * 8)) & 0xff
  }

  read(offset: number, size: number): number {
    let v = 0
    for (let i = 0; i < size; i++) v |= (this.bytes[offset + i] ?? 0) << (i * 8)
    return v >>> 0
  }

  write(offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) {
      const m = this.writable[offset + i] ?? 0
      const at = offset + i
      this.bytes[at] = ((this.bytes[at] ?? 0) & ~m) | ((value >>> (i * 8)) & m)
    }
    this.written(offset, size)
  }

  /** Called after each guest write, with what was written. */
  protected written(_offset: number, _size: number): void {}
}
