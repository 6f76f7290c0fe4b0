/**
 * A debug-exit port (as QEMU's isa-debug-exit): a guest write ends the run with its code.
 * @module
 */
import type { PioDevice } from '../bus.js'

/** The conventional debug-exit port. */
export const DEBUG_EXIT_PORT = 0xf4

/** Ends `vcpu.run()` with the value the guest writes. */
export class DebugExit implements PioDevice {
  /** The code of the last write, consumed by the run loop. */
  pending: number | undefined

  ioWrite(_port: number, _size: number, value: number): void {
    this.pending = value
  }
}
