/**
 * iced-x86 (the npm package: 0.9 MB of JavaScript and 0.8 MB of WebAssembly), loaded on
 * first use. Parsing and compiling it takes about 60 ms, more than the rest of a
 * guest's start-up together: a script whose guest only does port I/O never pays it.
 * Modules import its types with `import type` and its values through {@link iced}.
 * @module
 */
import { createRequire } from 'node:module'
import type * as Iced from 'iced-x86'

const require = createRequire(import.meta.url)
let loaded: typeof Iced | undefined

/** The iced-x86 module, loaded (synchronously) the first time it is asked for. */
export function iced(): typeof Iced {
  loaded ??= require('iced-x86') as typeof Iced
  return loaded
}

/** Whether iced-x86 has been loaded in this process (start-up tests check it is not). */
export function icedLoaded(): boolean {
  return loaded !== undefined
}

/** A value computed from iced-x86 on first use, then kept. */
export function lazy<T>(make: (i: typeof Iced) => T): () => T {
  let value: T | undefined
  let made = false
  return () => {
    if (!made) {
      value = make(iced())
      made = true
    }
    return value as T
  }
}
