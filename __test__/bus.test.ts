import test from 'ava'
import fc from 'fast-check'
import { IoBus, MshvError, UNCLAIMED_NAMED, type AccessContext } from '../index.js'

// The bus against the plainest model: a list of accepted ranges scanned in order.
const ctx = {} as AccessContext
const SEED = 20261125

interface Claim {
  start: number
  length: number
}

const portClaim: fc.Arbitrary<Claim> = fc.oneof(
  // Mostly small ranges near each other, so overlaps are common.
  { weight: 8, arbitrary: fc.record({ start: fc.integer({ min: 0x3f0, max: 0x420 }), length: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 2, arbitrary: fc.record({ start: fc.integer({ min: 0, max: 0xffff }), length: fc.integer({ min: 1, max: 0x100 }) }) },
  { weight: 1, arbitrary: fc.record({ start: fc.integer({ min: -2, max: 0x10001 }), length: fc.integer({ min: -1, max: 3 }) }) },
)

test('port dispatch: each access reaches the device whose range holds the port, overlaps and bad ranges are refused', (t) => {
  fc.assert(
    fc.property(fc.array(portClaim, { maxLength: 24 }), fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 64 }), (claims, ports) => {
      const bus = new IoBus()
      const accepted: (Claim & { id: number })[] = []
      const hits: number[] = []
      claims.forEach((c, id) => {
        const valid = Number.isInteger(c.start) && c.start >= 0 && c.length >= 1 && c.start + c.length <= 0x10000
        const clash = accepted.find((a) => c.start < a.start + a.length && a.start < c.start + c.length)
        const device = { ioRead: () => id, ioWrite: () => void hits.push(id) }
        try {
          bus.register(c.start, c.length, device, `d${id}`)
        } catch (e) {
          const code = (e as MshvError).code
          if (!valid) return t.is(code, 'EINVAL')
          t.is(code, 'EOVERLAP')
          t.regex((e as Error).message, new RegExp(`d${id} overlap d\\d+`))
          return t.truthy(clash, `refused d${id} with no overlap`)
        }
        t.true(valid && !clash, `accepted d${id} ${JSON.stringify(c)}`)
        accepted.push({ ...c, id })
      })
      let unclaimed = 0
      for (const port of ports) {
        const owner = accepted.find((a) => port >= a.start && port < a.start + a.length)
        if (!owner) unclaimed++
        t.is(bus.read(port, 1, ctx), owner ? owner.id : 0xff)
        bus.write(port, 1, 0, ctx)
        if (owner) t.is(hits.pop(), owner.id)
      }
      t.is(hits.length, 0)
      t.is(bus.stats.unclaimedReads, unclaimed)
      t.is(bus.stats.unclaimedWrites, unclaimed)
    }),
    { seed: SEED, numRuns: 300 },
  )
})

const mmioClaim = fc.record({
  start: fc.bigInt({ min: 0xfee0_0000n, max: 0xfee0_0100n }),
  length: fc.bigInt({ min: 1n, max: 0x40n }),
})

test('MMIO dispatch: an access inside one range reaches it at its offset; others are unclaimed', (t) => {
  fc.assert(
    fc.property(
      fc.array(mmioClaim, { maxLength: 16 }),
      fc.array(fc.record({ gpa: fc.bigInt({ min: 0xfedf_fff8n, max: 0xfee0_0148n }), size: fc.constantFrom(1, 2, 4, 8) }), { maxLength: 64 }),
      (claims, accesses) => {
        const bus = new IoBus()
        const accepted: { start: bigint; end: bigint; id: number }[] = []
        const seen: [number, number][] = []
        claims.forEach((c, id) => {
          const end = c.start + c.length
          const clash = accepted.some((a) => c.start < a.end && a.start < end)
          const device = {
            mmioRead: (offset: number) => (seen.push([id, offset]), BigInt(id)),
          }
          try {
            bus.registerMmio(c.start, c.length, device, `m${id}`)
          } catch (e) {
            t.is((e as MshvError).code, 'EOVERLAP')
            return t.true(clash)
          }
          t.false(clash)
          accepted.push({ start: c.start, end, id })
        })
        for (const { gpa, size } of accesses) {
          const owner = accepted.find((a) => gpa >= a.start && gpa + BigInt(size) <= a.end)
          const value = bus.mmioRead(gpa, size, ctx)
          if (owner) {
            t.is(value, BigInt(owner.id))
            t.deepEqual(seen.pop(), [owner.id, Number(gpa - owner.start)])
          } else {
            t.is(value, (1n << BigInt(8 * size)) - 1n)
          }
        }
        t.is(seen.length, 0)
      },
    ),
    { seed: SEED, numRuns: 300 },
  )
})

test('the bus names the unclaimed ports and addresses the guest reached, with counts, the first 256 of each', (t) => {
  const bus = new IoBus()
  const ctx = { regs: undefined as never, vcpuIndex: 0 }
  bus.read(0x3f8, 1, ctx)
  bus.write(0x3f8, 1, 0, ctx)
  bus.read(0x61, 1, ctx)
  bus.mmioRead(0xfed0_0000n, 4, ctx)
  t.deepEqual([...bus.stats.unclaimedPorts], [[0x3f8, 2], [0x61, 1]])
  t.deepEqual([...bus.stats.unclaimedAddresses], [[0xfed0_0000n, 1]])
  for (let p = 0; p < 1000; p++) bus.read(0x1000 + p, 1, ctx)
  t.is(bus.stats.unclaimedPorts.size, UNCLAIMED_NAMED)
  t.is(bus.stats.unclaimedReads, 1002)
})
