import { mkdtempSync, readFileSync, rmSync, truncateSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { f16BitsToF32, f32ToF16Bits } from '../src/model/ple/f16.js';
import {
  decodeHeader,
  dequantiseRow,
  makeHeader,
  PLE_DATA_OFFSET,
  quantiseRows,
  type PleLayout,
} from '../src/model/ple/format.js';
import { PlePager } from '../src/model/ple/pager.js';
import { writePleFile } from '../src/model/ple/writer.js';

/** Deterministic row values: row r, column c. */
function rowValues(start: number, count: number, cols: number): Float32Array {
  const v = new Float32Array(count * cols);
  for (let r = 0; r < count; r++) {
    for (let c = 0; c < cols; c++)
      v[r * cols + c] = Math.sin((start + r) * 0.37 + c * 0.011) * 0.1 * (1 + ((start + r) % 5));
  }
  return v;
}

const layout: PleLayout = { rows: 300, cols: 96, bits: 4, blockSize: 32, numLayers: 3, layerDim: 32 };

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'perch-ple-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function writeTable(l: PleLayout = layout, name = 'ple.bin'): Promise<string> {
  const path = join(dir, name);
  await writePleFile(path, l, async (s, n) => rowValues(s, n, l.cols), { chunkBytes: 7 * l.cols * 4 });
  return path;
}

/** Direct dequantisation of stored row `id` from the file's bytes, independent of the pager. */
function directRow(path: string, id: number): Float32Array {
  const bytes = readFileSync(path);
  const h = decodeHeader(bytes.subarray(0, PLE_DATA_OFFSET), path);
  const out = new Float32Array(h.cols);
  dequantiseRow(h, bytes, h.dataOffset + id * h.rowStride, out, 0);
  return out;
}

describe('f16', () => {
  it('round-trips representable values and rounds others to the nearest half', () => {
    for (const v of [0, 1, -2, 0.5, 65504, 2 ** -24, 1.5, -(2 ** -14), 3 * 2 ** -20])
      expect(f16BitsToF32(f32ToF16Bits(v))).toBe(v);
    expect(Math.abs(f16BitsToF32(f32ToF16Bits(0.1)) - 0.1)).toBeLessThan(0.1 * 2 ** -11);
    expect(f16BitsToF32(f32ToF16Bits(1e6))).toBe(65504);
  });
});

describe('PLE quantisation', () => {
  it.each([2, 4, 8] as const)('%i-bit rows dequantise within the block step, and zero stays exact', (bits) => {
    const l: PleLayout = { ...layout, bits, rows: 4 };
    const h = makeHeader(l);
    const v = rowValues(0, 4, l.cols);
    v[5] = 0;
    const q = new Uint8Array(4 * h.rowStride);
    quantiseRows(h, v, 4, q);
    const d = new Float32Array(l.cols);
    for (let r = 0; r < 4; r++) {
      dequantiseRow(h, q, r * h.rowStride, d, 0);
      for (let b = 0; b < l.cols / l.blockSize; b++) {
        const block = Array.from(v.subarray(r * l.cols + b * l.blockSize, r * l.cols + (b + 1) * l.blockSize));
        const step = (Math.max(0, ...block) - Math.min(0, ...block)) / ((1 << bits) - 1);
        block.forEach((x, i) => expect(Math.abs(d[b * l.blockSize + i]! - x)).toBeLessThanOrEqual(step * 0.51 + 1e-6));
      }
      if (r === 0) expect(d[5]).toBe(0);
    }
  });

  it('writer output has the documented size and a header that reads back', async () => {
    const path = await writeTable();
    const h = makeHeader(layout);
    const bytes = readFileSync(path);
    expect(bytes.length).toBe(PLE_DATA_OFFSET + layout.rows * h.rowStride);
    expect(decodeHeader(bytes, path)).toEqual(h);
  });

  it('writer refuses a producer that returns the wrong number of values and leaves no file', async () => {
    const path = join(dir, 'bad.bin');
    await expect(writePleFile(path, layout, async (_s, n) => new Float32Array(n * layout.cols - 1))).rejects.toThrow(
      /producer returned/,
    );
    expect(existsSync(path)).toBe(false);
    expect(existsSync(`${path}.partial`)).toBe(false);
  });
});

describe('PlePager', () => {
  it('returns rows equal to a direct dequantisation, repeated ids included', async () => {
    const path = await writeTable();
    const pager = await PlePager.open(path, { cacheBytes: 1 << 20, expect: { rows: 300, cols: 96 } });
    const ids = [7, 299, 0, 7, 150, 7];
    const got = await pager.rowsFor(ids);
    expect(got.length).toBe(ids.length * 96);
    ids.forEach((id, i) =>
      expect(Array.from(got.subarray(i * 96, (i + 1) * 96))).toEqual(Array.from(directRow(path, id))),
    );
    // And close to the values written (4-bit).
    const want = rowValues(150, 1, 96);
    for (let c = 0; c < 96; c++) expect(Math.abs(got[4 * 96 + c]! - want[c]!)).toBeLessThan(0.05);
    const s = pager.stats();
    expect(s.misses).toBe(4); // unique ids only
    expect(s.reads).toBe(4);
    expect(s.hits).toBe(0);
    await pager.rowsFor([7, 0, 1]);
    expect(pager.stats()).toMatchObject({ hits: 2, misses: 5, reads: 5 });
    expect(pager.stats().readLatencyMs.samples).toBe(5);
    await pager.close();
  });

  it('reads a single missing row (a decode step) as a synchronous positional read with the same bytes', async () => {
    const path = await writeTable();
    const pager = await PlePager.open(path, { cacheBytes: 0 });
    for (const id of [0, 1, 150, 298, 299]) {
      const got = await pager.rowsFor([id]);
      expect(Array.from(got)).toEqual(Array.from(directRow(path, id)));
    }
    expect(pager.stats()).toMatchObject({ misses: 5, reads: 5 });
    await pager.close();
  });

  it('evicts least recently used rows by bytes and never exceeds the budget', async () => {
    const path = await writeTable();
    const stride = makeHeader(layout).rowStride;
    const pager = await PlePager.open(path, { cacheBytes: 3 * stride + stride - 1 });
    // One call per row: rows read in one call enter the cache in completion order.
    for (const id of [0, 1, 2]) await pager.rowsFor([id]);
    expect(pager.stats()).toMatchObject({ misses: 3, cachedRows: 3, residentBytes: 3 * stride });
    await pager.rowsFor([0]); // 0 becomes most recent; 1 is now least recent
    await pager.rowsFor([3]); // evicts 1
    expect(pager.stats()).toMatchObject({ hits: 1, misses: 4, cachedRows: 3 });
    await pager.rowsFor([0, 2, 3]);
    expect(pager.stats().hits).toBe(4);
    await pager.rowsFor([1]);
    expect(pager.stats().misses).toBe(5);
    for (let i = 0; i < 40; i++) {
      await pager.rowsFor([(i * 7) % 300, (i * 13) % 300]);
      expect(pager.stats().residentBytes).toBeLessThanOrEqual(pager.stats().budgetBytes);
    }
    await pager.close();
  });

  it('answers concurrent calls with overlapping ids correctly', async () => {
    const path = await writeTable();
    const pager = await PlePager.open(path, { cacheBytes: 4 * makeHeader(layout).rowStride, concurrency: 3 });
    const batches = Array.from({ length: 8 }, (_, b) => Array.from({ length: 20 }, (_, i) => (b * 31 + i * 17) % 300));
    const results = await Promise.all(batches.map((ids) => pager.rowsFor(ids)));
    batches.forEach((ids, b) =>
      ids.forEach((id, i) =>
        expect(Array.from(results[b]!.subarray(i * 96, (i + 1) * 96))).toEqual(Array.from(directRow(path, id))),
      ),
    );
    expect(pager.stats().residentBytes).toBeLessThanOrEqual(pager.stats().budgetBytes);
    await pager.close();
  });

  it('with a zero budget caches nothing but still answers', async () => {
    const path = await writeTable();
    const pager = await PlePager.open(path, { cacheBytes: 0 });
    await pager.rowsFor([1, 1]);
    await pager.rowsFor([1]);
    expect(pager.stats()).toMatchObject({ hits: 0, misses: 2, residentBytes: 0 });
    await pager.close();
  });

  it('names the file when it is truncated, mismatched, missing or not a PLE file', async () => {
    const path = await writeTable();
    await expect(PlePager.open(path, { cacheBytes: 0, expect: { rows: 301 } })).rejects.toThrow(
      `${path}: rows is 300, the model config expects 301`,
    );
    await expect(PlePager.open(path, { cacheBytes: 0, expect: { layerDim: 64 } })).rejects.toThrow(/layerDim is 32/);
    const size = readFileSync(path).length;
    truncateSync(path, size - 10);
    await expect(PlePager.open(path, { cacheBytes: 0 })).rejects.toThrow(
      `${path}: truncated: expected ${size} bytes, got ${size - 10}`,
    );
    truncateSync(path, 100);
    await expect(PlePager.open(path, { cacheBytes: 0 })).rejects.toThrow(path);
    await expect(PlePager.open(join(dir, 'nope.bin'), { cacheBytes: 0 })).rejects.toThrow(/nope\.bin: missing/);
    const other = join(dir, 'other.bin');
    (await import('node:fs')).writeFileSync(other, Buffer.alloc(5000, 1));
    await expect(PlePager.open(other, { cacheBytes: 0 })).rejects.toThrow(`${other}: not a PLE file`);
  });

  it('close waits for reads in flight, then refuses new calls', async () => {
    const path = await writeTable();
    const pager = await PlePager.open(path, { cacheBytes: 0 });
    const pending = pager.rowsFor(Array.from({ length: 200 }, (_, i) => i));
    await pager.close();
    expect((await pending).length).toBe(200 * 96);
    await expect(pager.rowsFor([1])).rejects.toThrow(/pager is closed/);
  });

  it('rejects ids outside the table', async () => {
    const path = await writeTable();
    const pager = await PlePager.open(path, { cacheBytes: 0 });
    await expect(pager.rowsFor([300])).rejects.toThrow(RangeError);
    await expect(pager.rowsFor([-1])).rejects.toThrow(RangeError);
    await expect(pager.rowsFor([1.5])).rejects.toThrow(RangeError);
    await pager.close();
  });
});
