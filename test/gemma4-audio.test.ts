import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { logMelFeatures, softTokenCount } from '../src/audio/features.js';
import {
  audioTokenFrames,
  e2bAudioConfig,
  parseGemma4AudioConfig,
  tinyAudioConfig,
  toAudioConfigJson,
} from '../src/model/gemma4/audio-config.js';
import { AudioEncoderSession, MAX_AUDIO_FRAMES } from '../src/engine/audio-encoder.js';
import { writeAudioEncoderModel } from '../src/model/gemma4/audio-graph.js';
import { AudioReference } from '../src/model/gemma4/audio-reference.js';
import { audioTensorTable, syntheticAudioWeightSource } from '../src/model/gemma4/audio-weights.js';
import { Gemma4ConfigError } from '../src/model/gemma4/config.js';
import { type WeightSource, seededRandom } from '../src/model/gemma4/weights.js';
import { relErr } from './gemma4-helpers.js';
import { audioBatch, runAudio } from './gemma4-audio-helpers.js';

const cfg = tinyAudioConfig();
let dir: string;
let session: ort.InferenceSession;
let ref: AudioReference;
let modelPath: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma4-audio-'));
  const out = await writeAudioEncoderModel(path.join(dir, 'float'), cfg, syntheticAudioWeightSource(cfg, 11));
  modelPath = out.modelPath;
  session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
  ref = await AudioReference.load(cfg, syntheticAudioWeightSource(cfg, 11));
});
afterAll(async () => {
  await session?.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The processor's count (processing_gemma4.py _compute_audio_num_tokens), written from its arithmetic. */
function processorTokens(samples: number): number {
  const frames = Math.floor((samples + 160 - 321) / 160) + 1;
  if (frames <= 0) return 0;
  let t = frames;
  for (let i = 0; i < 2; i++) t = Math.floor((t + 2 - 3) / 2) + 1;
  return Math.min(t, 750);
}

describe('gemma4 audio config', () => {
  it('parses config.json (audio_config + text_config.hidden_size) and round-trips the E2B values', () => {
    const json = { audio_config: toAudioConfigJson(e2bAudioConfig()), text_config: { hidden_size: 1536 } };
    expect(parseGemma4AudioConfig(json)).toEqual(e2bAudioConfig());
    // transformers' defaults fill missing keys
    expect(parseGemma4AudioConfig({ audio_config: {}, text_config: { hidden_size: 1536 } })).toEqual(e2bAudioConfig());
  });

  it('rejects configs it cannot run, naming the problem', () => {
    const bad =
      (audio: unknown, text: unknown = { hidden_size: 64 }): (() => unknown) =>
      () =>
        parseGemma4AudioConfig({ audio_config: audio, text_config: text });
    expect(() => parseGemma4AudioConfig({ text_config: { hidden_size: 1 } })).toThrow(/no "audio_config"/);
    expect(bad({ subsampling_conv_channels: [64, 32] })).toThrow(/input_proj_linear/);
    expect(bad({ attention_context_right: 2 })).toThrow(/attention_context_right/);
    expect(bad({ hidden_size: 100, num_attention_heads: 8 })).toThrow(/divisible/);
    expect(bad({ hidden_act: 'gelu' })).toThrow(/hidden_act/);
    expect(bad({}, {})).toThrow(Gemma4ConfigError);
  });

  it('has the E2B tensor table the converter writes (names and shapes)', () => {
    const t = new Map(audioTensorTable(e2bAudioConfig()).map((s) => [s.name, s.shape]));
    expect(t.get('model.audio_tower.subsample_conv_projection.layer0.conv.weight')).toEqual([128, 1, 3, 3]);
    expect(t.get('model.audio_tower.subsample_conv_projection.layer1.conv.weight')).toEqual([32, 128, 3, 3]);
    expect(t.get('model.audio_tower.subsample_conv_projection.input_proj_linear.weight')).toEqual([1024, 1024]);
    expect(t.get('model.audio_tower.layers.11.feed_forward2.ffw_layer_1.linear.weight')).toEqual([4096, 1024]);
    expect(t.get('model.audio_tower.layers.0.lconv1d.depthwise_conv1d.weight')).toEqual([1024, 1, 5]);
    expect(t.get('model.audio_tower.layers.0.self_attn.per_dim_scale')).toEqual([128]);
    expect(t.get('model.audio_tower.layers.0.self_attn.q_proj.input_max')).toEqual([]);
    expect(t.get('model.audio_tower.output_proj.bias')).toEqual([1536]);
    expect(t.get('model.embed_audio.embedding_projection.weight')).toEqual([1536, 1536]);
  });
});

describe('gemma4 audio encoder graph vs TypeScript reference (tiny config, float)', () => {
  it('matches on a batch of two clips whose masks end mid-chunk, padded rows included', async () => {
    const frames = 118; // 30 tokens: blocks of 12, the last one partial
    const lengths = [frames, 61]; // clip 2: 16 valid tokens, cut inside the second block
    const batch = audioBatch(cfg.inputFeatureSize, frames, lengths, 5);
    const out = await runAudio(session, batch);
    const tokens = audioTokenFrames(frames);
    expect(out.dims).toEqual([2, tokens, cfg.textHiddenSize]);
    const width = tokens * cfg.textHiddenSize;
    for (let b = 0; b < 2; b++) {
      const want = ref.encode(batch.clip(b), batch.maskOf(b));
      expect(Array.from(out.mask.subarray(b * tokens, (b + 1) * tokens))).toEqual(Array.from(want.mask));
      expect(relErr(out.embeds.subarray(b * width, (b + 1) * width), want.embeds)).toBeLessThan(1e-4);
    }
    expect(out.mask.subarray(tokens, 2 * tokens).reduce((a, v) => a + v, 0)).toBe(16);
  });

  it('fusedNorm (SimplifiedLayerNormalization) gives the same result', async () => {
    const out = await writeAudioEncoderModel(path.join(dir, 'fused'), cfg, syntheticAudioWeightSource(cfg, 11), {
      fusedNorm: true,
    });
    const s2 = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
    try {
      const batch = audioBatch(cfg.inputFeatureSize, 90, [70], 6);
      const got = await runAudio(s2, batch);
      expect(relErr(got.embeds, ref.encode(batch.clip(0), batch.maskOf(0)).embeds)).toBeLessThan(1e-4);
    } finally {
      await s2.release();
    }
  });

  it('padding never leaks into real tokens: a padded clip gives the same real rows as the clip alone', async () => {
    const batch = audioBatch(cfg.inputFeatureSize, 150, [150, 77], 9);
    const padded = await runAudio(session, batch);
    const alone = ref.encode(batch.clip(1).subarray(0, 77 * cfg.inputFeatureSize), new Uint8Array(77).fill(1));
    const tokens = audioTokenFrames(150);
    const rows = alone.tokens * cfg.textHiddenSize;
    expect(alone.tokens).toBe(20);
    const start = tokens * cfg.textHiddenSize;
    expect(relErr(padded.embeds.subarray(start, start + rows), alone.embeds)).toBeLessThan(1e-4);
  });

  it('the clip bounds matter: the reference without them differs from the graph', async () => {
    // Guards the test itself: synthetic clip bounds must bind, or the clipping code would go unchecked.
    const src = syntheticAudioWeightSource(cfg, 11);
    const unclipped = await AudioReference.load({ ...cfg, useClippedLinears: false }, src);
    const batch = audioBatch(cfg.inputFeatureSize, 64, [64], 3);
    const out = await runAudio(session, batch);
    expect(relErr(out.embeds, unclipped.encode(batch.clip(0), batch.maskOf(0)).embeds)).toBeGreaterThan(1e-3);
  });

  it('matches with sharp attention (large per_dim_scale): logits deep in the soft cap, windows and relative shift decisive', async () => {
    const base = syntheticAudioWeightSource(cfg, 4);
    const hot: WeightSource = {
      shape: (n) => base.shape(n),
      get: async (n) => (n.endsWith('per_dim_scale') ? new Float32Array(base.shape(n)[0]!).fill(4) : base.get(n)),
    };
    const sub = path.join(dir, 'hot');
    const s2 = await ort.InferenceSession.create((await writeAudioEncoderModel(sub, cfg, hot)).modelPath, {
      intraOpNumThreads: 1,
    });
    try {
      const r2 = await AudioReference.load(cfg, hot);
      const batch = audioBatch(cfg.inputFeatureSize, 100, [100, 45], 13);
      const out = await runAudio(s2, batch);
      const width = audioTokenFrames(100) * cfg.textHiddenSize;
      for (let b = 0; b < 2; b++) {
        expect(
          relErr(out.embeds.subarray(b * width, (b + 1) * width), r2.encode(batch.clip(b), batch.maskOf(b)).embeds),
        ).toBeLessThan(1e-4);
      }
      // Without the cap the reference would be far off: the logits really are beyond it.
      const uncapped = await AudioReference.load({ ...cfg, attentionLogitCap: 1e6 }, hot);
      expect(
        relErr(out.embeds.subarray(0, width), uncapped.encode(batch.clip(0), batch.maskOf(0)).embeds),
      ).toBeGreaterThan(1e-2);
    } finally {
      await s2.release();
    }
  });

  it('token counts agree: processor formula = softTokenCount(feature mask) = real rows of the graph output', async () => {
    const rand = seededRandom(21);
    for (const n of [161, 480, 641, 1600, 4000, 16000 + 37]) {
      const samples = Float32Array.from({ length: n }, () => (rand() * 2 - 1) * 0.3);
      const lm = logMelFeatures(samples);
      const expected = processorTokens(n);
      expect(softTokenCount(lm.mask)).toBe(expected);
      const out = await runAudio(session, { features: lm.features, mask: lm.mask, batch: 1, frames: lm.frames });
      expect(out.dims[1]).toBe(audioTokenFrames(lm.frames));
      expect(out.mask.reduce((a, v) => a + v, 0)).toBe(expected);
    }
    // 30 s, the processor's maximum, is exactly the 750-token cap.
    expect(processorTokens(480_000)).toBe(750);
  });

  it('AudioEncoderSession returns only the real rows, in order, as many as softTokenCount says; refuses oversize clips', async () => {
    const samples = Float32Array.from(
      { length: 16150 }, // 100 real frames of 101: 25 real tokens of 26
      (_, i) => 0.4 * Math.sin((2 * Math.PI * 440 * i) / 16000),
    );
    const lm = logMelFeatures(samples);
    const enc = await AudioEncoderSession.open(modelPath, { intraOpNumThreads: 1 });
    try {
      const got = await enc.encode(lm.features, lm.mask);
      const want = ref.encode(lm.features, lm.mask);
      expect(got.count).toBe(softTokenCount(lm.mask));
      expect([got.count, want.tokens]).toEqual([25, 26]);
      expect(got.hidden).toBe(cfg.textHiddenSize);
      expect(relErr(got.rows, want.embeds.subarray(0, got.count * cfg.textHiddenSize))).toBeLessThan(1e-4);
      const big = MAX_AUDIO_FRAMES + 1;
      await expect(
        enc.encode(new Float32Array(big * cfg.inputFeatureSize), new Uint8Array(big).fill(1)),
      ).rejects.toThrow(RangeError);
    } finally {
      await enc.close();
    }
  });
});
