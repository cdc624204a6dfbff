// A Helia 7 peer for pinfold's interop tests, driven over stdin/stdout JSON lines.
//
// It listens on 127.0.0.1 TCP with Noise + Yamux, runs identify, ping and
// Bitswap 1.2.0, and has no routers, discovery or HTTP gateways (no internet).
// One request a line on stdin: {"id": N, "cmd": "...", ...}; one reply a line
// on stdout: {"id": N, "ok": true, ...} or {"id": N, "ok": false, "error": "..."}.
// The first line written is {"ready": true, "peer_id", "addrs"}.
//
// Commands:
//   info                                   -> {peer_id, addrs}
//   add {path | data_b64, chunk_size, max_children, raw_leaves, cid_version}
//                                          -> {cid}
//   dial {addr}                            -> {peer_id}
//   cat {cid, timeout_ms}                  -> {size, sha256}
//   block_put {data_b64, codec}            -> {cid}
//   block_get {cid, timeout_ms}            -> {size, sha256, data_b64 (when <= 64 KiB)}
//   has {cid}                              -> {has}
//   peers                                  -> {peers}
//   stop                                   -> exits after replying
import './polyfill.mjs'

import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createInterface } from 'node:readline'

const { createHeliaLight } = await import('helia')
const { withLibp2pLight } = await import('@helia/libp2p')
const { withBitswap } = await import('@helia/bitswap')
const { unixfs } = await import('@helia/unixfs')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@libp2p/noise')
const { yamux } = await import('@libp2p/yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { multiaddr } = await import('@multiformats/multiaddr')
const { MemoryBlockstore } = await import('blockstore-core')
const { MemoryDatastore } = await import('datastore-core')
const { fixedSize } = await import('ipfs-unixfs-importer/chunker')
const { balanced } = await import('ipfs-unixfs-importer/layout')
const { CID } = await import('multiformats/cid')
const raw = await import('multiformats/codecs/raw')
const { sha256 } = await import('multiformats/hashes/sha2')

const helia = withBitswap(withLibp2pLight(createHeliaLight({
  blockstore: new MemoryBlockstore(),
  datastore: new MemoryDatastore()
}), {
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  peerDiscovery: [],
  connectionGater: { denyDialMultiaddr: () => false },
  services: { identify: identify(), ping: ping() }
}))
await helia.start()
const fs = unixfs(helia)

function hex (bytes) { return createHash('sha256').update(bytes).digest('hex') }
function addrs () { return helia.libp2p.getMultiaddrs().map(a => a.toString()) }
function write (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

const handlers = {
  async info () { return { peer_id: helia.libp2p.peerId.toString(), addrs: addrs() } },
  async add (req) {
    const bytes = req.path != null ? await readFile(req.path) : Buffer.from(req.data_b64, 'base64')
    const cid = await fs.addBytes(bytes, {
      cidVersion: req.cid_version ?? 1,
      rawLeaves: req.raw_leaves ?? true,
      chunker: fixedSize({ chunkSize: req.chunk_size ?? 1048576 }),
      layout: balanced({ maxChildrenPerNode: req.max_children ?? 1024 })
    })
    return { cid: cid.toString() }
  },
  async dial (req) {
    const conn = await helia.libp2p.dial(multiaddr(req.addr), { signal: AbortSignal.timeout(req.timeout_ms ?? 10000) })
    return { peer_id: conn.remotePeer.toString() }
  },
  async cat (req) {
    const hash = createHash('sha256')
    let size = 0
    for await (const chunk of fs.cat(CID.parse(req.cid), { signal: AbortSignal.timeout(req.timeout_ms ?? 30000) })) {
      hash.update(chunk)
      size += chunk.byteLength
    }
    return { size, sha256: hash.digest('hex') }
  },
  async block_put (req) {
    const data = Buffer.from(req.data_b64, 'base64')
    if ((req.codec ?? 'raw') !== 'raw') throw new Error('only raw blocks are supported here')
    const cid = CID.createV1(raw.code, await sha256.digest(data))
    await helia.blockstore.put(cid, data)
    return { cid: cid.toString() }
  },
  async block_get (req) {
    const chunks = []
    const got = helia.blockstore.get(CID.parse(req.cid), { signal: AbortSignal.timeout(req.timeout_ms ?? 30000) })
    // blockstore.get returns bytes or an async iterable of chunks depending on the version
    if (got != null && typeof got[Symbol.asyncIterator] === 'function') {
      for await (const c of got) chunks.push(c)
    } else {
      chunks.push(await got)
    }
    const data = Buffer.concat(chunks.map(c => Buffer.from(c)))
    const out = { size: data.length, sha256: hex(data) }
    if (data.length <= 65536) out.data_b64 = data.toString('base64')
    return out
  },
  async has (req) { return { has: await helia.blockstore.has(CID.parse(req.cid)) } },
  async peers () { return { peers: helia.libp2p.getPeers().map(p => p.toString()) } },
  async stop () { return {} }
}

write({ ready: true, peer_id: helia.libp2p.peerId.toString(), addrs: addrs() })

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
let stopping = false
rl.on('line', (line) => {
  if (line.trim() === '') return
  let req
  try { req = JSON.parse(line) } catch (err) { write({ ok: false, error: `bad JSON: ${err.message}` }); return }
  const fn = handlers[req.cmd]
  if (fn == null) { write({ id: req.id, ok: false, error: `unknown command ${req.cmd}` }); return }
  fn(req).then(
    (res) => {
      write({ id: req.id, ok: true, ...res })
      if (req.cmd === 'stop') { stopping = true; helia.stop().finally(() => process.exit(0)) }
    },
    (err) => write({ id: req.id, ok: false, error: `${err.name}: ${err.message}` })
  )
})
rl.on('close', () => { if (!stopping) helia.stop().finally(() => process.exit(0)) })
