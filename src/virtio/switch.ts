/**
 * An Ethernet switch inside the process: the network cards of several VMs of one
 * process on one segment, nothing outside it reached. A learning switch (IEEE 802.1D,
 * 7.8): it learns which port each source address sits behind, sends a unicast frame to
 * that port only, and floods broadcasts, multicasts and unknown destinations.
 * @module
 */
import { MshvError, describe } from '../errors.js'
import { formatMac } from './net.js'
import type { NetworkBackend } from './tap.js'

/** What a switch port is connected to: a card that sends frames and takes them. */
export interface SwitchPort {
  /** Calls `listener` for each frame the card sends; returns a function that stops it. */
  onPacket(listener: (frame: Uint8Array) => void): () => void
  /** Gives the card a frame; false when it dropped it. */
  send(frame: Uint8Array): boolean
}

/** Counters of a {@link NetworkSwitch}. */
export interface SwitchStats {
  /** Frames that came in. */
  frames: number
  /** Frames sent to every other port. */
  flooded: number
  /** Frames a port refused (its backlog was full). */
  dropped: number
}

/** A learning Ethernet switch between in-process cards. */
export class NetworkSwitch implements NetworkBackend {
  private readonly ports: SwitchPort[] = []
  private readonly detach = new Map<SwitchPort, () => void>()
  /** Source address (as text) to the port it was last seen on. */
  private readonly table = new Map<string, SwitchPort>()
  readonly stats: SwitchStats = { frames: 0, flooded: 0, dropped: 0 }

  /** Plugs `port` (a {@link VirtioNet}) into the switch. */
  connect(port: SwitchPort): void {
    if (typeof port !== 'object' || port === null || typeof port.onPacket !== 'function' || typeof port.send !== 'function') {
      throw new MshvError('EINVAL', `NetworkSwitch.connect takes a card with onPacket() and send(), got ${describe(port)}`)
    }
    if (this.detach.has(port)) throw new MshvError('EBUSY', 'that card is already connected to this switch')
    this.ports.push(port)
    this.detach.set(port, port.onPacket((frame) => this.forward(port, frame)))
  }

  /** Unplugs `port`; frames no longer reach it. */
  disconnect(port: SwitchPort): void {
    const off = this.detach.get(port)
    if (!off) throw new MshvError('ENOTMAPPED', 'that card is not connected to this switch')
    off()
    this.detach.delete(port)
    this.ports.splice(this.ports.indexOf(port), 1)
    for (const [mac, p] of this.table) if (p === port) this.table.delete(mac)
  }

  /** The learned addresses and their ports' indexes, for listings. */
  addresses(): { mac: string; port: number }[] {
    return [...this.table].map(([mac, p]) => ({ mac, port: this.ports.indexOf(p) }))
  }

  private forward(from: SwitchPort, frame: Uint8Array): void {
    if (frame.length < 14) return
    this.stats.frames++
    const src = frame.subarray(6, 12)
    // A group address (the I/G bit) is never a source: only unicast sources are learned.
    if (((src[0] as number) & 1) === 0) this.table.set(formatMac(src), from)
    const dst = frame.subarray(0, 6)
    const to = ((dst[0] as number) & 1) === 0 ? this.table.get(formatMac(dst)) : undefined
    if (to !== undefined) {
      if (to !== from && !to.send(frame)) this.stats.dropped++
      return
    }
    this.stats.flooded++
    for (const p of this.ports) if (p !== from && !p.send(frame)) this.stats.dropped++
  }
}
