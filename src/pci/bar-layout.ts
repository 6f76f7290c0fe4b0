/**
 * A BAR holding several register blocks (a virtio function's common, ISR, notify and
 * device-configuration structures; an MSI-X table and its PBA): each access goes to the
 * block it falls in, with the offset within that block.
 * @module
 */
import type { AccessContext, WindowHandler } from '../bus.js'
import { MshvError, hex } from '../errors.js'

interface Block {
  readonly offset: number
  readonly size: number
  readonly handler: WindowHandler
  readonly name: string
}

/** Register blocks at fixed offsets in one BAR; bytes no block claims read as zero and drop writes. */
export class BarLayout implements WindowHandler {
  private readonly blocks: Block[] = []

  /** Places `handler` at `[offset, offset + size)`; blocks may not overlap. */
  add(offset: number, size: number, handler: WindowHandler, name: string): this {
    const clash = this.blocks.find((b) => offset < b.offset + b.size && b.offset < offset + size)
    if (clash) throw new MshvError('EOVERLAP', `${name} at ${hex(offset)} (+${hex(size)}) overlaps ${clash.name} at ${hex(clash.offset)}`)
    this.blocks.push({ offset, size, handler, name })
    return this
  }

  private find(offset: number, size: number): Block | undefined {
    for (const b of this.blocks) if (offset >= b.offset && offset + size <= b.offset + b.size) return b
    return undefined
  }

  read(offset: number, size: number, ctx: AccessContext): bigint {
    const b = this.find(offset, size)
    return b ? b.handler.read(offset - b.offset, size, ctx) : 0n
  }

  write(offset: number, size: number, value: bigint, ctx: AccessContext): void {
    const b = this.find(offset, size)
    b?.handler.write(offset - b.offset, size, value, ctx)
  }
}
