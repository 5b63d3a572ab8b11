import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { logMelFeatures } from '../src/audio/features.js';
import { audioTokenFrames, e2bAudioConfig, tinyAudioConfig } from '../src/model/gemma4/audio-config.js';
import { AudioEncoderSession } from '../src/model/gemma4/audio-encoder.js';
import { writeAudioEncoderModel } from '../src/model/gemma4/audio-graph.js';
import { AUDIO_DEFAULT_POLICY, audioQuantErrors, dequantisedAudioWeightSource, uniformAudioPolicy } from '../src/model/gemma4/audio-quant.js';
import { AudioReference } from '../src/model/gemma4/audio-reference.js';
import { syntheticAudioWeightSource } from '../src/model/gemma4/audio-weights.js';
import { audioBatch, runAudio } from './gemma4-audio-helpers.js';
import { relErr } from './gemma4-helpers.js';

const cfg = tinyAudioConfig();
const SEED = 17;
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma4-audio-quant-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const batch = audioBatch(cfg.inputFeatureSize, 110, [110, 53], 23);

async function quantRun(name: string, bits: 4 | 8, accuracyLevel: 0 | 4): Promise<{ graph: Float32Array; deq: Float32Array[]; float: Float32Array[] }> {
  const src = syntheticAudioWeightSource(cfg, SEED);
  const policy = uniformAudioPolicy({ bits, blockSize: 32, accuracyLevel });
  const out = await writeAudioEncoderModel(path.join(dir, name), cfg, src, { quant: policy });
  // Every Linear became a MatMulNBits of the requested width: input_proj, output_proj, embedder, 10 per layer.
  const nodes = onnxProto.onnx.ModelProto.decode(fs.readFileSync(out.modelPath)).graph?.node ?? [];
  const nbits = nodes.filter((n) => n.opType === 'MatMulNBits');
  expect(nbits.length).toBe(3 + 10 * cfg.numHiddenLayers);
  expect(nbits.every((n) => (n.attribute ?? []).some((a) => a.name === 'bits' && Number(a.i) === bits))).toBe(true);
  // The only float MatMuls left are attention's q.k, q.relk and p.v.
  expect(nodes.filter((n) => n.opType === 'MatMul').length).toBe(3 * cfg.numHiddenLayers);
  const session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
  try {
    const graph = (await runAudio(session, batch)).embeds;
    const deqRef = await AudioReference.load(cfg, dequantisedAudioWeightSource(src, cfg, policy));
    const floatRef = await AudioReference.load(cfg, src);
    const deq = [0, 1].map((b) => deqRef.encode(batch.clip(b), batch.maskOf(b)).embeds);
    const float = [0, 1].map((b) => floatRef.encode(batch.clip(b), batch.maskOf(b)).embeds);
    return { graph, deq, float };
  } finally {
    await session.release();
  }
}

const width = audioTokenFrames(110) * cfg.textHiddenSize;
const row = (a: Float32Array, b: number): Float32Array => a.subarray(b * width, (b + 1) * width);

describe('gemma4 audio encoder, quantised (MatMulNBits)', () => {
  it('per-matrix reconstruction error falls with bits: 2-bit unusable, 4-bit coarse, 8-bit fine', async () => {
    const errs = await audioQuantErrors(cfg, syntheticAudioWeightSource(cfg, SEED));
    const names = new Set(errs.map((e) => e.name));
    expect(names.size).toBe(3 + 10 * cfg.numHiddenLayers); // input_proj, output_proj, embedder + 10 per layer
    for (const name of names) {
      const by = new Map(errs.filter((e) => e.name === name).map((e) => [e.bits, e.relative]));
      expect(by.get(8)!).toBeLessThan(by.get(4)!);
      expect(by.get(4)!).toBeLessThan(by.get(2)!);
      expect(by.get(8)!).toBeLessThan(0.01);
      expect(by.get(4)!).toBeLessThan(0.15);
      expect(by.get(2)!).toBeGreaterThan(0.25);
    }
  });

  it('accuracy level 0: the graph matches the reference run on the dequantised weights within 1e-4 (4 and 8 bits)', async () => {
    for (const bits of [4, 8] as const) {
      const r = await quantRun(`q${bits}-a0`, bits, 0);
      for (const b of [0, 1]) expect(relErr(row(r.graph, b), r.deq[b]!)).toBeLessThan(1e-4);
    }
  });

  it('accuracy level 4 (int8 activations): within 5e-2 of the dequantised reference', async () => {
    const r = await quantRun('q8-a4', 8, 4);
    for (const b of [0, 1]) expect(relErr(row(r.graph, b), r.deq[b]!)).toBeLessThan(5e-2);
  });

  it('end to end against the float model: the default 8-bit policy stays within 2 %, 4-bit is several times worse', async () => {
    const e8 = await quantRun('e2e-8', 8, 0);
    const e4 = await quantRun('e2e-4', 4, 0);
    const err8 = Math.max(...[0, 1].map((b) => relErr(row(e8.graph, b), e8.float[b]!)));
    const err4 = Math.max(...[0, 1].map((b) => relErr(row(e4.graph, b), e4.float[b]!)));
    expect(err8).toBeLessThan(0.02);
    expect(err4).toBeGreaterThan(2 * err8);
    expect(AUDIO_DEFAULT_POLICY({ name: 'x', shape: [4, 4], kind: 'linear', layer: 0 })?.bits).toBe(8);
  });

  it('E2B widths (hidden 1024, 8 heads x 128, channels 128/32, 1536 out), one layer, 8-bit: 2 s of audio matches the dequantised reference', async () => {
    const e2b = { ...e2bAudioConfig(), numHiddenLayers: 1 };
    const src = syntheticAudioWeightSource(e2b, 3);
    const policy = uniformAudioPolicy({ bits: 8, blockSize: 32, accuracyLevel: 0, method: 'rtn' });
    const out = await writeAudioEncoderModel(path.join(dir, 'e2b-1layer'), e2b, src, { quant: policy });
    const samples = Float32Array.from({ length: 32000 }, (_, i) => 0.3 * Math.sin(i * 0.07) + 0.1 * Math.sin(i * 0.9));
    const lm = logMelFeatures(samples);
    const enc = await AudioEncoderSession.open(out.modelPath, { intraOpNumThreads: 1 });
    try {
      const got = await enc.encode(lm.features, lm.mask);
      expect(got.count).toBe(50); // 25 tokens a second
      const want = (await AudioReference.load(e2b, dequantisedAudioWeightSource(src, e2b, policy))).encode(lm.features, lm.mask);
      expect(relErr(got.rows, want.embeds.subarray(0, got.count * e2b.textHiddenSize))).toBeLessThan(1e-4);
    } finally {
      await enc.close();
    }
  }, 60_000);
});
