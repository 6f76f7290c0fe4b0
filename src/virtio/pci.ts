/**
 * The virtio PCI transport, modern (VIRTIO 1.2, 4.1): a PCI function whose vendor
 * capabilities point at the common configuration, notification, ISR and device
 * configuration structures in a BAR (4.1.4), with the PCI configuration access
 * capability (4.1.4.9) and MSI-X (4.1.5.1.2); feature negotiation and status (2.1,
 * 2.2, 3.1), queue set-up (4.1.5.1.3), notifications (4.1.5.2) and interrupts (4.1.5.3,
 * 4.1.5.4). The layout follows QEMU's `virtio-pci` (hw/virtio/virtio-pci.c): the
 * structures in a 64-bit BAR 4, the MSI-X table and PBA in BAR 1.
 * @module
 */
import { checkFunction, invalid } from '../check.js'
import type { WindowHandler } from '../bus.js'
import { MshvError, describe } from '../errors.js'
import { BarLayout } from '../pci/bar-layout.js'
import { RegisterCapability } from '../pci/capability.js'
import { PciFunction } from '../pci/function.js'
import type { PciHost } from '../pci/host.js'
import type { GuestMemory } from '../guest-memory.js'
import { Msix, type MsixState } from '../pci/msix.js'
import type { PciFunctionState } from '../pci/function.js'
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, feature, type VirtioContext, type VirtioDevice } from './device.js'
import { Virtqueue, VirtioError, type VirtqueueState } from './queue.js'
import { bool, hex64, int, noneLeft, parseState, record, toHex64, u16, u32, u8, version, type Check, type JsonValue, type Saveable } from '../snapshot/device-state.js'

/** The PCI vendor ID of virtio devices, and the base of modern device IDs (4.1.2). */
export const VIRTIO_PCI_VENDOR = 0x1af4
export const VIRTIO_PCI_DEVICE_BASE = 0x1040
/** Device status bits (2.1). */
export const VIRTIO_STATUS_ACKNOWLEDGE = 1
export const VIRTIO_STATUS_DRIVER = 2
export const VIRTIO_STATUS_DRIVER_OK = 4
export const VIRTIO_STATUS_FEATURES_OK = 8
export const VIRTIO_STATUS_NEEDS_RESET = 64
export const VIRTIO_STATUS_FAILED = 128
/** "No MSI-X vector" (4.1.5.1.2). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff
/** Structure types of the vendor capabilities (4.1.4). */
const CAP_COMMON = 1
const CAP_NOTIFY = 2
const CAP_ISR = 3
const CAP_DEVICE = 4
const CAP_PCI_CFG = 5
/** Where each structure sits in BAR 4 (QEMU's layout: one 4 KiB page each). */
const STRUCTURES_BAR = 4
const COMMON_AT = 0x0000
const ISR_AT = 0x1000
const DEVICE_AT = 0x2000
const NOTIFY_AT = 0x3000
const STRUCTURES_SIZE = 0x4000
/** `sizeof(struct virtio_pci_common_cfg)` without the 1.2 fields this transport does not offer. */
const COMMON_LENGTH = 0x38
/** Each queue's notification address is `NOTIFY_AT + queue_notify_off * 4`. */
const NOTIFY_MULTIPLIER = 4
const MSIX_BAR = 1
const ISR_QUEUE = 1
const ISR_CONFIG = 2
/** The features every device gets from the transport. */
const TRANSPORT_FEATURES = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_INDIRECT_DESC) | feature(VIRTIO_F_EVENT_IDX)

/** Class codes, as QEMU gives them (hw/virtio/virtio-*-pci.c). */
const CLASS_BY_TYPE: Readonly<Record<number, number>> = {
  1: 0x02_00_00, // network, Ethernet
  2: 0x01_00_00, // mass storage, SCSI (QEMU's virtio-blk-pci)
  3: 0x07_80_00, // communication, other
  4: 0x00_ff_00, // unclassified
}

/** The queue address a common-configuration offset holds half of: queue_desc (32), queue_driver (40), queue_device (48). */
function ringField(offset: number): 'desc' | 'driver' | 'device' | undefined {
  return offset >= 32 && offset < 56 && offset % 4 === 0 ? (['desc', 'driver', 'device'] as const)[(offset - 32) >> 3] : undefined
}

/** A vendor-specific capability pointing at a structure (4.1.4, `struct virtio_pci_cap`). */
class VirtioCapability extends RegisterCapability {
  constructor(type: number, bar: number, offset: number, length: number, extra = 0) {
    super(0x09, 16 + extra)
    this.bytes[2] = 16 + extra // cap_len
    this.bytes[3] = type
    this.bytes[4] = bar
    this.view.setUint32(8, offset, true)
    this.view.setUint32(12, length, true)
  }
}

/** Counters of a {@link VirtioPci}. */
export interface VirtioPciStats {
  /** Queue notifications (kicks) from the driver. */
  notifies: number
  /** Kicks ignored: the driver had not set DRIVER_OK, the queue was off, or bus mastering was disabled. */
  ignoredNotifies: number
  /** Times the device found the driver's structures broken and asked for a reset. */
  deviceErrors: number
}

/** The PCI configuration access capability's fields (4.1.4.9): the access it names and its data. */
export interface VirtioPciCfgState {
  bar: number
  offset: number
  length: number
  data: number
}

/**
 * A virtio device on PCI, saved ({@link VirtioPci.save}): the transport's registers,
 * its queues, MSI-X, PCI function and configuration access capability, and the
 * device's own state.
 */
export interface VirtioPciState {
  version: 1
  /** The feature words the driver selected to read and to write. */
  deviceFeatureSelect: number
  driverFeatureSelect: number
  /** The features the driver wrote, and those accepted at FEATURES_OK, as 0x hex. */
  driverFeatures: string
  negotiated: string
  /** The device status byte (2.1) and the configuration generation. */
  status: number
  generation: number
  queueSelect: number
  /** The configuration change's MSI-X vector (0xFFFF: none). */
  configVector: number
  /** The ISR status bits (queue 1, configuration 2), read to clear. */
  isr: number
  /** Whether the device was activated (DRIVER_OK after FEATURES_OK) and not reset since. */
  active: boolean
  queues: VirtqueueState[]
  msix: MsixState
  pci: PciFunctionState
  pciCfg: VirtioPciCfgState
  /** The device's own state ({@link VirtioDevice.save}), or null for a device without. */
  device: JsonValue | null
}

/** A virtio device on PCI. */
export class VirtioPci implements Saveable<VirtioPciState> {
  /** The PCI function the guest sees. */
  readonly pci: PciFunction
  readonly msix: Msix
  readonly queues: readonly Virtqueue[]
  readonly stats: VirtioPciStats = { notifies: 0, ignoredNotifies: 0, deviceErrors: 0 }
  /** The last driver error that set DEVICE_NEEDS_RESET. */
  lastError: string | undefined
  private readonly offered: bigint
  private deviceFeatureSelect = 0
  private driverFeatureSelect = 0
  private driverFeatures = 0n
  private negotiated = 0n
  private status = 0
  private generation = 0
  private queueSelect = 0
  private configVector = VIRTIO_MSI_NO_VECTOR
  private isr = 0
  private active = false
  private readonly pciCfg: PciCfgCapability
  private readonly memory: GuestMemory

  constructor(
    host: PciHost,
    /** The device behind the transport. */
    readonly device: VirtioDevice,
  ) {
    if (typeof device !== 'object' || device === null || typeof device.notify !== 'function') throw new MshvError('EINVAL', `VirtioPci takes a VirtioDevice, got ${describe(device)}`)
    const vm = host.vm
    const memory = vm.memory
    this.memory = memory
    this.queues = device.queueSizes.map((size, i) => new Virtqueue(i, size, memory))
    this.offered = device.features | TRANSPORT_FEATURES
    const vectors = this.queues.length + 1
    this.msix = new Msix({ vectors, tableBar: MSIX_BAR, tableOffset: 0, pbaBar: MSIX_BAR, pbaOffset: 0x800, signal: (a, d) => this.pci.sendMsi(a, d) }) // through the bus's interrupt remapping, if it has an IOMMU
    // Structures take 1, 2 and 4-byte accesses (4.1.3.1); an 8-byte one is two 4-byte ones.
    const blocks: StructureBlock[] = [
      { at: COMMON_AT, size: COMMON_LENGTH, read: (o, s) => this.readCommon(o, s), write: (o, s, v) => this.writeCommon(o, s, v) },
      { at: ISR_AT, size: 4, read: (o) => (o === 0 ? this.readIsr() : 0), write: () => {} },
      { at: NOTIFY_AT, size: this.queues.length * NOTIFY_MULTIPLIER, read: () => 0, write: (o) => this.kick(Math.floor(o / NOTIFY_MULTIPLIER)) },
    ]
    if (device.configSize > 0) {
      blocks.push({ at: DEVICE_AT, size: device.configSize, read: (o, s) => device.readConfig(o, s), write: (o, s, v) => device.writeConfig?.(o, s, v) })
    }
    const structures = new Structures(blocks)
    const msixBar = new BarLayout().add(0, this.msix.tableSize, this.msix.tableHandler, 'MSI-X table').add(0x800, this.msix.pbaSize, this.msix.pbaHandler, 'MSI-X PBA')
    this.pciCfg = new PciCfgCapability(structures)
    const notify = new VirtioCapability(CAP_NOTIFY, STRUCTURES_BAR, NOTIFY_AT, Math.max(this.queues.length * NOTIFY_MULTIPLIER, 4), 4)
    notify.bytes.set([NOTIFY_MULTIPLIER, 0, 0, 0], 16)
    const caps = [
      this.msix,
      new VirtioCapability(CAP_COMMON, STRUCTURES_BAR, COMMON_AT, COMMON_LENGTH),
      notify,
      new VirtioCapability(CAP_ISR, STRUCTURES_BAR, ISR_AT, 1),
      ...(device.configSize > 0 ? [new VirtioCapability(CAP_DEVICE, STRUCTURES_BAR, DEVICE_AT, device.configSize)] : []),
      this.pciCfg,
    ]
    const id = VIRTIO_PCI_DEVICE_BASE + device.type
    this.pci = new PciFunction({
      name: `virtio-${device.name}`,
      vendorId: VIRTIO_PCI_VENDOR,
      deviceId: id,
      // Revision 1 and a subsystem ID of 0x40 or more mark a non-transitional device (4.1.2.1); 0x1100 is QEMU's.
      revision: 1,
      subsystemVendorId: VIRTIO_PCI_VENDOR,
      subsystemId: 0x1100,
      classCode: CLASS_BY_TYPE[device.type] ?? 0x00_ff_00,
      bars: [undefined, { kind: 'mmio32', size: 0x1000, handler: msixBar }, undefined, undefined, { kind: 'mmio64', size: STRUCTURES_SIZE, handler: structures }],
      capabilities: caps,
    })
    host.add(this.pci)
  }

  /** The features the driver accepted (0 until FEATURES_OK). */
  get features(): bigint {
    return this.negotiated
  }

  /** The device status byte (2.1). */
  get deviceStatus(): number {
    return this.status
  }

  private get selected(): Virtqueue | undefined {
    return this.queues[this.queueSelect]
  }

  private readCommon(offset: number, size: number): number {
    const q = this.selected
    switch (offset) {
      case 0:
        return this.deviceFeatureSelect
      case 4:
        return this.deviceFeatureSelect < 2 ? Number((this.offered >> BigInt(32 * this.deviceFeatureSelect)) & 0xffff_ffffn) : 0
      case 8:
        return this.driverFeatureSelect
      case 12:
        return this.driverFeatureSelect < 2 ? Number((this.driverFeatures >> BigInt(32 * this.driverFeatureSelect)) & 0xffff_ffffn) : 0
      case 16:
        return this.configVector
      case 18:
        return this.queues.length
      case 20:
        return size === 1 ? this.status : this.status | (this.generation << 8)
      case 21:
        return this.generation
      case 22:
        return this.queueSelect
      // A queue_select past the queues reads a queue_size of 0 (4.1.4.3.1).
      case 24:
        return q?.size ?? 0
      case 26:
        return q?.msixVector ?? VIRTIO_MSI_NO_VECTOR
      case 28:
        return q?.enabled ? 1 : 0
      case 30:
        return q ? q.index : 0
      default: {
        const field = ringField(offset)
        if (!q || !field) return 0
        const v = q[field]
        return (offset & 4) === 0 ? v % 2 ** 32 : Math.floor(v / 2 ** 32)
      }
    }
  }

  private writeCommon(offset: number, _size: number, value: number): void {
    const q = this.selected
    const v = value >>> 0
    switch (offset) {
      case 0:
        this.deviceFeatureSelect = v
        return
      case 8:
        this.driverFeatureSelect = v
        return
      case 12:
        // Features are fixed once FEATURES_OK is set (3.1.1 step 5).
        if (this.driverFeatureSelect < 2 && (this.status & VIRTIO_STATUS_FEATURES_OK) === 0) {
          const shift = BigInt(32 * this.driverFeatureSelect)
          this.driverFeatures = (this.driverFeatures & ~(0xffff_ffffn << shift)) | (BigInt(v) << shift)
        }
        return
      case 16:
        this.configVector = this.vectorOrNone(v & 0xffff)
        return
      case 20:
        this.writeStatus(v & 0xff)
        return
      case 22:
        this.queueSelect = v & 0xffff
        return
      case 24:
        if (q && !q.enabled) q.size = v & 0xffff
        return
      case 26:
        if (q) q.msixVector = this.vectorOrNone(v & 0xffff)
        return
      case 28:
        // Only 1 may be written (4.1.4.3.2); the queue's set-up is checked now.
        if (q && (v & 1) === 1 && !q.enabled) this.guard(() => {
          q.validate()
          q.enabled = true
        })
        return
      default: {
        const field = ringField(offset)
        if (!q || !field || q.enabled) return
        const old = q[field]
        // An address past 2^53 is no longer exact, and no guest RAM is there: validate() refuses it.
        q[field] = (offset & 4) === 0 ? Math.floor(old / 2 ** 32) * 2 ** 32 + v : v * 2 ** 32 + (old % 2 ** 32)
      }
    }
  }

  /** A vector the table has, else NO_VECTOR (the driver reads that back as "refused", 4.1.5.1.2). */
  private vectorOrNone(v: number): number {
    return v < this.msix.vectors ? v : VIRTIO_MSI_NO_VECTOR
  }

  private writeStatus(v: number): void {
    if (v === 0) {
      this.reset()
      return
    }
    const old = this.status
    let next = v | (old & VIRTIO_STATUS_NEEDS_RESET)
    if ((v & VIRTIO_STATUS_FEATURES_OK) !== 0 && (old & VIRTIO_STATUS_FEATURES_OK) === 0) {
      // The device refuses features it did not offer, and a driver without VERSION_1 (2.2.1, 6.1).
      const ok = (this.driverFeatures & ~this.offered) === 0n && (this.driverFeatures & feature(VIRTIO_F_VERSION_1)) !== 0n
      if (ok) this.negotiated = this.driverFeatures
      else next &= ~VIRTIO_STATUS_FEATURES_OK
    }
    this.status = next
    if ((next & VIRTIO_STATUS_DRIVER_OK) !== 0 && (old & VIRTIO_STATUS_DRIVER_OK) === 0 && (next & VIRTIO_STATUS_FEATURES_OK) !== 0) this.activate()
  }

  private activate(): void {
    const indirect = (this.negotiated & feature(VIRTIO_F_INDIRECT_DESC)) !== 0n
    const eventIdx = (this.negotiated & feature(VIRTIO_F_EVENT_IDX)) !== 0n
    for (const q of this.queues) {
      q.indirect = indirect
      q.eventIdx = eventIdx
    }
    this.active = true
    const context = this.context(this.negotiated)
    this.guard(() => this.device.activate(context))
  }

  /** What the active device reaches of its transport, `features` negotiated. */
  private context(features: bigint): VirtioContext {
    return {
      memory: this.memory,
      features,
      queues: this.queues,
      usedBuffers: (q) => {
        if (this.active && q.needsInterrupt()) this.interrupt(q.msixVector, ISR_QUEUE)
      },
      configChanged: () => this.configChanged(),
      guard: (f) => this.guard(f),
    }
  }

  /** Back to the reset state (2.1.2 and 4.1.4.3.2): the device forgets its queues and the driver's features. */
  reset(): void {
    if (this.active) this.device.reset()
    this.active = false
    this.status = 0
    this.driverFeatures = 0n
    this.negotiated = 0n
    this.deviceFeatureSelect = this.driverFeatureSelect = 0
    this.queueSelect = 0
    this.configVector = VIRTIO_MSI_NO_VECTOR
    this.isr = 0
    this.pci.setIntx(false)
    for (const q of this.queues) q.reset()
  }

  /** The driver kicked queue `index`. */
  private kick(index: number): void {
    const q = this.queues[index]
    if (!q || !this.active || !q.enabled || !this.pci.busMaster || (this.status & VIRTIO_STATUS_NEEDS_RESET) !== 0) {
      this.stats.ignoredNotifies++
      return
    }
    this.stats.notifies++
    this.guard(() => this.device.notify(q))
  }

  /** Runs `f`; a {@link VirtioError} (the driver's structures are broken) sets DEVICE_NEEDS_RESET and tells the driver (2.1.2). */
  guard(f: () => void): void {
    checkFunction('guard: f', f)
    try {
      f()
    } catch (e) {
      if (!(e instanceof VirtioError)) throw e
      this.stats.deviceErrors++
      this.lastError = e.message
      if ((this.status & VIRTIO_STATUS_DRIVER_OK) !== 0) {
        this.status |= VIRTIO_STATUS_NEEDS_RESET
        this.configChanged()
      } else this.status |= VIRTIO_STATUS_NEEDS_RESET
    }
  }

  private configChanged(): void {
    this.generation = (this.generation + 1) & 0xff
    this.interrupt(this.configVector, ISR_CONFIG)
  }

  /** An interrupt: the MSI-X vector when MSI-X is on (4.1.5.4), else the ISR bit and INTx (4.1.5.3). */
  private interrupt(vector: number, isrBit: number): void {
    if (this.msix.enabled) {
      if (isrBit === ISR_CONFIG) this.isr |= ISR_CONFIG
      if (vector !== VIRTIO_MSI_NO_VECTOR) this.msix.notify(vector)
      return
    }
    this.isr |= isrBit
    this.pci.setIntx(true)
  }

  /** Reading the ISR clears it and deasserts INTx (4.1.4.5). */
  private readIsr(): number {
    const v = this.isr
    this.isr = 0
    this.pci.setIntx(false)
    return v
  }

  /** The transport, its queues, MSI-X and PCI function, and the device's own state. */
  save(): VirtioPciState {
    return {
      version: 1,
      deviceFeatureSelect: this.deviceFeatureSelect,
      driverFeatureSelect: this.driverFeatureSelect,
      driverFeatures: toHex64(this.driverFeatures),
      negotiated: toHex64(this.negotiated),
      status: this.status,
      generation: this.generation,
      queueSelect: this.queueSelect,
      configVector: this.configVector,
      isr: this.isr,
      active: this.active,
      queues: this.queues.map((q) => q.save()),
      msix: this.msix.save(),
      pci: this.pci.save(),
      pciCfg: this.pciCfg.save(),
      device: this.device.save?.() ?? null,
    } satisfies VirtioPciState
  }

  /**
   * Restores what {@link save} gave into a transport made the same way (the same
   * device, queues and host): the device active again if it was, with no queue touched
   * and no interrupt sent; `EINVAL` (and nothing changed) for a bad state. The device's
   * backend (a disk, a TAP) is whatever it was constructed with.
   */
  restore(state: VirtioPciState): void {
    const vector: Check<number> = (what, v) => {
      const x = u16(what, v)
      if (x >= this.msix.vectors && x !== VIRTIO_MSI_NO_VECTOR) throw invalid(what, `an MSI-X vector below ${this.msix.vectors} or 0xffff (none)`, x)
      return x
    }
    const queueChecks = this.queues.map((q) => q.stateCheck())
    const { version: _, deviceFeatureSelect, driverFeatureSelect, driverFeatures, negotiated, status, generation, queueSelect, configVector, isr, active, queues, msix, pci, pciCfg, device, ...rest } = parseState<VirtioPciState>('virtioPci.restore: state', state, {
      version: version(1),
      deviceFeatureSelect: u32,
      driverFeatureSelect: u32,
      driverFeatures: hex64(),
      negotiated: (what, v) => {
        const n = hex64()(what, v)
        if ((BigInt(n) & ~this.offered) !== 0n) throw invalid(what, `features this device offers (within ${toHex64(this.offered)})`, n)
        return n
      },
      status: u8,
      generation: u8,
      queueSelect: u16,
      configVector: vector,
      isr: int(0, ISR_QUEUE | ISR_CONFIG),
      active: bool,
      queues: (what, v) => {
        if (!Array.isArray(v) || v.length !== this.queues.length) throw invalid(what, `an array of ${this.queues.length} queues`, v)
        return v.map((q: unknown, i) => {
          const s = (queueChecks[i] as Check<VirtqueueState>)(`${what}[${i}]`, q)
          vector(`${what}[${i}].msixVector`, s.msixVector)
          return s
        })
      },
      msix: this.msix.stateCheck(),
      pci: this.pci.stateCheck(),
      pciCfg: PCI_CFG_STATE,
      device: (what, v) => {
        if (v !== null && typeof this.device.restore !== 'function') throw invalid(what, `null (virtio-${this.device.name} has no state to restore)`, v)
        return v as JsonValue | null
      },
    })
    noneLeft(rest)
    // The device first: its own check may refuse, and nothing else has changed yet.
    const context = active ? this.context(BigInt(negotiated)) : undefined
    if (typeof this.device.restore === 'function') this.device.restore(device, context)
    else {
      if (this.active) this.device.reset()
      if (context) this.device.activate(context)
    }
    this.negotiated = BigInt(negotiated)
    this.deviceFeatureSelect = deviceFeatureSelect
    this.driverFeatureSelect = driverFeatureSelect
    this.driverFeatures = BigInt(driverFeatures)
    this.status = status
    this.generation = generation
    this.queueSelect = queueSelect
    this.configVector = configVector
    this.isr = isr
    this.active = active
    queues.forEach((q, i) => this.queues[i]?.restore(q))
    this.msix.restore(msix)
    this.pci.restore(pci)
    this.pciCfg.restore(pciCfg)
  }
}

const PCI_CFG_STATE: Check<VirtioPciCfgState> = record<VirtioPciCfgState>({ bar: u8, offset: u32, length: u32, data: u32 })

/** One structure in BAR 4: where it is and its accessors (offsets within it). */
interface StructureBlock {
  readonly at: number
  readonly size: number
  read(offset: number, size: number): number
  write(offset: number, size: number, value: number): void
}

/** BAR 4: the structures, reached by the guest's MMIO and by the PCI configuration access capability alike. */
class Structures implements WindowHandler {
  constructor(private readonly blocks: readonly StructureBlock[]) {}

  private find(offset: number, size: number): StructureBlock | undefined {
    for (const b of this.blocks) if (offset >= b.at && offset + size <= b.at + b.size) return b
    return undefined
  }

  /** Reads `size` (1, 2, 4) bytes; bytes no structure holds read as zero. */
  readBytes(offset: number, size: number): number {
    const b = this.find(offset, size)
    return b ? b.read(offset - b.at, size) >>> 0 : 0
  }

  /** Writes `size` (1, 2, 4) bytes; writes no structure takes are dropped. */
  writeBytes(offset: number, size: number, value: number): void {
    const b = this.find(offset, size)
    b?.write(offset - b.at, size, value)
  }

  read(offset: number, size: number): bigint {
    if (size === 8) return BigInt(this.readBytes(offset, 4)) | (BigInt(this.readBytes(offset + 4, 4)) << 32n)
    return BigInt(this.readBytes(offset, size))
  }

  write(offset: number, size: number, value: bigint): void {
    if (size === 8) {
      this.writeBytes(offset, 4, Number(value & 0xffff_ffffn))
      this.writeBytes(offset + 4, 4, Number(value >> 32n))
    } else this.writeBytes(offset, size, Number(value))
  }
}

/**
 * `struct virtio_pci_cfg_cap` (4.1.4.9): the driver picks a BAR, offset and length in
 * the capability and reads or writes `pci_cfg_data` to access the BAR through
 * configuration space.
 */
class PciCfgCapability extends VirtioCapability {
  constructor(private readonly structures: Structures) {
    super(CAP_PCI_CFG, 0, 0, 0, 4)
    this.allowWrite(4, 1, 0xff) // bar
    this.allowWrite(8, 4, 0xffff_ffff) // offset
    this.allowWrite(12, 4, 0xffff_ffff) // length
    this.allowWrite(16, 4, 0xffff_ffff) // pci_cfg_data
  }

  /** The access the capability names, if it names one this transport has (BAR 4, 1/2/4 bytes, aligned). */
  private target(): { offset: number; length: number } | undefined {
    const bar = this.bytes[4]
    const offset = this.view.getUint32(8, true)
    const length = this.view.getUint32(12, true)
    if (bar !== STRUCTURES_BAR || ![1, 2, 4].includes(length) || offset % length !== 0 || offset + length > STRUCTURES_SIZE) return undefined
    return { offset, length }
  }

  override read(offset: number, size: number): number {
    if (offset >= 16 && offset < 20) {
      const t = this.target()
      if (t && offset === 16) this.view.setUint32(16, this.structures.readBytes(t.offset, t.length), true)
    }
    return super.read(offset, size)
  }

  protected override written(offset: number): void {
    if (offset !== 16) return
    const t = this.target()
    if (t) this.structures.writeBytes(t.offset, t.length, this.view.getUint32(16, true))
  }

  /** The fields the driver wrote. */
  save(): VirtioPciCfgState {
    return { bar: this.bytes[4] ?? 0, offset: this.view.getUint32(8, true), length: this.view.getUint32(12, true), data: this.view.getUint32(16, true) } satisfies VirtioPciCfgState
  }

  /** Restores what {@link save} gave (checked by the transport), reaching into no BAR. */
  restore(state: VirtioPciCfgState): void {
    const { bar, offset, length, data, ...rest } = state
    noneLeft(rest)
    this.bytes[4] = bar
    this.view.setUint32(8, offset, true)
    this.view.setUint32(12, length, true)
    this.view.setUint32(16, data, true)
  }
}
