/**
 * Loads the native binding (the napi-rs loader picks the `.node` file for this platform).
 * @module
 */
import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type * as Binding from '../native/binding.cjs'

const require = createRequire(import.meta.url)

/** Finds `native/binding.cjs` from both `src/` (tsx) and `dist/src/` (compiled). */
function locate(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, 'native', 'binding.cjs')
    if (existsSync(candidate)) return candidate
    dir = dirname(dir)
  }
  throw new Error('mshv: native/binding.cjs not found; run `npm run build:native`')
}

/** The raw napi-rs binding. */
export const native: typeof Binding = require(locate()) as typeof Binding
export type NativeVcpu = Binding.Vcpu
export type NativeVm = Binding.Vm
export type NativeGuestMemory = Binding.GuestMemory
export type NativeStats = Binding.NativeStats
export type NativeRegisterPage = Binding.RegisterPage

/** Native resources alive in this process: VMs, vCPUs and guest memory regions. */
export type LiveResources = Binding.LiveResources

/**
 * Counts the native resources alive now. Closing or garbage-collecting a VM, vCPU or
 * memory region releases it exactly once, so a leak check compares two readings.
 */
export function liveResources(): LiveResources {
  return native.liveResources()
}
