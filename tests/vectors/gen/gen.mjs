// Generates ../unixfs.json and ../car.json with the real js UnixFS importer
// (ipfs-unixfs-importer) and CAR writer (@ipld/car), at the versions pinned in
// package.json / package-lock.json. See ../README.md for the exact command.
//
// File contents are a deterministic "sha256 counter stream", also implemented in
// tests/blockstore/test_unixfs.py: the concatenation of sha256(utf8(seed) || uint64_be(k))
// for k = 0, 1, 2, ..., truncated to the wanted size.

import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { CarWriter } from '@ipld/car'
import * as dagPb from '@ipld/dag-pb'
import { importBytes, importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

function stream (seed, size) {
  const out = Buffer.alloc(Math.ceil(size / 32) * 32)
  const prefix = Buffer.from(seed, 'utf8')
  const counter = Buffer.alloc(8)
  for (let k = 0; k * 32 < size; k++) {
    counter.writeBigUInt64BE(BigInt(k))
    createHash('sha256').update(prefix).update(counter).digest().copy(out, k * 32)
  }
  return new Uint8Array(out.subarray(0, size))
}

/** A write-only blockstore that remembers every block, as the importer needs only put(). */
function recordingStore () {
  const blocks = new Map()
  return {
    blocks,
    async put (cid, bytes) {
      blocks.set(cid.toString(), { cid, bytes })
      return cid
    }
  }
}

const KIB = 1024
const MIB = 1024 * 1024
const DEFAULT = { chunk_size: MIB, cid_version: 1, raw_leaves: true, max_links: 1024 }
const CLASSIC = { chunk_size: 256 * KIB, cid_version: 0, raw_leaves: false, max_links: 174 }

function jsOptions (p) {
  return {
    cidVersion: p.cid_version,
    rawLeaves: p.raw_leaves,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: p.chunk_size }),
    layout: balanced({ maxChildrenPerNode: p.max_links })
  }
}

const fileCases = [
  { name: 'empty-default', seed: 'empty', size: 0, params: DEFAULT },
  { name: 'empty-classic', seed: 'empty', size: 0, params: CLASSIC },
  { name: 'hello-classic', text: 'hello world\n', params: CLASSIC },
  { name: 'hello-default', text: 'hello world\n', params: DEFAULT },
  { name: 'one-chunk', seed: 'one-chunk', size: KIB, params: { ...DEFAULT, chunk_size: KIB } },
  { name: 'one-chunk-plus-one', seed: 'one-chunk-plus-one', size: KIB + 1, params: { ...DEFAULT, chunk_size: KIB } },
  { name: 'four-links-full-2-levels', seed: 'two-levels', size: 16 * KIB, params: { ...DEFAULT, chunk_size: KIB, max_links: 4 } },
  { name: 'four-links-2-levels-partial', seed: 'two-levels', size: 11 * KIB + 7, params: { ...DEFAULT, chunk_size: KIB, max_links: 4 }, record_blocks: true },
  { name: 'four-links-3-levels-one-extra-leaf', seed: 'three-levels', size: 16 * KIB + 1, params: { ...DEFAULT, chunk_size: KIB, max_links: 4 }, record_blocks: true },
  { name: 'four-links-3-levels', seed: 'three-levels', size: 45 * KIB + 300, params: { ...DEFAULT, chunk_size: KIB, max_links: 4 } },
  { name: 'three-links-pb-leaves-v1', seed: 'pb-leaves', size: 10 * KIB + 9, params: { chunk_size: KIB, cid_version: 1, raw_leaves: false, max_links: 3 }, record_blocks: true },
  { name: 'three-links-pb-leaves-v0', seed: 'pb-leaves', size: 10 * KIB + 9, params: { chunk_size: KIB, cid_version: 0, raw_leaves: false, max_links: 3 } },
  { name: 'classic-multi-chunk', seed: 'classic', size: MIB + 3, params: CLASSIC },
  { name: 'classic-one-chunk', seed: 'classic', size: 256 * KIB, params: CLASSIC },
  { name: 'default-1024-links-2-levels', seed: 'wide', size: MIB + KIB + 1, params: { ...DEFAULT, chunk_size: KIB } },
  { name: 'default-3MiB-plus-5', seed: 'default', size: 3 * MIB + 5, params: DEFAULT },
  { name: 'odd-chunk-size', seed: 'odd', size: 100 * 1000 + 17, params: { chunk_size: 1000, cid_version: 1, raw_leaves: true, max_links: 7 } }
]

const files = []
for (const c of fileCases) {
  const bytes = c.text != null ? new TextEncoder().encode(c.text) : stream(c.seed, c.size)
  const store = recordingStore()
  const result = await importBytes(bytes, store, jsOptions(c.params))
  const entry = {
    name: c.name,
    params: c.params,
    size: bytes.length,
    root: result.cid.toString(),
    tsize: Number(result.size),
    block_count: store.blocks.size
  }
  if (c.text != null) entry.text = c.text
  else entry.seed = c.seed
  if (c.record_blocks) {
    entry.blocks = [...store.blocks.values()]
      .map(({ cid, bytes }) => ({ cid: cid.toString(), size: bytes.length }))
      .sort((a, b) => a.cid < b.cid ? -1 : a.cid > b.cid ? 1 : 0)
  }
  files.push(entry)
}

// A directory tree: nested subdirectories, an empty directory, a multi-chunk
// file, a duplicate file, and names that sort differently as bytes and as text.
const treeEntries = [
  { path: 'README.md', seed: 'readme', size: 300 },
  { path: 'docs/guide.txt', seed: 'guide', size: 5000 },
  { path: 'docs/api/index.txt', seed: 'index', size: 17 },
  { path: 'docs/api/Z-upper.txt', seed: 'upper', size: 1 },
  { path: 'docs/api/deep/er/leaf.bin', seed: 'leaf', size: 2048 },
  { path: 'docs/copy-of-guide.txt', seed: 'guide', size: 5000 },
  { path: 'empty-dir', dir: true },
  { path: 'zero-length.bin', seed: 'zero', size: 0 },
  { path: 'é-accent.txt', seed: 'accent', size: 64 },
  { path: 'e-plain.txt', seed: 'plain', size: 64 }
]

const dirCases = [
  { name: 'tree-default-1KiB-chunks', params: { ...DEFAULT, chunk_size: KIB }, entries: treeEntries },
  { name: 'tree-classic-1KiB-chunks', params: { ...CLASSIC, chunk_size: KIB }, entries: treeEntries },
  { name: 'tree-default', params: DEFAULT, entries: treeEntries }
]

function dfsOrder (root, blocks) {
  // Pre-order depth-first, each distinct CID once, links in stored order (Kubo's `dag export`).
  const seen = new Set()
  const order = []
  const visit = (cid) => {
    const key = cid.toString()
    if (seen.has(key)) return
    seen.add(key)
    const { bytes } = blocks.get(key)
    order.push({ cid, bytes })
    if (cid.code === dagPb.code) {
      for (const link of dagPb.decode(bytes).Links) visit(link.Hash)
    }
  }
  visit(root)
  return order
}

const directories = []
const cars = []
for (const c of dirCases) {
  const store = recordingStore()
  const source = c.entries.map((e) => e.dir
    ? { path: e.path }
    : { path: e.path, content: stream(e.seed, e.size) })
  let last
  const byPath = {}
  for await (const entry of importer(source, store, { ...jsOptions(c.params), wrapWithDirectory: true })) {
    last = entry
    byPath[entry.path] = { cid: entry.cid.toString(), tsize: Number(entry.size) }
  }
  directories.push({
    name: c.name,
    params: c.params,
    entries: c.entries,
    root: last.cid.toString(),
    tsize: Number(last.size),
    block_count: store.blocks.size,
    paths: byPath
  })

  const ordered = dfsOrder(last.cid, store.blocks)
  const { writer, out } = CarWriter.create([last.cid])
  const chunks = []
  const collect = (async () => { for await (const chunk of out) chunks.push(chunk) })()
  for (const block of ordered) await writer.put(block)
  await writer.close()
  await collect
  cars.push({
    name: c.name,
    root: last.cid.toString(),
    blocks_in_order: ordered.map(({ cid }) => cid.toString()),
    car_base64: Buffer.concat(chunks).toString('base64')
  })
}

const pkg = JSON.parse(readFileSync(new URL('./package.json', import.meta.url)))
const generator = {
  script: 'tests/vectors/gen/gen.mjs',
  command: 'cd tests/vectors/gen && npm ci && node gen.mjs',
  node: process.version,
  packages: pkg.dependencies,
  content: 'concat(sha256(utf8(seed) || uint64_be(k)) for k = 0..) truncated to size'
}
writeFileSync(new URL('../unixfs.json', import.meta.url),
  JSON.stringify({ generator, files, directories }, null, 1) + '\n')
writeFileSync(new URL('../car.json', import.meta.url),
  JSON.stringify({ generator, cars }, null, 1) + '\n')
console.log(`wrote ${files.length} file vectors, ${directories.length} directory vectors, ${cars.length} CARs`)
