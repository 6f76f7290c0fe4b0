/**
 * QEMU's VMware backdoor (port 0x5658): GETVERSION and GETRAMSIZE.
 *
 * Like QEMU's `vmport_ioport_read`, the device synchronizes the full vCPU state in the
 * middle of the IN, reads and writes EAX/EBX/ECX itself, and returns EAX's new value;
 * the PIO handler then merges that into RAX and advances RIP on the same synced state.
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

/** The vmport device. */
export class VmPort implements PioDevice {
  constructor(private readonly ramSize: () => number) {}

  ioRead(_port: number, _size: number, ctx: AccessContext): number {
    const regs = ctx.regs
    regs.synchronize()
    const eax = Number(regs.get('rax') & 0xffffffffn)
    if (eax !== VMPORT_MAGIC) return eax
    const command = Number(regs.get('rcx') & 0xffffn)
    const rbx = regs.get('rbx') & ~0xffffffffn
    switch (command) {
      case VMPORT_CMD_GETVERSION:
        regs.set('rbx', rbx | BigInt(VMPORT_MAGIC))
        return 6
      case VMPORT_CMD_GETRAMSIZE:
        regs.set('rbx', rbx | 0x1177n)
        return this.ramSize() >>> 0
      default:
        return eax
    }
  }
}
