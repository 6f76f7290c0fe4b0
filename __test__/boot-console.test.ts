/**
 * `mshv boot` in a pseudo-terminal (util-linux `script`), as a user runs it (#30): what is
 * typed reaches the guest's shell, the status line never cuts into what the guest
 * printed, an idle guest's time passes as the user's does on the deterministic clock too
 * (QEMU's `-icount sleep=on`: `sleep 2` once returned in a fraction of a second), and
 * Ctrl+] ends the VM with status 0, as QEMU's quit does.
 */
import test from 'ava'
import { debianLinuxOrSkip } from './helpers.js'
import { inTerminal } from './terminal.js'

const linux = debianLinuxOrSkip('boot-console.test.ts')

if (typeof linux !== 'string') {
  test('boot at a terminal: typing reaches the shell, a guest sleep takes its time on the deterministic clock, Ctrl+] ends with status 0', async (t) => {
    t.timeout(240_000)
    const { child, term, type, exited } = inTerminal(`${process.execPath} --import tsx src/cli/mshv.ts boot --backend sim --clock deterministic`)
    try {
      let at = await term.until(/busybox shell on the console[\s\S]*# /, 0, 180_000)
      type('echo $((6*7))-from-the-guest\r')
      at = await term.until(/42-from-the-guest/, at, 60_000)
      type('read -r a _ < /proc/uptime; sleep 2; read -r b _ < /proc/uptime; echo "slept $a $b"\r')
      const typed = Date.now()
      // The line's end too: without it the match can land while "3.56" has come as "3".
      const end = await term.until(/slept [0-9.]+ [0-9.]+\s/, at, 60_000)
      const wall = (Date.now() - typed) / 1000
      const [a, b] = (/slept ([0-9.]+) ([0-9.]+)/.exec(term.text.slice(at, end)) ?? []).slice(1).map(Number)
      t.true(wall >= 1.9, `the guest's 2 s sleep passed in ${wall} s of the user's time`)
      t.true(b !== undefined && a !== undefined && b - a >= 2 && b - a < 4, `guest uptime went from ${a} to ${b}`)
      type('\x1d')
      t.is(await exited, 0, term.text.slice(-2000))
    } finally {
      child.kill()
    }
  })
}
