/**
 * The 8259A programmable interrupt controller pair of a PC (Intel 8259A datasheet;
 * the state machine follows QEMU's `hw/intc/i8259.c`): master at 0x20, slave at 0xA0
 * on the master's pin 2, and the ELCR (0x4D0/0x4D1) choosing level triggering per
 * IRQ. Its INT output reaches the BSP's LINT0 as an ExtINT request
 * ({@link Vm.requestInterrupt} kind `'extint'`). MSHV takes an ExtINT with its vector,
 * so the interrupt is acknowledged (INTA) when it is requested, not when the CPU
 * takes it: a guest reading ISR between the two sees the bit early.
 * @module
 */
import type { PioDevice } from '../bus.js'
import type { IrqSink } from '../platform/irq.js'
import { MshvError, describe, hex } from '../errors.js'
import { invalid } from '../check.js'
import { bool, int, noneLeft, oneOf, parseState, record, u8, version, type Check, type Fields, type MutableDataKeys, type Saveable, type SameKeys } from '../snapshot/device-state.js'

/** The master's and slave's command ports, and the ELCR's. */
export const PIC_MASTER = 0x20
export const PIC_SLAVE = 0xa0
export const ELCR = 0x4d0

/** The register select of OCW3: what a read of the command port returns. */
export type PicReadRegister = 'irr' | 'isr'
/** Where initialization is: done, or waiting for ICW2, ICW3 or ICW4. */
export type PicInit = 'ready' | 'icw2' | 'icw3' | 'icw4'

/** One 8259's state ({@link Pic.save}); masks are 8 bits, bit n for the chip's IRQ n. */
export interface PicChipState {
  /** Interrupt requests (IRR). */
  irr: number
  /** The input lines' levels, for edge detection. */
  lastIrr: number
  /** The interrupt mask (IMR, OCW1). */
  imr: number
  /** In service (ISR). */
  isr: number
  /** Priority rotation: the IRQ with the highest priority is `priorityAdd` (0..7). */
  priorityAdd: number
  /** The vector base (ICW2, a multiple of 8). */
  irqBase: number
  readRegister: PicReadRegister
  /** A poll command (OCW3) waits for the next read. */
  poll: boolean
  specialMask: boolean
  init: PicInit
  autoEoi: boolean
  rotateOnAutoEoi: boolean
  specialFullyNested: boolean
  /** ICW1 said an ICW4 follows. */
  init4: boolean
  /** ICW1's single mode (no ICW3). */
  singleMode: boolean
  /** ELCR: level-triggered IRQs. */
  elcr: number
}

/** The pair's state: master (IRQ 0-7) and slave (IRQ 8-15). */
export interface PicState {
  version: 1
  master: PicChipState
  slave: PicChipState
}

function chipState(elcrMask: number): Check<PicChipState> {
  const bits = int(0, 7)
  return record<PicChipState>({
    irr: u8,
    lastIrr: u8,
    imr: u8,
    isr: u8,
    priorityAdd: bits,
    irqBase: (what, v) => {
      const base = u8(what, v)
      if ((base & 7) !== 0) throw invalid(what, 'a multiple of 8', base)
      return base
    },
    readRegister: oneOf('irr', 'isr'),
    poll: bool,
    specialMask: bool,
    init: oneOf('ready', 'icw2', 'icw3', 'icw4'),
    autoEoi: bool,
    rotateOnAutoEoi: bool,
    specialFullyNested: bool,
    init4: bool,
    singleMode: bool,
    elcr: (what, v) => {
      const elcr = u8(what, v)
      if ((elcr & ~elcrMask) !== 0) throw invalid(what, `a mask within ${hex(elcrMask)} (IRQs that can be level-triggered)`, elcr)
      return elcr
    },
  })
}

/** One 8259; its public fields are exactly its state (checked below). */
class Chip implements Fields<PicChipState> {
  irr = 0
  lastIrr = 0
  imr = 0
  isr = 0
  priorityAdd = 0
  irqBase = 0
  readRegister: PicReadRegister = 'irr'
  poll = false
  specialMask = false
  init: PicInit = 'ready'
  autoEoi = false
  rotateOnAutoEoi = false
  specialFullyNested = false
  init4 = false
  singleMode = false
  elcr = 0
  /** Checks a saved state of this chip (its ELCR mask is its own). */
  readonly check: Check<PicChipState>

  constructor(
    readonly master: boolean,
    /** ELCR bits that may be set: IRQ 0, 1, 2, 8 and 13 are always edge on a PC. */
    readonly elcrMask: number,
  ) {
    this.check = chipState(elcrMask)
  }

  reset(): void {
    Object.assign(this, {
      irr: 0,
      lastIrr: 0,
      imr: 0,
      isr: 0,
      priorityAdd: 0,
      irqBase: 0,
      readRegister: 'irr',
      poll: false,
      specialMask: false,
      init: 'ready',
      autoEoi: false,
      rotateOnAutoEoi: false,
      specialFullyNested: false,
      init4: false,
      singleMode: false,
    } satisfies Omit<Fields<PicChipState>, 'elcr'>)
  }

  save(): PicChipState {
    const { irr, lastIrr, imr, isr, priorityAdd, irqBase, readRegister, poll, specialMask, init, autoEoi, rotateOnAutoEoi, specialFullyNested, init4, singleMode, elcr } = this
    return { irr, lastIrr, imr, isr, priorityAdd, irqBase, readRegister, poll, specialMask, init, autoEoi, rotateOnAutoEoi, specialFullyNested, init4, singleMode, elcr } satisfies PicChipState
  }

  restore(s: PicChipState): void {
    const { irr, lastIrr, imr, isr, priorityAdd, irqBase, readRegister, poll, specialMask, init, autoEoi, rotateOnAutoEoi, specialFullyNested, init4, singleMode, elcr, ...rest } = s
    noneLeft(rest)
    Object.assign(this, { irr, lastIrr, imr, isr, priorityAdd, irqBase, readRegister, poll, specialMask, init, autoEoi, rotateOnAutoEoi, specialFullyNested, init4, singleMode, elcr } satisfies Fields<PicChipState>)
  }

  setIrq(irq: number, level: boolean): void {
    const mask = 1 << irq
    if ((this.elcr & mask) !== 0) {
      if (level) {
        this.irr |= mask
        this.lastIrr |= mask
      } else {
        this.irr &= ~mask
        this.lastIrr &= ~mask
      }
    } else if (level) {
      if ((this.lastIrr & mask) === 0) this.irr |= mask
      this.lastIrr |= mask
    } else this.lastIrr &= ~mask
  }

  /** The highest priority in `mask` (0 highest, 8 none), rotation applied. */
  priority(mask: number): number {
    if ((mask & 0xff) === 0) return 8
    let p = 0
    while ((mask & (1 << ((p + this.priorityAdd) & 7))) === 0) p++
    return p
  }

  /** The IRQ to raise now, or -1. */
  pending(): number {
    const p = this.priority(this.irr & ~this.imr)
    if (p === 8) return -1
    let inService = this.isr
    if (this.specialMask) inService &= ~this.imr
    // Fully nested: the slave's requests may interrupt its own in-service IRQ.
    if (this.specialFullyNested && this.master) inService &= ~(1 << 2)
    return p < this.priority(inService) ? (p + this.priorityAdd) & 7 : -1
  }

  acknowledge(irq: number): void {
    if (this.autoEoi) {
      if (this.rotateOnAutoEoi) this.priorityAdd = (irq + 1) & 7
    } else this.isr |= 1 << irq
    // An edge request is consumed; a level one stays while its line is high.
    if ((this.elcr & (1 << irq)) === 0) this.irr &= ~(1 << irq)
  }
}

/** The chip's mutable fields are its state, no more, no less (rule 4 of device-state.ts). */
const CHIP_FIELDS_ARE_ITS_STATE: SameKeys<MutableDataKeys<Chip>, keyof Fields<PicChipState>> = true
void CHIP_FIELDS_ARE_ITS_STATE

/** Counters of a {@link Pic}. */
export interface PicStats {
  /** ExtINT requests made (interrupts acknowledged for the CPU). */
  requested: number
  /** Spurious acknowledges (IRQ 7 or 15 with nothing pending). */
  spurious: number
}

/** The master/slave 8259 pair with its ELCR: 16 ISA IRQ inputs. */
export class Pic implements PioDevice, IrqSink, Saveable<PicState> {
  private readonly chips: readonly [Chip, Chip] = [new Chip(true, 0xf8), new Chip(false, 0xde)]
  readonly stats: PicStats = { requested: 0, spurious: 0 }
  /** Set while this pair's own request is being made, so a nested update waits. */
  private requesting = false

  constructor(
    /** Raises the vector at the CPU: an ExtINT request to the BSP. */
    private readonly request: (vector: number) => void,
  ) {}

  private chip(i: number): Chip {
    return i === 0 ? this.chips[0] : this.chips[1]
  }

  /** ISA IRQ `irq` (0..15) is asserted or not. */
  setIrq(irq: number, asserted: boolean): void {
    if (!Number.isInteger(irq) || irq < 0 || irq > 15) throw new MshvError('EINVAL', `8259 IRQ must be an integer in 0..15, got ${describe(irq)}`)
    this.chip(irq >> 3).setIrq(irq & 7, asserted)
    this.update()
  }

  /** Whether the master's INT output is high. */
  get interruptOutput(): boolean {
    return this.chips[0].pending() >= 0
  }

  /** Propagates the slave's INT to master pin 2, and a raised INT to the CPU. */
  private update(): void {
    const [master, slave] = this.chips
    master.setIrq(2, slave.pending() >= 0)
    if (this.requesting || master.pending() < 0) return
    const vector = this.acknowledge()
    this.stats.requested++
    this.requesting = true
    try {
      this.request(vector)
    } finally {
      this.requesting = false
    }
  }

  /** INTA: the vector of the highest pending IRQ (a spurious 7 or 15 when none), now in service. */
  acknowledge(): number {
    const [master, slave] = this.chips
    const irq = master.pending()
    let vector: number
    if (irq < 0) {
      this.stats.spurious++
      vector = master.irqBase + 7
    } else {
      master.acknowledge(irq)
      if (irq === 2) {
        const irq2 = slave.pending()
        if (irq2 >= 0) {
          slave.acknowledge(irq2)
          vector = slave.irqBase + irq2
        } else {
          this.stats.spurious++
          vector = slave.irqBase + 7
        }
      } else vector = master.irqBase + irq
    }
    master.setIrq(2, slave.pending() >= 0)
    return vector
  }

  /** The ExtINT acknowledge an I/O APIC pin in ExtINT mode makes: a vector, or none pending. */
  acknowledgeIfPending(): number | undefined {
    return this.chips[0].pending() >= 0 ? this.acknowledge() : undefined
  }

  /** IMR, IRR and ISR of both chips (master low byte), for tests and the REPL. */
  get state(): { imr: number; irr: number; isr: number; elcr: number } {
    const [m, s] = this.chips
    return { imr: m.imr | (s.imr << 8), irr: m.irr | (s.irr << 8), isr: m.isr | (s.isr << 8), elcr: m.elcr | (s.elcr << 8) }
  }

  ioRead(port: number): number {
    if (port === ELCR || port === ELCR + 1) return this.chip(port - ELCR).elcr
    const chip = this.chips[port >= PIC_SLAVE ? 1 : 0]
    if ((port & 1) === 1) return chip.imr
    if (chip.poll) {
      // Poll command: the highest pending IRQ, acknowledged (bit 7 set), or 0.
      chip.poll = false
      const irq = chip.pending()
      if (irq < 0) return 0
      chip.acknowledge(irq)
      this.update()
      return 0x80 | irq
    }
    return chip.readRegister === 'isr' ? chip.isr : chip.irr
  }

  ioWrite(port: number, _size: number, value: number): void {
    const v = value & 0xff
    if (port === ELCR || port === ELCR + 1) {
      const chip = this.chip(port - ELCR)
      chip.elcr = v & chip.elcrMask
      this.update()
      return
    }
    const chip = this.chips[port >= PIC_SLAVE ? 1 : 0]
    if ((port & 1) === 0) this.command(chip, v)
    else this.data(chip, v)
    this.update()
  }

  /** ICW1, OCW2 and OCW3 (8259A datasheet, "Operation Command Words"). */
  private command(chip: Chip, v: number): void {
    if ((v & 0x10) !== 0) {
      // ICW1: start initialization; the ELCR survives.
      chip.reset()
      chip.init = 'icw2'
      chip.init4 = (v & 1) !== 0
      chip.singleMode = (v & 2) !== 0
    } else if ((v & 0x08) !== 0) {
      // OCW3
      if ((v & 0x04) !== 0) chip.poll = true
      if ((v & 0x02) !== 0) chip.readRegister = (v & 1) === 1 ? 'isr' : 'irr'
      if ((v & 0x40) !== 0) chip.specialMask = ((v >> 5) & 1) !== 0
    } else {
      // OCW2
      const cmd = v >> 5
      switch (cmd) {
        case 0:
        case 4:
          chip.rotateOnAutoEoi = cmd === 4
          break
        case 1: // non-specific EOI
        case 5: {
          // rotate on non-specific EOI
          const p = chip.priority(chip.isr)
          if (p !== 8) {
            const irq = (p + chip.priorityAdd) & 7
            chip.isr &= ~(1 << irq)
            if (cmd === 5) chip.priorityAdd = (irq + 1) & 7
          }
          break
        }
        case 3: // specific EOI
          chip.isr &= ~(1 << (v & 7))
          break
        case 6: // set priority
          chip.priorityAdd = (v + 1) & 7
          break
        case 7: // rotate on specific EOI
          chip.isr &= ~(1 << (v & 7))
          chip.priorityAdd = ((v & 7) + 1) & 7
          break
        default:
          break
      }
    }
  }

  /** OCW1 (IMR), or ICW2..ICW4 during initialization. */
  private data(chip: Chip, v: number): void {
    switch (chip.init) {
      case 'ready':
        chip.imr = v
        break
      case 'icw2':
        chip.irqBase = v & 0xf8
        chip.init = chip.singleMode ? (chip.init4 ? 'icw4' : 'ready') : 'icw3'
        break
      case 'icw3':
        chip.init = chip.init4 ? 'icw4' : 'ready'
        break
      case 'icw4':
        chip.specialFullyNested = ((v >> 4) & 1) !== 0
        chip.autoEoi = ((v >> 1) & 1) !== 0
        chip.init = 'ready'
        break
    }
  }

  /** Both chips' state. */
  save(): PicState {
    const [master, slave] = this.chips
    return { version: 1, master: master.save(), slave: slave.save() } satisfies PicState
  }

  /**
   * Restores what {@link save} gave; `EINVAL` (and nothing changed) for a bad state.
   * Nothing is requested of the CPU: the state is one the pair had settled in.
   */
  restore(state: PicState): void {
    const [m, s] = this.chips
    const { version: _, master, slave, ...rest } = parseState<PicState>('pic.restore: state', state, { version: version(1), master: m.check, slave: s.check })
    noneLeft(rest)
    m.restore(master)
    s.restore(slave)
  }
}
