/**
 * A host TAP interface as a network card's other end (Linux's tun/tap driver,
 * `Documentation/networking/tuntap.rst`): the frames the guest sends go to the host's
 * interface, the host's come to the guest. The interface is made with `IFF_TAP |
 * IFF_NO_PI` by the native binding, which reads it on a thread of its own; creating one
 * needs CAP_NET_ADMIN (root, or a network namespace of your own).
 * @module
 */
import { native } from '../native.js'
import { MshvError, coded, describe } from '../errors.js'
import type { SwitchPort } from './switch.js'

/** Counters of a {@link TapDevice}. */
export interface TapStats {
  /** Frames from the host handed to the card. */
  toGuest: number
  /** Frames from the guest written to the host. */
  toHost: number
  /** Frames dropped: the host's interface took none (down, or its queue full), or the card's backlog was full. */
  dropped: number
}

/** Where a network card can be plugged: an in-process switch, or a host TAP interface. */
export interface NetworkBackend {
  /** Connects the card `port` (a {@link VirtioNet}). */
  connect(port: SwitchPort): void
}

type NativeTap = InstanceType<typeof native.Tap>

/** A host TAP interface with one card connected to it. */
export class TapDevice implements NetworkBackend {
  private readonly tap: NativeTap
  private port: SwitchPort | undefined
  private detach: (() => void) | undefined
  readonly stats: TapStats = { toGuest: 0, toHost: 0, dropped: 0 }

  private constructor(name: string) {
    try {
      this.tap = native.Tap.open(name, (frame) => this.fromHost(frame))
    } catch (e) {
      throw coded(e)
    }
  }

  /**
   * Opens (creating it if needed) the host interface `name` (default `mshv%d`: the kernel
   * numbers it). `ENODEV` when the host has no /dev/net/tun or refuses (no CAP_NET_ADMIN).
   */
  static open(name = 'mshv%d'): TapDevice {
    if (typeof name !== 'string') throw new MshvError('EINVAL', `TapDevice.open takes an interface name, got ${describe(name)}`)
    return new TapDevice(name)
  }

  /** The interface's name on the host (`ip link show NAME`). */
  get name(): string {
    return this.tap.name
  }

  /** Frames the native reader dropped because JavaScript had not taken the ones before. */
  get readerDropped(): number {
    return this.tap.dropped
  }

  connect(port: SwitchPort): void {
    if (this.port) throw new MshvError('EBUSY', `TAP ${this.name} already has a card connected`)
    this.port = port
    this.detach = port.onPacket((frame) => {
      if (this.tap.write(Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength))) this.stats.toHost++
      else this.stats.dropped++
    })
  }

  private fromHost(frame: Uint8Array): void {
    if (!this.port) return
    if (this.port.send(frame)) this.stats.toGuest++
    else this.stats.dropped++
  }

  /** Disconnects the card and closes the interface (a TAP nobody made persistent goes away). */
  close(): void {
    this.detach?.()
    this.detach = undefined
    this.port = undefined
    this.tap.close()
  }
}
