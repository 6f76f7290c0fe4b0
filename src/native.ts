/**
 * Loads the native binding (the napi-rs loader picks the `.node` file for this platform).
 * @module
 */
import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type * as Binding from '../native/binding.cjs'
import { coded } from './errors.js'

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

type Fn = (...args: unknown[]) => unknown

/** `f` with every error it throws (or its promise rejects with) made an MshvError. */
function codedFn(f: Fn): Fn {
  return function (this: unknown, ...args: unknown[]): unknown {
    let result: unknown
    try {
      result = f.apply(this, args)
    } catch (e) {
      throw coded(e)
    }
    if (result instanceof Promise) {
      // An async run settles with its error (to keep the code); surface it as a rejection.
      return result.then((r: unknown) => {
        if (r instanceof Error) throw coded(r)
        return r
      }, (e: unknown) => {
        throw coded(e)
      })
    }
    // `runner()` hands out the per-exit function: its errors are coded too.
    return typeof result === 'function' ? codedRunner(result as () => number) : result
  }
}

/**
 * The per-exit runner with coded errors. Called once per exit, so it takes no rest
 * arguments (an array per call) and adds only a try/catch.
 */
function codedRunner(run: () => number): () => number {
  return () => {
    try {
      return run()
    } catch (e) {
      throw coded(e)
    }
  }
}

/**
 * Makes every error the binding throws an {@link MshvError} with the binding's code:
 * each method and getter of its classes, its static factories and its functions.
 */
function withCodedErrors(binding: typeof Binding): typeof Binding {
  const out: Record<string, unknown> = {}
  for (const [name, value] of Object.entries(binding)) {
    if (typeof value !== 'function') {
      out[name] = value
      continue
    }
    const proto = (value as { prototype?: object }).prototype
    const methods = proto ? Object.getOwnPropertyNames(proto).filter((k) => k !== 'constructor') : []
    if (methods.length === 0 && /^[a-z]/.test(name)) {
      out[name] = codedFn(value as Fn)
      continue
    }
    // A class: patch its prototype and statics in place (instances come from native code).
    for (const key of methods) {
      const d = Object.getOwnPropertyDescriptor(proto, key)
      if (!d) continue
      if (typeof d.value === 'function') Object.defineProperty(proto, key, { ...d, value: codedFn(d.value as Fn) })
      else if (d.get) Object.defineProperty(proto, key, { ...d, get: codedFn(d.get as Fn) as () => unknown })
    }
    for (const key of Object.getOwnPropertyNames(value)) {
      const d = Object.getOwnPropertyDescriptor(value, key)
      if (d && typeof d.value === 'function' && d.writable) Object.defineProperty(value, key, { ...d, value: codedFn(d.value as Fn) })
    }
    out[name] = value
  }
  return out as unknown as typeof Binding
}

/** The napi-rs binding, its errors made {@link MshvError}s. */
export const native: typeof Binding = withCodedErrors(load())

// A guest running on a pool thread would keep `process.exit()` (and the exit after an
// uncaught exception) waiting for it forever: Node joins its pool threads on the way
// out. The 'exit' event comes first, so every vCPU this environment made is cancelled
// there; the binding also cancels them when an environment is torn down (a worker ends).
process.on('exit', () => {
  native.cancelAllVcpus()
})
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
