/**
 * virtio-net on a host TAP interface (Linux's tun/tap): the guest's frames reach the host's
 * network stack and its answers come back. The test runs in a network namespace of its
 * own (`unshare --net`, as root), so nothing reaches the machine's real interfaces. Where
 * the host cannot make one (no /dev/net/tun, not root, no unshare) the test skips saying
 * so; under CI that is a failure.
 */
import test from 'ava'
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { MshvError, TapDevice } from '../index.js'
import { debianLinuxOrSkip } from './helpers.js'

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
const linux = debianLinuxOrSkip('tap')
const why = !existsSync('/dev/net/tun') ? 'no /dev/net/tun' : process.getuid?.() !== 0 ? 'not root (a network namespace and a TAP need CAP_NET_ADMIN)' : spawnSync('unshare', ['--net', 'true']).status !== 0 ? 'unshare --net fails here' : undefined
if (why !== undefined) {
  if (process.env['CI']) test('a TAP interface can be made in a network namespace (required in CI)', (t) => t.fail(why))
  else console.log(`tap tests skipped: ${why}`)
}
const run = why === undefined && typeof linux !== 'string' ? test.serial : test.skip

run('a guest pings the host over a TAP interface in a network namespace of its own; the host learns the guest MAC', (t) => {
  const out = execFileSync('unshare', ['--net', process.execPath, '--import', 'tsx', join(ROOT, '__test__', 'fixtures', 'tap-ping.ts')], { cwd: ROOT, encoding: 'utf8', timeout: 150_000 })
  const r = JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as { interface: string; result: { reason: string }; console: string; stats: { toGuest: number; toHost: number }; neighbours: string }
  t.regex(r.interface, /^mshvtap\d+$/)
  t.is(r.result.reason, 'poweroff', r.console.slice(-2000))
  t.regex(r.console, /3 packets transmitted, 3 packets received, 0% packet loss/)
  t.true(r.stats.toHost >= 4 && r.stats.toGuest >= 4, JSON.stringify(r.stats))
  t.regex(r.neighbours, /192\.0\.2\.2 lladdr 52:54:00:12:34:56/)
})

test('TapDevice.open refuses a name the kernel cannot take, with EINVAL naming it', (t) => {
  const e = t.throws(() => TapDevice.open('a-name-longer-than-fifteen'), { instanceOf: MshvError })
  t.is(e?.code, 'EINVAL')
  t.regex(e?.message ?? '', /a-name-longer-than-fifteen/)
})
