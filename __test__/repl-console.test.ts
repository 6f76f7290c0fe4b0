/**
 * `mshv repl --kernel debian` in a pseudo-terminal (util-linux `script`), as a user runs
 * it: `await run()` attaches the guest's console, so what is typed reaches the guest's
 * shell (and is never evaluated as JavaScript afterwards), Ctrl+] detaches and the
 * prompt works again (#30).
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import { debianLinuxOrSkip } from './helpers.js'

const linux = debianLinuxOrSkip('repl-console.test.ts')

/** The terminal's output so far, and a way to wait until it shows a pattern. */
class Terminal {
  text = ''
  private waiters: (() => void)[] = []
  feed(s: string): void {
    this.text += s
    for (const w of this.waiters.splice(0)) w()
  }
  async until(pattern: RegExp, from: number, ms: number): Promise<number> {
    const deadline = Date.now() + ms
    for (;;) {
      const m = pattern.exec(this.text.slice(from))
      if (m) return from + m.index + m[0].length
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no ${pattern} after ${ms} ms; the terminal showed:\n${this.text.slice(from).slice(-2000)}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }
}

if (typeof linux !== 'string') {
  test("repl: await run() attaches the guest's console; typing reaches its shell, Ctrl+] detaches and the REPL evaluates again", async (t) => {
    t.timeout(240_000)
    const command = `${process.execPath} --import tsx src/cli/mshv.ts repl --backend sim --kernel debian`
    const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, COLUMNS: '120', LINES: '40' } })
    const term = new Terminal()
    child.stdout.on('data', (d: Buffer) => term.feed(d.toString('latin1')))
    child.stderr.on('data', (d: Buffer) => term.feed(d.toString('latin1')))
    const type = (s: string): void => void child.stdin.write(s)
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
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
      t.is(code, 0, term.text.slice(-2000))
    } finally {
      child.kill()
    }
  })
}
