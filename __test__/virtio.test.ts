/**
 * The virtio PCI transport and the split virtqueue, driven by a driver written from the
 * VIRTIO 1.2 spec (virtio-driver.ts): feature negotiation (3.1.1, 6.1), queue set-up
 * (4.1.5.1.3), MSI-X and INTx interrupts (4.1.5.3, 4.1.5.4), the event index (2.7.10),
 * indirect descriptors (2.7.5.3) and every malformed chain a driver can make: each a
 * DEVICE_NEEDS_RESET (2.1.2), never a crash, a hang or an access outside guest RAM.
 */
import test from 'ava'
import fc from 'fast-check'
import {
  MemoryDisk,
  VIRTIO_BLK_T_IN,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_STATUS_NEEDS_RESET,
  VirtioBlock,
  VirtioRng,
  feature,
  type VirtioDevice,
} from '../index.js'
import { RAM, VirtioDriver, virtioMachine, type DriverQueue } from './virtio-driver.js'

const BASE = feature(VIRTIO_F_VERSION_1)
const F_NEXT = 1
const F_WRITE = 2
const F_INDIRECT = 4

/** A machine with `device` set up and DRIVER_OK, queue 0 on MSI-X vector 1. */
function ready(device: VirtioDevice, features = BASE, msixOn = true) {
  const m = virtioMachine([device])
  const slot = m.pc.pci?.devices().find((d) => d.fn === m.transports[0]?.pci)?.slot as number
  const d = new VirtioDriver(m.vm, slot)
  t_assert(d.negotiate(features), 'FEATURES_OK kept')
  if (msixOn) {
    const cap = d.config.capabilities().find((c) => c.id === 0x11) as { at: number }
    d.config.write(cap.at + 2, 2, 0x8000)
    // Vector 1: unmasked, data 0x31.
    const table = d.bar(1)
    m.vm.bus.mmioWrite(table + 16n, 8, 0xfee0_0000n, undefined as never)
    m.vm.bus.mmioWrite(table + 24n, 4, 0x31n, undefined as never)
    m.vm.bus.mmioWrite(table + 28n, 4, 0n, undefined as never)
  }
  const q = d.setupQueue(0, 0, msixOn ? 1 : 0xffff)
  d.ready()
  return { ...m, d, q, transport: m.transports[0] as NonNullable<(typeof m.transports)[0]> }
}

function t_assert(ok: boolean, what: string): void {
  if (!ok) throw new Error(what)
}

/** A virtio-blk read request's three buffers: header, data, status. */
function blkRead(d: VirtioDriver, sector: number, length: number): { header: number; data: number; status: number } {
  const header = d.alloc(16)
  const h = new DataView(new ArrayBuffer(16))
  h.setUint32(0, VIRTIO_BLK_T_IN, true)
  h.setBigUint64(8, BigInt(sector), true)
  d.vm.write(header, new Uint8Array(h.buffer))
  return { header, data: d.alloc(length), status: d.alloc(1) }
}

test('feature negotiation: the device offers VERSION_1, indirect and event index; refuses unknown bits and a driver without VERSION_1', (t) => {
  const m = virtioMachine([new VirtioRng()])
  const slot = m.pc.pci?.devices().at(-1)?.slot as number
  const d = new VirtioDriver(m.vm, slot)
  t.is(d.config.read(0, 2), 0x1af4)
  t.is(d.config.read(2, 2), 0x1044, 'modern virtio-rng: 0x1040 + 4')
  t.is(d.config.read(8, 1), 1, 'revision 1: non-transitional')
  const offered = d.deviceFeatures()
  t.is(offered & (BASE | feature(VIRTIO_F_INDIRECT_DESC) | feature(VIRTIO_F_EVENT_IDX)), BASE | feature(VIRTIO_F_INDIRECT_DESC) | feature(VIRTIO_F_EVENT_IDX))
  t.false(d.negotiate(0n), 'without VERSION_1')
  t.false(d.negotiate(BASE | (1n << 63n)), 'a bit the device did not offer')
  t.true(d.negotiate(BASE))
  t.is(m.transports[0]?.features, BASE)
  m.vm.close()
})

test('virtio-rng: a chain of writable buffers comes back filled, with an MSI-X message on the queue vector', (t) => {
  let n = 0
  const { vm, d, q, msis } = ready(new VirtioRng((b) => b.fill(++n)))
  const a = d.alloc(16)
  const b = d.alloc(8)
  const head = d.submit(q, [{ addr: a, len: 16, write: true }, { addr: b, len: 8, write: true }])
  d.notify(q)
  t.deepEqual(d.used(q), [[head, 24]])
  t.deepEqual([...vm.read(a, 16)], new Array(16).fill(1))
  t.deepEqual([...vm.read(b, 8)], new Array(8).fill(2))
  t.deepEqual(msis, [{ address: 0xfee0_0000n, data: 0x31 }])
  vm.close()
})

test('without MSI-X the ISR says "queue" and INTx is raised until the ISR is read (4.1.4.5)', (t) => {
  const { vm, d, q, transport } = ready(new VirtioRng(), BASE, false)
  const buf = d.alloc(4)
  d.submit(q, [{ addr: buf, len: 4, write: true }])
  d.notify(q)
  t.is(d.config.read(0x06, 2) & 0x8, 0x8, 'PCI status: interrupt pending')
  t.is(d.isr(), 1)
  t.is(d.config.read(0x06, 2) & 0x8, 0, 'reading the ISR deasserted it')
  t.is(d.isr(), 0)
  t.is(transport.stats.notifies, 1)
  vm.close()
})

test('virtio-blk reads through an indirect table; the event index suppresses the interrupts the driver did not ask for', (t) => {
  const disk = new MemoryDisk(1 << 20)
  disk.bytes.set([1, 2, 3, 4], 512 * 3)
  const { vm, d, q, msis } = ready(new VirtioBlock(disk), BASE | feature(VIRTIO_F_INDIRECT_DESC) | feature(VIRTIO_F_EVENT_IDX))
  // used_event = 1: interrupt only once the used index passes 1 (after the second request).
  const usedEvent = new DataView(new ArrayBuffer(2))
  usedEvent.setUint16(0, 1, true)
  vm.write(q.avail + 4 + 2 * q.size, new Uint8Array(usedEvent.buffer))
  const reqs = [0, 1].map(() => blkRead(d, 3, 512))
  for (const r of reqs) {
    const table = d.alloc(48)
    d.writeDescriptor(table, 0, r.header, 16, F_NEXT, 1)
    d.writeDescriptor(table, 1, r.data, 512, F_NEXT | F_WRITE, 2)
    d.writeDescriptor(table, 2, r.status, 1, F_WRITE, 0)
    d.writeDescriptor(q.desc, q.nextDesc, table, 48, F_INDIRECT, 0)
    d.makeAvailable(q, q.nextDesc++)
    d.notify(q)
    t.deepEqual([...vm.read(r.data, 4)], [1, 2, 3, 4])
    t.is(vm.read(r.status, 1)[0], 0)
  }
  t.is(msis.length, 1, 'one interrupt, after the second request')
  // The device asks to be notified of the next available entry (avail_event).
  t.is(new DataView(vm.read(q.used + 4 + 8 * q.size, 2).buffer).getUint16(0, true), 2)
  vm.close()
})

/** Submits a chain written by hand and kicks; returns what the transport says after. */
function broken(setup: (d: VirtioDriver, q: DriverQueue) => void, features = BASE) {
  const disk = new MemoryDisk(1 << 20)
  const { vm, d, q, transport } = ready(new VirtioBlock(disk), features)
  setup(d, q)
  d.notify(q)
  const result = { status: d.status, error: transport.lastError ?? '', errors: transport.stats.deviceErrors }
  // After DEVICE_NEEDS_RESET the device ignores kicks until reset, and a reset brings it back.
  d.notify(q)
  d.setCommon(20, 1, 0)
  const after = d.status
  vm.close()
  return { ...result, after }
}

test('a descriptor loop is a device error, not a hang', (t) => {
  const r = broken((d, q) => {
    const req = blkRead(d, 0, 512)
    d.writeDescriptor(q.desc, 0, req.header, 16, F_NEXT, 1)
    d.writeDescriptor(q.desc, 1, req.data, 512, F_NEXT, 0) // back to 0
    d.makeAvailable(q, 0)
  })
  t.is(r.status & VIRTIO_STATUS_NEEDS_RESET, VIRTIO_STATUS_NEEDS_RESET)
  t.regex(r.error, /loops/)
  t.is(r.errors, 1, 'the second kick was ignored')
  t.is(r.after, 0, 'a reset clears it')
})

test('a chain crossing the end of RAM is a device error naming the address; no byte outside RAM is touched', (t) => {
  const r = broken((d, q) => {
    const req = blkRead(d, 0, 512)
    d.writeDescriptor(q.desc, 0, req.header, 16, F_NEXT, 1)
    d.writeDescriptor(q.desc, 1, RAM - 256, 512, F_NEXT | F_WRITE, 2)
    d.writeDescriptor(q.desc, 2, req.status, 1, F_WRITE, 0)
    d.makeAvailable(q, 0)
  })
  t.regex(r.error, /descriptor 1: DMA write of 512 bytes at 0xffff00 is not inside guest RAM/)
})

test('out-of-range indexes: a head past the queue, a next past the table, an available index that jumps', (t) => {
  t.regex(broken((d, q) => d.makeAvailable(q, q.size + 3)).error, /head descriptor 259 is out of range \(queue size 256\)/)
  t.regex(
    broken((d, q) => {
      d.writeDescriptor(q.desc, 0, d.alloc(16), 16, F_NEXT, 999)
      d.makeAvailable(q, 0)
    }).error,
    /chains to 999, past the table's 256/,
  )
  t.regex(
    broken((d, q) => {
      const v = new DataView(new ArrayBuffer(2))
      v.setUint16(0, 1000, true)
      d.vm.write(q.avail + 2, new Uint8Array(v.buffer))
    }).error,
    /available index moved from 0 to 1000/,
  )
})

test('indirect misuse: without the feature, nested, chained, or of a size that is not whole descriptors', (t) => {
  const indirect = (flags: number, len: number, nested = false) => (d: VirtioDriver, q: DriverQueue) => {
    const table = d.alloc(64)
    if (nested) d.writeDescriptor(table, 0, d.alloc(32), 32, F_INDIRECT, 0)
    d.writeDescriptor(q.desc, 0, table, len, flags, 1)
    d.makeAvailable(q, 0)
  }
  const withIndirect = BASE | feature(VIRTIO_F_INDIRECT_DESC)
  t.regex(broken(indirect(F_INDIRECT, 32)).error, /VIRTIO_F_INDIRECT_DESC was not negotiated/)
  t.regex(broken(indirect(F_INDIRECT, 32, true), withIndirect).error, /indirect table holds an indirect descriptor/)
  t.regex(broken(indirect(F_INDIRECT | F_NEXT, 32), withIndirect).error, /both indirect and chained/)
  t.regex(broken(indirect(F_INDIRECT, 24), withIndirect).error, /not a whole number/)
})

test('a readable buffer after a writable one is refused (2.7.4.2)', (t) => {
  t.regex(
    broken((d, q) => {
      d.writeDescriptor(q.desc, 0, d.alloc(4), 4, F_NEXT | F_WRITE, 1)
      d.writeDescriptor(q.desc, 1, d.alloc(16), 16, 0, 0)
      d.makeAvailable(q, 0)
    }).error,
    /readable buffer follows a writable one/,
  )
})

test('zero-length buffers are served: an empty data buffer reads nothing and the status comes back OK', (t) => {
  const { vm, d, q, transport } = ready(new VirtioBlock(new MemoryDisk(4096)))
  const req = blkRead(d, 0, 0)
  const head = d.submit(q, [{ addr: req.header, len: 16 }, { addr: req.data, len: 0, write: true }, { addr: req.status, len: 1, write: true }])
  d.notify(q)
  t.deepEqual(d.used(q), [[head, 1]])
  t.is(vm.read(req.status, 1)[0], 0)
  t.is(transport.stats.deviceErrors, 0)
  vm.close()
})

test('a queue whose rings lie outside RAM cannot be enabled; a size that is not a power of two neither', (t) => {
  const m = virtioMachine([new VirtioRng()])
  const slot = m.pc.pci?.devices().at(-1)?.slot as number
  const d = new VirtioDriver(m.vm, slot)
  d.negotiate(BASE)
  d.setCommon(22, 2, 0)
  d.setCommon(24, 2, 100)
  d.setCommon(28, 2, 1)
  t.is(d.common(28, 2), 0)
  t.regex(m.transports[0]?.lastError ?? '', /size 100 is not a power of two/)
  m.vm.close()
})

test('property: whatever the descriptor table holds, a kick ends with used entries or DEVICE_NEEDS_RESET, never another error', (t) => {
  const descriptor = fc.record({
    addr: fc.oneof(fc.integer({ min: 0, max: RAM + 4096 }), fc.constantFrom(0, RAM - 1, 2 ** 40)),
    len: fc.oneof(fc.integer({ min: 0, max: 8192 }), fc.constant(0xffff_ffff)),
    flags: fc.integer({ min: 0, max: 7 }),
    next: fc.integer({ min: 0, max: 300 }),
  })
  fc.assert(
    fc.property(fc.array(descriptor, { minLength: 1, maxLength: 12 }), fc.integer({ min: 0, max: 15 }), fc.boolean(), (descs, head, indirect) => {
      const { vm, d, q, transport } = ready(new VirtioBlock(new MemoryDisk(1 << 20)), indirect ? BASE | feature(VIRTIO_F_INDIRECT_DESC) : BASE)
      try {
        descs.forEach((x, i) => d.writeDescriptor(q.desc, i, x.addr, x.len, x.flags, x.next))
        d.makeAvailable(q, head)
        d.notify(q)
        const used = d.used(q)
        return used.length === 1 || (d.status & VIRTIO_STATUS_NEEDS_RESET) !== 0 || transport.stats.deviceErrors > 0
      } finally {
        vm.close()
      }
    }),
    { numRuns: 300 },
  )
  t.pass()
})
