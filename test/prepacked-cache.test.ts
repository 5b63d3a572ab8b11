import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import {
  PREPACKED_DATA_FILE,
  PREPACKED_MODEL_FILE,
  cacheKey,
  cpuSignature,
  defaultCacheDir,
} from '../src/engine/prepacked-cache.js';
import { DEFAULT_TUNING } from '../src/engine/session.js';
import { GraphBuilder } from '../src/onnx/graph.js';
import { realignExternalData } from '../src/onnx/realign.js';
import { SEED, makeTinyPackage, tempRoot } from './engine-helpers.js';
import { synthPackage } from '../src/model/build/synth.js';

let root: string;
let dir: string;
let pi4Dir: string;
const PROMPT = [2, 300, 41, 120, 77, 301, 302, 90, 91, 92, 200, 201];

beforeAll(async () => {
  root = tempRoot('prepacked');
  ({ dir } = await makeTinyPackage(root));
  pi4Dir = join(root, 'pi4');
  await synthPackage({ preset: 'tiny', outDir: pi4Dir, seed: SEED, encoders: false, profile: 'pi4' });
}, 60_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function logitsOf(
  cacheDir: string | null,
  pkg = dir,
): Promise<{ logits: Float32Array[]; tokens: number[]; prepacked: string }> {
  const engine = await Engine.load(pkg, {
    threads: 1,
    contextTokens: 64,
    pleCacheMb: 1,
    prepackedCache: cacheDir ? { dir: cacheDir } : undefined,
  });
  try {
    const logits: Float32Array[] = [];
    const r = await engine.generate({
      promptIds: PROMPT,
      maxTokens: 6,
      sampling: { temperature: 0 },
      ignoreEos: true,
      onLogits: (l) => logits.push(l.slice()),
    });
    return { logits, tokens: r.tokens, prepacked: engine.prepacked };
  } finally {
    await engine.close();
  }
}

const entries = (cacheDir: string) => (existsSync(cacheDir) ? readdirSync(cacheDir) : []);

describe('prepacked weight cache (2-bit and 4-bit MatMulNBits of the tiny pi5 package)', () => {
  it('is built on first load, reused after, and gives exactly the logits of weights packed on the heap', async () => {
    const cacheDir = join(root, 'cache-a');
    const heap = await logitsOf(null);
    const first = await logitsOf(cacheDir);
    const again = await logitsOf(cacheDir);
    expect(heap.prepacked).toBe('heap');
    expect(first.prepacked).toBe('built');
    expect(again.prepacked).toBe('cached');
    expect(first.tokens).toEqual(heap.tokens);
    expect(again.tokens).toEqual(heap.tokens);
    for (const [i, l] of heap.logits.entries()) {
      expect(Array.from(first.logits[i]!)).toEqual(Array.from(l));
      expect(Array.from(again.logits[i]!)).toEqual(Array.from(l));
    }
    // One complete entry, nothing half-written left behind.
    const names = entries(cacheDir);
    expect(names).toHaveLength(1);
    expect(names[0]).toMatch(/^decoder-[0-9a-f]{20}$/);
    expect(JSON.parse(readFileSync(join(cacheDir, names[0]!, 'ready.json'), 'utf8')).source).toBe(
      join(dir, 'decoder.onnx'),
    );
  });

  it('serves the pi4 package too (MatMulInteger int8 weights): built, reused, the same logits as the heap', async () => {
    const cacheDir = join(root, 'cache-pi4');
    const heap = await logitsOf(null, pi4Dir);
    const first = await logitsOf(cacheDir, pi4Dir);
    const again = await logitsOf(cacheDir, pi4Dir);
    expect([heap.prepacked, first.prepacked, again.prepacked]).toEqual(['heap', 'built', 'cached']);
    for (const [i, l] of heap.logits.entries()) {
      expect(Array.from(first.logits[i]!)).toEqual(Array.from(l));
      expect(Array.from(again.logits[i]!)).toEqual(Array.from(l));
    }
  });

  it('an entry cut short is rebuilt at the next load', async () => {
    const cacheDir = join(root, 'cache-b');
    const heap = await logitsOf(null);
    await logitsOf(cacheDir);
    const [name] = entries(cacheDir);
    const data = join(cacheDir, name!, PREPACKED_DATA_FILE);
    truncateSync(data, Math.floor(statSync(data).size / 3));
    const rebuilt = await logitsOf(cacheDir);
    expect(rebuilt.prepacked).toBe('built');
    expect(rebuilt.tokens).toEqual(heap.tokens);
    expect(entries(cacheDir)).toEqual([name]);
  });

  it('an entry ONNX Runtime cannot open is dropped and the package loaded instead; the next load builds it again', async () => {
    const cacheDir = join(root, 'cache-d');
    const heap = await logitsOf(null);
    await logitsOf(cacheDir);
    const [name] = entries(cacheDir);
    const model = join(cacheDir, name!, PREPACKED_MODEL_FILE);
    writeFileSync(model, Buffer.alloc(statSync(model).size, 0xff)); // same size, not a model
    const fallback = await logitsOf(cacheDir);
    expect(fallback.prepacked).toBe('heap');
    expect(fallback.tokens).toEqual(heap.tokens);
    expect(entries(cacheDir)).toEqual([]);
    const rebuilt = await logitsOf(cacheDir);
    expect(rebuilt.prepacked).toBe('built');
    expect(rebuilt.tokens).toEqual(heap.tokens);
  });

  it('replaces the stale entry of the same model (another key) and leaves other models and live builds alone', async () => {
    const cacheDir = join(root, 'cache-c');
    mkdirSync(cacheDir, { recursive: true });
    const stale = join(cacheDir, 'decoder-00000000000000000000');
    const other = join(cacheDir, 'decoder-11111111111111111111');
    const abandoned = join(cacheDir, `decoder-22222222222222222222.partial-999999999`);
    const live = join(cacheDir, `decoder-33333333333333333333.partial-${process.pid}`);
    for (const d of [stale, other, abandoned, live]) mkdirSync(d);
    writeFileSync(join(stale, 'ready.json'), JSON.stringify({ source: join(dir, 'decoder.onnx') }));
    writeFileSync(join(other, 'ready.json'), JSON.stringify({ source: '/elsewhere/decoder.onnx' }));
    const r = await logitsOf(cacheDir);
    expect(r.prepacked).toBe('built');
    const left = entries(cacheDir);
    expect(left).not.toContain('decoder-00000000000000000000');
    expect(left).not.toContain('decoder-22222222222222222222.partial-999999999');
    expect(left).toContain('decoder-11111111111111111111');
    expect(left).toContain(`decoder-33333333333333333333.partial-${process.pid}`);
  });

  it('keys entries by CPU, ORT settings and model checksum', () => {
    const src = { modelPath: '/p/decoder.onnx', checksum: 'abc' };
    const t = { ...DEFAULT_TUNING, threads: 4 };
    const arm =
      'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n';
    const pi4 = 'Features\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n';
    const base = cacheKey(src, t, cpuSignature(arm));
    expect(cacheKey(src, { ...t, threads: 1 }, cpuSignature(arm))).toBe(base); // threads do not change the packing
    expect(cacheKey(src, t, cpuSignature(pi4))).not.toBe(base);
    expect(cacheKey({ ...src, checksum: 'abd' }, t, cpuSignature(arm))).not.toBe(base);
    expect(cacheKey(src, { ...t, configEntries: { 'mlas.use_lut_gemm': '1' } }, cpuSignature(arm))).not.toBe(base);
    expect(cpuSignature(arm + arm)).toBe(cpuSignature(arm)); // one line per distinct core kind
  });

  it('defaults to $PERCH_CACHE_DIR, then $XDG_CACHE_HOME/perch, then ~/.cache/perch', () => {
    expect(defaultCacheDir({ PERCH_CACHE_DIR: '/x/y' })).toBe('/x/y');
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/c' })).toBe('/c/perch');
    expect(defaultCacheDir({})).toMatch(/\.cache\/perch$/);
  });
});

describe('realignExternalData', () => {
  it('moves every tensor to an aligned offset and the model computes the same', async () => {
    const d = join(root, 'realign');
    mkdirSync(d, { recursive: true });
    // Odd-sized tensors written back to back (alignment 1): offsets land anywhere.
    const g = new GraphBuilder({ externalData: { path: join(d, 'm.onnx.data'), alignment: 1 }, externalThreshold: 1 });
    const x = g.input('x', 'float32', [1, 5]);
    const w1 = g.initializer(
      'w1',
      'float32',
      [5, 3],
      Float32Array.from({ length: 15 }, (_, i) => i / 7 - 1),
    );
    const b1 = g.initializer('b1', 'float32', [3], Float32Array.of(0.5, -0.25, 2));
    const w2 = g.initializer(
      'w2',
      'float32',
      [3, 7],
      Float32Array.from({ length: 21 }, (_, i) => Math.sin(i)),
    );
    const h = g.node('Add', [g.node('MatMul', [x, w1], 1, {}, '', 'mm1')[0]!, b1], 1, {}, '', 'add')[0]!;
    g.output(g.node('MatMul', [h, w2], 1, {}, '', 'mm2')[0]!, 'float32', [1, 7]);
    await g.save(d, 'm.onnx');
    const run = async () => {
      const s = await ort.InferenceSession.create(join(d, 'm.onnx'));
      const out = await s.run({ x: new ort.Tensor('float32', Float32Array.of(1, -2, 3, 0.5, 4), [1, 5]) });
      await s.release();
      return Array.from(out[s.outputNames[0]!]!.data as Float32Array);
    };
    const before = await run();
    const offsets = () =>
      onnxProto.onnx.ModelProto.decode(readFileSync(join(d, 'm.onnx'))).graph!.initializer!.map((t) =>
        Number(t.externalData!.find((e) => e.key === 'offset')?.value ?? 0),
      );
    expect(offsets().some((o) => o % 64 !== 0)).toBe(true);
    const r = await realignExternalData(join(d, 'm.onnx'), 64);
    expect(r.regions).toBe(3);
    expect(offsets().every((o) => o % 64 === 0)).toBe(true);
    expect(await run()).toEqual(before);
  });

  it('moves the prepacked blobs ORT records beside a tensor too', async () => {
    const d = join(root, 'realign-prepacked');
    mkdirSync(d, { recursive: true });
    const data = Buffer.alloc(300);
    for (let i = 0; i < 300; i++) data[i] = i & 0xff;
    writeFileSync(join(d, 'm.onnx.data'), data);
    const { onnx } = onnxProto;
    const t = new onnx.TensorProto({
      name: 'w',
      dataType: onnx.TensorProto.DataType.UINT8,
      dims: [10],
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: 'm.onnx.data' },
        { key: 'offset', value: '3' },
        { key: 'length', value: '10' },
        { key: 'prepacked_0', value: 'MatMulNBits+42|13;100;0' },
      ],
    });
    const model = new onnx.ModelProto({
      irVersion: 10,
      graph: new onnx.GraphProto({ name: 'g', initializer: [t] }),
      opsetImport: [{ domain: '', version: 21 }],
    });
    writeFileSync(join(d, 'm.onnx'), onnx.ModelProto.encode(model).finish());
    await realignExternalData(join(d, 'm.onnx'), 128);
    const ed = onnx.ModelProto.decode(readFileSync(join(d, 'm.onnx'))).graph!.initializer![0]!.externalData!;
    const get = (k: string) => ed.find((e) => e.key === k)!.value!;
    expect(get('offset')).toBe('0');
    expect(get('prepacked_0')).toBe('MatMulNBits+42|128;100;0');
    const moved = readFileSync(join(d, 'm.onnx.data'));
    expect([...moved.subarray(0, 10)]).toEqual([...data.subarray(3, 13)]);
    expect([...moved.subarray(128, 228)]).toEqual([...data.subarray(13, 113)]);
    expect(moved.length).toBe(228);
  });
});
