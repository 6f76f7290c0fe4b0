/**
 * QEMU's `edu` device (hw/misc/edu.c, docs/specs/edu.rst), which kvm-unit-tests'
 * intel_iommu test drives (lib/pci-edu.c): a PCI function (1234:11e8, revision 0x10,
 * class 0xff "others") with a 1 MiB BAR 0 of registers, INTx pin A and one 64-bit MSI.
 * Its DMA engine moves up to 4 KiB between its buffer (at 0x40000 in its own address
 * space) and memory through {@link PciFunction.dma}, the package's PCI DMA path: behind
 * an IOMMU, by its requester ID. A harness device, like fw_cfg: the suite's, not the
 * package's.
 */
import { Msi, PciFunction, type GuestTimer, type PciHost } from '../../index.js'
import { MshvError } from '../../src/errors.js'

/** Its IDs (lib/pci-edu.h `PCI_VENDOR_ID_QEMU`, `PCI_DEVICE_ID_EDU`). */
export const EDU_VENDOR = 0x1234
export const EDU_DEVICE = 0x11e8
/** Interrupt status bits: a factorial done, a DMA done (edu.c `FACT_IRQ`, `DMA_IRQ`). */
const FACT_IRQ = 0x1
const DMA_IRQ = 0x100
/** Its DMA buffer in its own address space (edu.c `DMA_START`, `DMA_SIZE`). */
const DMA_START = 0x40000
const DMA_SIZE = 4096
/** Status bits (edu.c `EDU_STATUS_COMPUTING`, `EDU_STATUS_IRQFACT`). */
const STATUS_COMPUTING = 0x01
const STATUS_IRQFACT = 0x80
/** DMA command bits (edu.c): run, direction (1: to memory), raise an interrupt when done. */
const DMA_RUN = 0x1
const DMA_TO_PCI = 0x2
const DMA_IRQ_FLAG = 0x4
/** The DMA takes 100 ms of guest time (edu.c `dma_rw`: `timer_mod(..., now + 100)` in ms). */
const DMA_DELAY_NS = 100_000_000
/** Addresses past the mask are clamped (edu.c `edu_instance_init`: `dma_mask` (1 << 28) - 1). */
const DMA_MASK = 2 ** 28 - 1

/** Counters of an {@link Edu}. */
export interface EduStats {
  /** DMA transfers done. */
  dmas: number
  /** Transfers not done: out of the buffer's range (edu.c only logs these), or refused upstream (an IOMMU fault, no RAM there). */
  dmaErrors: number
}

/** The edu device, on a PCI bus. */
export class Edu {
  readonly pci: PciFunction
  readonly msi: Msi
  readonly stats: EduStats = { dmas: 0, dmaErrors: 0 }
  private addr4 = 0
  private fact = 0
  private status = 0
  private irqStatus = 0
  private readonly dma = { src: 0n, dst: 0n, cnt: 0n, cmd: 0n }
  private readonly buffer = new Uint8Array(DMA_SIZE)
  private timer: GuestTimer | undefined

  constructor(private readonly host: PciHost) {
    this.msi = new Msi(1, (address, data) => this.pci.sendMsi(address, data))
    this.pci = new PciFunction({
      name: 'edu',
      vendorId: EDU_VENDOR,
      deviceId: EDU_DEVICE,
      revision: 0x10,
      classCode: 0xff_00_00,
      interruptPin: 1,
      bars: [{ kind: 'mmio32', size: 1 << 20, handler: { read: (o, s) => this.read(o, s), write: (o, s, v) => this.write(o, s, v) } }],
      capabilities: [this.msi],
    })
  }

  /** edu.c `edu_raise_irq`: the status bits, then an MSI when enabled, else INTx asserted. */
  private raise(bits: number): void {
    this.irqStatus = (this.irqStatus | bits) >>> 0
    if (this.irqStatus === 0) return
    if (this.msi.enabled) this.msi.notify(0)
    else this.pci.setIntx(true)
  }

  /** edu.c `edu_lower_irq`. */
  private lower(bits: number): void {
    this.irqStatus = (this.irqStatus & ~bits) >>> 0
    if (this.irqStatus === 0 && !this.msi.enabled) this.pci.setIntx(false)
  }

  /** edu.c `edu_mmio_read`: 4-byte registers below 0x80, 4 or 8 bytes from 0x80; all ones otherwise. */
  private read(offset: number, size: number): bigint {
    if ((offset < 0x80 && size !== 4) || (offset >= 0x80 && size !== 4 && size !== 8)) return (1n << BigInt(size * 8)) - 1n
    switch (offset) {
      case 0x00:
        return 0x010000edn // version 1.0, 0xed
      case 0x04:
        return BigInt(this.addr4)
      case 0x08:
        return BigInt(this.fact)
      case 0x20:
        return BigInt(this.status)
      case 0x24:
        return BigInt(this.irqStatus)
      case 0x80:
        return this.dma.src
      case 0x88:
        return this.dma.dst
      case 0x90:
        return this.dma.cnt
      case 0x98:
        return this.dma.cmd
      default:
        return (1n << BigInt(size * 8)) - 1n
    }
  }

  /** edu.c `edu_mmio_write`. */
  private write(offset: number, size: number, value: bigint): void {
    if ((offset < 0x80 && size !== 4) || (offset >= 0x80 && size !== 4 && size !== 8)) return
    const v = Number(value & 0xffff_ffffn)
    const running = (this.dma.cmd & BigInt(DMA_RUN)) !== 0n
    switch (offset) {
      case 0x04:
        this.addr4 = ~v >>> 0 // the liveness check: reads back inverted
        return
      case 0x08: {
        if (this.status & STATUS_COMPUTING) return
        // QEMU computes on a thread and clears COMPUTING when done; here it is done at once.
        let r = 1
        for (let n = v; n > 0; n--) r = Math.imul(r, n) >>> 0
        this.fact = r
        if (this.status & STATUS_IRQFACT) this.raise(FACT_IRQ)
        return
      }
      case 0x20:
        this.status = v & STATUS_IRQFACT ? this.status | STATUS_IRQFACT : this.status & ~STATUS_IRQFACT
        return
      case 0x60:
        return this.raise(v)
      case 0x64:
        return this.lower(v)
      case 0x80:
        if (!running) this.dma.src = value
        return
      case 0x88:
        if (!running) this.dma.dst = value
        return
      case 0x90:
        if (!running) this.dma.cnt = value
        return
      case 0x98: {
        if ((v & DMA_RUN) === 0 || running) return
        this.dma.cmd = value
        const timers = this.host.vm.timers
        this.timer?.cancel()
        this.timer = timers.at(timers.now() + DMA_DELAY_NS, () => this.runDma())
        return
      }
      default:
        return
    }
  }

  /**
   * edu.c `edu_dma_timer`: the transfer between the buffer and memory through the
   * function's DMA path. A range outside the buffer (which edu.c logs and then overruns)
   * or refused upstream is not done; the command completes either way.
   */
  private runDma(): void {
    const { src, dst, cnt, cmd } = this.dma
    if ((cmd & BigInt(DMA_RUN)) === 0n) return
    const toMemory = (cmd & BigInt(DMA_TO_PCI)) !== 0n
    const local = toMemory ? src : dst
    const remote = Number((toMemory ? dst : src) & BigInt(DMA_MASK))
    const inRange = local >= BigInt(DMA_START) && local + cnt <= BigInt(DMA_START + DMA_SIZE)
    const busMaster = this.pci.busMaster
    if (!inRange || !busMaster) this.stats.dmaErrors++
    else {
      const at = Number(local) - DMA_START
      const n = Number(cnt)
      try {
        if (toMemory) this.pci.dma.write(remote, this.buffer.subarray(at, at + n))
        else this.buffer.set(this.pci.dma.read(remote, n), at)
        this.stats.dmas++
      } catch (e) {
        if (!(e instanceof MshvError) || e.code !== 'EFAULT') throw e
        this.stats.dmaErrors++
      }
    }
    this.dma.cmd &= ~BigInt(DMA_RUN)
    if ((cmd & BigInt(DMA_IRQ_FLAG)) !== 0n) this.raise(DMA_IRQ)
  }
}

/**
 * Adds an edu device to `host` and sets its Interrupt Line register to the I/O APIC
 * pin its INTA# reaches, as firmware does (PCI Local Bus 3.0, 6.2.4: POST software
 * writes the routing there): lib/pci.c `pci_intx_line` reads it to program the pin.
 */
export function addEdu(host: PciHost, gsi: (slot: number) => number): Edu {
  const edu = new Edu(host)
  const slot = host.add(edu.pci)
  edu.pci.configWrite(0x3c, 1, gsi(slot))
  return edu
}
