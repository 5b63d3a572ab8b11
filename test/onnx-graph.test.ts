import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GraphBuilder, attrFloat } from '../src/onnx/graph.js';

const { onnx } = onnxProto;

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'perch-onnx-graph-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function seeded(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 32 - 0.5;
  }
  return out;
}

/** y = alpha * x @ W + b in plain JS (x [m,k], W [k,n]). */
function gemmRef(
  x: Float32Array,
  w: Float32Array,
  b: Float32Array,
  m: number,
  k: number,
  n: number,
  alpha: number,
): Float32Array {
  const y = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let t = 0; t < k; t++) acc += x[i * k + t]! * w[t * n + j]!;
      y[i * n + j] = alpha * acc + b[j]!;
    }
  return y;
}

function readModel(p: string): onnxProto.onnx.ModelProto {
  return onnx.ModelProto.decode(fs.readFileSync(p));
}

function externalEntries(t: onnxProto.onnx.ITensorProto): Record<string, string> {
  return Object.fromEntries((t.externalData ?? []).map((e) => [e.key ?? '', e.value ?? '']));
}

describe('GraphBuilder', () => {
  it('streams an external-data initializer to disk, aligned, and ORT runs the model', async () => {
    const k = 64,
      n = 48,
      m = 3;
    const w = seeded(k * n, 1); // 12 KiB: external
    const b = seeded(n, 2); // 192 B: embedded
    const g = new GraphBuilder({
      name: 'gemm',
      externalData: { path: path.join(dir, 'm.onnx.data'), alignment: 4096 },
    });
    g.input('x', 'float32', ['batch', k]);
    const small = g.initializer('pad', 'float32', [5], new Float32Array(5), { external: true }); // unaligned start for the next one
    const wName = g.initializer('w', 'float32', [k, n], w);
    const bName = g.initializer('b', 'float32', [n], b);
    const [y] = g.node('Gemm', ['x', wName, bName], ['y'], { alpha: attrFloat(0.5), transB: 0 });
    g.output(y!, 'float32', ['batch', n]);
    g.node('Identity', [small], ['pad_out']);
    g.output('pad_out', 'float32', [5]);
    const res = await g.save(dir, 'm.onnx');

    const model = readModel(res.modelPath);
    const inits = new Map(model.graph!.initializer!.map((t) => [t.name!, t]));
    const wt = inits.get('w')!;
    expect(wt.dataLocation).toBe(onnx.TensorProto.DataLocation.EXTERNAL);
    const ext = externalEntries(wt);
    expect(ext.location).toBe('m.onnx.data');
    expect(Number(ext.offset) % 4096).toBe(0);
    expect(Number(ext.offset)).toBeGreaterThan(0);
    expect(Number(ext.length)).toBe(k * n * 4);
    expect(inits.get('b')!.dataLocation ?? 0).toBe(onnx.TensorProto.DataLocation.DEFAULT);
    // The model file holds metadata only; the weights live in the data file.
    expect(res.modelBytes).toBeLessThan(2048);
    expect(fs.statSync(path.join(dir, 'm.onnx.data')).size).toBe(Number(ext.offset) + k * n * 4);
    // The Gemm alpha attribute was written with the FLOAT type.
    const alpha = model.graph!.node![0]!.attribute!.find((a) => a.name === 'alpha')!;
    expect(alpha.type).toBe(onnx.AttributeProto.AttributeType.FLOAT);

    const session = await ort.InferenceSession.create(res.modelPath);
    try {
      const x = seeded(m * k, 3);
      const out = await session.run({ x: new ort.Tensor('float32', x, [m, k]) });
      const got = out.y!.data as Float32Array;
      const want = gemmRef(x, w, b, m, k, n, 0.5);
      for (let i = 0; i < want.length; i++) expect(got[i]).toBeCloseTo(want[i]!, 4);
    } finally {
      await session.release();
    }
  });

  it('lets two initializers with different shapes share one byte range', async () => {
    const g = new GraphBuilder({ externalData: { path: path.join(dir, 'tied.data'), alignment: 4096 } });
    const table = seeded(8 * 16, 4);
    const ref = g.externalData.append(new Uint8Array(table.buffer));
    const asMatrix = g.initializerFromRef('table_2d', 'float32', [8, 16], ref);
    const asCube = g.initializerFromRef('table_3d', 'float32', [8, 4, 4], ref);
    g.node('Identity', [asMatrix], ['a']);
    g.node('Identity', [asCube], ['c']);
    g.output('a', 'float32', [8, 16]);
    g.output('c', 'float32', [8, 4, 4]);
    const res = await g.save(dir, 'tied.onnx');
    expect(res.dataBytes).toBe(8 * 16 * 4); // stored once
    const session = await ort.InferenceSession.create(res.modelPath);
    try {
      const out = await session.run({});
      expect(Array.from(out.a!.data as Float32Array)).toEqual(Array.from(table));
      expect(Array.from(out.c!.data as Float32Array)).toEqual(Array.from(table));
      expect(out.c!.dims).toEqual([8, 4, 4]);
    } finally {
      await session.release();
    }
  });

  it('writes a tensor in chunks and in deferred mode places external data at save()', async () => {
    const g = new GraphBuilder({ externalData: { path: path.join(dir, 'c.data') } });
    const vals = seeded(4096, 5);
    const bytes = new Uint8Array(vals.buffer);
    const w = g.beginExternal(bytes.byteLength);
    for (let off = 0; off < bytes.byteLength; off += 1000) w.write(bytes.subarray(off, off + 1000));
    const ref = w.finish();
    expect(ref.length).toBe(bytes.byteLength);
    const t = g.initializerFromRef('t', 'float32', [4096], ref);
    g.node('ReduceSum', [t], ['s'], { keepdims: 0 });
    g.output('s', 'float32', []);
    const res = await g.save(dir, 'c.onnx');
    const s1 = await ort.InferenceSession.create(res.modelPath);
    const want = vals.reduce((a, v) => a + v, 0);
    expect((await s1.run({})).s!.data[0]).toBeCloseTo(want, 3);
    await s1.release();

    const d = new GraphBuilder();
    const dt = d.initializer('t', 'float32', [4096], vals);
    d.node('ReduceSum', [dt], ['s'], { keepdims: 0 });
    d.output('s', 'float32', []);
    await expect(d.save(dir, 'd.onnx')).rejects.toThrow(/externalDataFile/);
    const r2 = await d.save(dir, 'd.onnx', { externalDataFile: 'd.data', alignment: 4096 });
    expect(r2.dataBytes).toBe(4096 * 4);
    const s2 = await ort.InferenceSession.create(r2.modelPath);
    expect((await s2.run({})).s!.data[0]).toBeCloseTo(want, 3);
    await s2.release();
  });

  it('embeds small constants and runs from in-memory bytes', async () => {
    const g = new GraphBuilder();
    g.input('x', 'float32', [2, 3]);
    const shape = g.constInt64('shape', [3, 2]);
    const two = g.constFloat32('two', [2], []);
    const r = g.op('Reshape', ['x', shape]);
    g.node('Mul', [r, two], ['y']);
    g.output('y', 'float32', [3, 2]);
    const session = await ort.InferenceSession.create(g.toBytes());
    try {
      const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]) });
      expect(out.y!.dims).toEqual([3, 2]);
      expect(Array.from(out.y!.data as Float32Array)).toEqual([2, 4, 6, 8, 10, 12]);
    } finally {
      await session.release();
    }
  });

  it('rejects mistakes early with clear errors', () => {
    const g = new GraphBuilder();
    g.input('x', 'float32', [2]);
    expect(() => g.input('x', 'float32', [2])).toThrow(/already used/);
    expect(() => g.node('LeakyRelu', ['x'], 1, { alpha: 0.1 })).toThrow(/attrFloat/);
    expect(() => g.initializer('w', 'float32', [3], new Float32Array(2))).toThrow(/needs 12 bytes/);
    expect(() => g.node('X', ['x'], 1, {}, 'org.unknown')).toThrow(/opset import/);
    expect(() => g.initializerFromRef('r', 'float32', [1], { offset: 0, length: 4 })).toThrow(/streaming/);
    expect(() => g.toBytes()).not.toThrow();
    g.initializer('big', 'float32', [1024], new Float32Array(1024)); // deferred external
    expect(() => g.toBytes()).toThrow(/use save/);
    // Generated names never collide with user names.
    expect(g.uniqueName('x')).toBe('x_1');
    const [o1] = g.node('Relu', ['x']);
    const [o2] = g.node('Relu', ['x']);
    expect(o1).not.toBe(o2);
  });
});
