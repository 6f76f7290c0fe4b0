/**
 * `mshv repl --kernel debian` in a pseudo-terminal (util-linux `script`), as a user runs
 * it: `await run()` attaches the guest's console, so what is typed reaches the guest's
 * shell (and is never evaluated as JavaScript afterwards), Ctrl+] detaches and the
 * prompt works again (#30).
 */
import test from 'ava'
import { debianLinuxOrSkip } from './helpers.js'
import { inTerminal } from './terminal.js'

const linux = debianLinuxOrSkip('repl-console.test.ts')

if (typeof linux !== 'string') {
  test("repl: await run() attaches the guest's console; typing reaches its shell, Ctrl+] detaches and the REPL evaluates again", async (t) => {
    t.timeout(240_000)
    const command = `${process.execPath} --import tsx src/cli/mshv.ts repl --backend sim --kernel debian`
    const { child, term, type, exited } = inTerminal(command)
    try {
      let at = await term.until(/mshv> /, 0, 60_000)
      type('await run()\r')
      at = await term.until(/console is attached/, at, 30_000)
      at = await term.until(/busybox shell on the console[\s\S]*# /, at, 180_000)
      type('echo $((6*7))-from-the-guest\r')
      at = await term.until(/42-from-the-guest/, at, 60_000)
      type('\x1d')
      at = await term.until(/mshv> /, at, 30_000)
      type('6*7+1\r')
      at = await term.until(/[^0-9]43[^0-9]/, at, 30_000)
      // What was typed for the guest never reached the REPL: no ReferenceError for 'echo'.
      t.notRegex(term.text, /ReferenceError|SyntaxError/)
      type('.exit\r')
      const code = await exited
      t.is(code, 0, term.text.slice(-2000))
    } finally {
      child.kill()
    }
  })
}
