// Bundles the compiled package (dist/index.js, and the `mshv` command) into one ES
// module each with esbuild. Node resolves, reads and compiles every ES module file
// separately: one file instead of ~30 takes a guest's start-up from about 85 ms to
// about 73 ms here. tsc still emits dist/**/*.d.ts, which the bundles are typed by.
// iced-x86 stays outside (it is loaded on first use; see src/iced.ts), as does the
// native binding (native/binding.cjs, found at run time next to the package).
import { build } from 'esbuild'

const common = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['iced-x86', '../native/*', '*.node'],
  logLevel: 'warning',
}
await build({ ...common, entryPoints: ['dist/index.js'], outfile: 'dist/mshv.js' })
await build({ ...common, entryPoints: ['dist/src/cli/mshv.js'], outfile: 'dist/mshv-cli.js' })
