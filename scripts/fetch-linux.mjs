#!/usr/bin/env node
/**
 * Fetches the Linux the boot tests and `mshv boot` use: Debian 12's packaged kernel
 * (`linux-image-amd64`'s current `linux-image-6.1.0-*-amd64`) and `busybox-static`,
 * by `apt-get download` and `dpkg-deb -x` into a cache outside the repository
 * (`$MSHV_LINUX_CACHE`, default `~/.cache/mshv-linux`). Prints the paths as JSON:
 * `{ "kernel": ..., "busybox": ..., "package": ... }`. Does nothing when already there.
 *
 *   node scripts/fetch-linux.mjs
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, writeFileSync, readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'

export const cacheDir = process.env.MSHV_LINUX_CACHE ?? join(homedir(), '.cache', 'mshv-linux')

function run(cmd, args, cwd) {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** The kernel package `linux-image-amd64` depends on now (`linux-image-6.1.0-N-amd64`). */
function kernelPackage() {
  const deps = run('apt-cache', ['depends', 'linux-image-amd64'])
  const m = /Depends: (linux-image-[0-9.]+-[0-9]+-amd64)\b/.exec(deps)
  if (!m) throw new Error(`apt-cache depends linux-image-amd64 names no linux-image-*-amd64 package:\n${deps}`)
  return m[1]
}

export function fetchLinux() {
  const manifest = join(cacheDir, 'linux.json')
  if (existsSync(manifest)) {
    const m = JSON.parse(readFileSync(manifest, 'utf8'))
    if (existsSync(m.kernel) && existsSync(m.busybox)) return m
  }
  mkdirSync(cacheDir, { recursive: true })
  const pkg = kernelPackage()
  for (const p of [pkg, 'busybox-static']) run('apt-get', ['download', p], cacheDir)
  const debs = readdirSync(cacheDir).filter((f) => f.endsWith('.deb'))
  const kernelDeb = debs.find((f) => f.startsWith(`${pkg}_`))
  const busyboxDeb = debs.find((f) => f.startsWith('busybox-static_'))
  if (!kernelDeb || !busyboxDeb) throw new Error(`apt-get download left no ${pkg} or busybox-static package in ${cacheDir}`)
  const root = join(cacheDir, 'root')
  run('dpkg-deb', ['-x', kernelDeb, root], cacheDir)
  run('dpkg-deb', ['-x', busyboxDeb, root], cacheDir)
  const vmlinuz = readdirSync(join(root, 'boot')).find((f) => f.startsWith('vmlinuz-'))
  if (!vmlinuz) throw new Error(`${kernelDeb} holds no /boot/vmlinuz-*`)
  const m = { kernel: join(root, 'boot', vmlinuz), busybox: join(root, 'bin', 'busybox'), package: pkg }
  writeFileSync(manifest, JSON.stringify(m, null, 2))
  return m
}

if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    console.log(JSON.stringify(fetchLinux()))
  } catch (e) {
    console.error(`fetch-linux: ${e instanceof Error ? e.message : e}`)
    process.exit(1)
  }
}
