/**
 * The devices kvm-unit-tests expects beside a PC, as QEMU's `x86/run` adds them
 * (`-device pc-testdev -device isa-debug-exit,iobase=0xf4,iosize=0x4`, and QEMU's
 * fw_cfg): they belong to this test harness, not to the package. The debug-exit port
 * is the VM's own (port 0xf4: a write ends the run with `{ reason: 'debug-exit', code }`).
 */
import type { MmioDevice, PioDevice } from '../../index.js'
import type { Vm } from '../../index.js'

/** fw_cfg's selector and data ports (QEMU docs/specs/fw_cfg.rst, "Selector Register", "Data Register"). */
export const FW_CFG_SELECTOR = 0x510
export const FW_CFG_DATA = 0x511
/** The items kvm-unit-tests reads (lib/x86/fwcfg.h, QEMU include/standard-headers/linux/qemu_fw_cfg.h). */
const FW_CFG_SIGNATURE = 0x00
const FW_CFG_ID = 0x01
const FW_CFG_RAM_SIZE = 0x03
const FW_CFG_NB_CPUS = 0x05
const FW_CFG_MAX_CPUS = 0x0f

/**
 * QEMU's fw_cfg, its traditional I/O interface only: a 16-bit write of an item's key
 * to 0x510 selects it and rewinds; byte reads of 0x511 return its bytes in turn, and 0
 * past its end or for an item it does not have (fw_cfg.rst).
 */
export class FwCfg implements PioDevice {
  private readonly items = new Map<number, Uint8Array>()
  private selected: Uint8Array | undefined
  private offset = 0

  constructor(vcpus: number, ramBytes: number) {
    const u16 = (v: number): Uint8Array => new Uint8Array(new Uint16Array([v]).buffer)
    this.items.set(FW_CFG_SIGNATURE, new TextEncoder().encode('QEMU'))
    this.items.set(FW_CFG_ID, new Uint8Array([1, 0, 0, 0])) // bit 0: the traditional interface
    this.items.set(FW_CFG_RAM_SIZE, new Uint8Array(new BigUint64Array([BigInt(ramBytes)]).buffer))
    this.items.set(FW_CFG_NB_CPUS, u16(vcpus))
    this.items.set(FW_CFG_MAX_CPUS, u16(vcpus))
  }

  ioWrite(port: number, _size: number, value: number): void {
    if (port !== FW_CFG_SELECTOR) return // the data port is read-only (writes ignored since QEMU 2.4)
    this.selected = this.items.get(value & 0xffff)
    this.offset = 0
  }

  ioRead(port: number, size: number): number {
    if (port !== FW_CFG_DATA) return 0
    let v = 0
    for (let i = 0; i < size; i++) v |= (this.selected?.[this.offset++] ?? 0) << (8 * i)
    return v >>> 0
  }
}

/** pc-testdev's ports and memory (QEMU hw/misc/pc-testdev.c, `testdev_realizefn`). */
export const TESTDEV_IOPORT = 0xe0
export const TESTDEV_FLUSH = 0xe4
export const TESTDEV_IOPORT_BYTE = 0xe8
export const TESTDEV_IRQ = 0x2000
export const TESTDEV_IOMEM = 0xff00_0000
export const TESTDEV_IOMEM_SIZE = 0x1_0000

/**
 * QEMU's pc-testdev: a 32-bit register at 0xe0 (and again at 0xe8, byte by byte) that
 * reads back what was written at the same byte lanes; 0xe4 flushes a page (a host
 * mapping trick for KVM: nothing to do here); a write of 0x2000 + n sets ISA IRQ n's
 * level; 64 KiB of plain device memory at 0xff000000 (the MMIO the `emulator` test
 * runs its instructions against).
 */
export class PcTestdev implements PioDevice, MmioDevice {
  private data = 0
  private readonly iomem = new Uint8Array(TESTDEV_IOMEM_SIZE)

  constructor(private readonly setIrq: (irq: number, level: boolean) => void) {}

  ioWrite(port: number, size: number, value: number): void {
    if (port >= TESTDEV_IRQ) return this.setIrq(port - TESTDEV_IRQ, value !== 0)
    if (port >= TESTDEV_FLUSH && port < TESTDEV_FLUSH + 4) return
    const shift = (port & 3) * 8
    const mask = size === 4 ? 0xffff_ffff : ((1 << (size * 8)) - 1) << shift
    this.data = ((this.data & ~mask) | ((value << shift) & mask)) >>> 0
  }

  ioRead(port: number, size: number): number {
    if (port >= TESTDEV_FLUSH && port < TESTDEV_FLUSH + 4) return 0xffff_ffff >>> (32 - size * 8)
    const shift = (port & 3) * 8
    return size === 4 ? this.data : (this.data >>> shift) & ((1 << (size * 8)) - 1)
  }

  mmioRead(offset: number, size: number): bigint {
    let v = 0n
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.iomem[offset + i] ?? 0)
    return v
  }

  mmioWrite(offset: number, size: number, value: bigint): void {
    for (let i = 0; i < size && offset + i < this.iomem.length; i++) this.iomem[offset + i] = Number((value >> BigInt(8 * i)) & 0xffn)
  }
}

/** Adds fw_cfg and pc-testdev to `vm`'s buses. */
export function addTestDevices(vm: Vm, vcpus: number, ramBytes: number, setIrq: (irq: number, level: boolean) => void): void {
  vm.bus.register(FW_CFG_SELECTOR, 2, new FwCfg(vcpus, ramBytes), 'fw_cfg')
  const testdev = new PcTestdev(setIrq)
  vm.bus.register(TESTDEV_IOPORT, 4, testdev, 'pc-testdev ioport')
  vm.bus.register(TESTDEV_FLUSH, 4, testdev, 'pc-testdev flush-page')
  vm.bus.register(TESTDEV_IOPORT_BYTE, 4, testdev, 'pc-testdev ioport-byte')
  vm.bus.register(TESTDEV_IRQ, 24, testdev, 'pc-testdev irq-line')
  vm.bus.registerMmio(TESTDEV_IOMEM, TESTDEV_IOMEM_SIZE, testdev, 'pc-testdev iomem')
}
