/**
 * A command in a pseudo-terminal (util-linux `script`), as a user runs it: what it
 * printed so far, waits for a pattern, and typing.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'

/** A terminal's output so far, and a way to wait until it shows a pattern. */
export class Terminal {
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

/** `command` (a shell command line) in a pseudo-terminal of 120 x 40, its output in a {@link Terminal}. */
export function inTerminal(command: string): { child: ChildProcessWithoutNullStreams; term: Terminal; type: (s: string) => void; exited: Promise<number | null> } {
  const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, COLUMNS: '120', LINES: '40' } })
  const term = new Terminal()
  child.stdout.on('data', (d: Buffer) => term.feed(d.toString('latin1')))
  child.stderr.on('data', (d: Buffer) => term.feed(d.toString('latin1')))
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  return { child, term, type: (s) => void child.stdin.write(s), exited }
}
