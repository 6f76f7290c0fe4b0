import { createVm, enterRealMode, type Vm, type Vcpu, type SyncPolicy } from '../index.js'

export const POLICIES: readonly SyncPolicy[] = ['page', 'hypercall', 'eager']
export const PAGE_MODES = ['on', 'off', 'invalid'] as const
/** How a test vCPU's register page is set up. */
export type PageMode = (typeof PAGE_MODES)[number]

/** A sim VM with 1 MiB of RAM, `code` at 0x1000 and a real-mode vCPU about to run it. */
export function realModeGuest(
  code: readonly number[],
  policy: SyncPolicy = 'page',
  registerPage: PageMode = 'on',
): { vm: Vm; vcpu: Vcpu } {
  const vm = createVm({ backend: 'sim', registerPage, policy })
  vm.addRam(0, 1 << 20)
  vm.write(0x1000, code)
  const vcpu = vm.createVcpu(0)
  enterRealMode(vcpu, 0x1000)
  return { vm, vcpu }
}

export function u32(bytes: Uint8Array, off = 0): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(off, true)
}
