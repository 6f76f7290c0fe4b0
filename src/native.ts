/**
 * Loads the native binding (the napi-rs loader picks the `.node` file for this platform).
 * @module
 */
import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type * as Binding from '../native/binding.cjs'
import { MshvError, coded, describe } from './errors.js'

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
    const file = join(dirname(path), `mshv.${platform}.node`)
    const override = process.env['NAPI_RS_NATIVE_LIBRARY_PATH']
    // One message: what is missing, where it was looked for, the one thing that mends it
    // (the loader's own chain of causes is in `tried`, not printed as five nested errors).
    const err = new Error(
      `mshv: the native addon for ${platform} (Node ${process.version}) is missing: looked for ${override ? `NAPI_RS_NATIVE_LIBRARY_PATH=${override}, ` : ''}${file} and the package mshv-${platform}. ` +
        `Install mshv-${platform} beside mshv (from npm once published, or the tarball 'npm run pack:local' makes in a clone), ` +
        `or set NAPI_RS_NATIVE_LIBRARY_PATH to an mshv .node file; in a clone, 'npm run build:native' builds it.`,
    ) as Error & { code: string; tried: string[] }
    err.code = 'ENOBINARY'
    Object.defineProperty(err, 'tried', { value: attempts(e), enumerable: false })
    throw err
  }
}

type Fn = (...args: unknown[]) => unknown

/**
 * napi-rs's own statuses, which it throws as the code of an argument it cannot convert
 * (`StringExpected` for a number where a path goes, ...): to the caller, an `EINVAL`.
 */
const NAPI_ARGUMENT_STATUSES = new Set(['InvalidArg', 'ObjectExpected', 'StringExpected', 'NameExpected', 'FunctionExpected', 'NumberExpected', 'BooleanExpected', 'ArrayExpected', 'BigintExpected', 'DateExpected', 'ArrayBufferExpected', 'DetachableArraybufferExpected'])

/** A binding error as an {@link MshvError}: its code kept, napi-rs's conversion statuses as `EINVAL`. */
function codedNative(e: unknown): unknown {
  const c = coded(e)
  if (c instanceof MshvError && NAPI_ARGUMENT_STATUSES.has(c.code)) return new MshvError('EINVAL', `${c.message} (${c.code})`, { cause: e })
  // The engine's own refusals (a method called on the wrong object: "Illegal invocation").
  if (!(c instanceof MshvError) && c instanceof Error) return new MshvError('EINVAL', c.message, { cause: e })
  return c
}

/** `f` with every error it throws (or its promise rejects with) made an MshvError. */
function codedFn(f: Fn): Fn {
  return function (this: unknown, ...args: unknown[]): unknown {
    let result: unknown
    try {
      result = f.apply(this, args)
    } catch (e) {
      throw codedNative(e)
    }
    if (result instanceof Promise) {
      // An async run settles with its error (to keep the code); surface it as a rejection.
      return result.then((r: unknown) => {
        if (r instanceof Error) throw codedNative(r)
        return r
      }, (e: unknown) => {
        throw codedNative(e)
      })
    }
    return result
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
    // napi-rs defines its static factories (`Hypervisor.open`) read-only and not
    // configurable: a subclass carries the coded ones, and instances of the binding's
    // class are instances of it.
    const statics = Object.getOwnPropertyNames(value).filter((key) => key !== 'prototype' && typeof Object.getOwnPropertyDescriptor(value, key)?.value === 'function')
    if (statics.length === 0) {
      out[name] = value
      continue
    }
    const base = value as unknown as new (...args: never[]) => object
    const coded = class extends base {}
    for (const key of statics) Object.defineProperty(coded, key, { value: codedFn((value as unknown as Record<string, Fn>)[key] as Fn), writable: true, configurable: true })
    Object.defineProperty(coded, Symbol.hasInstance, { value: (x: unknown) => x instanceof base })
    Object.defineProperty(coded, 'name', { value: name })
    out[name] = coded
  }
  return out as unknown as typeof Binding
}

const binding = load()

/**
 * The binding's one function that runs a vCPU to its next exit, given a runner's id
 * (`crates/mshv-napi/src/runner.rs`): every vCPU's exit loop calls this same function,
 * so V8 keeps its fast path for calls into native code there.
 */
const runVcpu = binding.runVcpuFunction()

/** The napi-rs binding, its errors made {@link MshvError}s. */
export const native: typeof Binding = withCodedErrors(binding)

/**
 * `Vcpu.runner(budget)`: the function a TypeScript exit loop calls once per exit. It
 * runs the vCPU on this thread to its next exit (within `budget` over all its calls)
 * and returns the message type or a run-end code (`layout().exits`), its errors
 * coded. Each runner is a closure of one source over a handle, so the loop's call
 * site sees one function wherever the vCPU came from.
 */
function runner(this: Binding.Vcpu, budget?: Binding.RunBudget | null): () => number {
  const handle = runnerHandle(this, budget)
  return () => runOnce(handle)
}

/** A vCPU's runner: `Vcpu.runnerHandle()` (holding it keeps the runner alive). */
export type RunnerHandle = Readonly<ReturnType<Binding.Vcpu['runnerHandle']>>

/**
 * A new runner of `vcpu` within `budget`. Frozen: its `id` names a slot in the
 * binding's runner table, and a changed one would run another vCPU.
 */
export function runnerHandle(vcpu: Binding.Vcpu, budget?: Binding.RunBudget | null): RunnerHandle {
  return Object.freeze(vcpu.runnerHandle(budget))
}

/**
 * Runs the vCPU of `handle` on this thread to its next exit; returns the message type
 * or a run-end code (`layout().exits`), its errors coded. One function for every vCPU:
 * a loop calling it stays monomorphic (closures per vCPU would not).
 */
export function runOnce(handle: RunnerHandle): number {
  try {
    // The binding answers with bit 31 flipped, a small integer V8 keeps unboxed (a
    // message type, 0x8001xxxx, would be a heap number allocated on every exit).
    return (runVcpu(handle.id) ^ 0x8000_0000) >>> 0
  } catch (e) {
    throw codedNative(e)
  }
}
Object.defineProperty(native.Vcpu.prototype, 'runner', { value: runner, writable: true, configurable: true })

/** More CPUID answers than any processor has leaves and subleaves (a few dozen). */
const MAX_CPUID_ANSWERS = 4096
const bindingSetCpuid = native.Vcpu.prototype.setCpuid
/**
 * The binding converts its argument to a vector before its own checks: a sparse array
 * of length 2^32-1 would ask for 189 GB and abort the process. Its length is checked here.
 */
function setCpuid(this: Binding.Vcpu, answers: Parameters<Binding.Vcpu['setCpuid']>[0]): void {
  if (!Array.isArray(answers) || answers.length > MAX_CPUID_ANSWERS) {
    throw new MshvError('EINVAL', `setCpuid takes an array of at most ${MAX_CPUID_ANSWERS} answers, got ${Array.isArray(answers) ? `an array of ${answers.length}` : describe(answers)}`)
  }
  bindingSetCpuid.call(this, answers)
}
Object.defineProperty(native.Vcpu.prototype, 'setCpuid', { value: setCpuid, writable: true, configurable: true })

// A guest running on its vCPU's thread is stopped before the process exits (after
// `process.exit()` or an uncaught exception), so no run outlives the heap it writes to:
// the 'exit' event comes first, so every vCPU this environment made is cancelled there;
// the binding also cancels them when an environment is torn down (a worker ends).
process.on('exit', () => {
  native.cancelAllVcpus()
})
/** A native vCPU, with the per-exit {@link runner} this module adds to it. */
export type NativeVcpu = Binding.Vcpu & { runner(budget?: Binding.RunBudget | null): () => number }

/** A vCPU the binding made, typed with the `runner` every one has (its prototype's). */
export function nativeVcpu(v: Binding.Vcpu): NativeVcpu {
  return v as NativeVcpu
}
export type NativeVm = Binding.Vm
export type NativeGuestMemory = Binding.GuestMemory
export type NativeStats = Binding.NativeStats
export type NativeVcpuState = Binding.NativeVcpuState
export type NativeRegisterPage = Binding.RegisterPage
export type NativeTripleFault = Binding.NativeTripleFault

/** Native resources alive in this process: VMs, vCPUs and guest memory regions. */
export type LiveResources = Binding.LiveResources

/**
 * Counts the native resources alive now. Closing or garbage-collecting a VM, vCPU or
 * memory region releases it exactly once, so a leak check compares two readings.
 */
export function liveResources(): LiveResources {
  return native.liveResources()
}
