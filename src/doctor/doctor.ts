/**
 * `mshv doctor`: what the host is, then the backend checklist (what the hypervisor
 * delivers), the VMM checklist (what this package does with it) and the exit-cost
 * experiment, as one report.
 * @module
 */
import { checkObject, invalid } from '../check.js'
import { release, version as osVersion } from 'node:os'
import { native } from '../native.js'
import { MshvError, describe } from '../errors.js'
import { VMM_CHECKS, type DoctorBackend, type VmmCheck } from './vmm-checks.js'
import { exitExperiment, type ExitCost } from './experiment.js'

/** One check's outcome. */
export interface CheckReport {
  /** `backend` (the hypervisor at the VMM boundary) or `vmm` (this package's handling). */
  readonly section: 'backend' | 'vmm'
  readonly name: string
  readonly summary: string
  readonly passed: boolean
  /** What it saw, or why it failed. */
  readonly detail: string
  readonly ms: number
}

/** The host, as far as it can be read without creating a partition. */
export interface HostReport {
  /** `uname -r` and `uname -v`. */
  readonly kernel: string
  readonly node: string
  readonly devicePresent: boolean
  /** Why /dev/mshv cannot be opened read-write, when it cannot. */
  readonly deviceError?: string | undefined
  /** The hypervisor under this kernel (CPUID 0x40000000), when there is one. */
  readonly hypervisor?: string | undefined
  readonly hypervisorVersion?: string | undefined
  /** `HV_PARTITION_PROPERTY_VMM_CAPABILITIES` (hex). */
  readonly vmmCapabilities?: string | undefined
  /** `HV_PARTITION_PROPERTY_PROCESSOR_FEATURES0/1` (hex). */
  readonly processorFeatures?: readonly string[] | undefined
  readonly propertyError?: string | undefined
  /** How partitions are created on this kernel: the host's processor features, or QEMU's arguments and why. */
  readonly partitionPath?: string | undefined
  /** How guest virtual addresses are translated: MSHV_VP_TRANSLATE_GVA, or the hypercall where the kernel lacks it. */
  readonly translateGvaPath?: string | undefined
  /** MSR intercepts the hypervisor refused (the VM runs without them). */
  readonly refusedIntercepts: readonly string[]
  /** Why the kernel paths are not known, when they are not. */
  readonly kernelPathsError?: string | undefined
}

/** Everything `mshv doctor` found. */
export interface DoctorReport {
  readonly package: string
  readonly date: string
  readonly backend: DoctorBackend
  readonly host: HostReport
  readonly checks: readonly CheckReport[]
  /** Exits per second and hypercalls per exit, per case and policy. */
  readonly experiment: readonly ExitCost[]
  /** Why the experiment did not run, when it did not. */
  readonly experimentError?: string | undefined
  /** Every check passed and the experiment ran. */
  readonly passed: boolean
}

/** Options of {@link runDoctor}. */
export interface DoctorOptions {
  /** 'auto' (default: mshv when /dev/mshv opens, else sim), 'sim' or 'mshv'. */
  readonly backend?: 'auto' | DoctorBackend
  /** Measuring time per experiment case in ms (default 200; 0 skips the experiment). */
  readonly experimentMs?: number
  /** Called once the host is read and the backend picked, before any check runs. */
  readonly onStart?: (host: HostReport, backend: DoctorBackend) => void
  /** Called as each check finishes, for a live report. */
  readonly onCheck?: (check: CheckReport) => void
  /** The package version to report. */
  readonly packageVersion?: string
}

/** Reads the host's facts. */
export function hostReport(): HostReport {
  const f = native.hostFacts()
  return {
    kernel: `${release()} ${osVersion()}`,
    node: process.version,
    devicePresent: f.devicePresent,
    deviceError: f.deviceError ?? undefined,
    hypervisor: f.hypervisorVendor ?? undefined,
    hypervisorVersion: f.hypervisorVersion ?? undefined,
    vmmCapabilities: f.vmmCapabilities ?? undefined,
    processorFeatures: f.processorFeatures ?? undefined,
    propertyError: f.propertyError ?? undefined,
    partitionPath: f.partitionPath ?? undefined,
    translateGvaPath: f.translateGvaPath ?? undefined,
    refusedIntercepts: f.refusedIntercepts,
    kernelPathsError: f.kernelPathsError ?? undefined,
  }
}

function pickBackend(backend: unknown, host: HostReport): DoctorBackend {
  if (backend === undefined || backend === 'auto') return host.devicePresent && !host.deviceError ? 'mshv' : 'sim'
  if (backend === 'sim' || backend === 'mshv') return backend
  throw new MshvError('EINVAL', `doctor: backend must be 'auto', 'sim' or 'mshv', got ${describe(backend)}`)
}

async function timed(run: () => string | Promise<string>): Promise<{ passed: boolean; detail: string; ms: number }> {
  const start = performance.now()
  try {
    const detail = await run()
    return { passed: true, detail, ms: performance.now() - start }
  } catch (e) {
    const detail = e instanceof Error ? (e instanceof MshvError ? `${e.code}: ${e.message}` : e.message) : String(e)
    return { passed: false, detail, ms: performance.now() - start }
  }
}

/**
 * Runs the whole doctor: the host report, every backend and VMM check, and (unless
 * `experimentMs` is 0) the exit-cost experiment. A check that fails is reported, not
 * thrown; only bad options throw.
 */
export async function runDoctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  if (typeof options !== 'object' || options === null) throw new MshvError('EINVAL', `doctor: options must be an object, got ${describe(options)}`)
  const experimentMs = options.experimentMs ?? 200
  if (typeof experimentMs !== 'number' || !Number.isFinite(experimentMs) || experimentMs < 0) {
    throw new MshvError('EINVAL', `doctor: experimentMs must be a number of milliseconds >= 0, got ${describe(experimentMs)}`)
  }
  for (const hook of ['onStart', 'onCheck'] as const) {
    if (options[hook] !== undefined && typeof options[hook] !== 'function') throw new MshvError('EINVAL', `doctor: ${hook} must be a function, got ${describe(options[hook])}`)
  }
  const host = hostReport()
  const backend = pickBackend(options.backend, host)
  options.onStart?.(host, backend)
  const checks: CheckReport[] = []
  const report = (c: CheckReport) => {
    checks.push(c)
    options.onCheck?.(c)
  }
  if (backend === 'mshv' && host.deviceError !== undefined) {
    // Nothing can run: one failure that says why, not one per check.
    report({ section: 'backend', name: 'open_device', summary: 'the backend opens', passed: false, detail: host.deviceError, ms: 0 })
    return { package: options.packageVersion ?? 'unknown', date: new Date().toISOString(), backend, host, checks, experiment: [], passed: false }
  }
  for (const c of native.backendChecks()) {
    const r = await timed(() => {
      const result = native.runBackendCheck(backend, c.name)
      if (!result.passed) throw new Error(result.detail)
      return result.detail
    })
    report({ section: 'backend', name: c.name, summary: c.summary, ...r })
  }
  for (const c of VMM_CHECKS as readonly VmmCheck[]) {
    const r = await timed(() => c.run(backend))
    report({ section: 'vmm', name: c.name, summary: c.summary, ...r })
  }
  let experiment: ExitCost[] = []
  let experimentError: string | undefined
  if (experimentMs > 0) {
    try {
      experiment = exitExperiment(experimentMs, backend)
    } catch (e) {
      experimentError = e instanceof Error ? e.message : String(e)
    }
  }
  return {
    package: options.packageVersion ?? 'unknown',
    date: new Date().toISOString(),
    backend,
    host,
    checks,
    experiment,
    experimentError,
    passed: checks.every((c) => c.passed) && experimentError === undefined,
  }
}

/** The section titles of the report. */
export const SECTION_TITLES: Readonly<Record<CheckReport['section'], string>> = {
  backend: 'The hypervisor at the VMM boundary:',
  vmm: "This package's exit handling:",
}

/** The host facts and the backend, as the report's header lines. */
export function formatHost(host: HostReport, backend: DoctorBackend, packageVersion: string): string {
  const lines = [
    `mshv ${packageVersion} doctor`,
    `kernel      ${host.kernel}`,
    `node        ${host.node}`,
    `/dev/mshv   ${host.devicePresent ? (host.deviceError ? `present, but ${host.deviceError}` : 'present, opens read-write') : 'absent'}`,
    `hypervisor  ${host.hypervisor ? `${host.hypervisor}${host.hypervisorVersion ? ` ${host.hypervisorVersion}` : ''}` : 'none reported by CPUID'}`,
  ]
  if (host.vmmCapabilities !== undefined) lines.push(`vmm caps    ${host.vmmCapabilities}`)
  if (host.processorFeatures !== undefined) lines.push(`cpu banks   ${host.processorFeatures.join(' ')}`)
  if (host.propertyError !== undefined) lines.push(`properties  ${host.propertyError}`)
  if (host.partitionPath !== undefined) lines.push(`partitions  ${host.partitionPath}`)
  if (host.translateGvaPath !== undefined) lines.push(`gva xlate   ${host.translateGvaPath}`)
  for (const r of host.refusedIntercepts ?? []) lines.push(`refused     ${r}`)
  if (host.kernelPathsError !== undefined) lines.push(`kernel api  ${host.kernelPathsError}`)
  lines.push(`backend     ${backend}`)
  return lines.join('\n')
}

/** One check as a report line. */
export function formatCheck(c: CheckReport): string {
  return `  ${c.passed ? 'PASS' : 'FAIL'}  ${c.name.padEnd(22)} ${c.detail}`
}

/** The experiment's table and the verdict. */
export function formatConclusion(r: DoctorReport): string {
  const lines: string[] = []
  if (r.experiment.length > 0) {
    lines.push('Exit costs (exits/s, hypercalls/exit):')
    for (const e of r.experiment) {
      lines.push(`  ${`${e.case} [${e.policy}]`.padEnd(36)} ${Math.round(e.exitsPerSecond).toLocaleString('en-US').padStart(11)}  ${e.hypercallsPerExit.toFixed(3)}`)
    }
    lines.push('')
  }
  if (r.experimentError !== undefined) lines.push(`FAIL  experiment: ${r.experimentError}`, '')
  const failed = r.checks.filter((c) => !c.passed).length
  lines.push(r.passed ? `All ${r.checks.length} checks passed on ${r.backend}.` : `${failed} of ${r.checks.length} checks failed on ${r.backend}${r.experimentError === undefined ? '' : ', and the experiment'}.`)
  return lines.join('\n')
}

/** The whole report as text: host facts, one line per check by section, the experiment, the verdict. */
export function formatDoctorReport(r: DoctorReport): string {
  checkObject('formatDoctorReport: the report', r)
  checkObject('formatDoctorReport: the report\'s host', r.host)
  if (!Array.isArray(r.checks) || r.checks.some((c) => typeof c !== 'object' || c === null)) throw invalid("formatDoctorReport: the report's checks", 'an array of checks', r.checks)
  try {
    return formatReport(r)
  } catch (e) {
    // A report not made by runDoctor(): a field of the wrong type deep inside it.
    throw new MshvError('EINVAL', `formatDoctorReport: not a report from runDoctor(): ${e instanceof Error ? e.message : describe(e)}`, { cause: e })
  }
}

function formatReport(r: DoctorReport): string {
  const lines = [formatHost(r.host, r.backend, r.package), '']
  for (const section of ['backend', 'vmm'] as const) {
    lines.push(SECTION_TITLES[section])
    for (const c of r.checks.filter((c) => c.section === section)) lines.push(formatCheck(c))
    lines.push('')
  }
  lines.push(formatConclusion(r))
  return lines.join('\n')
}
