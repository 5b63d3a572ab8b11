/**
 * Convert a tiny checkpoint with official tensor names (bf16, sharded, plus tensors the text decoder does not
 * use) into a package, then run the package's decoder in a real ONNX Runtime session, fed by the PLE pager,
 * against H7's TypeScript reference run on the safetensors directly.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tinyConfig } from '../src/model/gemma4/config.js';
import { cacheSlots } from '../src/model/gemma4/decoder-graph.js';
import { Gemma4Reference } from '../src/model/gemma4/reference.js';
import { MULTIMODAL_TEXT_PREFIX, seededRandom, textTensorTable } from '../src/model/gemma4/weights.js';
import { checkpointWeightSource, convertCheckpoint } from '../src/model/convert.js';
import { verifyPackage } from '../src/model/package/verify.js';
import { synthTokenizerFiles } from '../src/model/package/synth-tokenizer.js';
import { PlePager } from '../src/model/ple/pager.js';
import { SafetensorsCheckpoint, writeShardedCheckpoint, type TensorToWrite } from '../src/model/safetensors.js';
import { synthConfigJson } from '../src/model/synth.js';
import { argmax, emptyCache, relErr, runChunk } from './gemma4-helpers.js';

const cfg = tinyConfig();
const L = cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput;
let root: string;
let ckptDir: string;

/**
 * PLE values (q - 8) / 32 with q in 0..15 and both extremes in every 32-wide block: exact in bf16 and exactly
 * representable by the 4-bit PLE file, so pager rows must equal the checkpoint's rows bit for bit.
 */
function pleTable(rand: () => number): Float32Array {
  const t = new Float32Array(cfg.vocabSize * L);
  for (let r = 0; r < cfg.vocabSize; r++) {
    for (let c = 0; c < L; c++) {
      const inBlock = c % 32;
      const q = inBlock === 0 ? 0 : inBlock === 1 ? 15 : Math.floor(rand() * 16);
      t[r * L + c] = (q - 8) / 32;
    }
  }
  return t;
}

function randomValues(kind: string, shape: number[], rand: () => number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const u = () => rand() * 2 - 1;
  for (let i = 0; i < n; i++) {
    out[i] = kind === 'norm' ? 1 + 0.2 * u() : kind === 'scalar' ? 0.6 + 0.4 * rand() : kind === 'embedding' ? 0.06 * u() : Math.sqrt(3 / shape[1]!) * u();
  }
  return out;
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'perch-convert-'));
  ckptDir = join(root, 'checkpoint');
  const rand = seededRandom(11);
  const tensors: TensorToWrite[] = textTensorTable(cfg, MULTIMODAL_TEXT_PREFIX, true).map((t) => ({
    name: t.name,
    dtype: 'BF16',
    shape: t.shape,
    data: t.role === 'ple_table' ? pleTable(rand) : randomValues(t.kind, t.shape, rand),
  }));
  // Official checkpoints also carry the vision/audio towers; the converter must ignore them.
  tensors.push({ name: 'model.vision_tower.patch_embedder.weight', dtype: 'BF16', shape: [4, 4], data: new Float32Array(16).fill(0.5) });
  mkdirSync(ckptDir, { recursive: true });
  writeShardedCheckpoint(ckptDir, tensors, 64 * 1024);
  writeFileSync(join(ckptDir, 'config.json'), JSON.stringify(synthConfigJson(cfg), null, 2));
  const tok = synthTokenizerFiles(cfg.vocabSize);
  writeFileSync(join(ckptDir, 'tokenizer.json'), tok.tokenizerJson);
  // As Hugging Face ships older models: the template inside tokenizer_config.json, no .jinja file.
  writeFileSync(join(ckptDir, 'tokenizer_config.json'), JSON.stringify({ ...JSON.parse(tok.tokenizerConfigJson), chat_template: tok.chatTemplate }));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('perch model convert', () => {
  it('float profile: the package decoder fed by the pager matches the reference on the checkpoint', async () => {
    const out = join(root, 'pkg-float');
    const m = await convertCheckpoint({ from: ckptDir, outDir: out, profile: 'float', logits: 'all' });
    expect(m.source).toMatchObject({ kind: 'convert', model: 'checkpoint' });
    expect(m.files.map((f) => f.path)).toEqual(['config.json', 'decoder.onnx', 'decoder.onnx.data', 'ple.bin', 'tokenizer.json', 'tokenizer_config.json']);
    expect((await verifyPackage(out, { full: true })).problems).toEqual([]);

    const ckpt = await SafetensorsCheckpoint.open(ckptDir);
    const ref = await Gemma4Reference.load(cfg, checkpointWeightSource(ckpt), MULTIMODAL_TEXT_PREFIX);
    await ckpt.close();
    const pager = await PlePager.open(join(out, 'ple.bin'), { cacheBytes: 1 << 16, expect: { rows: cfg.vocabSize, cols: L } });
    const session = await ort.InferenceSession.create(join(out, 'decoder.onnx'), { intraOpNumThreads: 1 });
    const slots = cacheSlots(cfg);

    const prompt = [2, 4, 77, 300, 300, 511, 9];
    const rows = await pager.rowsFor(prompt);
    expect(rows).toEqual(ref.pleRows(prompt)); // exact: the PLE values are 4-bit representable
    const want = ref.prefill(prompt);
    let r = await runChunk(session, slots, emptyCache(slots), prompt, 0, rows);
    const errs = [relErr(r.logits, want)];
    let next = argmax(want.subarray((prompt.length - 1) * cfg.vocabSize));
    for (let step = 0; step < 12; step++) {
      const w = ref.step(next);
      r = await runChunk(session, slots, r.cache, [next], prompt.length + step, await pager.rowsFor([next]));
      errs.push(relErr(r.logits, w));
      next = step % 2 ? argmax(w) : (step * 53 + 3) % cfg.vocabSize;
    }
    expect(Math.max(...errs)).toBeLessThanOrEqual(1e-4);
    // Prompt rows stayed cached: asking again is served without reads.
    const reads = pager.stats().reads;
    expect(await pager.rowsFor(prompt)).toEqual(rows);
    expect(pager.stats().reads).toBe(reads);
    await session.release();
    await pager.close();
  });

  it('pi5 profile: a verified, runnable 2-bit package with the policy in its manifest', async () => {
    const out = join(root, 'pkg-pi5');
    const m = await convertCheckpoint({ from: ckptDir, outDir: out, profile: 'pi5', model: 'google/gemma-4-E2B-it', revision: 'abc123' });
    expect(m.source).toEqual({ kind: 'convert', model: 'google/gemma-4-E2B-it', revision: 'abc123' });
    expect(m.quantisation.linear).toMatchObject({ bits: 2, accuracy_level: 4 });
    expect((await verifyPackage(out, { full: true })).ok).toBe(true);
    const pager = await PlePager.open(join(out, 'ple.bin'), { cacheBytes: 0 });
    const session = await ort.InferenceSession.create(join(out, 'decoder.onnx'), { intraOpNumThreads: 1 });
    const slots = cacheSlots(cfg);
    const ids = [2, 4, 77];
    const r = await runChunk(session, slots, emptyCache(slots), ids, 0, await pager.rowsFor(ids));
    expect(r.dims).toEqual([1, 1, cfg.vocabSize]);
    expect(r.logits.every(Number.isFinite)).toBe(true);
    await session.release();
    await pager.close();
  });

  it('refuses a directory without config.json or tokenizer.json, and leaves no package behind', async () => {
    await expect(convertCheckpoint({ from: join(root, 'nowhere'), outDir: join(root, 'x') })).rejects.toThrow(/nowhere\/config\.json: missing/);
    const broken = join(root, 'broken');
    mkdirSync(broken, { recursive: true });
    writeFileSync(join(broken, 'config.json'), JSON.stringify(synthConfigJson(cfg)));
    await expect(convertCheckpoint({ from: broken, outDir: join(root, 'y') })).rejects.toThrow(/tokenizer\.json: missing/);
    writeFileSync(join(broken, 'tokenizer.json'), '{}');
    await expect(convertCheckpoint({ from: broken, outDir: join(root, 'z') })).rejects.toThrow(/model\.safetensors/);
    expect(existsSync(join(root, 'z'))).toBe(false);
  });
});
