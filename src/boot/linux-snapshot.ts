/**
 * Snapshots of a Linux machine ({@link prepareLinux}'s): the snapshot keeps the
 * machine's recipe (the options JSON can hold), so {@link restoreLinux} builds the
 * same machine again — in this process or a new one — and restores it; `fork` makes
 * several from one state, sharing the snapshot's pages copy-on-write.
 *
 * Not in a snapshot: disk images (restore opens the same files: a guest that wrote to
 * a disk after the snapshot sees its later writes), the network a card is plugged
 * into, and callbacks (the serial console's `onByte`): give those again.
 * @module
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MshvError, describe } from '../errors.js'
import { checkObject, checkString } from '../check.js'
import { readSnapshotHeader, type SnapshotInfo } from '../snapshot/vm-snapshot.js'
import type { DiskOptions, LinuxMachine, LinuxOptions } from './linux.js'

/** What a snapshot keeps of {@link LinuxOptions}: the options JSON can hold. */
export interface LinuxRecipe {
  readonly kind: 'linux'
  /** The kernel's path, for the record (a restore reads no kernel); null when it was bytes. */
  readonly kernel: string | null
  readonly cmdline?: string
  readonly memory?: number
  readonly vcpus?: number
  readonly backend?: LinuxOptions['backend']
  readonly policy?: LinuxOptions['policy']
  readonly clock?: LinuxOptions['clock']
  readonly cpuid?: LinuxOptions['cpuid']
  readonly rtcStart?: string
  readonly vmware?: boolean
  readonly entry?: LinuxOptions['entry']
  /** Disk image paths (with their options); null for a disk of your own storage. */
  readonly disks: readonly (DiskOptions | null)[]
  /** Whether a network card was there (its network is given again, or it is unplugged). */
  readonly network: boolean
  readonly mac?: string
  readonly rng?: boolean
  readonly virtioConsole: boolean
}

/** The recipe of a machine built from `options`. */
export function linuxRecipe(options: LinuxOptions): LinuxRecipe {
  const o = checkObject<LinuxOptions>('linuxRecipe: options', options)
  const list: unknown = o.disks ?? []
  if (!Array.isArray(list)) throw new MshvError('EINVAL', `linuxRecipe: disks must be an array, got ${describe(list)}`)
  return {
    kind: 'linux',
    kernel: typeof o.kernel === 'string' ? o.kernel : null,
    cmdline: o.cmdline,
    memory: o.memory,
    vcpus: o.vcpus,
    backend: o.backend,
    policy: o.policy,
    clock: o.clock,
    cpuid: o.cpuid,
    rtcStart: o.rtcStart instanceof Date && !Number.isNaN(o.rtcStart.getTime()) ? o.rtcStart.toISOString() : undefined,
    vmware: o.vmware,
    entry: o.entry,
    disks: (list as unknown[]).map((d) => (typeof d === 'string' ? { path: d } : typeof d === 'object' && d !== null && (d as DiskOptions).backend === undefined ? { ...(d as DiskOptions) } : null)),
    network: o.network !== undefined,
    mac: o.mac,
    rng: o.rng,
    virtioConsole: o.virtioConsole !== undefined,
  }
}

function recipeOf(path: string): LinuxRecipe {
  const m = readSnapshotHeader(path).machine as Partial<LinuxRecipe> | undefined
  if (m?.kind !== 'linux') throw new MshvError('EINVAL', `snapshot '${path}' is not of a Linux machine (take it with machine.snapshot())`)
  return m as LinuxRecipe
}

/**
 * Builds the Linux machine of the snapshot at `path` again — the machine only: RAM,
 * devices and vCPUs; its kernel is in the snapshot's memory, so none is read — and
 * restores it: the guest goes on from where it was. `options` adds what the snapshot
 * cannot keep (disks of your own storage, the network, callbacks) or overrides.
 */
export async function restoreLinux(path: string, options: Partial<LinuxOptions> = {}): Promise<LinuxMachine> {
  checkString('restoreLinux: path', path, 4096)
  checkObject('restoreLinux: options', options)
  const { buildLinux } = await import('./linux.js')
  const r = recipeOf(path)
  const disks = options.disks ?? r.disks.map((d, i) => {
    if (d === null) throw new MshvError('EINVAL', `snapshot '${path}': disk ${i} was storage of your own: give the disks again (options.disks)`)
    return d
  })
  // The machine alone: the kernel, initrd and boot data are in the snapshot's memory.
  const m = buildLinux(
    {
      cmdline: r.cmdline,
      memory: r.memory,
      vcpus: r.vcpus,
      backend: r.backend,
      policy: r.policy,
      clock: r.clock,
      cpuid: r.cpuid,
      rtcStart: r.rtcStart === undefined ? undefined : new Date(r.rtcStart),
      vmware: r.vmware,
      entry: r.entry,
      mac: r.mac,
      rng: r.rng,
      network: r.network ? true : undefined,
      virtioConsole: r.virtioConsole ? true : undefined,
      ...options,
      kernel: options.kernel ?? r.kernel ?? '',
      disks,
    },
    false,
  )
  try {
    m.vm.restore(path)
    return m
  } catch (e) {
    m.close()
    throw e
  }
}

/** `machine.snapshot(path)`: the VM's state with the machine's recipe. @internal */
export function snapshotLinux(m: LinuxMachine, options: LinuxOptions, path: string, parent?: string): SnapshotInfo {
  return m.vm.snapshot(path, { machine: linuxRecipe(options), ...(parent === undefined ? {} : { parent }) })
}

/**
 * `machine.fork(count)`: `count` machines in this process from this one's state now,
 * each built again with the original options (and `each(i)`'s), all sharing the
 * snapshot's pages until they write them. @internal
 */
export async function forkLinux(m: LinuxMachine, options: LinuxOptions, count: number, each?: (i: number) => Partial<LinuxOptions>): Promise<LinuxMachine[]> {
  if (!Number.isSafeInteger(count) || count < 1 || count > 4096) throw new MshvError('EINVAL', `fork: count must be an integer from 1 to 4096, got ${String(count)}`)
  if (each !== undefined && typeof each !== 'function') throw new MshvError('EINVAL', 'fork: each must be a function')
  const dir = mkdtempSync(join(tmpdir(), 'mshv-fork-'))
  const path = join(dir, 'fork.snap')
  const forks: LinuxMachine[] = []
  try {
    snapshotLinux(m, options, path)
    for (let i = 0; i < count; i++) forks.push(await restoreLinux(path, { ...options, ...each?.(i) }))
    return forks
  } catch (e) {
    for (const f of forks) f.close()
    throw e
  } finally {
    // The forks' mappings keep the pages: the file's name is not needed.
    rmSync(dir, { recursive: true, force: true })
  }
}
