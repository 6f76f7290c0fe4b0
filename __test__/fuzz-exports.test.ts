/**
 * Every export and every public method, called with hostile arguments (issue #32 item
 * 22): each call works or throws an `MshvError` with a code — never a plain
 * TypeError/RangeError/SyntaxError, an uncoded native error, an abort or a hang.
 *
 * The public surface is read from the package's own types (the TypeScript compiler over
 * `index.ts`), so an export or a method added later is fuzzed without anyone listing it;
 * what is left out is listed below with its reason.
 */
import test from 'ava'
import fc from 'fast-check'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'
import * as mshv from '../index.js'
import { MshvError, type Vm } from '../index.js'
import { realModeGuest } from './helpers.js'
import { describe } from '../src/errors.js'
import { native } from '../src/native.js'

const INDEX = fileURLToPath(new URL('../index.ts', import.meta.url))

/** Exported functions and, per exported class, its public methods (from the compiler). */
function publicSurface(): { functions: string[]; methods: Map<string, string[]> } {
  const program = ts.createProgram([INDEX], { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, strict: true, skipLibCheck: true, noEmit: true, types: ['node'] })
  const checker = program.getTypeChecker()
  const file = program.getSourceFile(INDEX)
  const module = file && checker.getSymbolAtLocation(file)
  if (!module) throw new Error('index.ts has no module symbol')
  const functions: string[] = []
  const methods = new Map<string, string[]>()
  /** The members a class has from the bus-facing interfaces it implements. */
  const busFacing = (declaration: ts.Declaration | undefined, names = new Set<string>()): Set<string> => {
    if (!declaration || !ts.isClassDeclaration(declaration)) return names
    for (const clause of declaration.heritageClauses ?? []) {
      for (const heritage of clause.types) {
        if (clause.token === ts.SyntaxKind.ExtendsKeyword) {
          // A base class's bus-facing members are the subclass's too (Msi extends RegisterCapability).
          const base = checker.getSymbolAtLocation(heritage.expression)
          busFacing(base && base.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(base).valueDeclaration : base?.valueDeclaration, names)
        } else if (BUS_FACING.has(heritage.expression.getText())) {
          for (const member of checker.getPropertiesOfType(checker.getTypeAtLocation(heritage))) names.add(member.name)
        }
      }
    }
    return names
  }
  for (const exported of checker.getExportsOfModule(module)) {
    const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported
    if (symbol.flags & ts.SymbolFlags.Class) {
      const names: string[] = []
      const protocol = busFacing(symbol.valueDeclaration)
      for (const member of checker.getPropertiesOfType(checker.getDeclaredTypeOfSymbol(symbol))) {
        const declaration = member.valueDeclaration
        if (!declaration || !(member.flags & ts.SymbolFlags.Method)) continue
        if (ts.getCombinedModifierFlags(declaration) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) continue
        if (ts.getJSDocTags(declaration).some((tag) => tag.tagName.text === 'internal')) continue
        if (protocol.has(member.name)) continue
        names.push(member.name)
      }
      methods.set(exported.name, names)
    } else if (symbol.flags & ts.SymbolFlags.Function) {
      functions.push(exported.name)
    }
  }
  return { functions, methods }
}

/**
 * The interfaces through which the package's bus and transports call devices: their
 * methods take what the caller has checked (a port in the device's range, a size of 1,
 * 2 or 4, an offset inside the window), as QEMU's MemoryRegionOps and OpenVMM's
 * ChipsetDevice callbacks do, and run on every exit. Devices' own methods are fuzzed.
 */
const BUS_FACING = new Set(['PioDevice', 'MmioDevice', 'WindowHandler', 'PciCapability', 'VirtioDevice'])

/** Left out, each with why: calls whose work is the network, a whole boot or the process. */
const SKIPPED_FUNCTIONS: Record<string, string> = {
  fetchDebianLinux: 'downloads packages (its arguments are checked in inputs.test.ts)',
  buildDebianImage: 'runs mmdebstrap for minutes (debian-image.test.ts)',
  bootLinux: 'boots a kernel (linux-boot.test.ts)',
  prepareLinux: 'fetches and boots a kernel when given nothing (hostile-inputs.test.ts gives it hostile kernels)',
  createSession: 'fetches a kernel for the REPL (repl.test.ts)',
  runDoctor: 'runs every experiment, seconds each (doctor.test.ts)',
  driveConsole: 'waits on a guest console (debian-image.test.ts)',
  setProcessMemoryLimit: 'changes the limit for every other test in this process (boundary.test.ts)',
}

/** Classes the package makes (their constructors take its internals): their methods are fuzzed, not `new`. */
const MADE_BY_THE_PACKAGE: Record<string, string> = {
  Vm: 'createVm()',
  Vcpu: 'vm.createVcpu()',
  GdbServer: 'vm.gdb()',
  GuestRam: 'vm.addRam()',
  GuestMemory: 'vm.memory',
  IoBus: 'vm.bus',
  DeviceWindow: 'bus.window()',
  RegisterCache: 'vcpu.regs',
  Assembly: 'assemble()',
  PcPlatform: 'addPcPlatform()',
  PciHost: 'addPci() / addPcPlatform()',
  TapDevice: 'TapDevice.open() (needs CAP_NET_ADMIN; tap.test.ts)',
  MshvError: 'an error, thrown by the package',
  VirtioError: 'an error, thrown by the queue',
  GuestFatalError: 'an error, thrown by a vCPU at a triple fault (cpu-exits.test.ts)',
  ProgressLine: 'writes to a terminal; made by run({ progress })',
}

/** Classes whose methods are not fuzzed here, each with why. */
const NO_INSTANCE: Record<string, string> = {
  TapDevice: 'opening a TAP needs CAP_NET_ADMIN (tap.test.ts runs it in a user namespace)',
  GdbServer: 'made by vm.gdb(), a server listening on a port; its one method, close(), takes no arguments (gdb.test.ts)',
}

/** Methods left out, each with why. */
const SKIPPED_METHODS: Record<string, string> = {
  'Vm.run': 'runs the guest (scheduler options fuzzed in boundary.test.ts)',
  'Vm.close': 'closes the target (every method is also called after close below)',
  'Vcpu.close': 'closes the target',
  'Vcpu.runAsync': 'runs the guest (boundary.test.ts fuzzes its options)',
  'Vm.snapshot': 'writes a file wherever its path says (snapshot.test.ts gives it bad arguments)',
  'Vm.gdb': 'listens on a TCP port (gdb.test.ts gives it bad options)',
  'PciFunction.configRead': 'called by the PCI host with a checked register offset and size (BUS_FACING above)',
  'PciFunction.configWrite': 'called by the PCI host with a checked register offset and size (BUS_FACING above)',
}

/** A hostile argument: wrong types, edge numbers, huge and detached things, anything. */
function detachedBytes(): Uint8Array {
  const bytes = new Uint8Array(16)
  structuredClone(bytes.buffer, { transfer: [bytes.buffer] })
  return bytes
}
const HUGE_SPARSE = new Array<unknown>(2 ** 32 - 1)
const hostile = fc.oneof(
  fc.constantFrom<unknown>(undefined, null, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 1e300, -1, -0, 0.5, 2 ** 32 - 1, 2 ** 53, '', 'x'.repeat(100), true, 0n, -1n, 2n ** 64n, Symbol('hostile'), {}, [], () => 1),
  fc.constant(HUGE_SPARSE),
  fc.constant(detachedBytes().buffer),
  fc.constant(detachedBytes()),
  fc.integer(),
  fc.string({ maxLength: 8 }),
  fc.uint8Array({ maxLength: 16 }),
  fc.anything(),
)
const hostileArgs = fc.array(hostile, { maxLength: 4 })

/** A small VM for the methods that need one: RAM, a halted vCPU, the PC platform with PCI. */
function machine(): { vm: Vm; vcpu: mshv.Vcpu; pc: mshv.PcPlatform } {
  try {
    const { vm, vcpu } = realModeGuest([0xf4])
    const pc = mshv.addPcPlatform(vm)
    return { vm, vcpu, pc }
  } catch (e) {
    throw new Error(`the fuzzer's machine could not be made: ${String(e)}`, { cause: e })
  }
}

type Machine = ReturnType<typeof machine>

/** An instance of each exported class, on a fresh machine. */
const INSTANCES: Record<string, (m: Machine) => object> = {
  Vm: (m) => m.vm,
  ProgressLine: () => new mshv.ProgressLine({ write: () => true, isTTY: true, columns: 80 } as unknown as ConstructorParameters<typeof mshv.ProgressLine>[0]),
  Vcpu: (m) => m.vcpu,
  GuestRam: (m) => m.vm.addRam(0x20_0000, 0x1000),
  GuestMemory: (m) => m.vm.memory,
  IoBus: (m) => m.vm.bus,
  DeviceWindow: (m) => m.vm.bus.window('mmio', 0x1000, { read: () => 0n, write: () => {} }),
  RegisterCache: (m) => m.vcpu.regs,
  Assembly: () => mshv.assemble('nop', { bitness: 16 }),
  PcPlatform: (m) => m.pc,
  AcpiPm: (m) => new mshv.AcpiPm(() => m.vm.guestTimeNs(), () => {}, () => {}),
  BarLayout: () => new mshv.BarLayout(),
  CpuidTable: () => new mshv.CpuidTable(),
  DebugExit: () => new mshv.DebugExit(),
  FileDisk: () => new mshv.FileDisk(INDEX),
  GuestTimers: (m) => new mshv.GuestTimers(() => m.vm.guestTimeNs()),
  I8042: (m) => m.pc.i8042,
  IntelIommu: (m) => mshv.addIntelIommu(m.pc),
  IoApic: (m) => m.pc.ioapic,
  MemoryDisk: () => new mshv.MemoryDisk(4096),
  Msi: () => new mshv.Msi(1, () => {}),
  Msix: () => new mshv.Msix({ vectors: 2, tableBar: 1, tableOffset: 0, pbaBar: 1, pbaOffset: 0x800, signal: () => {} }),
  NetworkSwitch: () => new mshv.NetworkSwitch(),
  PciFunction: () => new mshv.PciFunction({ name: 'fuzz', vendorId: 0x1af4, deviceId: 0x1000, classCode: 0 }),
  PciHost: (m) => m.pc.pci as object,
  Pic: (m) => m.pc.pic,
  Pit: (m) => m.pc.pit,
  RegisterBank: () => new mshv.RegisterBank(),
  RegisterCapability: () => new mshv.RegisterCapability(9, 8),
  Rtc: (m) => m.pc.rtc,
  Serial16550: (m) => m.pc.serial,
  SymbolTable: () => new mshv.SymbolTable([{ name: 'entry', address: 0x1000n, type: 'T' }], 'fuzz'),
  GuestSymbols: (m) => new mshv.GuestSymbols(m.vm),
  VirtioBlock: () => new mshv.VirtioBlock(new mshv.MemoryDisk(4096)),
  VirtioConsole: () => new mshv.VirtioConsole(),
  VirtioNet: () => new mshv.VirtioNet(),
  VirtioPci: (m) => new mshv.VirtioPci(m.pc.pci as mshv.PciHost, new mshv.VirtioRng()),
  VirtioRng: () => new mshv.VirtioRng(),
  Virtqueue: (m) => new mshv.Virtqueue(0, 256, m.vm.memory),
  VmPort: () => new mshv.VmPort(() => 0),
  WiredIrq: () => new mshv.WiredIrq([]),
}

const surface = publicSurface()
const exports = mshv as unknown as Record<string, unknown>

/** Calls `call` and says what went wrong, if anything: a plain error, a rejection, a hang. */
async function verdict(call: () => unknown): Promise<string | undefined> {
  let r: unknown
  try {
    r = call()
  } catch (e) {
    return coded(e)
  }
  if (!(r instanceof Promise)) return undefined
  const hung = Symbol('hung')
  try {
    const settled = await Promise.race([r, new Promise((resolve) => setTimeout(() => resolve(hung), 5000).unref())])
    return settled === hung ? 'hung for 5 s' : undefined
  } catch (e) {
    return coded(e)
  }
}

function coded(e: unknown): string | undefined {
  if (e instanceof MshvError && typeof e.code === 'string' && e.code.length > 0) return undefined
  const error = e as { name?: string; message?: string; code?: unknown }
  return `${error?.name ?? typeof e}${error?.code === undefined ? '' : ` (${String(error.code)})`}: ${String(error?.message ?? e).slice(0, 200)}`
}

/** Runs per call, and the seed: fixed in CI (a failure replays); FUZZ_RUNS/FUZZ_SEED explore further. */
/** Calls `method` of the object `make` gives on a fresh machine; what went wrong, set-up and close included. */
async function onMachine(make: (m: Machine) => object, method: string, a: unknown[]): Promise<string | undefined> {
  let m: Machine | undefined
  try {
    m = machine()
    const target = make(m) as Record<string, (...x: unknown[]) => unknown>
    return await verdict(() => target[method]?.(...a))
  } catch (e) {
    return `the set-up failed: ${String(e)}`
  } finally {
    try {
      m?.vm.close()
    } catch (e) {
      // eslint-disable-next-line no-unsafe-finally
      return `vm.close() then threw: ${String(e)}`
    }
  }
}

/** One fuzz test: `call` with hostile arguments, what it did wrong logged with the arguments. */
function fuzz(label: string, call: (a: unknown[]) => Promise<string | undefined>): void {
  test(`fuzz: ${label}() works or throws a coded MshvError`, async (t) => {
    await fc.assert(
      fc.asyncProperty(hostileArgs, async (a) => {
        const wrong = await call(a)
        if (wrong) t.log(`${label}(${a.map((x) => describe(x)).join(', ')}) -> ${wrong}`)
        return wrong === undefined
      }),
      { numRuns: RUNS, seed: SEED },
    )
    t.pass()
  })
}

const RUNS = Number(process.env['FUZZ_RUNS'] ?? 40)
const SEED = Number(process.env['FUZZ_SEED'] ?? 0x5eed)

test('the surface read from the types is what the package exports', (t) => {
  for (const name of surface.functions) t.is(typeof exports[name], 'function', name)
  for (const name of surface.methods.keys()) t.is(typeof exports[name], 'function', name)
  for (const [name, methods] of surface.methods) t.true(name in INSTANCES || name in NO_INSTANCE || methods.length === 0, `${name}: give the fuzzer an instance`)
  t.true(surface.functions.length > 40 && surface.methods.size > 35, `${surface.functions.length} functions, ${surface.methods.size} classes`)
})

for (const name of surface.functions.filter((f) => !(f in SKIPPED_FUNCTIONS))) {
  const fn = exports[name] as (...a: unknown[]) => unknown
  fuzz(name, (a) =>
    verdict(() => {
      const r = fn(...a)
      // What a call makes is closed again (createVm's VMs), so the fuzzing holds nothing.
      if (r instanceof mshv.Vm) r.close()
      return r
    }),
  )
}

for (const [cls, names] of surface.methods) {
  const C = exports[cls] as new (...a: unknown[]) => unknown
  if (!(cls in MADE_BY_THE_PACKAGE)) fuzz(`new ${cls}`, (a) => verdict(() => new C(...a)))
  const make = INSTANCES[cls]
  if (!make) continue
  for (const method of names.filter((n) => !(`${cls}.${n}` in SKIPPED_METHODS))) fuzz(`${cls}.${method}`, (a) => onMachine(make, method, a))
}

/**
 * The native binding's classes and functions (`vm.native`, `vcpu.native`, ...), read from
 * the binding itself: napi-rs's conversion errors are `EINVAL`, the binding's own keep
 * their codes.
 */
const NATIVE_SKIPPED: Record<string, string> = {
  runVcpuFunction: 'returns the per-exit run function (runOnce is fuzzed through vcpu.run)',
  setProcessMemoryLimit: SKIPPED_FUNCTIONS['setProcessMemoryLimit'] ?? '',
  cancelAllVcpus: 'cancels every other test\'s vCPUs',
  'Vm.close': 'closes the target',
  'Vcpu.close': 'closes the target',
  'Vcpu.run': 'runs the guest (boundary.test.ts fuzzes its budgets)',
  'Tap.close': 'no TAP is opened here (tap.test.ts)',
  'VcpuThreads.next': 'runs the guest and waits for its exits up to timeoutMs (vcpu-threads.test.ts checks its arguments)',
  'VcpuThreads.resume': 'runs the guest on its thread (vcpu-threads.test.ts checks its arguments)',
}

/** A native object of each class, from a fresh machine. */
const NATIVE_INSTANCES: Record<string, (m: Machine) => object> = {
  Vm: (m) => m.vm.native,
  Vcpu: (m) => m.vcpu.native,
  RegisterPage: (m) => m.vcpu.native.registerPage() as object,
  RunBudget: () => new native.RunBudget({ maxInstructions: 10 }),
  GuestMemory: (m) => m.vm.addRam(0x30_0000, 0x1000).native as object,
  VcpuThreads: (m) => new native.VcpuThreads([m.vcpu.native]),
}

const binding = native as unknown as Record<string, unknown>
for (const [name, value] of Object.entries(binding)) {
  if (typeof value !== 'function' || name in NATIVE_SKIPPED || name.startsWith('__')) continue
  const proto = (value as { prototype?: object }).prototype
  const methods = proto ? Object.getOwnPropertyNames(proto).filter((k) => k !== 'constructor' && typeof Object.getOwnPropertyDescriptor(proto, k)?.value === 'function') : []
  const statics = Object.getOwnPropertyNames(value).filter((k) => typeof (value as unknown as Record<string, unknown>)[k] === 'function')
  if (!/^[A-Z]/.test(name)) {
    fuzz(`native.${name}`, (a) => verdict(() => (value as (...x: unknown[]) => unknown)(...a)))
    continue
  }
  for (const method of statics) fuzz(`native.${name}.${method}`, (a) => verdict(() => (value as unknown as Record<string, (...x: unknown[]) => unknown>)[method]?.(...a)))
  const make = NATIVE_INSTANCES[name]
  if (!make) continue
  for (const method of methods.filter((k) => !(`${name}.${k}` in NATIVE_SKIPPED))) fuzz(`native ${name}.${method}`, (a) => onMachine(make, method, a))
}

test('every native class with methods has an instance for the fuzzer, or a reason', (t) => {
  for (const [name, value] of Object.entries(binding)) {
    const proto = typeof value === 'function' ? (value as { prototype?: object }).prototype : undefined
    const methods = proto ? Object.getOwnPropertyNames(proto).filter((k) => k !== 'constructor') : []
    if (/^[A-Z]/.test(name) && methods.length > 0) t.true(name in NATIVE_INSTANCES || name === 'Hypervisor' || name === 'Tap', `native ${name}`)
  }
})
