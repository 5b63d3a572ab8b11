import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { f32ToBf16, f32ToF16 } from '../src/model/float-convert.js';
import {
  SafetensorsCheckpoint,
  SafetensorsWriter,
  writeSafetensors,
  writeShardedCheckpoint,
} from '../src/model/safetensors.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'perch-st-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function seeded(n: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * scale;
  }
  return out;
}

describe('float conversion', () => {
  it('bf16 and f16 round to nearest and keep special values', async () => {
    const vals = new Float32Array([0, -0, 1, -2.5, 65504, 70000, 1e-7, 6.1e-5, Infinity, -Infinity, NaN, 1 + 2 ** -9]);
    const f16 = f32ToF16(vals);
    expect(Array.from(f16.slice(0, 6))).toEqual([0, 0x8000, 0x3c00, 0xc100, 0x7bff, 0x7c00]);
    expect(f16[8]).toBe(0x7c00);
    expect(f16[10]! & 0x7c00).toBe(0x7c00);
    expect(f16[10]! & 0x3ff).not.toBe(0);
    const bf = f32ToBf16(vals);
    expect(bf[2]).toBe(0x3f80);
    expect(bf[11]).toBe(0x3f80); // 1 + 2^-9 ties to even → 1
  });
});

describe('safetensors', () => {
  it('round-trips F32, BF16, F16, I8 and U8 with metadata', async () => {
    const a = seeded(6 * 5, 1, 4);
    const file = path.join(dir, 'model.safetensors');
    writeSafetensors(
      file,
      [
        { name: 'a.f32', dtype: 'F32', shape: [6, 5], data: a },
        { name: 'a.bf16', dtype: 'BF16', shape: [6, 5], data: a },
        { name: 'a.f16', dtype: 'F16', shape: [30], data: a },
        { name: 'i8', dtype: 'I8', shape: [4], data: new Int8Array([-128, -1, 0, 127]) },
        { name: 'u8', dtype: 'U8', shape: [2, 2], data: new Uint8Array([0, 1, 254, 255]) },
        { name: 'empty', dtype: 'F32', shape: [0, 3], data: new Float32Array(0) },
      ],
      { format: 'pt' },
    );
    // The header length keeps the data 8-byte aligned.
    const headerLen = Number(fs.readFileSync(file).readBigUInt64LE(0));
    expect((8 + headerLen) % 8).toBe(0);

    const ck = await SafetensorsCheckpoint.open(dir);
    try {
      expect(ck.names().sort()).toEqual(['a.bf16', 'a.f16', 'a.f32', 'empty', 'i8', 'u8']);
      expect(ck.metadata.format).toBe('pt');
      expect(ck.info('a.bf16')).toMatchObject({ dtype: 'BF16', shape: [6, 5], byteLength: 60, file });
      expect(Array.from(await ck.read('a.f32'))).toEqual(Array.from(a));
      const bf = await ck.read('a.bf16');
      const f16 = await ck.read('a.f16');
      for (let i = 0; i < a.length; i++) {
        expect(Math.abs(bf[i]! - a[i]!)).toBeLessThanOrEqual(Math.abs(a[i]!) * 2 ** -8);
        expect(Math.abs(f16[i]! - a[i]!)).toBeLessThanOrEqual(Math.abs(a[i]!) * 2 ** -11 + 1e-7);
      }
      expect(Array.from(await ck.read('i8'))).toEqual([-128, -1, 0, 127]);
      expect(Array.from(await ck.read('u8'))).toEqual([0, 1, 254, 255]);
      expect((await ck.read('empty')).length).toBe(0);
      expect(Array.from(await ck.readRows('a.bf16', 2, 2))).toEqual(Array.from(bf.subarray(10, 20)));
      expect(Array.from(await ck.readRaw('u8', 1, 2))).toEqual([1, 254]);
      await expect(ck.readRows('a.f32', 5, 2)).rejects.toThrow(/out of range/);
      expect(() => ck.info('nope')).toThrow(/no tensor named nope/);
    } finally {
      await ck.close();
    }
  });

  it('opens a sharded checkpoint through its index', async () => {
    const tensors = Array.from({ length: 5 }, (_, i) => ({
      name: `layers.${i}.w`,
      dtype: 'BF16' as const,
      shape: [16, 8],
      data: seeded(128, 10 + i),
    }));
    const shards = writeShardedCheckpoint(dir, tensors, 600); // 256 B each → 2 per shard
    expect(shards).toEqual([
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
    ]);
    const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')) as {
      metadata: { total_size: number };
      weight_map: Record<string, string>;
    };
    expect(index.metadata.total_size).toBe(5 * 256);
    expect(index.weight_map['layers.4.w']).toBe('model-00003-of-00003.safetensors');
    const ck = await SafetensorsCheckpoint.open(dir);
    try {
      expect(ck.names().length).toBe(5);
      expect(path.basename(ck.info('layers.2.w').file)).toBe('model-00002-of-00003.safetensors');
      const back = await ck.read('layers.3.w');
      const want = tensors[3]!.data;
      for (let i = 0; i < want.length; i++) expect(back[i]).toBeCloseTo(want[i]!, 2);
    } finally {
      await ck.close();
    }
  });

  it('rejects an index that points outside the checkpoint directory', async () => {
    fs.writeFileSync(
      path.join(dir, 'model.safetensors.index.json'),
      JSON.stringify({ weight_map: { w: '../evil.safetensors' } }),
    );
    await expect(SafetensorsCheckpoint.open(dir)).rejects.toThrow(/invalid shard file/);
  });

  it('streams a big-ish tensor in chunks and reads row ranges with bounded reads', async () => {
    const rows = 4096,
      cols = 640; // 2.6 M values, 5 MB as BF16
    const file = path.join(dir, 'big.safetensors');
    const w = SafetensorsWriter.create(file, [
      { name: 'small', dtype: 'F32', shape: [3] },
      { name: 'table', dtype: 'BF16', shape: [rows, cols] },
    ]);
    w.writeTensor({ name: 'small', dtype: 'F32', shape: [3], data: new Float32Array([1, 2, 3]) });
    // Values exact in bf16 (8 significant bits), different per row and column.
    const value = (r: number, c: number) => (r % 64) + (c % 2) / 2;
    for (let r0 = 0; r0 < rows; r0 += 512) {
      const chunk = new Float32Array(512 * cols);
      for (let r = 0; r < 512; r++) for (let c = 0; c < cols; c++) chunk[r * cols + c] = value(r0 + r, c);
      w.writeChunk(new Uint8Array(f32ToBf16(chunk).buffer));
    }
    w.close();
    expect(fs.statSync(file).size).toBeGreaterThan(rows * cols * 2);

    const ck = await SafetensorsCheckpoint.open(file);
    try {
      const got = await ck.readRows('table', 3001, 3);
      expect(got.length).toBe(3 * cols);
      for (let r = 0; r < 3; r++) for (let c = 0; c < cols; c++) expect(got[r * cols + c]).toBe(value(3001 + r, c));
      const all = await ck.read('table');
      expect(all[(rows - 1) * cols + 1]).toBe(value(rows - 1, 1));
      expect(Array.from(await ck.read('small'))).toEqual([1, 2, 3]);
    } finally {
      await ck.close();
    }
  });

  it('the streaming writer refuses overflow and incomplete tensors', () => {
    const w = SafetensorsWriter.create(path.join(dir, 'x.safetensors'), [{ name: 't', dtype: 'F32', shape: [2] }]);
    expect(() => w.writeChunk(new Uint8Array(12))).toThrow(/overflows tensor t/);
    w.writeChunk(new Uint8Array(4));
    expect(() => w.close()).toThrow(/before tensor t was complete/);
  });

  it('corrupt header and truncated files give errors naming the file', async () => {
    const good = path.join(dir, 'good.safetensors');
    writeSafetensors(good, [{ name: 'w', dtype: 'F32', shape: [64], data: seeded(64, 3) }]);
    const bytes = fs.readFileSync(good);

    const truncated = path.join(dir, 'truncated.safetensors');
    fs.writeFileSync(truncated, bytes.subarray(0, bytes.byteLength - 10));
    await expect(SafetensorsCheckpoint.open(truncated)).rejects.toThrow(
      /truncated\.safetensors.*past the 246 data bytes \(truncated\?\)/,
    );

    const cut = path.join(dir, 'cut.safetensors');
    fs.writeFileSync(cut, bytes.subarray(0, 20));
    await expect(SafetensorsCheckpoint.open(cut)).rejects.toThrow(/cut\.safetensors.*runs past the end/);

    const garbage = path.join(dir, 'garbage.safetensors');
    const g = Buffer.from(bytes);
    g.write('{{{{', 8);
    fs.writeFileSync(garbage, g);
    await expect(SafetensorsCheckpoint.open(garbage)).rejects.toThrow(/garbage\.safetensors.*header is not JSON/);

    const tiny = path.join(dir, 'tiny.safetensors');
    fs.writeFileSync(tiny, Buffer.from([1, 2, 3]));
    await expect(SafetensorsCheckpoint.open(tiny)).rejects.toThrow(/tiny\.safetensors.*shorter than/);

    const huge = path.join(dir, 'huge.safetensors');
    const h = Buffer.from(bytes);
    h.writeBigUInt64LE(2n ** 40n, 0);
    fs.writeFileSync(huge, h);
    await expect(SafetensorsCheckpoint.open(huge)).rejects.toThrow(/huge\.safetensors.*exceeds/);
  });
});
