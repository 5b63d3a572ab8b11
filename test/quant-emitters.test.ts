import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GraphBuilder } from '../src/onnx/graph.js';
import { Ops } from '../src/model/gemma4/graph-ops.js';
import {
  dequantizeMatMulNBits,
  dequantizeRows,
  quantizeGatherBlockQuantized,
  quantizeMatMulNBits,
} from '../src/model/quant.js';
import { gaussian } from './quant-helpers.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'perch-qnodes-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function linearRef(
  x: Float32Array,
  w: Float32Array,
  bias: Float32Array | null,
  m: number,
  n: number,
  k: number,
): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = bias ? bias[j]! : 0;
      for (let t = 0; t < k; t++) acc += x[i * k + t]! * w[j * k + t]!;
      y[i * n + j] = acc;
    }
  return y;
}

async function run(modelPath: string, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const s = await ort.InferenceSession.create(modelPath, { intraOpNumThreads: 1 });
  try {
    return (await s.run(feeds)) as Record<string, ort.Tensor>;
  } finally {
    await s.release();
  }
}

const ids64 = (ids: number[]) => new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [ids.length]);

/** The decoder's emitters (src/model/gemma4/graph-ops.ts), the ones packages are written with. */
const opsOf = (g: GraphBuilder) => new Ops(g, { fusedNorm: false, onnxGelu: false });

describe('quantised node emitters', () => {
  it('MatMulNBits (3-D input) and GatherBlockQuantized match JS references', async () => {
    const k = 128,
      n = 24;
    const w = gaussian(n * k, 1, 0.05);
    const q = quantizeMatMulNBits(w, n, k, { bits: 4, blockSize: 32, method: 'search' });
    const table = gaussian(10 * k, 3, 0.1);
    const tq = quantizeGatherBlockQuantized(table, 10, k, { bits: 2, blockSize: 64, method: 'search' });
    const g = new GraphBuilder({ externalData: { path: path.join(dir, 'h.data') } });
    const ops = opsOf(g);
    g.input('x', 'float32', [1, 2, k]);
    g.input('ids', 'int64', ['n']);
    g.node('Identity', [ops.linear('x', 'proj', { kind: 'nbits', packed: q, accuracyLevel: 0 })], ['y']);
    g.node('Identity', [ops.gatherQuantized(tq, 'ids', 'embed').out], ['e']);
    g.output('y', 'float32', [1, 2, n]);
    g.output('e', 'float32', ['n', k]);
    const saved = await g.save(dir, 'h.onnx');
    const x = gaussian(2 * k, 4, 1);
    const out = await run(saved.modelPath, { x: new ort.Tensor('float32', x, [1, 2, k]), ids: ids64([9, 0]) });
    expect(out.y!.dims).toEqual([1, 2, n]);
    const want = linearRef(x, dequantizeMatMulNBits(q), null, 2, n, k);
    const y = out.y!.data as Float32Array;
    for (let i = 0; i < want.length; i++) expect(Math.abs(y[i]! - want[i]!)).toBeLessThan(1e-4);
    const e = out.e!.data as Float32Array;
    expect(Array.from(e.subarray(0, k))).toEqual(Array.from(dequantizeRows(tq, 9, 1)));
    expect(Array.from(e.subarray(k))).toEqual(Array.from(dequantizeRows(tq, 0, 1)));
  });

  it("a tied LM head stores the table once and reads the gather's bytes (2-bit, int8 activations on the head)", async () => {
    const vocab = 512,
      hidden = 256;
    const table = gaussian(vocab * hidden, 5, 0.05);
    const q = quantizeGatherBlockQuantized(table, vocab, hidden, { bits: 2, blockSize: 64, method: 'search' });
    const g = new GraphBuilder({ externalData: { path: path.join(dir, 't.data'), alignment: 4096 } });
    const ops = opsOf(g);
    g.input('ids', 'int64', ['n']);
    const gathered = ops.gatherQuantized(q, 'ids', 'embed_tokens');
    const logits = ops.linearFromTable(gathered.out, 'lm_head', q, gathered.inits, 4);
    g.node('Identity', [gathered.out], ['emb']);
    g.node('Identity', [logits], ['logits']);
    g.output('emb', 'float32', ['n', hidden]);
    g.output('logits', 'float32', ['n', vocab]);
    const saved = await g.save(dir, 't.onnx');
    const stored = q.data.byteLength + q.scales.byteLength + q.zeroPoints.byteLength;
    expect(saved.dataBytes).toBeGreaterThanOrEqual(q.data.byteLength); // the codes are external
    expect(saved.dataBytes).toBeLessThan(stored + 2 * 4096); // once, plus alignment padding

    const ids = [3, 500];
    const out = await run(saved.modelPath, { ids: ids64(ids) });
    const e = out.emb!.data as Float32Array;
    const rows = dequantizeRows(q, 3, 1);
    expect(Array.from(e.subarray(0, hidden))).toEqual(Array.from(rows));
    const want = linearRef(e, dequantizeMatMulNBits(q), null, 2, vocab, hidden);
    let maxRef = 0,
      maxDiff = 0;
    const l = out.logits!.data as Float32Array;
    for (let i = 0; i < want.length; i++) {
      maxRef = Math.max(maxRef, Math.abs(want[i]!));
      maxDiff = Math.max(maxDiff, Math.abs(l[i]! - want[i]!));
    }
    expect(maxDiff).toBeLessThan(0.015 * maxRef); // int8 activations (accuracy_level 4)
  });
});
