/**
 * `npm run bench`: every comparison is measured side by side in this one run and
 * written to bench/results.json and as a table to stdout.
 *
 * Usage: node dist/bench/run.js [--ms=N]   (N: measuring time per case, default 1000)
 * @module
 */
import { interpreterSpeed } from './interpreter.js'
import { exitCosts } from './exits.js'
import { interruptLatency, threadedPairRate, vmRunRates } from './vm-run.js'
import { bootRows } from './boot.js'
import { virtioRows } from './virtio.js'
import { snapshotRows } from './snapshot.js'
import { printTable, writeResults, type Row } from './report.js'

const msArg = process.argv.find((a) => a.startsWith('--ms='))
const ms = msArg ? Number(msArg.slice(5)) : 1000
if (!Number.isFinite(ms) || ms <= 0) throw new Error(`--ms must be a positive number of milliseconds, got ${msArg}`)

const rows: Row[] = [...exitCosts(ms), ...(await vmRunRates(ms)), ...(await threadedPairRate(ms)), ...(await interruptLatency()), ...interpreterSpeed(ms), ...(await bootRows()), ...(await snapshotRows()), ...(await virtioRows())]
printTable(rows)
writeResults('bench/results.json', 'sim', rows)
console.log('\nwritten to bench/results.json')
