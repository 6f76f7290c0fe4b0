/**
 * QEMU's VMware backdoor (port 0x5658, `hw/i386/vmport.c`): GETVERSION, GETRAMSIZE,
 * GETHZ (the TSC and APIC bus frequencies, which Linux's `arch/x86/kernel/cpu/vmware.c`
 * reads at boot instead of calibrating) and GET_VCPU_INFO.
 *
 * Like QEMU's `vmport_ioport_read`, the device synchronizes the full vCPU state in the
 * middle of the IN, reads and writes EAX/EBX/ECX itself, and returns EAX's new value;
 * the PIO handler then merges that into RAX and advances RIP on the same synced state.
 * A command it does not know returns EAX unchanged, as QEMU's does.
 * @module
 */
import type { AccessContext, PioDevice } from '../bus.js'

/** The backdoor port. */
export const VMPORT_PORT = 0x5658
/** EAX must hold this magic for a command to run. */
export const VMPORT_MAGIC = 0x564d5868
/** Command: report the version; EBX receives the magic. */
export const VMPORT_CMD_GETVERSION = 10
/** Command: report the RAM size in EAX; EBX receives 0x1177. */
export const VMPORT_CMD_GETRAMSIZE = 20
/** Command: the TSC frequency in EBX:EAX (Hz), the APIC bus frequency in ECX; EBX = 0xffffffff when unknown. */
export const VMPORT_CMD_GETHZ = 45
/** Command: vCPU facts; bit 31 reserved (clear), bit 3 legacy x2APIC (not offered). */
export const VMPORT_CMD_GET_VCPU_INFO = 68

/** What the backdoor knows of the machine. */
export interface VmPortInfo {
  /** Guest RAM in bytes. */
  ramSize: () => number
  /** The TSC's and the APIC timer's frequencies (Hz), when known (GETHZ). */
  clocks?: { tscHz: number; apicTimerHz: number }
}

/** The vmport device. */
export class VmPort implements PioDevice {
  private readonly info: VmPortInfo

  /** `info`: the machine's facts (a function alone is the RAM size). */
  constructor(info: VmPortInfo | (() => number)) {
    this.info = typeof info === 'function' ? { ramSize: info } : info
  }

  /** GETHZ and GET_VCPU_INFO answers, and how many commands ran, by number. */
  readonly commands = new Map<number, number>()

  ioRead(_port: number, _size: number, ctx: AccessContext): number {
    const regs = ctx.regs
    regs.synchronize()
    const eax = Number(regs.get('rax') & 0xffffffffn)
    if (eax !== VMPORT_MAGIC) return eax
    const command = Number(regs.get('rcx') & 0xffffn)
    this.commands.set(command, (this.commands.get(command) ?? 0) + 1)
    const high = (r: 'rbx' | 'rcx'): bigint => regs.get(r) & ~0xffffffffn
    switch (command) {
      case VMPORT_CMD_GETVERSION:
        regs.set('rbx', high('rbx') | BigInt(VMPORT_MAGIC))
        return 6
      case VMPORT_CMD_GETRAMSIZE:
        regs.set('rbx', high('rbx') | 0x1177n)
        return this.info.ramSize() >>> 0
      case VMPORT_CMD_GETHZ: {
        const c = this.info.clocks
        if (!c) {
          regs.set('rbx', high('rbx') | 0xffffffffn)
          return 0
        }
        const tsc = BigInt(Math.round(c.tscHz))
        regs.set('rbx', high('rbx') | (tsc >> 32n))
        regs.set('rcx', high('rcx') | BigInt(Math.round(c.apicTimerHz) >>> 0))
        return Number(tsc & 0xffffffffn)
      }
      case VMPORT_CMD_GET_VCPU_INFO:
        return 0
      default:
        return eax
    }
  }
}
