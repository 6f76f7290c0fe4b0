/**
 * `mshv`: script Microsoft Hypervisor virtual machines from TypeScript.
 *
 * ```ts
 * import { createVm, Serial16550, enterRealMode } from 'mshv'
 * const vm = createVm()                 // /dev/mshv when present, else the sim
 * ```
 * @module
 */
export { createVm, setProcessMemoryLimit, Vm, GuestRam, type VmOptions, type RomOptions, type InterruptRequest, type InterruptKind } from './src/vm.js'
export { type VmRunOptions, type VmRunResult } from './src/scheduler.js'
export { GuestTimers, type GuestTimer } from './src/platform/timers.js'
export { WiredIrq, type IrqLine, type IrqSink, type IrqTarget } from './src/platform/irq.js'
export { addPcPlatform, PcPlatform, isaGsi, type PcPlatformOptions } from './src/platform/pc.js'
export { IoApic, IOAPIC_BASE, IOAPIC_SIZE, IOAPIC_PINS, type IoApicStats } from './src/devices/ioapic.js'
export { Pic, PIC_MASTER, PIC_SLAVE, ELCR, type PicStats } from './src/devices/pic.js'
export { Pit, PIT_HZ, PIT_BASE, PORT_61 } from './src/devices/pit.js'
export { Rtc, CMOS_PORT, type RtcOptions } from './src/devices/rtc.js'
export { I8042, I8042_DATA, I8042_COMMAND } from './src/devices/i8042.js'
export type { RomWriteHandler } from './src/emulator/memory.js'
export { STRING_IO_BATCH } from './src/exits/pio.js'
export { Vcpu, type RunResult, type RunOptions, type StepResult, type VcpuStats } from './src/vcpu.js'
export { RegisterCache, POLICIES, type SyncPolicy, type SyncCounters } from './src/registers.js'
export { IoBus, type PioDevice, type MmioDevice, type AccessContext, type BusStats } from './src/bus.js'
export { RegisterBank, type BankAccess } from './src/devices/register-bank.js'
export { Serial16550, COM1, COM1_IRQ, type SerialOptions } from './src/devices/serial.js'
export { DebugExit, DEBUG_EXIT_PORT } from './src/devices/debug-exit.js'
export { VmPort, VMPORT_PORT, VMPORT_MAGIC, VMPORT_CMD_GETVERSION, VMPORT_CMD_GETRAMSIZE } from './src/devices/vmport.js'
export { enterRealMode, enterLongMode, LONG_MODE_TABLES, segment } from './src/guest.js'
export { registers, registerIndex, page, message, messageType, type RegisterDescriptor, type RegisterName } from './src/layout.js'
export { MshvError } from './src/errors.js'
export type { ChromeTrace, TraceEvent } from './src/trace.js'
export { CpuidTable, type CpuidEntry, type CpuidResult } from './src/exits/cpuid.js'
export type { MsrHandler, MsrContext, UnknownMsrPolicy } from './src/exits/msr.js'
export { liveResources, type LiveResources } from './src/native.js'
export { assemble, Assembly, type AssembleOptions, type AssembledLine } from './src/asm/assemble.js'
export { createSession, codeBitness, type Session, type SessionOptions, type SessionMemory } from './src/repl/session.js'
export { ProgressLine, type ProgressStream } from './src/progress.js'
export { runDoctor, formatDoctorReport, hostReport, type DoctorReport, type DoctorOptions, type CheckReport, type HostReport } from './src/doctor/doctor.js'
export type { DoctorBackend } from './src/doctor/vmm-checks.js'
export { exitExperiment, measureExitCost, EXIT_CASES, type ExitCase, type ExitCost } from './src/doctor/experiment.js'
