/**
 * The PC as a BIOS leaves it when it hands over to a boot loader: what a multiboot
 * kernel booted by GRUB, or by QEMU's `-kernel` after SeaBIOS, finds. Written by the
 * loader rather than run as firmware: the real-mode interrupt vector table with
 * handlers for the hardware IRQs (SeaBIOS `src/post.c` `ivt_init`, `src/irq.c`), the BIOS
 * data area's base memory size and tick count, the 8259 pair initialized with vectors
 * 0x08 and 0x70 and all IRQs masked but the timer and the cascade (SeaBIOS
 * `pic_setup`, `timer_setup`), and the 8254's channel 0 counting 65536 in mode 2, the
 * 18.2 Hz tick (SeaBIOS `pit_setup`), and the BSP's local APIC software-enabled with
 * LINT0 in ExtINT and LINT1 in NMI mode, level-triggered and unmasked: the virtual
 * wire SeaBIOS's `smp_setup` (`src/fw/smp.c`) writes (SVR bit 8, LINT0 0x8700, LINT1
 * 0x8400). A kernel that returns to real mode and waits with `sti; hlt`
 * (kvm-unit-tests `realmode`) is woken by that tick through LINT0, as on a PC.
 * @module
 */
import type { Vm } from '../vm.js'
import type { Vcpu } from '../vcpu.js'
import type { PcPlatform } from '../platform/pc.js'
import { assemble } from '../asm/assemble.js'

/** Where the handlers go: F000:F000, in the BIOS area the e820 map reserves. */
const HANDLERS_SEGMENT = 0xf000
const HANDLERS_OFFSET = 0xf000
/** BIOS data area fields (Ralf Brown's interrupt list, "BIOS data area"): EBDA segment, base memory in KiB, the timer tick count. */
const BDA_EBDA_SEGMENT = 0x40e
const BDA_BASE_MEMORY = 0x413
/** The EBDA at 0x9FC00 (the e820 map's reserved 1 KiB below 640 KiB). */
const EBDA = 0x9_fc00

/**
 * IRQ 0 counts the tick in the BDA; every hardware IRQ handler ends with a
 * non-specific EOI to its 8259s (and the master for the slave's); other vectors return.
 */
const HANDLERS = `
  bits 16
irq0:
  push ax
  push ds
  xor ax, ax
  mov ds, ax
  add word [0x46c], 1
  adc word [0x46e], 0
  mov al, 0x20
  out 0x20, al
  pop ds
  pop ax
  iret
eoi_master:
  push ax
  mov al, 0x20
  out 0x20, al
  pop ax
  iret
eoi_both:
  push ax
  mov al, 0x20
  out 0xa0, al
  out 0x20, al
  pop ax
  iret
ignore:
  iret
`

/** Leaves `vm`'s RAM and `pc`'s interrupt controllers and timer as a PC BIOS does before a boot loader runs. */
export function leaveAsBios(vm: Vm, pc: PcPlatform): void {
  const code = assemble(HANDLERS, { bitness: 16, address: HANDLERS_OFFSET })
  vm.write(HANDLERS_SEGMENT * 16 + HANDLERS_OFFSET, code.bytes)
  const at = (label: string): number => Number(code.labels.get(label))
  const ivt = new DataView(new ArrayBuffer(256 * 4))
  for (let v = 0; v < 256; v++) {
    const handler = v === 0x08 ? 'irq0' : v > 0x08 && v <= 0x0f ? 'eoi_master' : v >= 0x70 && v <= 0x77 ? 'eoi_both' : 'ignore'
    ivt.setUint16(v * 4, at(handler), true)
    ivt.setUint16(v * 4 + 2, HANDLERS_SEGMENT, true)
  }
  vm.write(0, new Uint8Array(ivt.buffer))
  const bda = new DataView(new ArrayBuffer(0x20))
  bda.setUint16(BDA_EBDA_SEGMENT - 0x400, EBDA >> 4, true)
  bda.setUint16(BDA_BASE_MEMORY - 0x400, EBDA >> 10, true)
  vm.write(0x400, new Uint8Array(bda.buffer))
  // ICW1 (edge, cascade, ICW4), ICW2 (vector base), ICW3 (slave on IRQ 2 / slave id 2),
  // ICW4 (8086 mode); then the masks: the timer and the cascade only.
  const pic = pc.pic
  for (const [port, value] of [
    [0x20, 0x11],
    [0x21, 0x08],
    [0x21, 0x04],
    [0x21, 0x01],
    [0xa0, 0x11],
    [0xa1, 0x70],
    [0xa1, 0x02],
    [0xa1, 0x01],
    [0x21, 0xfa],
    [0xa1, 0xff],
  ] as const) {
    pic.ioWrite(port, 1, value)
  }
  // Channel 0, lobyte/hibyte, mode 2 (rate generator), binary; count 0 means 65536.
  pc.pit.ioWrite(0x43, 1, 0x34)
  pc.pit.ioWrite(0x40, 1, 0)
  pc.pit.ioWrite(0x40, 1, 0)
  const bsp = vm.cpus.find((v) => v.index === 0)
  if (bsp) leaveApicAsBios(bsp)
}

/** SVR, LVT LINT0 and LINT1's offsets in the APIC page (SDM vol 3 Table 11-1). */
const SVR = 0xf0
const LVT_LINT0 = 0x350
const LVT_LINT1 = 0x360

/**
 * The BSP's local APIC as SeaBIOS's `smp_setup` leaves it (`src/fw/smp.c`: "enable
 * local APIC", then "Set LINT0 as Ext_INT, level triggered" and "Set LINT1 as NMI,
 * level triggered"), through the vCPU's state.
 */
function leaveApicAsBios(bsp: Vcpu): void {
  const state = bsp.state()
  const lapic = Buffer.from(state.lapic, 'hex')
  lapic.writeUInt32LE((lapic.readUInt32LE(SVR) | 0x100) >>> 0, SVR)
  lapic.writeUInt32LE(0x8700, LVT_LINT0)
  lapic.writeUInt32LE(0x8400, LVT_LINT1)
  bsp.setState({ ...state, lapic: lapic.toString('hex') })
}
