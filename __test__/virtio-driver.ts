/**
 * A virtio driver written from the VIRTIO 1.2 spec for the tests: it finds the
 * transport's capabilities through PCI configuration space (mechanism #1, as a guest
 * does), negotiates features (3.1.1), sets up split queues in guest RAM and submits
 * descriptor chains, so the device side is exercised without a guest kernel.
 */
import { createVm, addPcPlatform, PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA, VirtioPci, type Vm, type VirtioDevice, type PcPlatform, type AccessContext } from '../index.js'

/** Accesses from the test reach no vCPU. */
export const CTX = undefined as unknown as AccessContext

export const RAM = 16 << 20

/** A sim VM with RAM, the PC platform (PCI bus 0) and `devices` on virtio-pci. */
export function virtioMachine(devices: readonly VirtioDevice[]): { vm: Vm; pc: PcPlatform; transports: VirtioPci[]; msis: { address: bigint; data: number }[] } {
  const vm = createVm({ backend: 'sim' })
  vm.addRam(0, RAM)
  const pc = addPcPlatform(vm)
  const msis: { address: bigint; data: number }[] = []
  // Record MSIs instead of delivering them: there is no vCPU to take them.
  ;(vm as unknown as { deviceMsi: (a: bigint, d: number) => void }).deviceMsi = (address, data) => {
    msis.push({ address, data })
  }
  const transports = devices.map((d) => new VirtioPci(pc.pci as NonNullable<PcPlatform['pci']>, d))
  return { vm, pc, transports, msis }
}

/** Configuration space through ports 0xCF8/0xCFC, as a guest reaches it. */
export class ConfigPorts {
  constructor(
    private readonly vm: Vm,
    private readonly slot: number,
  ) {}
  private select(offset: number): void {
    this.vm.bus.write(PCI_CONFIG_ADDRESS, 4, (0x8000_0000 | (this.slot << 11) | (offset & 0xfc)) >>> 0, CTX)
  }
  read(offset: number, size: 1 | 2 | 4): number {
    this.select(offset)
    return this.vm.bus.read(PCI_CONFIG_DATA + (offset & 3), size, CTX) >>> 0
  }
  write(offset: number, size: 1 | 2 | 4, value: number): void {
    this.select(offset)
    this.vm.bus.write(PCI_CONFIG_DATA + (offset & 3), size, value, CTX)
  }
  /** The capability list: (id, offset) pairs, walked from 0x34 (PCI 3.0, 6.7). */
  capabilities(): { id: number; at: number }[] {
    const out: { id: number; at: number }[] = []
    for (let at = this.read(0x34, 1); at !== 0 && out.length < 48; at = this.read(at + 1, 1)) out.push({ id: this.read(at, 1), at })
    return out
  }
}

/** Where one virtio structure is, from its vendor capability (4.1.4). */
interface Structure {
  bar: number
  offset: number
  length: number
}

/** A queue the driver set up: its rings in guest RAM. */
export interface DriverQueue {
  index: number
  size: number
  desc: number
  avail: number
  used: number
  nextDesc: number
  availIdx: number
  lastUsed: number
}

/** The driver. */
export class VirtioDriver {
  readonly config: ConfigPorts
  private readonly structures = new Map<number, Structure>()
  private notifyMultiplier = 0
  private nextRam = 0x10_0000

  constructor(
    readonly vm: Vm,
    slot: number,
  ) {
    this.config = new ConfigPorts(vm, slot)
    for (const { id, at } of this.config.capabilities()) {
      if (id !== 0x09) continue
      const type = this.config.read(at + 3, 1)
      this.structures.set(type, { bar: this.config.read(at + 4, 1), offset: this.config.read(at + 8, 4), length: this.config.read(at + 12, 4) })
      if (type === 2) this.notifyMultiplier = this.config.read(at + 16, 4)
    }
    // Bus mastering, as Linux's pci_set_master does before the device may do DMA.
    this.config.write(0x04, 2, this.config.read(0x04, 2) | 0x4)
  }

  /** The BAR's address (64-bit BARs read in two halves). */
  bar(index: number): bigint {
    const low = this.config.read(0x10 + 4 * index, 4)
    const base = BigInt((low & ~0xf) >>> 0)
    return (low & 0b110) === 0b100 ? base | (BigInt(this.config.read(0x14 + 4 * index, 4)) << 32n) : base
  }

  private at(type: number, offset: number): bigint {
    const s = this.structures.get(type)
    if (!s) throw new Error(`no virtio structure of type ${type}`)
    return this.bar(s.bar) + BigInt(s.offset + offset)
  }

  /** Reads the common configuration (4.1.4.3). */
  common(offset: number, size: 1 | 2 | 4): number {
    return Number(this.vm.bus.mmioRead(this.at(1, offset), size, CTX))
  }
  setCommon(offset: number, size: 1 | 2 | 4, value: number): void {
    this.vm.bus.mmioWrite(this.at(1, offset), size, BigInt(value >>> 0), CTX)
  }
  deviceConfig(offset: number, size: 1 | 2 | 4): number {
    return Number(this.vm.bus.mmioRead(this.at(4, offset), size, CTX))
  }
  isr(): number {
    return Number(this.vm.bus.mmioRead(this.at(3, 0), 1, CTX))
  }
  get status(): number {
    return this.common(20, 1)
  }

  /** The device's 64 feature bits. */
  deviceFeatures(): bigint {
    this.setCommon(0, 4, 0)
    const low = this.common(4, 4)
    this.setCommon(0, 4, 1)
    return BigInt(low) | (BigInt(this.common(4, 4)) << 32n)
  }

  /** 3.1.1 up to FEATURES_OK with `features`; returns whether the device kept FEATURES_OK. */
  negotiate(features: bigint): boolean {
    this.setCommon(20, 1, 0)
    this.setCommon(20, 1, 1)
    this.setCommon(20, 1, 1 | 2)
    this.setCommon(8, 4, 0)
    this.setCommon(12, 4, Number(features & 0xffff_ffffn))
    this.setCommon(8, 4, 1)
    this.setCommon(12, 4, Number(features >> 32n))
    this.setCommon(20, 1, 1 | 2 | 8)
    return (this.status & 8) !== 0
  }

  /** Guest RAM for rings and buffers, from 1 MiB up. */
  alloc(bytes: number, align = 16): number {
    this.nextRam = Math.ceil(this.nextRam / align) * align
    const at = this.nextRam
    this.nextRam += bytes
    return at
  }

  /** Sets up queue `index` with `size` entries (0: the device's maximum) and MSI-X vector `vector`. */
  setupQueue(index: number, size = 0, vector = 0xffff): DriverQueue {
    this.setCommon(22, 2, index)
    const n = size || this.common(24, 2)
    this.setCommon(24, 2, n)
    const q: DriverQueue = { index, size: n, desc: this.alloc(16 * n), avail: this.alloc(6 + 2 * n, 2), used: this.alloc(6 + 8 * n, 4), nextDesc: 0, availIdx: 0, lastUsed: 0 }
    const set64 = (off: number, v: number): void => {
      this.setCommon(off, 4, v)
      this.setCommon(off + 4, 4, 0)
    }
    set64(32, q.desc)
    set64(40, q.avail)
    set64(48, q.used)
    this.setCommon(26, 2, vector)
    this.setCommon(28, 2, 1)
    return q
  }

  /** DRIVER_OK. */
  ready(): void {
    this.setCommon(20, 1, this.status | 4)
  }

  /** Writes descriptor `i` of `table` (an address in RAM). */
  writeDescriptor(table: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const d = new DataView(new ArrayBuffer(16))
    d.setBigUint64(0, BigInt(addr), true)
    d.setUint32(8, len, true)
    d.setUint16(12, flags, true)
    d.setUint16(14, next, true)
    this.vm.write(table + 16 * i, new Uint8Array(d.buffer))
  }

  /**
   * Puts a chain of `buffers` (readable first) in `q`'s descriptor table and makes it
   * available; returns its head. `raw` skips nothing: the caller wrote the descriptors.
   */
  submit(q: DriverQueue, buffers: readonly { addr: number; len: number; write?: boolean }[]): number {
    const head = q.nextDesc
    buffers.forEach((b, k) => {
      const i = (head + k) % q.size
      const last = k === buffers.length - 1
      this.writeDescriptor(q.desc, i, b.addr, b.len, (last ? 0 : 1) | (b.write ? 2 : 0), (i + 1) % q.size)
    })
    q.nextDesc = (head + buffers.length) % q.size
    this.makeAvailable(q, head)
    return head
  }

  /** Puts `head` in the available ring and moves its index. */
  makeAvailable(q: DriverQueue, head: number): void {
    const slot = new DataView(new ArrayBuffer(2))
    slot.setUint16(0, head, true)
    this.vm.write(q.avail + 4 + 2 * (q.availIdx % q.size), new Uint8Array(slot.buffer))
    q.availIdx = (q.availIdx + 1) & 0xffff
    slot.setUint16(0, q.availIdx, true)
    this.vm.write(q.avail + 2, new Uint8Array(slot.buffer))
  }

  /** Kicks `q` (4.1.4.4: the queue's notify address). */
  notify(q: DriverQueue): void {
    this.setCommon(22, 2, q.index)
    const off = this.common(30, 2)
    this.vm.bus.mmioWrite(this.at(2, off * this.notifyMultiplier), 2, BigInt(q.index), CTX)
  }

  /** The used entries the device added since the last call: [id, len]. */
  used(q: DriverQueue): [number, number][] {
    const v = new DataView(this.vm.read(q.used, 6 + 8 * q.size).buffer)
    const idx = v.getUint16(2, true)
    const out: [number, number][] = []
    while (q.lastUsed !== idx) {
      const at = 4 + 8 * (q.lastUsed % q.size)
      out.push([v.getUint32(at, true), v.getUint32(at + 4, true)])
      q.lastUsed = (q.lastUsed + 1) & 0xffff
    }
    return out
  }
}
