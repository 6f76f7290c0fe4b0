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

/** This host as napi-rs names platform packages: `linux-x64-gnu`, `linux-arm64-musl`, ... */
export function hostPlatform(): string {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined
  const libc = process.platform !== 'linux' ? '' : report?.header?.glibcVersionRuntime ? '-gnu' : '-musl'
  return `${process.platform}-${process.arch}${libc}`
}

/** The messages of an error and its `cause` chain (the napi-rs loader chains one per attempt). */
function attempts(e: unknown): string[] {
  const out: string[] = []
  for (let c = e; c instanceof Error && out.length < 16; c = c.cause) out.push(c.message.split('\n')[0] ?? '')
  return out
}

/**
 * Loads the binding; when no binary fits this host, a clear `ENOBINARY` error naming the
 * platform, the package it needs and every place the loader tried.
 */
function load(): typeof Binding {
  const path = locate()
  try {
    return require(path) as typeof Binding
  } catch (e) {
    const platform = hostPlatform()
    const err = new Error(
      `mshv: no native binary for this host (${platform}, Node ${process.version}). ` +
        `It needs the package mshv-${platform} (an optional dependency of mshv; reinstall without --omit=optional) ` +
        `or a local build (npm run build:native). Tried: ${attempts(e).join(' | ')}`,
      { cause: e },
    ) as Error & { code: string }
    err.code = 'ENOBINARY'
    throw err
  }
}

/** The raw napi-rs binding. */
export const native: typeof Binding = load()
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
