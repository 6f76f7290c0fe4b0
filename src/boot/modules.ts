/**
 * Kernel modules for an initramfs: the modules asked for and every module they depend
 * on, taken from a kernel package's `/lib/modules/VERSION/`, with the `modules.dep`
 * that `modprobe` reads. Debian's packages ship no `modules.dep` (depmod makes it when
 * the package is installed), so it is made here the way depmod makes it: from each
 * module's `.modinfo` section, whose `depends=` names the modules it needs (kmod's
 * `libkmod-elf.c` reads the same section).
 * @module
 */
import { readFileSync, readdirSync } from 'node:fs'
import { join, relative } from 'node:path'
import { checkBytes, checkString, checkStrings } from '../check.js'
import { MshvError } from '../errors.js'
import type { CpioEntry } from './cpio.js'

/** A module's name as the kernel and depmod compare them: `-` and `_` are the same. */
export function moduleName(name: string): string {
  checkString('moduleName: name', name, 4096)
  return name.replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_')
}

/** The strings of an ELF64 module's `.modinfo` section (`key=value`). */
export function modinfo(ko: Uint8Array, file = 'module'): string[] {
  checkBytes('modinfo: ko', ko)
  checkString('modinfo: file', file, 4096)
  const bad = (why: string): MshvError => new MshvError('EKERNEL', `${file}: ${why}`)
  if (ko.length < 64 || ko[0] !== 0x7f || ko[1] !== 0x45 || ko[2] !== 0x4c || ko[3] !== 0x46 || ko[4] !== 2) throw bad('not an ELF64 module (compressed modules are not read)')
  const v = new DataView(ko.buffer, ko.byteOffset, ko.byteLength)
  const shoff = Number(v.getBigUint64(0x28, true))
  const shentsize = v.getUint16(0x3a, true)
  const shnum = v.getUint16(0x3c, true)
  const shstrndx = v.getUint16(0x3e, true)
  if (shentsize < 64 || shoff + shnum * shentsize > ko.length || shstrndx >= shnum) throw bad('section headers out of bounds')
  const section = (i: number): { name: number; offset: number; size: number } => {
    const at = shoff + i * shentsize
    return { name: v.getUint32(at, true), offset: Number(v.getBigUint64(at + 0x18, true)), size: Number(v.getBigUint64(at + 0x20, true)) }
  }
  const strtab = section(shstrndx)
  if (strtab.offset + strtab.size > ko.length) throw bad('section names out of bounds')
  const nameOf = (off: number): string => {
    let end = strtab.offset + off
    while (end < strtab.offset + strtab.size && ko[end] !== 0) end++
    return new TextDecoder().decode(ko.subarray(strtab.offset + off, end))
  }
  for (let i = 0; i < shnum; i++) {
    const s = section(i)
    if (nameOf(s.name) !== '.modinfo') continue
    if (s.offset + s.size > ko.length) throw bad('.modinfo out of bounds')
    return new TextDecoder()
      .decode(ko.subarray(s.offset, s.offset + s.size))
      .split('\0')
      .filter((x) => x.length > 0)
  }
  throw bad('no .modinfo section')
}

/** Every `*.ko` under `dir`, by module name, as paths relative to `base`. */
function indexModules(dir: string, base: string, out: Map<string, string>): Map<string, string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) indexModules(p, base, out)
    else if (e.name.endsWith('.ko')) out.set(moduleName(e.name), relative(base, p))
  }
  return out
}

/** Modules resolved for an initramfs. */
export interface ModuleSet {
  /** The kernel version (the directory under /lib/modules). */
  readonly version: string
  /** The modules asked for (their dependencies are loaded with them). */
  readonly requested: readonly string[]
  /** The modules in an order `insmod` can load them: each after what it depends on. */
  readonly order: readonly string[]
  /** The cpio entries: the `.ko` files and `modules.dep` under `lib/modules/VERSION/`. */
  readonly entries: readonly CpioEntry[]
}

/**
 * The modules `names` need, from `modulesDir` (a `/lib/modules/VERSION` directory):
 * `EKERNEL` naming a module that is not there, or a module whose `.modinfo` cannot be read.
 */
export function resolveModules(modulesDir: string, names: readonly string[]): ModuleSet {
  checkString('resolveModules: modulesDir', modulesDir, 4096)
  checkStrings('resolveModules: names', names)
  let index: Map<string, string>
  try {
    index = indexModules(join(modulesDir, 'kernel'), modulesDir, new Map())
  } catch (e) {
    throw new MshvError('ENOENT', `kernel modules: cannot read ${modulesDir}/kernel: ${(e as Error).message}`)
  }
  const version = modulesDir.split('/').filter((x) => x.length > 0).pop() ?? ''
  const deps = new Map<string, string[]>()
  const bytes = new Map<string, Uint8Array>()
  const order: string[] = []
  const visiting = new Set<string>()
  const visit = (name: string, neededBy: string | undefined): void => {
    const n = moduleName(name)
    if (deps.has(n)) return
    if (visiting.has(n)) throw new MshvError('EKERNEL', `kernel modules: ${n} depends on itself through ${neededBy ?? 'its dependencies'}`)
    const path = index.get(n)
    if (!path) throw new MshvError('EKERNEL', `kernel module ${n}${neededBy ? ` (needed by ${neededBy})` : ''} is not in ${modulesDir}`)
    visiting.add(n)
    const ko = readFileSync(join(modulesDir, path))
    const needs = (modinfo(ko, path).find((s) => s.startsWith('depends=')) ?? 'depends=')
      .slice('depends='.length)
      .split(',')
      .filter((x) => x.length > 0)
      .map(moduleName)
    for (const d of needs) visit(d, n)
    visiting.delete(n)
    deps.set(n, needs)
    bytes.set(n, ko)
    order.push(n)
  }
  for (const name of names) visit(name, undefined)
  // modules.dep lists each module's dependencies, all of them, in the reverse of the
  // order they load in: modprobe loads the list from its end (kmod's and busybox's alike).
  const loadOrder = (n: string): string[] => {
    const out: string[] = []
    const seen = new Set<string>()
    const walk = (m: string): void => {
      for (const d of deps.get(m) ?? []) {
        if (seen.has(d)) continue
        seen.add(d)
        walk(d)
        out.push(d)
      }
    }
    walk(n)
    return out
  }
  const closure = (n: string): string[] => loadOrder(n).reverse()
  const path = (n: string): string => index.get(n) as string
  const dep = order.map((n) => `${path(n)}:${closure(n).map((d) => ` ${path(d)}`).join('')}\n`).join('')
  const root = `lib/modules/${version}`
  const dirs = new Set<string>()
  for (const n of order) {
    const parts = `${root}/${path(n)}`.split('/').slice(0, -1)
    for (let i = 1; i <= parts.length; i++) dirs.add(parts.slice(0, i).join('/'))
  }
  const entries: CpioEntry[] = [
    ...[...dirs].sort().map((d): CpioEntry => ({ path: d, type: 'dir' })),
    ...order.map((n): CpioEntry => ({ path: `${root}/${path(n)}`, type: 'file', data: bytes.get(n) as Uint8Array, mode: 0o644 })),
    { path: `${root}/modules.dep`, type: 'file', data: dep, mode: 0o644 },
  ]
  return { version, requested: names.map(moduleName), order, entries }
}
