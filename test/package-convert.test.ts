/**
 * Convert a tiny checkpoint with official tensor names (bf16, sharded, plus tensors the text decoder does not
 * use) into a package with its vision and audio encoders, then run the package's decoder in a real ONNX
 * Runtime session, fed by the PLE pager, against H7's TypeScript reference run on the safetensors directly.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tinyConfig } from '../src/model/gemma4/config.js';
import { cacheSlots } from '../src/model/gemma4/decoder-graph.js';
import { Gemma4Reference } from '../src/model/gemma4/reference.js';
import { MULTIMODAL_TEXT_PREFIX, seededRandom, textTensorTable } from '../src/model/gemma4/weights.js';
import { checkpointWeightSource, convertCheckpoint } from '../src/model/build/convert.js';
import { verifyPackage } from '../src/model/package/verify.js';
import { synthTokenizerFiles } from '../src/model/build/synth-tokenizer.js';
import { PlePager } from '../src/model/ple/pager.js';
import { SafetensorsCheckpoint, writeShardedCheckpoint, type TensorToWrite } from '../src/model/safetensors.js';
import { synthConfigJson } from '../src/model/build/synth.js';
import { parseGemma4AudioConfig } from '../src/model/gemma4/audio-config.js';
import { AudioEncoderSession } from '../src/engine/audio-encoder.js';
import { writeAudioEncoderModel } from '../src/model/gemma4/audio-graph.js';
import { syntheticAudioWeightSource } from '../src/model/gemma4/audio-weights.js';
import { parseGemma4VisionConfig, patchDim } from '../src/model/gemma4/vision-config.js';
import { writeVisionEncoderModel } from '../src/model/gemma4/vision-graph.js';
import { syntheticVisionWeightSource } from '../src/model/gemma4/vision-weights.js';
import { audioBatch } from './gemma4-audio-helpers.js';
import { gridInput, runVision } from './gemma4-vision-helpers.js';
import { argmax, emptyCache, relErr, runChunk } from './gemma4-helpers.js';
import { noMedia } from './package-helpers.js';

const cfg = tinyConfig();
const L = cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput;
let root: string;
/** Text, vision and audio tensors. */
let ckptDir: string;
/** The same config (with vision_config and audio_config) but only the text tensors, as a text-only export. */
let textOnlyDir: string;

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
    out[i] =
      kind === 'norm'
        ? 1 + 0.2 * u()
        : kind === 'scalar'
          ? 0.6 + 0.4 * rand()
          : kind === 'embedding'
            ? 0.06 * u()
            : Math.sqrt(3 / shape[1]!) * u();
  }
  return out;
}

async function writeCheckpoint(dir: string, tensors: TensorToWrite[]): Promise<void> {
  mkdirSync(dir, { recursive: true });
  writeShardedCheckpoint(dir, tensors, 64 * 1024);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(synthConfigJson(cfg), null, 2));
  const tok = synthTokenizerFiles(cfg.vocabSize);
  writeFileSync(join(dir, 'tokenizer.json'), tok.tokenizerJson);
  // As Hugging Face ships older models: the template inside tokenizer_config.json, no .jinja file.
  writeFileSync(
    join(dir, 'tokenizer_config.json'),
    JSON.stringify({ ...JSON.parse(tok.tokenizerConfigJson), chat_template: tok.chatTemplate }),
  );
}

/** Every tensor of a synthetic source, as bf16 checkpoint tensors. */
async function towerTensors(src: {
  names(): string[];
  shape(n: string): number[];
  get(n: string): Promise<Float32Array>;
}): Promise<TensorToWrite[]> {
  const out: TensorToWrite[] = [];
  for (const name of src.names()) out.push({ name, dtype: 'BF16', shape: src.shape(name), data: await src.get(name) });
  return out;
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'perch-convert-'));
  ckptDir = join(root, 'checkpoint');
  textOnlyDir = join(root, 'checkpoint-text');
  const rand = seededRandom(11);
  const text: TensorToWrite[] = textTensorTable(cfg, MULTIMODAL_TEXT_PREFIX, true).map((t) => ({
    name: t.name,
    dtype: 'BF16',
    shape: t.shape,
    data: t.role === 'ple_table' ? pleTable(rand) : randomValues(t.kind, t.shape, rand),
  }));
  const json = synthConfigJson(cfg);
  const towers = [
    ...(await towerTensors(syntheticVisionWeightSource(parseGemma4VisionConfig(json), 12))),
    ...(await towerTensors(syntheticAudioWeightSource(parseGemma4AudioConfig(json), 13))),
  ];
  await writeCheckpoint(ckptDir, [...text, ...towers]);
  await writeCheckpoint(textOnlyDir, text);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('perch model convert', () => {
  it('float profile: the package decoder fed by the pager matches the reference on the checkpoint', async () => {
    const out = join(root, 'pkg-float');
    // A text-only export: the config describes encoders, the tensors are not there, so none is written.
    const m = await convertCheckpoint({ from: textOnlyDir, outDir: out, profile: 'float', logits: 'all' });
    expect(m.source).toMatchObject({ kind: 'convert', model: 'checkpoint-text' });
    expect(m.files.map((f) => f.path)).toEqual([
      'config.json',
      'decoder.onnx',
      'decoder.onnx.data',
      'ple.bin',
      'tokenizer.json',
      'tokenizer_config.json',
    ]);
    expect((await verifyPackage(out, { full: true })).problems).toEqual([]);

    const ckpt = await SafetensorsCheckpoint.open(textOnlyDir);
    const ref = await Gemma4Reference.load(cfg, checkpointWeightSource(ckpt), MULTIMODAL_TEXT_PREFIX);
    await ckpt.close();
    const pager = await PlePager.open(join(out, 'ple.bin'), {
      cacheBytes: 1 << 16,
      expect: { rows: cfg.vocabSize, cols: L },
    });
    const session = await ort.InferenceSession.create(join(out, 'decoder.onnx'), { intraOpNumThreads: 1 });
    const slots = cacheSlots(cfg);

    const prompt = [2, 4, 77, 300, 300, 511, 9];
    const rows = await pager.rowsFor(prompt);
    expect(rows).toEqual(ref.pleRows(prompt)); // exact: the PLE values are 4-bit representable
    const want = ref.prefill(prompt);
    let r = await runChunk(
      session,
      slots,
      { ...emptyCache(slots), ...noMedia(cfg.hiddenSize, prompt.length) },
      prompt,
      0,
      rows,
    );
    const errs = [relErr(r.logits, want)];
    let next = argmax(want.subarray((prompt.length - 1) * cfg.vocabSize));
    for (let step = 0; step < 12; step++) {
      const w = ref.step(next);
      r = await runChunk(
        session,
        slots,
        { ...r.cache, ...noMedia(cfg.hiddenSize, 1) },
        [next],
        prompt.length + step,
        await pager.rowsFor([next]),
      );
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
    const m = await convertCheckpoint({
      from: ckptDir,
      outDir: out,
      profile: 'pi5',
      model: 'google/gemma-4-E2B-it',
      revision: 'abc123',
    });
    expect(m.source).toEqual({ kind: 'convert', model: 'google/gemma-4-E2B-it', revision: 'abc123' });
    expect(m.quantisation.linear).toMatchObject({ bits: 2, accuracy_level: 4 });
    expect((await verifyPackage(out, { full: true })).ok).toBe(true);
    expect(m.files.map((f) => f.role)).toEqual(
      expect.arrayContaining(['vision-graph', 'vision-weights', 'audio-graph', 'audio-weights']),
    );
    const pager = await PlePager.open(join(out, 'ple.bin'), { cacheBytes: 0 });
    const session = await ort.InferenceSession.create(join(out, 'decoder.onnx'), { intraOpNumThreads: 1 });
    const slots = cacheSlots(cfg);
    const ids = [2, 4, 77];
    const r = await runChunk(
      session,
      slots,
      { ...emptyCache(slots), ...noMedia(cfg.hiddenSize, ids.length) },
      ids,
      0,
      await pager.rowsFor(ids),
    );
    expect(r.dims).toEqual([1, 1, cfg.vocabSize]);
    expect(r.logits.every(Number.isFinite)).toBe(true);
    await session.release();
    await pager.close();
  });

  it('converts the vision and audio towers: the 8-bit encoders in ORT match float encoders on the checkpoint', async () => {
    const out = join(root, 'pkg-pi5');
    if (!existsSync(join(out, 'manifest.json')))
      await convertCheckpoint({ from: ckptDir, outDir: out, profile: 'pi5' });
    const json = JSON.parse(readFileSync(join(ckptDir, 'config.json'), 'utf8')) as Record<string, unknown>;
    const vcfg = parseGemma4VisionConfig(json);
    const acfg = parseGemma4AudioConfig(json);
    const ckpt = await SafetensorsCheckpoint.open(ckptDir);
    const ref = join(root, 'float-encoders');
    await writeVisionEncoderModel(ref, vcfg, checkpointWeightSource(ckpt), { quant: null });
    await writeAudioEncoderModel(ref, acfg, checkpointWeightSource(ckpt), { quant: null });
    await ckpt.close();

    const k = vcfg.poolingKernelSize;
    const patches = [gridInput(2 * k, 3 * k, patchDim(vcfg), 5)];
    const feats = audioBatch(acfg.inputFeatureSize, 64, [64], 6);
    const run = async (dir: string) => {
      const v = await ort.InferenceSession.create(join(dir, 'vision_encoder.onnx'), { intraOpNumThreads: 1 });
      // The package holds the streaming audio graph, the reference the one-pass one: the session runs either.
      const a = await AudioEncoderSession.open(join(dir, 'audio_encoder.onnx'), { intraOpNumThreads: 1 });
      const r = {
        image: await runVision(v, patches, patchDim(vcfg)),
        audio: await a.encode(feats.clip(0), feats.maskOf(0)),
      };
      await v.release();
      await a.close();
      return r;
    };
    const got = await run(out);
    const want = await run(ref);
    expect(got.image.dims).toEqual([1, 6, cfg.hiddenSize]);
    expect(got.audio.count).toBe(16);
    expect(want.audio.count).toBe(16);
    // Wrong or shuffled weights would be ~100% off. Vision runs int8 activations (accuracy_level 4): ~3-5% on
    // this tiny model (test/gemma4-vision-quant.test.ts); audio's 8-bit linears too (measured 1.9e-2).
    expect(relErr(got.image.data, want.image.data)).toBeLessThan(0.1);
    expect(relErr(got.audio.rows, want.audio.rows)).toBeLessThan(0.03);
  });

  it('refuses a directory without config.json or tokenizer.json, and leaves no package behind', async () => {
    await expect(convertCheckpoint({ from: join(root, 'nowhere'), outDir: join(root, 'x') })).rejects.toThrow(
      /nowhere\/config\.json: missing/,
    );
    const broken = join(root, 'broken');
    mkdirSync(broken, { recursive: true });
    writeFileSync(join(broken, 'config.json'), JSON.stringify(synthConfigJson(cfg)));
    await expect(convertCheckpoint({ from: broken, outDir: join(root, 'y') })).rejects.toThrow(
      /tokenizer\.json: missing/,
    );
    writeFileSync(join(broken, 'tokenizer.json'), '{}');
    await expect(convertCheckpoint({ from: broken, outDir: join(root, 'z') })).rejects.toThrow(/model\.safetensors/);
    expect(existsSync(join(root, 'z'))).toBe(false);
  });
});
