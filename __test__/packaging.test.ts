/**
 * Installs the package as a user would: `npm pack` the main package and this host's
 * platform package, install both into a fresh project outside the source tree with no
 * cargo on PATH, and run a TypeScript (type-checked), an ESM and a CommonJS script there.
 */
import test from 'ava'
import { execFileSync, spawnSync } from 'node:child_process'
import { accessSync, constants, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { hostPlatform } from '../src/native.js'
// @ts-expect-error: a plain ES module script without types
import { packLocal } from '../scripts/pack-local.mjs'

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
const FIXTURES = join(ROOT, '__test__', 'fixtures', 'packaged')
const PLATFORM_DIR = join(ROOT, 'npm', hostPlatform())

/** PATH without any directory that holds cargo or rustc: the user has no Rust. */
function pathWithoutRust(): string {
  const has = (dir: string, exe: string) => {
    try {
      accessSync(join(dir, exe), constants.X_OK)
      return true
    } catch {
      return false
    }
  }
  return (process.env['PATH'] ?? '')
    .split(delimiter)
    .filter((d) => d !== '' && !has(d, 'cargo') && !has(d, 'rustc'))
    .join(delimiter)
}

interface Packed {
  filename: string
  size: number
  files: { path: string }[]
}

const env = { ...process.env, PATH: pathWithoutRust(), npm_config_fund: 'false', npm_config_audit: 'false', npm_config_update_notifier: 'false' }

function npm(cwd: string, args: string[]): void {
  execFileSync('npm', args, { cwd, env, stdio: ['ignore', 'ignore', 'pipe'] })
}

function project(dir: string): string {
  mkdirSync(dir)
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'packaged-app', private: true, version: '1.0.0' }))
  return dir
}

test.serial('the packed package installs without Rust and runs from TypeScript, ESM and CommonJS', (t) => {
  if (!existsSync(PLATFORM_DIR)) {
    t.log(`skipped: no platform package for ${hostPlatform()} (napi.targets)`)
    t.pass()
    return
  }
  const tmp = mkdtempSync(join(tmpdir(), 'mshv-pack-'))
  try {
    t.is(spawnSync('cargo', ['--version'], { env }).error?.message.includes('ENOENT'), true, 'cargo is not on PATH')
    // What `npm run pack:local` makes (scripts/pack-local.mjs), as the README tells users.
    const packed = packLocal(tmp) as { main: Packed; platform: Packed | undefined }
    const main = packed.main
    const paths = main.files.map((f) => f.path)
    t.true(paths.includes('native/binding.cjs') && paths.includes('dist/index.d.ts'))
    t.true(paths.includes('dist/mshv.js') && paths.includes('dist/mshv-cli.js'), 'the bundles')
    t.true(paths.includes('LICENSE-MIT') && paths.includes('LICENSE-APACHE'), 'both licence texts of MIT OR Apache-2.0')
    t.deepEqual(
      paths.filter((p) => /(^crates\/|^__test__\/|^bench\/|^examples\/|\.rs$|\.test\.|\.node$|Cargo)/.test(p)),
      [],
      'no Rust sources, tests, benches or binaries in the main package',
    )
    t.log(`main package: ${paths.length} files, ${(main.size / 1024).toFixed(1)} KiB packed`)
    const platform = packed.platform
    if (!platform) return t.fail('pack:local made no platform package')
    t.log(`platform package: ${platform.filename}, ${(platform.size / 1024 / 1024).toFixed(2)} MiB packed`)

    const app = project(join(tmp, 'app'))
    const typescript = JSON.parse(readFileSync(join(ROOT, 'node_modules', 'typescript', 'package.json'), 'utf8')) as { version: string }
    npm(app, ['install', '--prefer-offline', join(tmp, main.filename), join(tmp, platform.filename), `typescript@${typescript.version}`, '@types/node@20'])
    for (const f of readdirSync(FIXTURES)) copyFileSync(join(FIXTURES, f), join(app, f))
    execFileSync(join(app, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json'], { cwd: app, env })
    const run = (file: string) => execFileSync(process.execPath, [file], { cwd: app, env, encoding: 'utf8' }).trim()
    const result = '{"reason":"debug-exit","code":7}'
    t.is(run('out/check.js'), `ts sim OK ${result}`)
    t.is(run('check.mjs'), `esm sim OK ${result}`)
    t.is(run('check.cjs'), `cjs sim OK ${result}`)
    // The `mshv` command is linked into node_modules/.bin by the install, as `npx mshv` finds it.
    const version = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version as string
    t.is(execFileSync(join(app, 'node_modules', '.bin', 'mshv'), ['--version'], { cwd: app, env, encoding: 'utf8' }).trim(), version)

    // Without the platform package the loader says what is missing.
    const bare = project(join(tmp, 'bare'))
    npm(bare, ['install', '--prefer-offline', join(tmp, main.filename)])
    copyFileSync(join(FIXTURES, 'check.mjs'), join(bare, 'check.mjs'))
    const r = spawnSync(process.execPath, ['check.mjs'], { cwd: bare, env, encoding: 'utf8' })
    t.not(r.status, 0)
    t.regex(r.stderr, new RegExp(`the native addon for ${hostPlatform()} \\(Node`))
    t.regex(r.stderr, new RegExp(`Install mshv-${hostPlatform()} beside mshv`))
    t.regex(r.stderr, /NAPI_RS_NATIVE_LIBRARY_PATH/)
    t.regex(r.stderr, /code: 'ENOBINARY'/)
    t.notRegex(r.stderr, /\[cause\]/, 'no chain of nested causes')
    // The command answers --version and --help without it, and says the rest in one line.
    const bin = join(bare, 'node_modules', '.bin', 'mshv')
    t.is(execFileSync(bin, ['--version'], { cwd: bare, env, encoding: 'utf8' }).trim(), JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version as string)
    t.regex(execFileSync(bin, ['boot', '--help'], { cwd: bare, env, encoding: 'utf8' }), /--memory MiB/)
    const doctor = spawnSync(bin, ['doctor'], { cwd: bare, env, encoding: 'utf8' })
    t.is(doctor.status, 2)
    t.is(doctor.stderr.trim().split('\n').length, 1, doctor.stderr)
    t.regex(doctor.stderr, /^mshv: the native addon for/)
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
})

test('the manifest says what the package is, and releases say where it lives', (t) => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { license: string; keywords: string[] }
  t.is(pkg.license, 'MIT OR Apache-2.0')
  t.true(existsSync(join(ROOT, 'LICENSE-MIT')) && existsSync(join(ROOT, 'LICENSE-APACHE')))
  t.true(pkg.keywords.includes('hypervisor') && pkg.keywords.includes('mshv'))
  // repository/homepage/bugs name the repository the release runs in (npm provenance checks it).
  const release = readFileSync(join(ROOT, '.github', 'workflows', 'release.yml'), 'utf8')
  for (const field of ['repository.url=git+$repo.git', 'homepage=$repo#readme', 'bugs.url=$repo/issues']) t.true(release.includes(field), field)
  t.regex(release, /cp LICENSE-MIT LICENSE-APACHE "\$dir"/, 'the platform packages carry the licences too')
})

test('every napi target has its npm/<platform> package and a build in the workflow', (t) => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; napi: { targets: string[] } }
  const workflow = readFileSync(join(ROOT, '.github', 'workflows', 'build.yml'), 'utf8')
  const platforms: Record<string, string> = {
    'x86_64-unknown-linux-gnu': 'linux-x64-gnu',
    'aarch64-unknown-linux-gnu': 'linux-arm64-gnu',
    'x86_64-unknown-linux-musl': 'linux-x64-musl',
  }
  t.deepEqual(pkg.napi.targets.slice().sort(), Object.keys(platforms).sort())
  for (const target of pkg.napi.targets) {
    const platform = platforms[target] ?? ''
    const m = JSON.parse(readFileSync(join(ROOT, 'npm', platform, 'package.json'), 'utf8')) as { name: string; version: string; main: string; os: string[] }
    t.is(m.name, `mshv-${platform}`)
    t.is(m.version, pkg.version, `${m.name} moves with the main package's version`)
    t.is(m.main, `mshv.${platform}.node`)
    t.deepEqual(m.os, ['linux'])
    t.regex(workflow, new RegExp(`target: ${target}\\b`), `build.yml builds ${target}`)
  }
})
