/**
 * The PC platform around a VM's vCPUs, wired as a PC wires it (and as QEMU's `pc`
 * machine and the MADT's ISA overrides describe it): the 8259 pair and the I/O APIC
 * both see every ISA IRQ, IRQ 0 on I/O APIC pin 2; the 8254 on IRQ 0, the RTC on IRQ
 * 8, COM1 on IRQ 4; the i8042's reset line ends the run with `{ reason: 'reset' }`;
 * PCI bus 0's INTx lines on I/O APIC pins 16-23.
 * @module
 */
import { Vm } from '../vm.js'
import { MshvError, describe } from '../errors.js'
import { WiredIrq, type IrqLine } from './irq.js'
import { IoApic, IOAPIC_BASE, IOAPIC_SIZE } from '../devices/ioapic.js'
import { Pic, PIC_MASTER, PIC_SLAVE, ELCR } from '../devices/pic.js'
import { Pit, PIT_BASE, PORT_61 } from '../devices/pit.js'
import { Rtc, CMOS_PORT, type RtcOptions } from '../devices/rtc.js'
import { Serial16550, COM1, COM1_IRQ, type SerialOptions } from '../devices/serial.js'
import { I8042, I8042_DATA, I8042_COMMAND } from '../devices/i8042.js'
import { PciHost } from '../pci/host.js'
import { checkInstance } from '../check.js'

/** Options for {@link addPcPlatform}. */
export interface PcPlatformOptions {
  /** COM1's options (its `irq` is the platform's IRQ 4). */
  serial?: Omit<SerialOptions, 'irq'>
  /** The RTC's start time and CMOS presets. */
  rtc?: RtcOptions
  /** PCI bus 0 with its host bridge ({@link PciHost}; default true). */
  pci?: boolean
}

/** The I/O APIC pin ISA IRQ `irq` reaches: IRQ 0 is on pin 2 (the MADT's interrupt source override), the rest on their own. */
export function isaGsi(irq: number): number {
  return irq === 0 ? 2 : irq
}

/** The devices of a PC and the ISA interrupt lines between them. */
export class PcPlatform {
  readonly pic: Pic
  readonly ioapic: IoApic
  readonly pit: Pit
  readonly rtc: Rtc
  readonly serial: Serial16550
  readonly i8042: I8042
  /** PCI bus 0, where PCI devices (virtio's among them) are added; undefined when `pci: false`. */
  readonly pci: PciHost | undefined
  private readonly lines: WiredIrq[] = []

  /** @internal */
  constructor(vm: Vm, options: PcPlatformOptions) {
    // The 8259's INT goes to the BSP's LINT0 as an ExtINT (APIC id 0).
    this.pic = new Pic((vector) => vm.deviceInterrupt({ kind: 'extint', vector, destination: 0 }))
    this.ioapic = new IoApic(
      (request) => vm.deviceInterrupt(request),
      () => this.pic.acknowledgeIfPending(),
    )
    for (let irq = 0; irq < 16; irq++) {
      const targets = [
        { sink: this.pic, pin: irq },
        { sink: this.ioapic, pin: isaGsi(irq) },
      ]
      this.lines.push(new WiredIrq(irq === 2 ? [] : targets, `IRQ ${irq}`))
    }
    this.pit = new Pit(vm.timers, this.irq(0))
    this.rtc = new Rtc(vm.timers, this.irq(8), options.rtc)
    this.serial = new Serial16550(COM1, { ...options.serial, irq: this.irq(COM1_IRQ) })
    this.i8042 = new I8042(() => vm.requestStop({ reason: 'reset' }))
    vm.onEoi((vector) => this.ioapic.eoi(vector))
    const bus = vm.bus
    bus.register(PIC_MASTER, 2, this.pic, '8259 master')
    bus.register(PIC_SLAVE, 2, this.pic, '8259 slave')
    bus.register(ELCR, 2, this.pic, 'ELCR')
    bus.register(PIT_BASE, 4, this.pit, '8254 PIT')
    bus.register(PORT_61, 1, this.pit, 'port 0x61')
    bus.register(CMOS_PORT, 2, this.rtc, 'CMOS/RTC')
    bus.register(COM1, 8, this.serial, 'COM1')
    bus.register(I8042_DATA, 1, this.i8042, 'i8042 data')
    bus.register(I8042_COMMAND, 1, this.i8042, 'i8042 command')
    bus.registerMmio(IOAPIC_BASE, IOAPIC_SIZE, this.ioapic, 'I/O APIC')
    this.pci = options.pci === false ? undefined : new PciHost(vm, this.ioapic)
    // Their states go into the VM's snapshots (the IRQ lines' levels with the devices
    // that drive them; the timers with the devices that arm them).
    vm.addState('pic', this.pic)
    vm.addState('ioapic', this.ioapic)
    vm.addState('pit', this.pit)
    vm.addState('rtc', this.rtc)
    vm.addState('com1', this.serial)
    vm.addState('i8042', this.i8042)
    if (this.pci) vm.addState('pci-host', this.pci)
  }

  /** ISA IRQ line `irq` (0..15; 2 is the cascade and reaches nothing). */
  irq(irq: number): IrqLine {
    const line = Number.isInteger(irq) ? this.lines[irq] : undefined
    if (!line) throw new MshvError('EINVAL', `ISA IRQ must be an integer in 0..15, got ${describe(irq)}`)
    return line
  }
}

/** Adds the PC's interrupt controllers, timers, RTC, COM1, i8042 and PCI bus 0 to `vm`'s bus. */
export function addPcPlatform(vm: Vm, options: PcPlatformOptions = {}): PcPlatform {
  checkInstance('addPcPlatform: vm', vm, Vm)
  if (typeof options !== 'object' || options === null) throw new MshvError('EINVAL', `addPcPlatform: options must be an object, got ${describe(options)}`)
  return new PcPlatform(vm, options)
}
