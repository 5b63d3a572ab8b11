/**
 * The pager's memory must not grow with the table: a ~256 MB table read at random stays within the cache
 * budget plus a small working set. The pager uses positional reads (no mmap), so the page cache that holds
 * the file after writing is not counted in RSS.
 */
import { open } from 'node:fs/promises';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { dequantiseRow, encodeHeader, makeHeader, quantiseRows, type PleLayout } from '../src/model/ple/format.js';
import { PlePager } from '../src/model/ple/pager.js';

const MiB = 1024 * 1024;
// E2B's row width, 48k rows: 48000 x 5328 bytes = 256 MB on disk (9.4 GB as float32 would be the full E2B table).
const layout: PleLayout = { rows: 48_000, cols: 8960, bits: 4, blockSize: 32, numLayers: 35, layerDim: 256 };
const TEMPLATES = 61;
const h = makeHeader(layout);
let dir: string;
let path: string;
let templates: Uint8Array;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'perch-ple-rss-'));
  path = join(dir, 'ple.bin');
  // Quantising 430 M values would take seconds; the writer is tested elsewhere, so fill the table by
  // repeating a few quantised template rows (row r = template r % TEMPLATES).
  const values = new Float32Array(TEMPLATES * layout.cols);
  for (let i = 0; i < values.length; i++) values[i] = Math.sin(i * 0.013) * 0.2;
  templates = new Uint8Array(TEMPLATES * h.rowStride);
  quantiseRows(h, values, TEMPLATES, templates);
  const fh = await open(path, 'w');
  await fh.write(encodeHeader(h), 0, h.dataOffset, 0);
  const chunkRows = 1500;
  const chunk = new Uint8Array(chunkRows * h.rowStride);
  for (let start = 0; start < layout.rows; start += chunkRows) {
    for (let r = 0; r < chunkRows; r++) {
      const t = (start + r) % TEMPLATES;
      chunk.set(templates.subarray(t * h.rowStride, (t + 1) * h.rowStride), r * h.rowStride);
    }
    await fh.write(chunk, 0, chunk.length, h.dataOffset + start * h.rowStride);
  }
  await fh.close();
}, 60_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('reads thousands of random rows of a 256 MB table with bounded RSS and correct values', async () => {
  const budget = 8 * MiB;
  const pager = await PlePager.open(path, { cacheBytes: budget, expect: { rows: layout.rows, cols: layout.cols } });
  const expected = new Float32Array(layout.cols);
  let seed = 99;
  const rand = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return Math.floor((seed / 2 ** 32) * layout.rows);
  };
  // Warm up first: the cache fills to its budget and V8's heap reaches its working size (~40 MB of
  // transient garbage here), so what grows afterwards is what the pager keeps.
  for (let batch = 0; batch < 200; batch++) await pager.rowsFor(Array.from({ length: 16 }, rand));
  expect(pager.stats().residentBytes).toBeGreaterThan(budget - h.rowStride);
  const before = process.memoryUsage().rss;
  let peak = before;
  // 16k more rows = 85 MB of distinct quantised rows: an unbounded cache would show up plainly.
  for (let batch = 0; batch < 1000; batch++) {
    const ids = Array.from({ length: 16 }, rand);
    const rows = await pager.rowsFor(ids);
    if (batch % 100 === 0) {
      const i = batch % ids.length;
      const t = ids[i]! % TEMPLATES;
      dequantiseRow(h, templates, t * h.rowStride, expected, 0);
      expect(rows.subarray(i * layout.cols, (i + 1) * layout.cols)).toEqual(expected);
    }
    expect(pager.stats().residentBytes).toBeLessThanOrEqual(budget);
    peak = Math.max(peak, process.memoryUsage().rss);
  }
  const s = pager.stats();
  expect(s.misses).toBeGreaterThan(15_000);
  expect(s.reads).toBe(s.misses);
  await pager.close();
  // Measured here: 21-35 MB of V8 heap noise with the 8 MiB budget, 94 MB with an unbounded cache.
  expect(peak - before).toBeLessThan(64 * MiB);
});
