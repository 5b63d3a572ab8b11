import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tinyConfig } from '../src/model/gemma4/config.js';
import { type DecoderGraphInfo, FAST_VARIANT, writeDecoderModel } from '../src/model/gemma4/decoder-graph.js';
import { Gemma4Reference } from '../src/model/gemma4/reference.js';
import { type WeightSource, randomWeightSource } from '../src/model/gemma4/weights.js';
import { argmax, emptyCache, relErr, runChunk } from './gemma4-helpers.js';

const cfg = tinyConfig();
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma4-parity-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function build(
  name: string,
  logits: 'all' | 'last',
  extra: { fusedNorm?: boolean; onnxGelu?: boolean; attention?: 'plain' | 'gqa' } = {},
): Promise<{ session: ort.InferenceSession; info: DecoderGraphInfo }> {
  const src = randomWeightSource(cfg, 7);
  const out = await writeDecoderModel(path.join(dir, name), cfg, src, { logits, ...extra });
  const session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
  return { session, info: out.info };
}

/** Relative logit errors against the reference: a prefill of `prompt`, then `steps` decode steps of next(step). */
async function walkErrors(
  session: ort.InferenceSession,
  info: DecoderGraphInfo,
  ref: Gemma4Reference,
  prompt: number[],
  steps: number,
  next: (step: number) => number,
): Promise<number[]> {
  let r = await runChunk(session, info.cache, emptyCache(info.cache), prompt, 0, ref.pleRows(prompt));
  const errs = [relErr(r.logits, ref.prefill(prompt))];
  for (let step = 0; step < steps; step++) {
    const id = next(step);
    const want = ref.step(id);
    r = await runChunk(session, info.cache, r.cache, [id], prompt.length + step, ref.pleRows([id]));
    errs.push(relErr(r.logits, want));
  }
  return errs;
}

describe('gemma4 float decoder graph vs TypeScript reference (tiny config)', () => {
  it.each(['plain', 'gqa'] as const)(
    '%s attention: matches on a 10-token prefill and 20 decode steps that cross the window and use KV-shared layers',
    async (attention) => {
      const { session, info } = await build(`float-all-${attention}`, 'all', { attention });
      const ref = await Gemma4Reference.load(cfg, randomWeightSource(cfg, 7));
      const prompt = [2, 17, 300, 45, 45, 511, 0, 128, 99, 7];
      const refLogits = ref.prefill(prompt);
      let r = await runChunk(session, info.cache, emptyCache(info.cache), prompt, 0, ref.pleRows(prompt));
      expect(r.dims).toEqual([1, prompt.length, cfg.vocabSize]);
      const errs: number[] = [relErr(r.logits, refLogits)];
      let next = argmax(refLogits.subarray((prompt.length - 1) * cfg.vocabSize));
      for (let step = 0; step < 20; step++) {
        const pos = prompt.length + step;
        const want = ref.step(next);
        r = await runChunk(session, info.cache, r.cache, [next], pos, ref.pleRows([next]));
        errs.push(relErr(r.logits, want));
        for (const s of info.cache) {
          const len = r.cache[s.pastKey]!.dims[2];
          expect(len).toBe(s.maxLength === null ? pos + 1 : Math.min(pos + 1, s.maxLength));
        }
        // Mix argmax and fixed ids so the walk does not collapse onto one token.
        next = step % 3 === 0 ? (step * 37 + 11) % cfg.vocabSize : argmax(want);
      }
      expect(prompt.length + 20).toBeGreaterThan(2 * cfg.slidingWindow);
      console.log(
        `float parity (${attention}): max rel err prefill ${errs[0]!.toExponential(2)}, decode ${Math.max(...errs.slice(1)).toExponential(2)}`,
      );
      expect(Math.max(...errs)).toBeLessThanOrEqual(1e-4);
    },
  );

  it.each(['plain', 'gqa'] as const)(
    '%s attention: matches with multi-token chunks after the sliding cache was truncated, logits=last',
    async (attention) => {
      const { session, info } = await build(`float-last-${attention}`, 'last', { attention });
      const ref = await Gemma4Reference.load(cfg, randomWeightSource(cfg, 7));
      const ids = Array.from({ length: 24 }, (_, i) => (i * 131 + 5) % cfg.vocabSize);
      const chunks = [ids.slice(0, 6), ids.slice(6, 16), ids.slice(16, 17), ids.slice(17, 24)];
      let cache = emptyCache(info.cache);
      let pos = 0;
      for (const chunk of chunks) {
        const want = ref.prefill(chunk).subarray((chunk.length - 1) * cfg.vocabSize);
        const r = await runChunk(session, info.cache, cache, chunk, pos, ref.pleRows(chunk));
        expect(r.dims).toEqual([1, 1, cfg.vocabSize]);
        expect(relErr(r.logits, want)).toBeLessThanOrEqual(1e-4);
        cache = r.cache;
        pos += chunk.length;
      }
    },
  );

  it('fused variants (GroupQueryAttention, [Skip]SimplifiedLayerNormalization, ONNX Gelu) give the same logits', async () => {
    const { session, info } = await build('float-fused', 'all', { fusedNorm: true, onnxGelu: true, attention: 'gqa' });
    const ref = await Gemma4Reference.load(cfg, randomWeightSource(cfg, 7));
    const prompt = [2, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50];
    const r = await runChunk(session, info.cache, emptyCache(info.cache), prompt, 0, ref.pleRows(prompt));
    expect(relErr(r.logits, ref.prefill(prompt))).toBeLessThanOrEqual(1e-4);
  });
});

describe('gemma4 package graph (FAST_VARIANT) with layer scalars far from 1', () => {
  it('matches the reference where the carried residual scale is multiplied back into the stream', async () => {
    // Each layer's scalar folds into the norms and linears that read or add to the residual stream; at 0.05 a
    // layer, the carried scale leaves [1/64, 64] after two layers and the graph multiplies it back (decoder-graph.ts).
    const base = randomWeightSource(cfg, 5);
    const small: WeightSource = {
      shape: (name) => base.shape(name),
      get: async (name) => (name.endsWith('layer_scalar') ? Float32Array.of(0.05) : base.get(name)),
    };
    expect(0.05 ** cfg.numHiddenLayers).toBeLessThan(1 / 64);
    const out = await writeDecoderModel(path.join(dir, 'small-scalars'), cfg, small, {
      logits: 'all',
      ...FAST_VARIANT,
    });
    const session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
    const ref = await Gemma4Reference.load(cfg, small);
    const prompt = [2, 17, 300, 45, 45, 511, 0, 128];
    const errs = await walkErrors(session, out.info, ref, prompt, 6, (step) => (step * 29 + 5) % cfg.vocabSize);
    expect(Math.max(...errs)).toBeLessThanOrEqual(1e-4);
  });
});

describe("gemma4 fused variants at E2B's head dims (256 sliding, 512 full with partial rotary)", () => {
  it.each(['plain', 'gqa'] as const)(
    '%s attention + fused norms match the reference across the window and the KV-shared layers',
    async (attention) => {
      const wide = { ...tinyConfig(), hiddenSize: 128, headDim: 256, globalHeadDim: 512 };
      const out = await writeDecoderModel(path.join(dir, `e2b-dims-${attention}`), wide, randomWeightSource(wide, 11), {
        logits: 'all',
        fusedNorm: true,
        onnxGelu: true,
        attention,
      });
      const session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
      const ref = await Gemma4Reference.load(wide, randomWeightSource(wide, 11));
      const prompt = [2, 9, 310, 45, 88, 500, 1, 128, 99, 7];
      const errs = await walkErrors(session, out.info, ref, prompt, 14, (step) => (step * 53 + 3) % wide.vocabSize);
      expect(prompt.length + 14).toBeGreaterThan(2 * wide.slidingWindow);
      expect(Math.max(...errs)).toBeLessThanOrEqual(1e-4);
    },
  );
});
