/**
 * Register names, generated from the native register table (`crates/hv-core/src/regs.rs`)
 * by `scripts/gen-register-names.mjs` during `npm run build`. Do not edit.
 * @module
 */

/** Every register name the API accepts, in the native table's order. */
export const REGISTER_NAMES = [
  'rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15',
  'rip', 'rflags', 'es', 'cs', 'ss', 'ds', 'fs', 'gs',
  'cr0', 'cr3', 'cr4', 'cr8', 'efer', 'cr2', 'tr', 'ldtr',
  'gdtr', 'idtr', 'apicBase', 'dr0', 'dr1', 'dr2', 'dr3', 'dr6',
  'dr7', 'xmm0', 'xmm1', 'xmm2', 'xmm3', 'xmm4', 'xmm5', 'xmm6',
  'xmm7', 'xmm8', 'xmm9', 'xmm10', 'xmm11', 'xmm12', 'xmm13', 'xmm14',
  'xmm15', 'fpMmx0', 'fpMmx1', 'fpMmx2', 'fpMmx3', 'fpMmx4', 'fpMmx5', 'fpMmx6',
  'fpMmx7', 'fpControlStatus', 'xmmControlStatus', 'tsc', 'pendingEvent0', 'internalActivityState', 'interruptState', 'xfem',
  'kernelGsBase', 'pat', 'sysenterCs', 'sysenterEip', 'sysenterEsp', 'star', 'lstar', 'cstar',
  'sfmask', 'tscAux',
] as const

/** A register name: `regs.get('rax')` type-checks, `regs.get('raxx')` does not. */
export type RegisterName = (typeof REGISTER_NAMES)[number]
