/**
 * The mixed 2/4-bit policy by measured error (a tiny checkpoint where one Linear has heavy outliers), the
 * pi5 size bar's arithmetic, and the row-chunked embedding quantisation (same bytes as a whole-table one).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2bConfig, tinyConfig } from '../src/model/gemma4/config.js';
import { cacheSlots, writeDecoderModel } from '../src/model/gemma4/decoder-graph.js';
import { dequantisedWeightSource } from '../src/model/gemma4/quantize.js';
import { Gemma4Reference } from '../src/model/gemma4/reference.js';
import {
  MULTIMODAL_TEXT_PREFIX,
  layerName,
  seededRandom,
  textTensorTable,
  type WeightSource,
} from '../src/model/gemma4/weights.js';
import { checkpointWeightSource, convertCheckpoint } from '../src/model/build/convert.js';
import { fitPolicy, graphPolicy } from '../src/model/build/build.js';
import { quantPolicyFor, type QuantPolicy } from '../src/model/package/manifest.js';
import { decidePromotions, sampleRanges } from '../src/model/build/mixed.js';
import { synthTokenizerFiles } from '../src/model/build/synth-tokenizer.js';
import { verifyPackage } from '../src/model/package/verify.js';
import { PlePager } from '../src/model/ple/pager.js';
import { SafetensorsCheckpoint, writeShardedCheckpoint, type TensorToWrite } from '../src/model/safetensors.js';
import { synthConfigJson, syntheticWeightSource } from '../src/model/build/synth.js';
import { ortRunsInt8Activations } from '../src/engine/int8-activations.js';
import { argmax, emptyCache, relErr, runChunk } from './gemma4-helpers.js';
import { noMedia } from './package-helpers.js';

const cfg = tinyConfig();
const OUTLIER = layerName(1, 'down_proj', MULTIMODAL_TEXT_PREFIX);
let root: string;
let ckptDir: string;

function gauss(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

/** Synth-like values; OUTLIER gets Gaussian weights with 3% of them 12x larger (much worse at 2 bits). */
function values(name: string, kind: string, shape: number[], rand: () => number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const u = () => rand() * 2 - 1;
  const s = Math.sqrt(1 / (shape[1] ?? 1));
  for (let i = 0; i < n; i++) {
    if (name === OUTLIER) out[i] = s * gauss(rand) * (rand() < 0.03 ? 12 : 1);
    else
      out[i] =
        kind === 'norm'
          ? 1 + 0.2 * u()
          : kind === 'scalar'
            ? 0.6 + 0.4 * rand()
            : kind === 'embedding'
              ? 0.06 * u()
              : Math.sqrt(3) * s * u();
  }
  return out;
}

/** pi5's policy with a promotion budget a tiny model can use (its default 0.6% is smaller than any tiny matrix). */
function tinyPi5(): QuantPolicy {
  const p = quantPolicyFor('pi5');
  return { ...p, linear: { ...p.linear!, promote: { bits: 4, min_error_ratio: 1.2, max_fraction: 0.25 } } };
}

function graphNodes(dir: string): onnxProto.onnx.INodeProto[] {
  return onnxProto.onnx.ModelProto.decode(readFileSync(join(dir, 'decoder.onnx'))).graph?.node ?? [];
}

/** bits of the MatMulNBits node reading `<name>.qweight` (graph initialisers are named after the checkpoint tensor). */
function nodeBits(nodes: onnxProto.onnx.INodeProto[], name: string): number {
  const n = nodes.find((x) => x.opType === 'MatMulNBits' && x.input?.[1] === `${name}.qweight`);
  if (!n) throw new Error(`no MatMulNBits for ${name}`);
  return Number(n.attribute?.find((a) => a.name === 'bits')?.i);
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'perch-mixed-'));
  ckptDir = join(root, 'checkpoint');
  const rand = seededRandom(23);
  const tensors: TensorToWrite[] = textTensorTable(cfg, MULTIMODAL_TEXT_PREFIX).map((t) => ({
    name: t.name,
    dtype: 'F32',
    shape: t.shape,
    data: values(t.name, t.kind, t.shape, rand),
  }));
  mkdirSync(ckptDir, { recursive: true });
  writeShardedCheckpoint(ckptDir, tensors, 256 * 1024);
  writeFileSync(join(ckptDir, 'config.json'), JSON.stringify(synthConfigJson(cfg), null, 2));
  writeFileSync(join(ckptDir, 'tokenizer.json'), synthTokenizerFiles(cfg.vocabSize).tokenizerJson);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('mixed 2/4-bit policy by measured error', () => {
  it('keeps the linear with heavy outliers at 4 bits, the rest at 2; the package matches the reference on the dequantised weights', async () => {
    const out = join(root, 'pkg-mixed');
    const m = await convertCheckpoint({ from: ckptDir, outDir: out, policy: tinyPi5(), logits: 'all' });
    expect((await verifyPackage(out, { full: true })).problems).toEqual([]);
    const tensors = m.quantisation.tensors!;
    expect(tensors.length).toBe(textTensorTable(cfg).filter((t) => t.kind === 'linear').length);
    expect(tensors.filter((t) => t.bits === 4).map((t) => t.name)).toEqual([OUTLIER]);
    const errs = tensors.map((t) => t.base_error).sort((a, b) => a - b);
    const outlierErr = tensors.find((t) => t.name === OUTLIER)!.base_error;
    expect(outlierErr).toBeGreaterThan(1.2 * errs[errs.length >> 1]!);
    // The graph computes with what the manifest says.
    const nodes = graphNodes(out);
    for (const t of tensors) expect(nodeBits(nodes, t.name)).toBe(t.bits);

    // Parity: ORT on the package vs the reference on dequantise(quantise(checkpoint)) under the manifest's policy.
    const ckpt = await SafetensorsCheckpoint.open(ckptDir);
    const deq = dequantisedWeightSource(checkpointWeightSource(ckpt), cfg, graphPolicy(m.quantisation)!);
    const pager = await PlePager.open(join(out, 'ple.bin'), { cacheBytes: 0 });
    const pleName = textTensorTable(cfg).find((t) => t.role === 'ple_table')!.name;
    const allRows = await pager.rowsFor(Array.from({ length: cfg.vocabSize }, (_, i) => i));
    const src: WeightSource = {
      shape: (n) => deq.shape(n),
      get: (n) => (n === pleName ? Promise.resolve(allRows) : deq.get(n)),
    };
    // Int8 activation blocks only where this CPU's ORT runs them (accuracy_level 4 falls back to float elsewhere).
    const lin = m.quantisation.linear!;
    const int8 = lin.accuracy_level === 4 && (await ortRunsInt8Activations(lin.bits, lin.block_size));
    const ref = await Gemma4Reference.load(cfg, src, { int8ActivationBlock: int8 ? lin.block_size : undefined });
    await ckpt.close();
    const session = await ort.InferenceSession.create(join(out, 'decoder.onnx'), { intraOpNumThreads: 1 });
    const slots = cacheSlots(cfg);
    const prompt = [2, 4, 77, 300, 511, 9];
    const want = ref.prefill(prompt);
    let r = await runChunk(
      session,
      slots,
      { ...emptyCache(slots), ...noMedia(cfg.hiddenSize, prompt.length) },
      prompt,
      0,
      await pager.rowsFor(prompt),
    );
    const errors = [relErr(r.logits, want)];
    let next = argmax(want.subarray((prompt.length - 1) * cfg.vocabSize));
    for (let step = 0; step < 6; step++) {
      const w = ref.step(next);
      r = await runChunk(
        session,
        slots,
        { ...r.cache, ...noMedia(cfg.hiddenSize, 1) },
        [next],
        prompt.length + step,
        await pager.rowsFor([next]),
      );
      errors.push(relErr(r.logits, w));
      next = argmax(w);
    }
    await session.release();
    await pager.close();
    expect(Math.max(...errors)).toBeLessThanOrEqual(1e-4);
  });

  it('the pi5 default budget is too small for any tiny matrix: nothing promoted, decisions still recorded', async () => {
    const m = await convertCheckpoint({ from: ckptDir, outDir: join(root, 'pkg-pi5'), profile: 'pi5' });
    expect(m.quantisation.tensors!.every((t) => t.bits === 2)).toBe(true);
    expect(m.quantisation.linear).toMatchObject({ bits: 2, block_size: 128, promote: { bits: 4 } });
    // tiny's hidden size (64) cannot hold the 256-wide embedding blocks: the manifest records the fitted block.
    expect(m.quantisation.embedding).toEqual({ bits: 4, block_size: 64 });
  });

  it('--profile pi4 puts every linear and the LM head on int8 channels (no measurement pass, no decisions)', async () => {
    const out = join(root, 'pkg-pi4');
    const m = await convertCheckpoint({ from: ckptDir, outDir: out, profile: 'pi4' });
    expect(m.quantisation.tensors).toBeUndefined();
    expect(m.quantisation.linear).toMatchObject({ bits: 8, kernel: 'int8-channels' });
    expect(m.quantisation.embedding).toMatchObject({ bits: 4, lm_head: 'int8-channels' });
    const nodes = graphNodes(out);
    expect(nodes.filter((n) => n.opType === 'MatMulNBits')).toEqual([]);
    const int8 = nodes.filter((n) => n.opType === 'MatMulInteger');
    expect(int8.length).toBe(textTensorTable(cfg).filter((t) => t.kind === 'linear').length + 1); // + LM head
  });

  it('decidePromotions: worst first above the error ratio, skipping what does not fit the budget', () => {
    const p = quantPolicyFor('pi5');
    const rule = (max_fraction: number): QuantPolicy => ({
      ...p,
      linear: { ...p.linear!, promote: { bits: 4, min_error_ratio: 1.2, max_fraction } },
    });
    // median 0.405: the threshold is 0.486
    const errors = [
      { name: 'a', size: 100, error: 0.36 },
      { name: 'b', size: 100, error: 0.37 },
      { name: 'e', size: 100, error: 0.365 },
      { name: 'big', size: 500, error: 0.6 },
      { name: 'c', size: 100, error: 0.5 },
      { name: 'd', size: 100, error: 0.44 }, // worse than typical, below the ratio: stays
    ];
    const bits = (f: number) => Object.fromEntries(decidePromotions(errors, rule(f)).map((d) => [d.name, d.bits]));
    expect(bits(0.1)).toEqual({ a: 2, b: 2, e: 2, big: 2, c: 4, d: 2 }); // 'big' is worse but 500 > the 100 budget
    expect(bits(0.6)).toEqual({ a: 2, b: 2, e: 2, big: 4, c: 4, d: 2 });
    expect(bits(0)).toEqual({ a: 2, b: 2, e: 2, big: 2, c: 2, d: 2 });
    expect(decidePromotions(errors, rule(1))[0]).toEqual({ name: 'a', bits: 2, base_error: 0.36 });
  });

  it('sampleRanges spreads disjoint row ranges over the matrix, or takes it whole when small', () => {
    expect(sampleRanges(64, 192)).toEqual([[0, 64]]);
    const r = sampleRanges(12288, 1536);
    expect(r.length).toBe(8);
    expect(r[0]![0]).toBe(0);
    expect(r[r.length - 1]![0] + r[r.length - 1]![1]).toBe(12288);
    for (let i = 1; i < r.length; i++) expect(r[i]![0]).toBeGreaterThanOrEqual(r[i - 1]![0] + r[i - 1]![1]);
    expect(r.reduce((a, x) => a + x[1], 0) * 1536).toBeGreaterThanOrEqual(1 << 17);
  });
});

describe('pi5 size bar (E2B)', () => {
  it('linears at 2 bits plus the largest promotion budget plus the 4-bit embedding stay under 0.75 GB with room for alignment', () => {
    const e2b = e2bConfig();
    const p = fitPolicy(quantPolicyFor('pi5'), e2b);
    const lin = p.linear!;
    const nbits = (n: number, k: number, bits: number, bs: number): number => {
      const nb = Math.ceil(k / bs);
      return n * nb * ((bs * bits) / 8) + n * nb * 4 + n * Math.ceil((nb * bits) / 8);
    };
    let linear = 0;
    let weights = 0;
    let worstExtraPerWeight = 0;
    for (const t of textTensorTable(e2b)) {
      if (t.kind !== 'linear') continue;
      const [n, k] = t.shape as [number, number];
      linear += nbits(n, k, lin.bits, lin.block_size);
      weights += n * k;
      worstExtraPerWeight = Math.max(
        worstExtraPerWeight,
        (nbits(n, k, lin.promote!.bits, lin.block_size) - nbits(n, k, lin.bits, lin.block_size)) / (n * k),
      );
    }
    const embedding = nbits(e2b.vocabSize, e2b.hiddenSize, p.embedding!.bits, p.embedding!.block_size);
    const promoted = lin.promote!.max_fraction * weights * worstExtraPerWeight;
    // The data file also holds norms (~0.4 MB) and 64 KiB alignment padding (5.7 MB measured): keep 6 MB free.
    expect(linear + embedding + promoted).toBeLessThanOrEqual(0.75e9 - 6e6);
  });
});

describe('row-chunked embedding quantisation', () => {
  it('synth getRows returns the rows get() returns, for every tensor kind', async () => {
    const src = syntheticWeightSource(cfg, 3);
    for (const t of textTensorTable(cfg)) {
      const all = await src.get(t.name);
      const rowElems = all.length / t.shape[0]!;
      const start = Math.floor(t.shape[0]! / 3);
      const count = Math.max(1, Math.floor(t.shape[0]! / 4));
      expect(await src.getRows!(t.name, start, count)).toEqual(
        all.subarray(start * rowElems, (start + count) * rowElems),
      );
    }
    await expect(src.getRows!(textTensorTable(cfg)[0]!.name, cfg.vocabSize - 1, 2)).rejects.toThrow(/out of range/);
  });

  it('writes the same decoder bytes as quantising the whole table', async () => {
    const base = syntheticWeightSource(cfg, 3);
    const whole: WeightSource = { shape: base.shape, get: base.get };
    const quant = graphPolicy(fitPolicy(quantPolicyFor('pi5'), cfg))!;
    let rowReads = 0;
    const rows: WeightSource = {
      ...base,
      getRows: (n, s, c) => {
        rowReads++;
        return base.getRows!(n, s, c);
      },
    };
    const a = await writeDecoderModel(join(root, 'emb-whole'), cfg, whole, { quant });
    const b = await writeDecoderModel(join(root, 'emb-chunked'), cfg, rows, { quant, embedChunkRows: 100 });
    expect(rowReads).toBe(Math.ceil(cfg.vocabSize / 100));
    expect(readFileSync(b.dataPath!).equals(readFileSync(a.dataPath!))).toBe(true);
    expect(readFileSync(b.modelPath).equals(readFileSync(a.modelPath))).toBe(true);
  });
});
