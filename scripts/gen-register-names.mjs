// Writes src/generated/register-names.ts from the native register table (hv-core's
// REGISTERS, through the built binding's layout()), so register names are a literal
// union in TypeScript with Rust as their one source. `--check` only compares, and
// fails when the file is stale (npm run lint runs it).
import { createRequire } from 'node:module'
import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const binding = require('../native/binding.cjs')
const target = fileURLToPath(new URL('../src/generated/register-names.ts', import.meta.url))
const names = binding.layout().registers.map((r) => r.name)
const lines = []
for (let i = 0; i < names.length; i += 8) lines.push(`  ${names.slice(i, i + 8).map((n) => `'${n}'`).join(', ')},`)
const text = `/**
 * Register names, generated from the native register table (\`crates/hv-core/src/regs.rs\`)
 * by \`scripts/gen-register-names.mjs\` during \`npm run build\`. Do not edit.
 * @module
 */

/** Every register name the API accepts, in the native table's order. */
export const REGISTER_NAMES = [
${lines.join('\n')}
] as const

/** A register name: \`regs.get('rax')\` type-checks, \`regs.get('raxx')\` does not. */
export type RegisterName = (typeof REGISTER_NAMES)[number]
`
let current = ''
try {
  current = readFileSync(target, 'utf8')
} catch {}
if (process.argv.includes('--check')) {
  if (current !== text) {
    console.error(`${target} is stale: run npm run build (it regenerates the file from the native register table)`)
    process.exit(1)
  }
} else if (current !== text) {
  writeFileSync(target, text)
}
