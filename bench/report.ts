/**
 * Bench results: one table row per measurement, written to stdout and to
 * bench/results.json so runs can be compared.
 * @module
 */
import { writeFileSync, mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import { arch, cpus, platform } from 'node:os'

/** One measured figure. */
export interface Row {
  /** Which comparison it belongs to. */
  group: string
  /** What was measured. */
  case: string
  /** The figure. */
  value: number
  /** Its unit. */
  unit: string
  /** Extra figures (hypercalls per exit, ratios). */
  notes?: string
}

/** Prints `rows` as an aligned table. */
export function printTable(rows: readonly Row[]): void {
  const cells = rows.map((r) => [r.group, r.case, formatValue(r.value), r.unit, r.notes ?? ''])
  const head = ['group', 'case', 'value', 'unit', 'notes']
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]?.length ?? 0)))
  const line = (c: readonly string[]) =>
    c.map((x, i) => (i === 2 ? x.padStart(widths[i] ?? 0) : x.padEnd(widths[i] ?? 0))).join('  ').trimEnd()
  console.log(line(head))
  console.log(widths.map((w) => '-'.repeat(w)).join('  '))
  for (const c of cells) console.log(line(c))
}

function formatValue(v: number): string {
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US')
  return v.toFixed(v >= 10 ? 1 : 3)
}

/** Writes the results with the machine they came from. */
export function writeResults(path: string, backend: string, rows: readonly Row[]): void {
  const cpu = cpus()[0]?.model ?? 'unknown'
  const doc = { date: new Date().toISOString(), backend, node: process.version, platform: `${platform()}-${arch()}`, cpu, rows }
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, JSON.stringify(doc, null, 2) + '\n')
}

export { timeFor } from '../src/doctor/experiment.js'
