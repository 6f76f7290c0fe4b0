/**
 * A live progress line for long runs: exits per second and the exit mix, redrawn in
 * place on a terminal. Sampled every thousand exits so the exit loop stays cheap, and
 * on a clock (a run with a line hands control back every 100 ms) so a guest that
 * spins without exits gets one too.
 * @module
 */
import { messageTypeName } from './layout.js'

/** Where the line goes: a terminal stream (`process.stdout`). */
export interface ProgressStream {
  readonly isTTY?: boolean
  write(text: string): unknown
}

/** Exits between clock reads. */
const SAMPLE = 1024
/** How long a run goes before the line appears, and how often it is redrawn. */
const SHOW_AFTER_MS = 500
const REDRAW_MS = 250

/** Counts one run's exits by type and redraws a status line while it lasts. */
export class ProgressLine {
  private readonly byType = new Map<number, number>()
  private exits = 0
  private readonly started: number
  private lastDraw: number
  private shown = false

  /** Instructions retired when the line started (sim; see {@link instructions}). */
  private readonly startInstructions: number

  constructor(
    private readonly stream: ProgressStream,
    private readonly now: () => number = () => performance.now(),
    /**
     * Guest instructions retired so far (the sim counts them; 0 where not counted): the
     * line shows their rate too, so a guest that computes without exits shows progress.
     */
    private readonly instructions: () => number = () => 0,
  ) {
    this.started = now()
    this.lastDraw = this.started
    this.startInstructions = instructions()
  }

  /** Records one exit of message type `type`. */
  exit(type: number): void {
    this.byType.set(type, (this.byType.get(type) ?? 0) + 1)
    if (++this.exits % SAMPLE === 0) this.maybeDraw()
  }

  /**
   * Redraws if it is time: a run calls this when a native run hands control back
   * without an exit (a guest that spins without exits still gets its line).
   */
  tick(): void {
    this.maybeDraw()
  }

  /** The status text: rate, total and the exit mix by share. */
  text(): string {
    const seconds = Math.max((this.now() - this.started) / 1000, 1e-9)
    const mix = [...this.byType]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 4)
      .map(([type, n]) => `${messageTypeName(type)} ${((100 * n) / this.exits).toFixed(0)}%`)
      .join(' ')
    const retired = this.instructions() - this.startInstructions
    const rate = retired > 0 ? `${formatRate(retired / seconds)} instructions/s, ` : ''
    return `${rate}${formatRate(this.exits / seconds)} exits/s, ${this.exits.toLocaleString('en-US')} exits in ${seconds.toFixed(1)} s${mix ? `: ${mix}` : ''}`
  }

  private maybeDraw(): void {
    if (!this.stream.isTTY) return
    const t = this.now()
    if (t - this.started < SHOW_AFTER_MS || t - this.lastDraw < REDRAW_MS) return
    this.lastDraw = t
    this.shown = true
    // \r and erase-line: redraw in place
    this.stream.write(`\r\x1b[2K${this.text()}`)
  }

  /** Clears the line, if it was drawn. */
  finish(): void {
    if (this.shown) this.stream.write('\r\x1b[2K')
    this.shown = false
  }
}

/** 1234567 -> "1.23 M". */
export function formatRate(perSecond: number): string {
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(2)} M`
  if (perSecond >= 1e3) return `${(perSecond / 1e3).toFixed(1)} k`
  return perSecond.toFixed(0)
}
