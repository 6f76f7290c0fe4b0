/**
 * The virtio devices behind the transport, each against the spec section it follows:
 * virtio-blk's requests (VIRTIO 1.2, 5.2.6) over memory and file backends (the
 * copy-on-write overlay leaves the image unchanged), virtio-console (5.3), virtio-net
 * (5.1) and the in-process switch (IEEE 802.1D learning).
 */
import test from 'ava'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  FileDisk,
  MemoryDisk,
  NetworkSwitch,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_F_VERSION_1,
  VIRTIO_NET_HDR_SIZE,
  VirtioBlock,
  VirtioConsole,
  VirtioNet,
  feature,
  type BlockBackend,
  type VirtioDevice,
} from '../index.js'
import { VirtioDriver, virtioMachine, type DriverQueue } from './virtio-driver.js'

/** Each device set up by the spec driver with DRIVER_OK; queues by index. */
function driven(device: VirtioDevice) {
  const m = virtioMachine([device])
  const slot = m.pc.pci?.devices().at(-1)?.slot as number
  const d = new VirtioDriver(m.vm, slot)
  if (!d.negotiate(feature(VIRTIO_F_VERSION_1))) throw new Error('FEATURES_OK refused')
  const queues = device.queueSizes.map((_, i) => d.setupQueue(i, 16))
  d.ready()
  return { ...m, d, queues }
}

/** One virtio-blk request: header, then `out` bytes (driver to device), `inLength` bytes back, the status byte. */
function request(d: VirtioDriver, q: DriverQueue, type: number, sector: number, out: Uint8Array, inLength: number): { status: number; data: Uint8Array; used: number } {
  const header = new DataView(new ArrayBuffer(16))
  header.setUint32(0, type, true)
  header.setBigUint64(8, BigInt(sector), true)
  const h = d.alloc(16)
  d.vm.write(h, new Uint8Array(header.buffer))
  const bufs: { addr: number; len: number; write?: boolean }[] = [{ addr: h, len: 16 }]
  if (out.length > 0) {
    const o = d.alloc(out.length)
    d.vm.write(o, out)
    bufs.push({ addr: o, len: out.length })
  }
  const i = d.alloc(Math.max(inLength, 1))
  if (inLength > 0) bufs.push({ addr: i, len: inLength, write: true })
  const s = d.alloc(1)
  d.vm.write(s, [0xee])
  bufs.push({ addr: s, len: 1, write: true })
  d.submit(q, bufs)
  d.notify(q)
  const [entry] = d.used(q)
  return { status: d.vm.read(s, 1)[0] as number, data: d.vm.read(i, inLength), used: entry?.[1] ?? -1 }
}

function segment(sector: number, count: number, flags = 0): Uint8Array {
  const v = new DataView(new ArrayBuffer(16))
  v.setBigUint64(0, BigInt(sector), true)
  v.setUint32(8, count, true)
  v.setUint32(12, flags, true)
  return new Uint8Array(v.buffer)
}

test('virtio-blk: write, read back, flush, get-id, discard, write-zeroes; the capacity in configuration space (5.2.4, 5.2.6)', (t) => {
  const disk = new MemoryDisk(64 * 512)
  const { vm, d, queues } = driven(new VirtioBlock(disk, { id: 'serial-123' }))
  const q = queues[0] as DriverQueue
  t.is(d.deviceConfig(0, 4), 64, 'capacity in 512-byte sectors')
  t.is(d.deviceConfig(20, 4), 512, 'blk_size')
  const data = new Uint8Array(1024).map((_, i) => (i * 7) & 0xff)
  t.deepEqual(request(d, q, VIRTIO_BLK_T_OUT, 2, data, 0), { status: VIRTIO_BLK_S_OK, data: new Uint8Array(0), used: 1 })
  t.deepEqual(disk.bytes.subarray(1024, 2048), data)
  const read = request(d, q, VIRTIO_BLK_T_IN, 2, new Uint8Array(0), 1024)
  t.is(read.status, VIRTIO_BLK_S_OK)
  t.deepEqual(read.data, data)
  t.is(read.used, 1025, 'data and the status byte')
  t.is(request(d, q, VIRTIO_BLK_T_FLUSH, 0, new Uint8Array(0), 0).status, VIRTIO_BLK_S_OK)
  const id = request(d, q, VIRTIO_BLK_T_GET_ID, 0, new Uint8Array(0), 20)
  t.is(new TextDecoder().decode(id.data).replace(/\0+$/, ''), 'serial-123')
  t.is(request(d, q, VIRTIO_BLK_T_WRITE_ZEROES, 0, segment(2, 1), 0).status, VIRTIO_BLK_S_OK)
  t.deepEqual(disk.bytes.subarray(1024, 1536), new Uint8Array(512))
  t.deepEqual(disk.bytes.subarray(1536, 2048), data.subarray(512))
  t.is(request(d, q, VIRTIO_BLK_T_DISCARD, 0, segment(3, 1), 0).status, VIRTIO_BLK_S_OK)
  t.is(request(d, q, VIRTIO_BLK_T_DISCARD, 0, segment(3, 1, 1), 0).status, VIRTIO_BLK_S_UNSUPP, 'discard takes no flags')
  vm.close()
})

test('virtio-blk: a request past the end is an I/O error; an unknown type is unsupported; a read-only disk offers RO and refuses writes', (t) => {
  const { vm, d, queues } = driven(new VirtioBlock(new MemoryDisk(8 * 512, { readOnly: true })))
  const q = queues[0] as DriverQueue
  t.true((d.deviceFeatures() & (1n << 5n)) !== 0n, 'VIRTIO_BLK_F_RO')
  t.is(request(d, q, VIRTIO_BLK_T_IN, 7, new Uint8Array(0), 1024).status, VIRTIO_BLK_S_IOERR)
  t.is(request(d, q, VIRTIO_BLK_T_IN, 2 ** 53, new Uint8Array(0), 512).status, VIRTIO_BLK_S_IOERR)
  t.is(request(d, q, VIRTIO_BLK_T_OUT, 0, new Uint8Array(512), 0).status, VIRTIO_BLK_S_IOERR)
  t.is(request(d, q, 99, 0, new Uint8Array(0), 0).status, VIRTIO_BLK_S_UNSUPP)
  vm.close()
})

test('FileDisk with an overlay: the guest reads its own writes, partial blocks keep the image around them, the file is unchanged', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'mshv-disk-'))
  const path = join(dir, 'image.raw')
  const image = new Uint8Array(64 * 1024).map((_, i) => (i * 13 + 5) & 0xff)
  writeFileSync(path, image)
  const before = createHash('sha256').update(readFileSync(path)).digest('hex')
  const disk = new FileDisk(path, { overlay: true })
  const { vm, d, queues } = driven(new VirtioBlock(disk))
  const q = queues[0] as DriverQueue
  const patch = new Uint8Array(512).fill(0xab)
  t.is(request(d, q, VIRTIO_BLK_T_OUT, 9, patch, 0).status, VIRTIO_BLK_S_OK) // inside a 4 KiB block
  const read = request(d, q, VIRTIO_BLK_T_IN, 8, new Uint8Array(0), 3 * 512)
  t.deepEqual(read.data.subarray(0, 512), image.subarray(8 * 512, 9 * 512), 'the block around the write comes from the image')
  t.deepEqual(read.data.subarray(512, 1024), patch)
  t.deepEqual(read.data.subarray(1024), image.subarray(10 * 512, 11 * 512))
  disk.close()
  t.is(createHash('sha256').update(readFileSync(path)).digest('hex'), before)
  t.throws(() => disk.read(0, new Uint8Array(1)), { code: 'ECLOSED' })
  vm.close()
})

test('FileDisk.readVectored fills scattered buffers in order, from the image and from overlay blocks alike', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'mshv-disk-'))
  const path = join(dir, 'image.raw')
  const image = new Uint8Array(32 * 1024).map((_, i) => (i * 7 + 3) & 0xff)
  writeFileSync(path, image)
  for (const overlay of [false, true]) {
    const disk = new FileDisk(path, { overlay, readOnly: !overlay })
    if (overlay) disk.write(4096 + 100, new Uint8Array([9, 9, 9]))
    const bufs = [new Uint8Array(512), new Uint8Array(4096), new Uint8Array(1000)]
    disk.readVectored(3584, bufs)
    const expected = image.slice(3584, 3584 + 5608)
    if (overlay) expected.set([9, 9, 9], 4096 + 100 - 3584)
    const got = new Uint8Array(5608)
    got.set(bufs[0] as Uint8Array, 0)
    got.set(bufs[1] as Uint8Array, 512)
    got.set(bufs[2] as Uint8Array, 4608)
    t.deepEqual(got, expected, overlay ? 'with an overlay block in the range' : 'one preadv')
    disk.close()
  }
})

test('FileDisk without an overlay writes the file; a missing file is ENOENT naming it', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'mshv-disk-'))
  const path = join(dir, 'image.raw')
  writeFileSync(path, new Uint8Array(4096 + 100))
  const disk: BlockBackend = new FileDisk(path)
  t.is(disk.size, 4096, 'a trailing partial sector is not addressable')
  disk.write(512, new Uint8Array([1, 2, 3]))
  disk.flush()
  disk.close()
  t.deepEqual([...readFileSync(path).subarray(512, 515)], [1, 2, 3])
  t.throws(() => new FileDisk(join(dir, 'nope.raw')), { code: 'ENOENT', message: /nope\.raw/ })
})

test('virtio-console: output to onData, input waits for receive buffers and is bounded', (t) => {
  const out: string[] = []
  const console = new VirtioConsole({ onData: (b) => out.push(new TextDecoder().decode(b)), inputLimit: 8 })
  t.is(console.write('0123456789'), 8, 'back-pressure: 8 bytes taken')
  const { vm, d, queues } = driven(console)
  const [rx, tx] = queues as [DriverQueue, DriverQueue]
  const text = d.alloc(5)
  vm.write(text, new TextEncoder().encode('hello'))
  d.submit(tx, [{ addr: text, len: 5 }])
  d.notify(tx)
  t.deepEqual(out, ['hello'])
  const buf = d.alloc(6)
  d.submit(rx, [{ addr: buf, len: 6, write: true }])
  d.notify(rx)
  t.deepEqual(d.used(rx), [[0, 6]])
  t.is(new TextDecoder().decode(vm.read(buf, 6)), '012345')
  t.is(console.buffered, 2)
  vm.close()
})

test('virtio-net: a frame sent by the guest reaches onPacket without its header; send() fills a receive buffer with header and frame', (t) => {
  const net = new VirtioNet({ mac: '52:54:00:aa:bb:cc' })
  const { vm, d, queues } = driven(net)
  const [rx, tx] = queues as [DriverQueue, DriverQueue]
  t.deepEqual([0, 1, 2, 3, 4, 5].map((i) => d.deviceConfig(i, 1)), [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])
  t.is(d.deviceConfig(6, 2) & 1, 1, 'link up')
  const frames: Uint8Array[] = []
  net.onPacket((f) => frames.push(f))
  const frame = new Uint8Array(60).map((_, i) => i)
  const buf = d.alloc(VIRTIO_NET_HDR_SIZE + 60)
  vm.write(buf + VIRTIO_NET_HDR_SIZE, frame)
  d.submit(tx, [{ addr: buf, len: VIRTIO_NET_HDR_SIZE + 60 }])
  d.notify(tx)
  t.deepEqual(frames, [frame])
  t.true(net.send(frame))
  const rxBuf = d.alloc(1526)
  d.submit(rx, [{ addr: rxBuf, len: 1526, write: true }])
  d.notify(rx)
  t.deepEqual(d.used(rx), [[0, VIRTIO_NET_HDR_SIZE + 60]])
  t.is(vm.read(rxBuf + 10, 1)[0], 1, 'num_buffers = 1')
  t.deepEqual(vm.read(rxBuf + VIRTIO_NET_HDR_SIZE, 60), frame)
  t.false(net.send(new Uint8Array(10)), 'shorter than an Ethernet header: dropped')
  t.is(net.stats.rxDropped, 1)
  vm.close()
})

test('the switch learns: unicast to a known address reaches one port, broadcast and unknown addresses flood', (t) => {
  const sw = new NetworkSwitch()
  const ports = [0, 1, 2].map((i) => {
    const got: number[] = []
    let listener: ((f: Uint8Array) => void) | undefined
    const port = {
      got,
      onPacket: (l: (f: Uint8Array) => void) => {
        listener = l
        return () => (listener = undefined)
      },
      send: (f: Uint8Array) => {
        got.push(f[15] as number)
        return true
      },
      transmit: (dst: number[], tag: number) => listener?.(new Uint8Array([...dst, 2, 0, 0, 0, 0, i, 8, 0, 0, tag])),
    }
    sw.connect(port)
    return port
  })
  const [a, b, c] = ports as [(typeof ports)[0], (typeof ports)[0], (typeof ports)[0]]
  const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
  a.transmit(BROADCAST, 1) // floods; learns a
  b.transmit([2, 0, 0, 0, 0, 0], 2) // to a: known, a only; learns b
  c.transmit([2, 0, 0, 0, 0, 9], 3) // unknown: floods
  t.deepEqual(a.got, [2, 3])
  t.deepEqual(b.got, [1, 3])
  t.deepEqual(c.got, [1])
  t.is(sw.stats.flooded, 2)
  sw.disconnect(b)
  a.transmit([2, 0, 0, 0, 0, 1], 4) // b's address is forgotten: floods to c only
  t.deepEqual(c.got, [1, 4])
  t.throws(() => sw.disconnect(b), { code: 'ENOTMAPPED' })
})
