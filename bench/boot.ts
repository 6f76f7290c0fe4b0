/**
 * The Linux boot as a benchmark: Debian's kernel with a busybox initramfs, from the
 * PVH entry to the /init marker and ACPI poweroff on the sim, once under each sync
 * policy (and once on 2 vCPUs, and once with the translator, `cpu: 'translator'`):
 * host seconds, the exit mix and hypercalls per exit.
 * Skipped, saying why, where Debian's packages cannot be fetched.
 * @module
 */
import { bootLinux, busyboxInitramfs, fetchDebianLinux, POLICIES, type SyncPolicy } from '../index.js'
import type { Row } from './report.js'

const MARKER = 'MSHV-BOOT-MARKER'

export async function bootRows(): Promise<Row[]> {
  let linux
  try {
    linux = fetchDebianLinux()
  } catch (e) {
    console.log(`boot benchmark skipped: ${e instanceof Error ? e.message : e}`)
    return []
  }
  const initrd = busyboxInitramfs({ busybox: linux.busybox, init: `/bin/busybox echo ${MARKER}\n/bin/busybox poweroff -f\n` })
  const rows: Row[] = []
  // The last: 2 vCPUs on the real-time clock, which vm.run() runs on threads of their own.
  type Case = [SyncPolicy, number, 'deterministic' | 'realtime', 'interpreter' | 'translator']
  const cases: Case[] = [
    ...POLICIES.map((p): Case => [p, 1, 'deterministic', 'interpreter']),
    // Beside the first row: the same boot with the translating tier (issue #31).
    ['page', 1, 'deterministic', 'translator'],
    ['page', 2, 'deterministic', 'interpreter'],
    ['page', 2, 'realtime', 'interpreter'],
  ]
  for (const [policy, vcpus, clock, cpu] of cases) {
    let marker = 0
    let seen = ''
    const start = performance.now()
    const r = await bootLinux({
      kernel: linux.kernel,
      initrd,
      cmdline: 'console=ttyS0 cryptomgr.notests',
      vcpus,
      policy,
      clock,
      cpu,
      backend: 'sim',
      rtcStart: new Date(Date.UTC(2026, 10, 25)),
      serial: {
        onByte: (b) => {
          seen = (seen + String.fromCharCode(b)).slice(-MARKER.length)
          if (marker === 0 && seen === MARKER) marker = (performance.now() - start) / 1000
        },
      },
    })
    const mix = Object.entries(r.exitsByType)
      .sort((a, b) => b[1] - a[1])
      .map(([t, n]) => `${t} ${n}`)
      .join(', ')
    rows.push({
      group: 'linux boot',
      case: `${linux.package}, ${vcpus} vCPU${vcpus > 1 ? 's' : ''}${clock === 'realtime' ? ', real-time clock (threaded)' : ''}${cpu === 'translator' ? ', translator' : ''}, to the marker [${policy}]`,
      value: marker,
      unit: 's',
      notes: `${r.result.reason}; ${r.exits} exits (${mix}); ${(r.hypercalls / r.exits).toFixed(3)} hypercalls/exit; ${(r.instructions / 1e6).toFixed(0)} M instructions, ${(r.instructions / r.seconds / 1e6).toFixed(0)} M/s`,
    })
  }
  return rows
}
