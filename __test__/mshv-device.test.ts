/**
 * `mshv doctor`'s checklists on the real hypervisor: each backend check (what MSHV
 * delivers) and each VMM check (what this package does with it) is one test. They need
 * /dev/mshv; without it every one is skipped, and the reason is printed.
 */
import test from 'ava'
import { existsSync } from 'node:fs'
import { native } from '../src/native.js'
import { VMM_CHECKS } from '../src/doctor/vmm-checks.js'

const HAVE_DEVICE = existsSync('/dev/mshv')
const onDevice = HAVE_DEVICE ? test.serial : test.skip
if (!HAVE_DEVICE) console.log('mshv-device tests skipped: /dev/mshv is absent on this machine')

for (const c of native.backendChecks()) {
  onDevice(`backend check on mshv: ${c.name} (${c.summary})`, (t) => {
    const r = native.runBackendCheck('mshv', c.name)
    t.log(r.detail)
    t.true(r.passed, r.detail)
  })
}

for (const c of VMM_CHECKS) {
  onDevice(`VMM check on mshv: ${c.name} (${c.summary})`, async (t) => {
    t.log(await c.run('mshv'))
  })
}
