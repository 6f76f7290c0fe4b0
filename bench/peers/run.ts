/**
 * `npm run bench:peers`: issue #20's workloads (bench/peers/workloads.asm, one source,
 * assembled once by NASM) on the sim (its interpreter and its translator, issue #31)
 * and, where installed, QEMU's TCG and Bochs (a ROM
 * that enters long mode and brackets the call with "{S}" and "{E}" on port 0xE9, timed
 * from the host as the markers arrive), Unicorn and the host CPU (the same function
 * bytes, called through bench/peers/peer.py). Median of 3 runs (`--rounds=N` for more);
 * `--only=TEXT` measures the workloads whose names hold TEXT. Instruction counts are
 * the sim's exact count of the call. Writes bench/peers.json. `bench/peers/install.sh`
 * installs the peers (Debian packages and the unicorn PyPI package).
 * @module
 */
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createVm } from '../../index.js'

const DIR = 'bench/peers'
const GUESTS = 'crates/hv-sim/tests/guests'
/** Workload, repetitions (each about 300 M instructions, or 128 MiB for movsb), unit. */
const WORKLOADS = [
  { name: 'ALU loop (add/xor/sub/dec/jnz)', reps: 60, bytes: 0 },
  { name: 'byte checksum (load/add/store)', reps: 760, bytes: 0 },
  { name: 'qword copy loop', reps: 6000, bytes: 0 },
  { name: 'recursive fib (call/ret/push/pop)', reps: 1300, bytes: 0 },
  { name: '`rep movsb` (MB/s)', reps: 2048, bytes: 65536 },
  { name: 'TLB-alias copy (qword copy 4 MiB apart)', reps: 6000, bytes: 0 },
] as const
const flag = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const ROUNDS = Number(flag('rounds') ?? 3)
if (!Number.isInteger(ROUNDS) || ROUNDS < 1 || ROUNDS > 99) throw new Error(`--rounds must be a whole number from 1 to 99, got ${flag('rounds')}`)
const ONLY = flag('only')
const RUNNERS = ['interpreter', 'translator', 'bochs', 'unicorn', 'qemu', 'native'] as const
type Runner = (typeof RUNNERS)[number]

const work = mkdtempSync(join(tmpdir(), 'mshv-peers-'))
const have = (cmd: string): boolean => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

function rom(index: number, reps: number): string {
  const out = join(work, `rom${index}-${reps}.bin`)
  execFileSync('nasm', ['-f', 'bin', `-DWORKLOAD=${index}`, `-DREPS=${reps}`, '-I', `${GUESTS}/`, '-I', `${DIR}/`, '-o', out, `${DIR}/rom.asm`])
  return out
}

/**
 * Seconds between 'S' and 'E' in a child's output, killing it after 'E'; with
 * `fromSpawn`, from the spawn instead (for a child that buffers its output).
 */
function markers(cmd: string, args: string[], fromSpawn = false, timeoutMs = 300_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const spawned = performance.now()
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let start = fromSpawn ? spawned : 0
    let text = ''
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${cmd}: no '{E}' within ${timeoutMs} ms`))
    }, timeoutMs)
    const seen = (chunk: Buffer): void => {
      const t = performance.now()
      text += chunk.toString('latin1')
      if (start === 0 && text.includes('{S}')) start = t
      if (start !== 0 && text.includes('{E}')) {
        clearTimeout(timer)
        child.kill('SIGKILL')
        resolve((t - start) / 1000)
      }
    }
    child.stdout.on('data', seen)
    child.stderr.on('data', seen)
    child.on('error', reject)
    // A peer that stops without '{E}' (Bochs without its display library panics at once)
    // fails now, not at the timeout.
    child.on('close', (code) => {
      clearTimeout(timer)
      if (!text.includes('{E}')) reject(new Error(`${cmd} exited (${code}) before '{E}': ${text.slice(-300)}`))
    })
  })
}

/** The sim running the same ROM on tier `cpu`: seconds between the markers and the instructions retired between them. */
function simRom(path: string, cpu: 'interpreter' | 'translator'): { seconds: number; instructions: number } {
  const image = readFileSync(path)
  const vm = createVm({ backend: 'sim', cpu })
  try {
    vm.addRam(0, 0xf_0000)
    vm.addRam(0x10_0000, 15 << 20)
    vm.addRom(0xf_0000, image)
    vm.addRom(0xffff_0000, image)
    const vcpu = vm.createVcpu(0)
    let t0 = 0
    let i0 = 0
    let result = { seconds: 0, instructions: 0 }
    vm.bus.register(0xe9, 1, {
      ioWrite: (_p, _s, v) => {
        const c = String.fromCharCode(v & 0xff)
        // "{S}" and "{E}": the middle letter is the marker.
        if (c === 'S') {
          i0 = vcpu.stats().instructions
          t0 = performance.now()
        } else if (c === 'E') {
          result = { seconds: (performance.now() - t0) / 1000, instructions: vcpu.stats().instructions - i0 }
        }
      },
    })
    const r = vcpu.run({ timeoutMs: 600_000 })
    if (r.reason !== 'debug-exit') throw new Error(`the sim's ROM run ended with ${JSON.stringify(r)}`)
    return result
  } finally {
    vm.close()
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number

async function main(): Promise<void> {
  const functions = join(work, 'functions.bin')
  execFileSync('nasm', ['-f', 'bin', '-o', functions, `${DIR}/workloads.asm`])
  const python = have('python3')
  const unicorn = python && (() => {
    try {
      execFileSync('python3', ['-c', 'import unicorn'], { stdio: 'ignore' })
      return true
    } catch {
      return false
    }
  })()
  const available: Record<Runner, boolean> = { interpreter: true, translator: true, bochs: have('bochs') && have('script'), unicorn, qemu: have('qemu-system-x86_64'), native: python }
  const bochsrc = join(work, 'bochsrc')
  const rows: { workload: string; unit: string; values: Partial<Record<Runner, number>> }[] = []
  for (const [index, w] of WORKLOADS.entries()) {
    if (ONLY !== undefined && !w.name.includes(ONLY)) continue
    const romPath = rom(index, w.reps)
    const values: Partial<Record<Runner, number>> = {}
    const samples: Partial<Record<Runner, number[]>> = {}
    let instructions = 0
    for (let round = 0; round < ROUNDS; round++) {
      for (const runner of RUNNERS) {
        if (!available[runner]) continue
        let seconds: number
        if (runner === 'interpreter' || runner === 'translator') {
          const r = simRom(romPath, runner)
          seconds = r.seconds
          instructions = r.instructions
        } else if (runner === 'qemu') {
          seconds = await markers('qemu-system-x86_64', ['-nodefaults', '-nographic', '-display', 'none', '-machine', 'pc', '-m', '16', '-cpu', 'max', '-no-reboot', '-bios', romPath, '-debugcon', 'stdio', '-device', 'isa-debug-exit,iobase=0xf4,iosize=1'])
        } else if (runner === 'bochs') {
          // Bochs (Debian's has the debugger built in: a command file continues it, and
          // `script` gives its terminal GUI a tty) delivers the port 0xE9 output late,
          // so its time is that of the whole run at `reps` less that at a tenth of them.
          const bochs = async (path: string): Promise<number> => {
            writeFileSync(
              bochsrc,
              `megs: 16\nromimage: file=${path}\nvgaromimage: file=/usr/share/vgabios/vgabios-stdvga.bin\ncpu: model=corei7_sandy_bridge_2600k, ips=100000000\nport_e9_hack: enabled=1\ndisplay_library: term\nplugin_ctrl: speaker=0, sb16=0, es1370=0, usb_uhci=0\nlog: /dev/null\n`,
            )
            writeFileSync(join(work, 'bochs.rc'), 'c\n')
            return markers('script', ['-qc', `bochs -q -f ${bochsrc} -rc ${join(work, 'bochs.rc')}`, '/dev/null'], true)
          }
          const small = Math.max(1, Math.floor(w.reps / 10))
          seconds = ((await bochs(romPath)) - (await bochs(rom(index, small)))) * (w.reps / (w.reps - small))
        } else {
          seconds = Number(execFileSync('python3', [`${DIR}/peer.py`, runner, functions, String(index), String(w.reps)], { encoding: 'utf8' }).trim())
        }
        ;(samples[runner] ??= []).push(seconds)
      }
    }
    for (const runner of RUNNERS) {
      const s = samples[runner]
      if (!s) continue
      const t = median(s)
      values[runner] = w.bytes ? (w.bytes * w.reps) / t / 1e6 : instructions / t / 1e6
    }
    rows.push({ workload: w.name, unit: w.bytes ? 'MB/s' : 'M instr/s', values })
    console.error(`${w.name}: ${RUNNERS.map((r) => `${r} ${values[r]?.toFixed(0) ?? '-'}`).join(', ')}`)
  }
  const fmt = (v: number | undefined): string => (v === undefined ? 'not installed' : v.toLocaleString('en-US', { maximumFractionDigits: 0 }))
  const ratio = (a: number | undefined, b: number | undefined): string => (a && b ? `${(a / b).toFixed(2)}x` : '-')
  console.log(`| workload | sim ${RUNNERS.join(' | ')} | interpreter / Bochs | translator / QEMU |`)
  console.log(`| --- | ${RUNNERS.map(() => '---').join(' | ')} | --- | --- |`)
  for (const r of rows) {
    const v = r.values
    console.log(`| ${r.workload} | ${RUNNERS.map((x) => fmt(v[x])).join(' | ')} | ${ratio(v.interpreter, v.bochs)} | ${ratio(v.translator, v.qemu)} |`)
  }
  writeFileSync('bench/peers.json', `${JSON.stringify({ date: new Date().toISOString(), rows }, null, 2)}\n`)
  console.log('\nwritten to bench/peers.json')
}

await main()
