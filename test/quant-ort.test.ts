/**
 * The quantiser's bytes run in real ONNX Runtime ops: MatMulNBits (2/4/8 bits, accuracy levels 0 and 4)
 * and GatherBlockQuantized, and one set of bytes serves both (tied embedding / LM head).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GraphBuilder } from '../src/onnx/graph.js';
import {
  type QuantBits,
  type QuantizedMatrix,
  dequantizeMatMulNBits,
  dequantizeRows,
  gatherBlockQuantizedDims,
  matMulNBitsDims,
  quantizeGatherBlockQuantized,
  quantizeMatMulNBits,
} from '../src/model/quant.js';
import { gaussian } from './quant-helpers.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'perch-quant-ort-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Y[m, n] = sum_k A[m, k] * W[n, k] in float64. */
function matmulT(a: Float32Array, w: Float32Array, m: number, n: number, k: number): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let t = 0; t < k; t++) acc += a[i * k + t]! * w[j * k + t]!;
      y[i * n + j] = acc;
    }
  return y;
}

function addMatMulNBits(
  g: GraphBuilder,
  q: QuantizedMatrix,
  input: string,
  accuracyLevel: number,
  prefix: string,
): string {
  const d = matMulNBitsDims(q);
  const b = g.initializer(`${prefix}.B`, 'uint8', d.data, q.data);
  const s = g.initializer(`${prefix}.scales`, 'float32', d.scales, q.scales);
  const z = g.initializer(`${prefix}.zp`, 'uint8', d.zeroPoints, q.zeroPoints);
  return g.op(
    'MatMulNBits',
    [input, b, s, z],
    { K: q.k, N: q.n, bits: q.bits, block_size: q.blockSize, accuracy_level: accuracyLevel },
    'com.microsoft',
  );
}

async function runOnce(modelPath: string, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const session = await ort.InferenceSession.create(modelPath, { intraOpNumThreads: 1 });
  try {
    return (await session.run(feeds)) as Record<string, ort.Tensor>;
  } finally {
    await session.release();
  }
}

describe('MatMulNBits runs our bytes', () => {
  const cases: { bits: QuantBits; bs: number; k: number; acc: number }[] = [
    { bits: 2, bs: 32, k: 256, acc: 0 },
    { bits: 2, bs: 64, k: 256, acc: 4 },
    { bits: 2, bs: 128, k: 200, acc: 0 }, // K not a multiple of the block size: padded last block
    { bits: 4, bs: 32, k: 256, acc: 0 },
    { bits: 4, bs: 128, k: 256, acc: 4 },
    { bits: 4, bs: 64, k: 200, acc: 4 },
    { bits: 8, bs: 32, k: 256, acc: 0 },
  ];
  for (const { bits, bs, k, acc } of cases) {
    it(`bits ${bits}, block ${bs}, K ${k}, accuracy_level ${acc}`, async () => {
      const m = 3,
        n = 40;
      const w = gaussian(n * k, 11 + bits + bs, 0.05);
      const q = quantizeMatMulNBits(w, n, k, { bits, blockSize: bs, method: 'search' });
      const g = new GraphBuilder({ externalData: { path: path.join(dir, 'mm.data'), alignment: 4096 } });
      g.input('A', 'float32', [m, k]);
      const y = addMatMulNBits(g, q, 'A', acc, 'w');
      g.node('Identity', [y], ['Y']);
      g.output('Y', 'float32', [m, n]);
      const saved = await g.save(dir, 'mm.onnx');
      const a = gaussian(m * k, 99, 1);
      const out = await runOnce(saved.modelPath, { A: new ort.Tensor('float32', a, [m, k]) });
      const got = out.Y!.data as Float32Array;
      const want = matmulT(a, dequantizeMatMulNBits(q), m, n, k);
      let maxRef = 0,
        maxDiff = 0;
      for (let i = 0; i < want.length; i++) {
        maxRef = Math.max(maxRef, Math.abs(want[i]!));
        maxDiff = Math.max(maxDiff, Math.abs(got[i]! - want[i]!));
      }
      // Level 0 computes in float32: rounding only. Level 4 quantises activations to int8 per block:
      // the error is bounded by about |A|max/254 * sum|W| per output; 1.5% of the largest output is ample.
      const tol = acc === 0 ? 1e-5 * maxRef : 0.015 * maxRef;
      console.log(
        `MatMulNBits bits=${bits} bs=${bs} K=${k} acc=${acc}: max |diff| ${maxDiff.toExponential(2)} (${(maxDiff / maxRef).toExponential(2)} of max |y|)`,
      );
      expect(maxDiff).toBeLessThanOrEqual(tol);
    });
  }
});

describe('GatherBlockQuantized runs our bytes', () => {
  for (const bits of [2, 4, 8] as const) {
    it(`bits ${bits}: gathered rows equal the JS dequantised rows exactly`, async () => {
      const rows = 50,
        width = 256,
        bs = 64;
      const table = gaussian(rows * width, 5 + bits, 0.1);
      const q = quantizeGatherBlockQuantized(table, rows, width, { bits, blockSize: bs, method: 'search' });
      const d = gatherBlockQuantizedDims(q);
      const g = new GraphBuilder({ externalData: { path: path.join(dir, 'g.data'), alignment: 4096 } });
      g.input('ids', 'int64', ['n']);
      const data = g.initializer('table', 'uint8', d.data, q.data);
      const scales = g.initializer('table.scales', 'float32', d.scales, q.scales);
      const zp = g.initializer('table.zp', 'uint8', d.zeroPoints, q.zeroPoints);
      g.node(
        'GatherBlockQuantized',
        [data, 'ids', scales, zp],
        ['rows'],
        { gather_axis: 0, quantize_axis: 1, block_size: bs, bits },
        'com.microsoft',
      );
      g.output('rows', 'float32', ['n', width]);
      const saved = await g.save(dir, 'g.onnx');
      const ids = [0, 49, 7, 7, 23];
      const out = await runOnce(saved.modelPath, {
        ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [ids.length]),
      });
      const got = out.rows!.data as Float32Array;
      expect(out.rows!.dims).toEqual([ids.length, width]);
      ids.forEach((id, i) => {
        expect(Array.from(got.subarray(i * width, (i + 1) * width))).toEqual(Array.from(dequantizeRows(q, id, 1)));
      });
    });
  }
});

describe('tied embedding / LM head', () => {
  it('one set of bytes serves GatherBlockQuantized and MatMulNBits', async () => {
    const vocab = 300,
      hidden = 128,
      bs = 32,
      bits = 4 as const;
    const table = gaussian(vocab * hidden, 3, 0.05);
    const q = quantizeGatherBlockQuantized(table, vocab, hidden, { bits, blockSize: bs, method: 'search' });
    const g = new GraphBuilder({ externalData: { path: path.join(dir, 'tied.data'), alignment: 4096 } });
    const ext = g.externalData;
    const dataRef = ext.append(q.data);
    const scaleRef = ext.append(new Uint8Array(q.scales.buffer));
    const zpRef = ext.append(q.zeroPoints);
    const gd = gatherBlockQuantizedDims(q);
    const md = matMulNBitsDims(q);
    const gData = g.initializerFromRef('embed.data', 'uint8', gd.data, dataRef);
    const gScales = g.initializerFromRef('embed.scales', 'float32', gd.scales, scaleRef);
    const gZp = g.initializerFromRef('embed.zp', 'uint8', gd.zeroPoints, zpRef);
    const mData = g.initializerFromRef('lm_head.B', 'uint8', md.data, dataRef);
    const mScales = g.initializerFromRef('lm_head.scales', 'float32', md.scales, scaleRef);
    const mZp = g.initializerFromRef('lm_head.zp', 'uint8', md.zeroPoints, zpRef);
    g.input('ids', 'int64', ['n']);
    g.input('h', 'float32', ['m', hidden]);
    g.node(
      'GatherBlockQuantized',
      [gData, 'ids', gScales, gZp],
      ['emb'],
      { gather_axis: 0, quantize_axis: 1, block_size: bs, bits },
      'com.microsoft',
    );
    g.node(
      'MatMulNBits',
      ['h', mData, mScales, mZp],
      ['logits'],
      { K: hidden, N: vocab, bits, block_size: bs, accuracy_level: 0 },
      'com.microsoft',
    );
    g.output('emb', 'float32', ['n', hidden]);
    g.output('logits', 'float32', ['m', vocab]);
    const saved = await g.save(dir, 'tied.onnx');
    // Stored once: the data file holds one copy of data + scales + zero points (plus alignment padding).
    expect(saved.dataBytes).toBeLessThan(q.data.byteLength + q.scales.byteLength + q.zeroPoints.byteLength + 3 * 4096);

    const ids = [1, 299, 42];
    const h = gaussian(2 * hidden, 8, 1);
    const out = await runOnce(saved.modelPath, {
      ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [ids.length]),
      h: new ort.Tensor('float32', h, [2, hidden]),
    });
    const emb = out.emb!.data as Float32Array;
    ids.forEach((id, i) =>
      expect(Array.from(emb.subarray(i * hidden, (i + 1) * hidden))).toEqual(Array.from(dequantizeRows(q, id, 1))),
    );
    const want = matmulT(h, dequantizeMatMulNBits(q), 2, vocab, hidden);
    const logits = out.logits!.data as Float32Array;
    for (let i = 0; i < want.length; i++) expect(Math.abs(logits[i]! - want[i]!)).toBeLessThan(1e-4);
  });
});
