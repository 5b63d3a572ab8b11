/**
 * Gemma 4's audio path as transformers computes it. The fixtures under test/fixtures/golden/audio/ come from
 * `reference/make_goldens.py audio` (reference/goldens/audio.py): Gemma4AudioFeatureExtractor's log-mel
 * features on the committed espeak-ng phrases, and a tiny random Gemma4ForConditionalGeneration (float32,
 * save_pretrained, transformers' own config.json; E2B's audio structure at toy width, clip bounds set where they
 * bite) with what get_audio_features returns on those features: the tower output and the embedded soft tokens.
 *
 * Perch must match: its log-mel extractor on the same WAVs; its converter's audio encoder graph in ONNX Runtime
 * (the streaming graph packages hold, fed whole and as the audio would arrive; the one-pass graph on a padded
 * batch) and its TypeScript audio reference, both on transformers' own features;
 * the same for a second tower whose config moves every constant E2B fixes; and the 8-bit package the default
 * profile writes, within a bound measured here.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { relErr } from './gemma4-helpers.js';
import { logMelFeatures, softTokenCount } from '../src/audio/features.js';
import { checkpointWeightSource, convertCheckpoint } from '../src/model/build/convert.js';
import { parseGemma4AudioConfig, type Gemma4AudioConfig } from '../src/model/gemma4/audio-config.js';
import { AudioEncoderSession, type AudioSoftTokens, joinTokens } from '../src/engine/audio-encoder.js';
import { writeAudioEncoderModel } from '../src/model/gemma4/audio-graph.js';
import { AudioReference } from '../src/model/gemma4/audio-reference.js';
import { synthTokenizerFiles } from '../src/model/build/synth-tokenizer.js';
import { SafetensorsCheckpoint } from '../src/model/safetensors.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';
import { runAudio } from './gemma4-audio-helpers.js';

const GOLDEN = join(__dirname, 'fixtures', 'golden', 'audio');
const REPO = join(__dirname, '..');

interface ClipFacts {
  wav: string;
  samples: number;
  frames: number;
  valid_frames: number;
  tokens: number;
  valid_tokens: number;
  processor_tokens_by_mask: number;
  processor_tokens_by_length: number;
}

interface Facts {
  clips: Record<string, ClipFacts>;
  batch: { clips: string[]; frames: number; tokens: number; valid_tokens: number[] };
}

interface Clip extends ClipFacts {
  name: string;
  /** transformers' features [frames, 128] and frame mask. */
  features: Float32Array;
  mask: Uint8Array;
  /** transformers' tower output [tokens, output_proj_dims], soft tokens [tokens, text hidden], token mask. */
  tower: Float32Array;
  embeds: Float32Array;
  tokenMask: Uint8Array;
}

/** The rows of `x` ([mask.length, width]) whose mask is set, in order (what transformers keeps). */
function validRows(x: Float32Array, mask: ArrayLike<number>, width: number): Float32Array {
  const out: number[] = [];
  for (let t = 0; t < mask.length; t++) if (mask[t]) out.push(...x.subarray(t * width, (t + 1) * width));
  return Float32Array.from(out);
}

const toMask = (x: Float32Array): Uint8Array => Uint8Array.from(x, (v) => (v ? 1 : 0));

/** A clip through a streaming encoder in pushes of `frames` (the last one ends the stream). */
async function fedInPieces(
  enc: AudioEncoderSession,
  features: Float32Array,
  mask: Uint8Array,
  frames: number,
): Promise<AudioSoftTokens> {
  const F = enc.featureSize;
  const s = enc.openStream();
  const parts: AudioSoftTokens[] = [];
  for (let at = 0; at < mask.length; at += frames) {
    const end = Math.min(mask.length, at + frames);
    parts.push(await s.push(features.subarray(at * F, end * F), mask.subarray(at, end)));
  }
  return joinTokens(parts);
}

let root: string;
let facts: Facts;
let clips: Clip[];
let cfg: Gemma4AudioConfig;
let batchEmbeds: Float32Array;
let batchMask: Uint8Array;
/** Packages converted from the golden checkpoint: float profile, and the default profile (8-bit audio encoder). */
let floatPkg: string;
let defaultPkg: string;
let ckptDir: string;

beforeAll(async () => {
  facts = JSON.parse(readFileSync(join(GOLDEN, 'facts.json'), 'utf8')) as Facts;
  const feats = await SafetensorsCheckpoint.open(join(GOLDEN, 'features.safetensors'));
  const tower = await SafetensorsCheckpoint.open(join(GOLDEN, 'tower.safetensors'));
  clips = [];
  for (const [name, f] of Object.entries(facts.clips)) {
    clips.push({
      ...f,
      name,
      features: await feats.read(`${name}.features`),
      mask: toMask(await feats.read(`${name}.mask`)),
      tower: await tower.read(`${name}.tower`),
      embeds: await tower.read(`${name}.embeds`),
      tokenMask: toMask(await tower.read(`${name}.mask`)),
    });
  }
  batchEmbeds = await tower.read('batch.embeds');
  batchMask = toMask(await tower.read('batch.mask'));
  await feats.close();
  await tower.close();

  root = mkdtempSync(join(tmpdir(), 'perch-golden-audio-'));
  ckptDir = join(root, 'checkpoint');
  cpSync(join(GOLDEN, 'checkpoint'), ckptDir, { recursive: true });
  const configJson = JSON.parse(readFileSync(join(ckptDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  cfg = parseGemma4AudioConfig(configJson);
  // transformers needs no tokenizer for these fixtures; a package does, so give the checkpoint a synthetic one
  // (its media specials sit at the ids config.json names: see reference/goldens/audio.py).
  const vocab = (configJson.text_config as { vocab_size: number }).vocab_size;
  writeFileSync(join(ckptDir, 'tokenizer.json'), synthTokenizerFiles(vocab).tokenizerJson);
  floatPkg = join(root, 'float');
  defaultPkg = join(root, 'default');
  await convertCheckpoint({ from: ckptDir, outDir: floatPkg, profile: 'float' });
  await convertCheckpoint({ from: ckptDir, outDir: defaultPkg });
}, 120_000);

afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('golden audio: log-mel features', () => {
  it('Perch reads the same samples from the WAVs', () => {
    for (const c of clips) {
      const { info, samples } = wavTo16kMono(readFileSync(join(REPO, c.wav)));
      expect(info.sampleRate).toBe(16000);
      expect(samples.length).toBe(c.samples);
    }
  });

  it("Perch's features equal Gemma4AudioFeatureExtractor's; masks and frame counts identical", () => {
    const errs: number[] = [];
    for (const c of clips) {
      const { samples } = wavTo16kMono(readFileSync(join(REPO, c.wav)));
      const r = logMelFeatures(samples);
      expect(r.featureSize).toBe(128);
      expect(r.frames).toBe(c.frames);
      expect(Array.from(r.mask)).toEqual(Array.from(c.mask));
      // Features are natural logs of mel energies (floor ln 1e-3 = -6.91), so an absolute error is a relative
      // error of the energies; it is taken relative to the largest |feature| of the clip (6.91 on these clips).
      // transformers' FFT runs in float32 (numpy's rfft keeps the float32 frames' precision), Perch's in float64
      // on the same float32 frames, so they may differ by float32 rounding, amplified by 1 / (mel + 1e-3) in the
      // quietest bins. Measured: 6.9e-8 (4.8e-7 absolute, one float32 step at 6.9) on all three clips.
      errs.push(relErr(r.features, c.features));
    }
    expect(Math.max(...errs)).toBeLessThanOrEqual(1e-5);
  });

  it('soft-token counts agree with the processor (by mask and by length) and with the tower', () => {
    for (const c of clips) {
      expect(softTokenCount(c.mask)).toBe(c.processor_tokens_by_mask);
      expect(softTokenCount(c.mask)).toBe(c.processor_tokens_by_length);
      expect(softTokenCount(c.mask)).toBe(c.valid_tokens);
    }
  });
});

describe('golden audio: tower + embedder on transformers’ features', () => {
  // Outputs are compared as max abs error over max |value| of transformers' output (about 3 here: the embedder
  // RMS-normalises before its projection), float32 on both sides. Measured: graph 0.9e-6 to 1.2e-6, reference
  // 0.8e-6 to 1.1e-6, so 1e-4 leaves room for other CPUs' summation orders and still catches a real slip
  // (an attention window one key too wide gives 1.1e-1).
  const TOL = 1e-4;

  it('the float package’s audio encoder in ONNX Runtime matches, clip by clip', async () => {
    const session = await AudioEncoderSession.open(join(floatPkg, 'audio_encoder.onnx'), { intraOpNumThreads: 1 });
    try {
      for (const c of clips) {
        const r = await session.encode(c.features, c.mask);
        expect(r.count).toBe(c.valid_tokens);
        expect(r.hidden).toBe(cfg.textHiddenSize);
        expect(relErr(r.rows, validRows(c.embeds, c.tokenMask, cfg.textHiddenSize))).toBeLessThanOrEqual(TOL);
      }
    } finally {
      await session.close();
    }
  });

  it('the float audio encoder matches on the clips as one zero-padded batch (masked frames and keys)', async () => {
    const { frames, tokens } = facts.batch;
    const n = facts.batch.clips.length;
    const F = cfg.inputFeatureSize;
    const features = new Float32Array(n * frames * F);
    const mask = new Uint8Array(n * frames);
    facts.batch.clips.forEach((name, b) => {
      const c = clips.find((x) => x.name === name)!;
      features.set(c.features, b * frames * F);
      mask.set(c.mask, b * frames);
    });
    // The one-pass graph (the package holds the streaming one, which takes one clip at a time).
    const ckpt = await SafetensorsCheckpoint.open(ckptDir);
    const whole = await writeAudioEncoderModel(join(root, 'whole'), cfg, checkpointWeightSource(ckpt));
    await ckpt.close();
    const session = await ort.InferenceSession.create(whole.modelPath, { intraOpNumThreads: 1 });
    try {
      const r = await runAudio(session, { features, mask, batch: n, frames });
      expect(r.dims).toEqual([n, tokens, cfg.textHiddenSize]);
      expect(Array.from(r.mask)).toEqual(Array.from(batchMask));
      // Only real tokens: transformers drops the padded ones before they reach the decoder.
      expect(
        relErr(validRows(r.embeds, r.mask, cfg.textHiddenSize), validRows(batchEmbeds, batchMask, cfg.textHiddenSize)),
      ).toBeLessThanOrEqual(TOL);
    } finally {
      await session.release();
    }
  });

  it('the package’s streaming encoder matches with the clip fed as it would arrive (1, 3 and 12 tokens a run)', async () => {
    const session = await AudioEncoderSession.open(join(floatPkg, 'audio_encoder.onnx'), { intraOpNumThreads: 1 });
    try {
      expect(session.streaming).toBe(true);
      for (const c of clips) {
        for (const tokensPerPush of [1, 3, 12]) {
          const r = await fedInPieces(session, c.features, c.mask, tokensPerPush * 4);
          expect(r.count).toBe(c.valid_tokens);
          expect(relErr(r.rows, validRows(c.embeds, c.tokenMask, cfg.textHiddenSize))).toBeLessThanOrEqual(TOL);
        }
      }
    } finally {
      await session.close();
    }
  });

  it('the TypeScript audio reference matches: tower output, soft tokens and token mask', async () => {
    const ckpt = await SafetensorsCheckpoint.open(ckptDir);
    try {
      const ref = await AudioReference.load(cfg, checkpointWeightSource(ckpt));
      for (const c of clips) {
        const r = ref.encode(c.features, c.mask);
        expect(r.tokens).toBe(c.tokens);
        expect(Array.from(r.mask)).toEqual(Array.from(c.tokenMask));
        expect(relErr(r.towerOut, c.tower)).toBeLessThanOrEqual(TOL);
        expect(relErr(r.embeds, c.embeds)).toBeLessThanOrEqual(TOL);
      }
    } finally {
      await ckpt.close();
    }
  });
});

describe('golden audio: a tower with every E2B constant moved', () => {
  // variant/ (see VARIANT in reference/goldens/audio.py): chunk 8 / left 5, rms_norm_eps 1e-2, gradient_clipping
  // 1.5, residual weight 0.7, kernel 3, cap 20. E2B's values hide which setting feeds which computation; these
  // do not. Its float encoder graph is written straight from the tensors (the text tensors are not stored).
  // Measured 1.6e-6 to 2.9e-6. Before the fixes listed in audio-config.ts: rms_norm_eps in every norm 7.1e-2,
  // maxPast + 1 relative positions 1.6e-1.
  const TOL = 1e-4;

  it('the float encoder graph in ONNX Runtime and the TypeScript reference both match', async () => {
    const dir = join(GOLDEN, 'variant');
    const vcfg = parseGemma4AudioConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
    const ckpt = await SafetensorsCheckpoint.open(join(dir, 'model.safetensors'));
    const want = await SafetensorsCheckpoint.open(join(dir, 'tower.safetensors'));
    const sessions: AudioEncoderSession[] = [];
    try {
      const src = checkpointWeightSource(ckpt);
      // Both norm forms: plain ops, and the fused SimplifiedLayerNormalization the package writer uses.
      // Both norm forms: plain ops, and the fused SimplifiedLayerNormalization the package writer uses; the
      // one-pass graph and the streaming one.
      for (const [fusedNorm, streaming] of [
        [false, false],
        [true, false],
        [true, true],
      ]) {
        const out = join(root, `variant-${fusedNorm ? 'fused' : 'plain'}-${streaming ? 'stream' : 'whole'}`);
        await writeAudioEncoderModel(out, vcfg, src, { fusedNorm, streaming });
        sessions.push(await AudioEncoderSession.open(join(out, 'audio_encoder.onnx'), { intraOpNumThreads: 1 }));
      }
      const ref = await AudioReference.load(vcfg, src);
      for (const c of clips) {
        const tower = await want.read(`${c.name}.tower`);
        const embeds = await want.read(`${c.name}.embeds`);
        const tokenMask = toMask(await want.read(`${c.name}.mask`));
        const r = ref.encode(c.features, c.mask);
        expect(Array.from(r.mask)).toEqual(Array.from(tokenMask));
        expect(relErr(r.towerOut, tower)).toBeLessThanOrEqual(TOL);
        expect(relErr(r.embeds, embeds)).toBeLessThanOrEqual(TOL);
        const rows = validRows(embeds, tokenMask, vcfg.textHiddenSize);
        for (const session of sessions) {
          const g = await session.encode(c.features, c.mask);
          expect(relErr(g.rows, rows)).toBeLessThanOrEqual(TOL);
          if (session.streaming)
            expect(relErr((await fedInPieces(session, c.features, c.mask, 4)).rows, rows)).toBeLessThanOrEqual(TOL);
        }
      }
    } finally {
      for (const s of sessions) await s.close();
      await ckpt.close();
      await want.close();
    }
  });
});

describe('golden audio: the default (8-bit audio) package', () => {
  // The default profile's audio encoder has 8-bit linears (blocks of 32) with int8 activations (accuracy level 4,
  // as the vision encoder). Measured against transformers: 2.3e-2, 3.5e-2, 2.8e-2 on the three clips (float
  // activations gave 1.3e-2 to 1.9e-2 but run 2.6x slower on a whole clip and 12x slower in a stream's 12-token
  // chunks: see audio-quant.ts). The float package gives 1.2e-6 at most, 4-bit linears 2.5e-1. The floor fails
  // an encoder written without quantisation (or a policy quantising nothing), the ceiling fails 4-bit weights, a
  // wrong scale or zero point, or int8 errors compounding through the layers.
  const QUANT_FLOOR = 1e-3;
  const QUANT_CEILING = 5e-2;

  it('is quantised, and its error is bounded from measurement', async () => {
    // The default profile writes the audio encoder's linears as 8-bit MatMulNBits; the float profile none.
    expect(readFileSync(join(defaultPkg, 'audio_encoder.onnx')).includes('MatMulNBits')).toBe(true);
    expect(readFileSync(join(floatPkg, 'audio_encoder.onnx')).includes('MatMulNBits')).toBe(false);
    const session = await AudioEncoderSession.open(join(defaultPkg, 'audio_encoder.onnx'), { intraOpNumThreads: 1 });
    const errs: number[] = [];
    try {
      for (const c of clips) {
        const r = await session.encode(c.features, c.mask);
        expect(r.count).toBe(c.valid_tokens);
        errs.push(relErr(r.rows, validRows(c.embeds, c.tokenMask, cfg.textHiddenSize)));
      }
    } finally {
      await session.close();
    }
    expect(Math.min(...errs)).toBeGreaterThan(QUANT_FLOOR);
    expect(Math.max(...errs)).toBeLessThan(QUANT_CEILING);
  });
});
