/**
 * What stands between a PCI function and the rest of the machine when it is bus master:
 * the memory its DMA reaches ({@link DmaMemory}) and the path of its message-signalled
 * interrupts. With no IOMMU both are the VM's own (`vm.memory`, `vm.deviceMsi`); with
 * one ({@link PciIommu}, e.g. an {@link IntelIommu}) every access carries the function's
 * requester ID (bus, device, function: PCI Express Base Specification 2.2.6.2, "Transaction
 * Descriptor - Transaction ID Field"), which the IOMMU's tables translate and check.
 * @module
 */

/**
 * Memory as a device's DMA sees it: {@link GuestMemory}'s methods, by the addresses the
 * device is given (guest physical addresses, or I/O virtual addresses behind an IOMMU).
 * A range the device may not reach is an `EFAULT` naming it, and nothing is moved.
 */
export interface DmaMemory {
  /** A copy of `length` bytes at `address`. */
  read(address: number, length: number): Uint8Array
  /** Copies `data` to `address`. */
  write(address: number, data: Uint8Array): void
  /** A live view of `[address, address + length)` (`write`: for writing); `EFAULT` where it is not one contiguous range of RAM. */
  view(address: number, length: number, write?: boolean): Uint8Array
  /** A little-endian DataView of `[address, address + length)`. */
  dataView(address: number, length: number, write?: boolean): DataView
}

/** A message-signalled interrupt: the address and data a device writes (Intel SDM vol 3 11.11). */
export interface MsiMessage {
  readonly address: bigint
  readonly data: number
}

/**
 * An IOMMU on a PCI bus: DMA remapping and interrupt remapping by requester ID. The
 * host bridge asks it for each bus-master function's memory and each MSI.
 */
export interface PciIommu {
  /** The memory requester `requesterId` (bus << 8 | device << 3 | function) reaches by DMA. */
  dmaFor(requesterId: number): DmaMemory
  /**
   * The interrupt a device's MSI becomes: the message itself where the IOMMU leaves it
   * alone, another (compatibility-format) message where it remaps it, or undefined where
   * it blocks it. `requesterId` is undefined for a source without one (QEMU's I/O APIC).
   */
  remapInterrupt(requesterId: number | undefined, message: MsiMessage): MsiMessage | undefined
}

/**
 * What a PCI function reaches upstream of itself: the host bridge gives it one when it
 * is added to the bus. @internal
 */
export interface PciUpstream {
  /** Bus << 8 | device << 3 | function. */
  readonly requesterId: number
  /** Guest memory, untranslated. */
  readonly memory: DmaMemory
  /** The bus's IOMMU, if one was added. */
  readonly iommu: PciIommu | undefined
  /** Delivers a message to the local APICs (`vm.deviceMsi`). */
  deliverMsi(address: bigint, data: number): void
}
