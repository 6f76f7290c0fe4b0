/**
 * The I/O APIC (Intel 82093AA datasheet; version 0x20 with the EOI register, as
 * QEMU's `hw/intc/ioapic.c` models it): 24 pins whose redirection entries turn a
 * line into an interrupt request to the local APICs ({@link Vm.requestInterrupt}),
 * level-triggered pins re-asserted on EOI (remote IRR). A masked pin ignores edges
 * (the datasheet's mask bit: "edge-sensitive interrupts signaled on a masked interrupt
 * pin are ignored (i.e., not delivered or held pending)"); a level-triggered pin still
 * asserted when unmasked is delivered then.
 * @module
 */
import type { MmioDevice } from '../bus.js'
import type { IrqSink } from '../platform/irq.js'
import type { InterruptKind, InterruptRequest } from '../vm.js'
import type { MsiMessage } from '../pci/iommu.js'
import { MshvError, describe, hex } from '../errors.js'
import { checkInteger, checkUnsignedBigint, invalid } from '../check.js'
import { int, list, noneLeft, parseState, record, u32, u8, version, type Check, type Saveable, type Schema } from '../snapshot/device-state.js'

/** Where PCs put the I/O APIC (the MADT says so too). */
export const IOAPIC_BASE = 0xfec0_0000
/** Its MMIO window's size. */
export const IOAPIC_SIZE = 0x1000
/** Redirection entries (pins). */
export const IOAPIC_PINS = 24

const IOREGSEL = 0x00
const IOWIN = 0x10
const IOEOI = 0x40
const VERSION = 0x20
const MASKED = 1n << 16n
const REMOTE_IRR = 1n << 14n
const LEVEL = 1n << 15n
const DELIVERY_STATUS = 1n << 12n
/** The bits a guest may write: all but delivery status and remote IRR (read-only). */
const WRITABLE = ~(DELIVERY_STATUS | REMOTE_IRR) & 0xffff_ffff_ffff_ffffn

/** Delivery modes (bits 10:8) by value; 2 (SMI) and 3, 6 (reserved) are not delivered. */
const MODES: readonly (InterruptKind | undefined)[] = ['fixed', 'lowest-priority', undefined, undefined, 'nmi', 'init', undefined, 'extint']

/** Counters of an {@link IoApic}. */
export interface IoApicStats {
  /** Interrupts requested of the local APICs. */
  delivered: number
  /**
   * Requests the local APICs refused (a vector below 16, a destination no vCPU has):
   * hardware drops them and sets an error in the APIC's ESR; so does this.
   */
  refused: number
}

/**
 * The message an I/O APIC writes for redirection entry `e` (Intel VT-d 5.1.5.1, "I/O
 * APICs"; the ICH's I/O APIC, as QEMU's `ioapic_entry_parse` builds it): entry bits 63:48
 * become address bits 19:4 (the destination, or the interrupt index and format bit of
 * a remappable entry), bit 11 address bit 2; the vector, delivery and trigger modes
 * the data.
 */
export function ioapicMessage(e: bigint, vector: number): MsiMessage {
  checkUnsignedBigint('ioapicMessage: entry', e)
  checkInteger('ioapicMessage: vector', vector, 0, 0xff)
  const address = 0xfee0_0000n | (((e >> 48n) & 0xffffn) << 4n) | (((e >> 11n) & 1n) << 2n)
  const level = (e & LEVEL) !== 0n
  const data = (vector & 0xff) | (Number((e >> 8n) & 7n) << 8) | (level ? (1 << 15) | (1 << 14) : 0)
  return { address, data }
}

/** One redirection entry as its two 32-bit registers (IOREDTBL low and high). */
export interface IoApicEntryState {
  low: number
  high: number
}

/** The I/O APIC's state ({@link IoApic.save}). */
export interface IoApicState {
  version: 1
  /** The APIC ID (bits 27:24 of register 0). */
  id: number
  /** IOREGSEL: the register IOWIN reaches. */
  select: number
  /** The 24 redirection entries. */
  entries: IoApicEntryState[]
  /**
   * The input lines asserted now, bit n for pin n, whatever the pin's trigger mode: a
   * level-triggered pin delivers while its bit is set; an edge-triggered one only at
   * the rising edge, so nothing is pending on it.
   */
  irr: number
}

const ENTRY_STATE: Check<IoApicEntryState> = (what, v) => {
  const e = record<IoApicEntryState>({ low: u32, high: u32 })(what, v)
  // Delivery status is never held; remote IRR only on a level-triggered pin.
  if ((e.low & Number(DELIVERY_STATUS)) !== 0 || ((e.low & Number(REMOTE_IRR)) !== 0 && (e.low & Number(LEVEL)) === 0)) {
    throw invalid(`${what}.low`, 'an entry without delivery status, and with remote IRR only when level-triggered', hex(e.low))
  }
  return e
}

const STATE: Schema<IoApicState> = {
  version: version(1),
  id: int(0, 0xf),
  select: u8,
  entries: list(ENTRY_STATE, IOAPIC_PINS, IOAPIC_PINS),
  irr: int(0, 2 ** IOAPIC_PINS - 1),
}

/** The I/O APIC: an MMIO device and the inputs of 24 interrupt lines. */
export class IoApic implements MmioDevice, IrqSink, Saveable<IoApicState> {
  private id = 0
  private select = 0
  private readonly entries = new Array<bigint>(IOAPIC_PINS).fill(MASKED)
  /**
   * The input lines asserted now, bit n for pin n, in either trigger mode: a pin
   * reprogrammed from edge to level while its line is high is then delivered.
   */
  private irr = 0
  readonly stats: IoApicStats = { delivered: 0, refused: 0 }
  /**
   * Interrupt remapping (an {@link IntelIommu} sets it): each interrupt leaves as the
   * message the I/O APIC writes upstream and is delivered as the message this gives
   * back, or dropped where it gives none (no local APIC accepted it: a level-triggered
   * entry's remote IRR stays clear). A level-triggered entry's EOI is matched by its own
   * vector, which VT-d 5.1.5.1 has software program to the IRTE's. Undefined: entries are delivered as they say.
   */
  interruptRemapping: ((message: MsiMessage) => MsiMessage | undefined) | undefined

  constructor(
    /** Delivers a request to the local APICs: `vm.deviceInterrupt` (or `vm.requestInterrupt`). */
    private readonly deliver: (request: InterruptRequest) => void,
    /** The 8259's acknowledge, for pins in ExtINT mode: the vector it gives. */
    private readonly extint?: () => number | undefined,
  ) {}

  /** Redirection entry `pin` (for tests and the REPL). */
  entry(pin: number): bigint {
    this.checkPin(pin)
    return this.entries[pin] as bigint
  }

  private checkPin(pin: number): void {
    if (!Number.isInteger(pin) || pin < 0 || pin >= IOAPIC_PINS) {
      throw new MshvError('EINVAL', `I/O APIC pin must be an integer in 0..${IOAPIC_PINS - 1}, got ${describe(pin)}`)
    }
  }

  /** Input `pin` is asserted (or not): the line's level, whatever its polarity bit says (the board inverts active-low lines). */
  setIrq(pin: number, asserted: boolean): void {
    this.checkPin(pin)
    const bit = 1 << pin
    this.irr = asserted ? this.irr | bit : this.irr & ~bit
    const e = this.entries[pin] as bigint
    if ((e & LEVEL) !== 0n) this.service(pin)
    else if (asserted && (e & MASKED) === 0n) {
      // A rising edge (lines call this only on a change). On a masked pin it is lost,
      // not held for the unmask (82093AA datasheet, IOREDTBL bit 16: "edge-sensitive
      // interrupts signaled on a masked interrupt pin are ignored"; QEMU's
      // ioapic_set_irq drops it too): kvm-unit-tests' ioapic.c test_ioapic_edge_mask
      // expects one interrupt from a masked edge and an unmasked one.
      this.send(pin)
    }
  }

  /**
   * Delivers a level-triggered pin's interrupt if its line is asserted, it is unmasked
   * and not awaiting EOI (remote IRR); the datasheet's level pin is sensed whenever
   * those hold, so one asserted while masked is delivered at the unmask. An
   * edge-triggered pin delivers only at its rising edge ({@link setIrq}).
   */
  private service(pin: number): void {
    const e = this.entries[pin] as bigint
    if ((e & LEVEL) === 0n || (this.irr & (1 << pin)) === 0 || (e & (MASKED | REMOTE_IRR)) !== 0n) return
    this.send(pin)
  }

  /** Sends pin's interrupt to the local APICs as its entry says; a level one sets remote IRR. */
  private send(pin: number): void {
    let e = this.entries[pin] as bigint
    const level = (e & LEVEL) !== 0n
    let kind = MODES[Number((e >> 8n) & 7n)]
    let vector = Number(e & 0xffn)
    let destination = Number(e >> 56n)
    let logical = (e & (1n << 11n)) !== 0n
    const remap = this.interruptRemapping
    if (remap !== undefined) {
      const m = remap(ioapicMessage(e, vector))
      if (m === undefined) return // blocked: the IOMMU counts it and records the fault
      // A compatibility-format message (SDM vol 3 11.11.1-2): destination in address
      // bits 19:12, destination mode bit 2; vector and delivery mode in the data.
      kind = MODES[(m.data >> 8) & 7]
      vector = m.data & 0xff
      destination = Number((m.address >> 12n) & 0xffn)
      logical = (m.address & 4n) !== 0n
    }
    if (kind === undefined) return
    if (kind === 'extint') {
      const v = this.extint?.()
      if (v === undefined) return
      vector = v
    }
    if (level) {
      e |= REMOTE_IRR
      this.entries[pin] = e
    }
    try {
      this.deliver({ kind, vector, destination, logical, level })
      this.stats.delivered++
    } catch (err) {
      if (!(err instanceof MshvError) || err.code !== 'EINVAL') throw err
      this.stats.refused++
      if (level) this.entries[pin] = e & ~REMOTE_IRR
    }
  }

  /** A local APIC's EOI of `vector`: level pins with it leave remote IRR and, if still asserted, fire again. */
  eoi(vector: number): void {
    for (let pin = 0; pin < IOAPIC_PINS; pin++) {
      const e = this.entries[pin] as bigint
      if ((e & REMOTE_IRR) !== 0n && Number(e & 0xffn) === vector) {
        this.entries[pin] = e & ~REMOTE_IRR
        this.service(pin)
      }
    }
  }

  private readRegister(index: number): number {
    switch (index) {
      case 0x00:
        return (this.id & 0xf) << 24
      case 0x01:
        return ((IOAPIC_PINS - 1) << 16) | VERSION
      case 0x02:
        return (this.id & 0xf) << 24
      default: {
        const pin = (index - 0x10) >> 1
        if (index < 0x10 || pin >= IOAPIC_PINS) return 0xffff_ffff
        const e = this.entries[pin] as bigint
        return Number((index & 1) === 0 ? e & 0xffff_ffffn : e >> 32n)
      }
    }
  }

  private writeRegister(index: number, value: number): void {
    if (index === 0x00) {
      this.id = (value >>> 24) & 0xf
      return
    }
    const pin = (index - 0x10) >> 1
    if (index < 0x10 || pin >= IOAPIC_PINS) return
    const old = this.entries[pin] as bigint
    const v = BigInt(value >>> 0)
    const written = (index & 1) === 0 ? (old & 0xffff_ffff_0000_0000n) | v : (old & 0xffff_ffffn) | (v << 32n)
    this.entries[pin] = (written & WRITABLE) | (old & (REMOTE_IRR | DELIVERY_STATUS))
    // An edge pin keeps no stale remote IRR; unmasking (or switching to level) a level
    // pin whose line is high delivers it. No edge is ever pending: setIrq drops one on
    // a masked pin.
    if ((written & LEVEL) === 0n) this.entries[pin] = (this.entries[pin] as bigint) & ~REMOTE_IRR
    this.service(pin)
  }

  mmioRead(offset: number, size: number): bigint {
    if (offset === IOREGSEL) return BigInt(this.select)
    if (offset === IOWIN && size === 4) return BigInt(this.readRegister(this.select))
    return 0n
  }

  mmioWrite(offset: number, size: number, value: bigint): void {
    const v = Number(value & 0xffff_ffffn)
    if (offset === IOREGSEL) this.select = v & 0xff
    else if (offset === IOWIN && size === 4) this.writeRegister(this.select, v)
    else if (offset === IOEOI) this.eoi(v & 0xff)
  }

  /** The ID, the register select, the redirection entries and the pins pending. */
  save(): IoApicState {
    return {
      version: 1,
      id: this.id,
      select: this.select,
      entries: this.entries.map((e) => ({ low: Number(e & 0xffff_ffffn), high: Number(e >> 32n) })),
      irr: this.irr,
    } satisfies IoApicState
  }

  /**
   * Restores what {@link save} gave; `EINVAL` (and nothing changed) for a bad state.
   * Nothing is delivered: the state is one the I/O APIC had settled in.
   */
  restore(state: IoApicState): void {
    const { version: _, id, select, entries, irr, ...rest } = parseState('ioapic.restore: state', state, STATE)
    noneLeft(rest)
    this.id = id
    this.select = select
    entries.forEach((e, pin) => (this.entries[pin] = (BigInt(e.high) << 32n) | BigInt(e.low)))
    this.irr = irr
  }
}
