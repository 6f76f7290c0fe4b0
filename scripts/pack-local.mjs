// `npm run pack:local [DIR]`: the two tarballs a project installs until `mshv` is on the
// npm registry — the main package, and this host's platform package with the addon just
// built (npm/<platform> staged with native/<addon>), as a release would publish them.
// The packaging test installs what this makes.
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))

/** This host as napi-rs names platform packages (as src/native.ts's hostPlatform). */
function hostPlatform() {
  const report = process.report?.getReport()
  const libc = process.platform !== 'linux' ? '' : report?.header?.glibcVersionRuntime ? '-gnu' : '-musl'
  return `${process.platform}-${process.arch}${libc}`
}

function pack(dir, dest) {
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', dest], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  const [p] = JSON.parse(out)
  if (!p) throw new Error(`npm pack printed nothing in ${dir}`)
  return p
}

/** Packs both into `dest`: `{ main, platform }` as npm pack --json describes them (platform undefined without a package for this host). */
export function packLocal(dest) {
  mkdirSync(dest, { recursive: true })
  const main = pack(ROOT, dest)
  const platformDir = join(ROOT, 'npm', hostPlatform())
  if (!existsSync(platformDir)) return { main, platform: undefined }
  const manifest = JSON.parse(readFileSync(join(platformDir, 'package.json'), 'utf8'))
  const staged = mkdtempSync(join(tmpdir(), 'mshv-platform-'))
  for (const f of readdirSync(platformDir)) copyFileSync(join(platformDir, f), join(staged, f))
  copyFileSync(join(ROOT, 'native', manifest.main), join(staged, manifest.main))
  return { main, platform: pack(staged, dest) }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dest = resolve(process.argv[2] ?? join(ROOT, 'pack'))
  const { main, platform } = packLocal(dest)
  console.log(`${join(dest, main.filename)}`)
  if (platform) console.log(`${join(dest, platform.filename)}`)
  else console.error(`no platform package for ${hostPlatform()}: the main package alone`)
  console.error(`install both in your project: npm install ${[main, platform].filter(Boolean).map((p) => join(dest, p.filename)).join(' ')}`)
}
