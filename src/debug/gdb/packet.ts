/**
 * The GDB Remote Serial Protocol's framing (GDB manual, "Overview" of the remote
 * protocol): `$payload#cc` with a two-digit hex checksum, `+`/`-` acknowledgements
 * (until `QStartNoAckMode`), `}` escapes (the byte XOR 0x20) for `$`, `#`, `}` and
 * `*`, and a bare 0x03 byte as the interrupt request (Ctrl+C).
 * @module
 */

/** What the reader found in the bytes it was given. */
export type Incoming = { kind: 'packet'; payload: Buffer } | { kind: 'interrupt' } | { kind: 'bad-checksum' }

/** Longest packet accepted: our `PacketSize` (GDB sends no more than that). */
export const PACKET_SIZE = 0x4000

/** Splits a byte stream into packets, interrupts and acknowledgements (ignored). */
export class PacketReader {
  private buf: Buffer = Buffer.alloc(0)

  /** Adds `data`; returns what is complete. */
  push(data: Buffer): Incoming[] {
    this.buf = this.buf.length === 0 ? data : Buffer.concat([this.buf, data])
    const out: Incoming[] = []
    let i = 0
    while (i < this.buf.length) {
      const b = this.buf[i] as number
      if (b === 0x03) {
        out.push({ kind: 'interrupt' })
        i++
        continue
      }
      if (b !== 0x24 /* $ */) {
        // `+`, `-` and anything between packets.
        i++
        continue
      }
      const hash = this.buf.indexOf(0x23 /* # */, i + 1)
      if (hash < 0 || hash + 2 >= this.buf.length) {
        if (this.buf.length - i > PACKET_SIZE * 2 + 4) {
          // A start with no end in sight: drop it rather than grow without bound.
          i = this.buf.length
        }
        break
      }
      const body = this.buf.subarray(i + 1, hash)
      const sum = Number.parseInt(this.buf.subarray(hash + 1, hash + 3).toString('latin1'), 16)
      out.push(checksum(body) === sum ? { kind: 'packet', payload: unescape(body) } : { kind: 'bad-checksum' })
      i = hash + 3
    }
    this.buf = this.buf.subarray(i)
    return out
  }
}

function checksum(body: Uint8Array): number {
  let s = 0
  for (const b of body) s = (s + b) & 0xff
  return s
}

/** A packet's payload with its `}` escapes undone. */
function unescape(body: Buffer): Buffer {
  if (!body.includes(0x7d)) return Buffer.from(body)
  const out: number[] = []
  for (let i = 0; i < body.length; i++) {
    const b = body[i] as number
    if (b === 0x7d && i + 1 < body.length) out.push((body[++i] as number) ^ 0x20)
    else out.push(b)
  }
  return Buffer.from(out)
}

/** `payload` framed as a packet, escaped. */
export function frame(payload: string | Buffer): Buffer {
  const raw = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload
  const body: number[] = []
  for (const b of raw) {
    if (b === 0x24 || b === 0x23 || b === 0x7d || b === 0x2a) body.push(0x7d, b ^ 0x20)
    else body.push(b)
  }
  const bytes = Buffer.from(body)
  return Buffer.concat([Buffer.from('$'), bytes, Buffer.from(`#${checksum(bytes).toString(16).padStart(2, '0')}`)])
}

/** `n` bytes of `v`, little-endian, as hex (GDB's register encoding). */
export function leHex(v: bigint, bytes: number): string {
  let s = ''
  for (let i = 0; i < bytes; i++) s += Number((v >> BigInt(8 * i)) & 0xffn).toString(16).padStart(2, '0')
  return s
}

/** Little-endian hex back to a value; undefined when it is not hex. */
export function fromLeHex(s: string): bigint | undefined {
  if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) return undefined
  let v = 0n
  for (let i = s.length - 2; i >= 0; i -= 2) v = (v << 8n) | BigInt(Number.parseInt(s.slice(i, i + 2), 16))
  return v
}
