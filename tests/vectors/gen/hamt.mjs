// Writes ../hamt_js.json: a 600-file directory HAMT-sharded by the js importer
// (run from a folder whose node_modules has ipfs-unixfs-importer and blockstore-core).

import { importer } from 'ipfs-unixfs-importer'
import { MemoryBlockstore } from 'blockstore-core/memory'
const bs = new MemoryBlockstore()
const files = []
for (let i = 0; i < 600; i++) files.push({ path: `d/file-${i}.txt`, content: new TextEncoder().encode(`hello ${i}\n`) })
let root
for await (const e of importer(files, bs, { shardSplitThresholdBytes: 1000, wrapWithDirectory: false, cidVersion: 1, rawLeaves: true })) { if (e.path === 'd') root = e.cid }
const out = {}
for await (const p of bs.getAll()) { let b = p.block ?? p.bytes; if (b && b[Symbol.asyncIterator]) { const parts=[]; for await (const c of b) parts.push(Buffer.from(c)); b = Buffer.concat(parts) } out[p.cid.toString()] = Buffer.from(b).toString("base64") }
console.log(JSON.stringify({ root: root.toString(), blocks: out }))
