import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patchDim, tinyVisionConfig } from '../src/model/gemma4/vision-config.js';
import { writeVisionEncoderModel } from '../src/model/gemma4/vision-graph.js';
import { VisionReference } from '../src/model/gemma4/vision-reference.js';
import { syntheticVisionWeightSource, visionNames } from '../src/model/gemma4/vision-weights.js';
import { mapWeightSource } from '../src/model/gemma4/weights.js';
import { relErr } from './gemma4-helpers.js';
import { gridInput, runVision } from './gemma4-vision-helpers.js';

const cfg = tinyVisionConfig();
const D = patchDim(cfg);
const T = cfg.textHiddenSize;
let dir: string;
let session: ort.InferenceSession;
let ref: VisionReference;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma4-vision-'));
  const out = await writeVisionEncoderModel(path.join(dir, 'float'), cfg, syntheticVisionWeightSource(cfg, 11));
  session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
  ref = await VisionReference.load(cfg, syntheticVisionWeightSource(cfg, 11));
});
afterAll(async () => {
  await session?.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('gemma4 vision encoder graph vs TypeScript reference (tiny config, float)', () => {
  it.each([
    { rows: 6, cols: 9, note: 'landscape 6x9 patches' },
    { rows: 9, cols: 3, note: 'portrait 9x3 patches' },
  ])('$note: matches within 1e-4 without padding', async ({ rows, cols }) => {
    const input = gridInput(rows, cols, D, rows * 100 + cols);
    const want = ref.encode(input.pixelValues, input.positionIds);
    const got = await runVision(session, [input], D);
    const soft = (rows * cols) / 9;
    expect(got.dims).toEqual([1, soft, T]);
    expect(want.outputLength).toBe(soft);
    expect(want.softTokens).toBe(soft);
    const err = relErr(got.data, want.embeds);
    console.log(`vision float parity ${rows}x${cols}: rel err ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-4);
  });

  it('a batch of two aspect ratios padded to the same length matches per image; padding changes nothing real', async () => {
    const total = 72; // 8 slots of 9
    const a = gridInput(6, 9, D, 1, total);
    const b = gridInput(9, 3, D, 2, total);
    const got = await runVision(session, [a, b], D);
    expect(got.dims).toEqual([2, 8, T]);
    const per = 8 * T;
    for (const [i, input, soft] of [
      [0, a, 6],
      [1, b, 3],
    ] as const) {
      const want = ref.encode(input.pixelValues, input.positionIds);
      expect(want.outputLength).toBe(8);
      expect(want.softTokens).toBe(soft);
      const rowsGot = got.data.subarray(i * per, (i + 1) * per);
      expect(relErr(rowsGot, want.embeds)).toBeLessThanOrEqual(1e-4);
      // Trailing slots pool nothing: exactly zero (no standardize in this config).
      expect(rowsGot.subarray(soft * T).every((v) => v === 0)).toBe(true);
      // The real soft tokens equal the unpadded run's: padding rows are masked out of attention.
      const unpadded = gridInput(i === 0 ? 6 : 9, i === 0 ? 9 : 3, D, i + 1);
      const plain = await runVision(session, [unpadded], D);
      expect(relErr(rowsGot.subarray(0, soft * T), plain.data)).toBeLessThanOrEqual(1e-5);
    }
  });

  it('padding rows with garbage pixels do not leak into the real soft tokens', async () => {
    const a = gridInput(3, 6, D, 5, 27);
    const b = gridInput(3, 6, D, 5, 27);
    for (let i = 18 * D; i < 27 * D; i++) b.pixelValues[i] = (i % 7) / 7;
    const ra = await runVision(session, [a], D);
    const rb = await runVision(session, [b], D);
    expect(relErr(rb.data.subarray(0, 2 * T), ra.data.subarray(0, 2 * T))).toBeLessThanOrEqual(1e-6);
  });

  it('the 2-D RoPE distinguishes x from y: a transposed position grid gives different tokens', async () => {
    const a = gridInput(3, 3, D, 9);
    const swapped = { ...a, positionIds: a.positionIds.map((_, j) => a.positionIds[j ^ 1]!) };
    const ra = ref.encode(a.pixelValues, a.positionIds);
    const rs = ref.encode(swapped.pixelValues, swapped.positionIds);
    const ga = await runVision(session, [a], D);
    const gs = await runVision(session, [swapped], D);
    expect(relErr(gs.data, rs.embeds)).toBeLessThanOrEqual(1e-4);
    expect(relErr(ga.data, gs.data)).toBeGreaterThan(1e-3);
    expect(relErr(ra.embeds, rs.embeds)).toBeGreaterThan(1e-3);
  });

  it('clip bounds in the checkpoint take effect (tightening one changes the output identically in both)', async () => {
    const base = syntheticVisionWeightSource(cfg, 11);
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const n of base.names()) tensors.set(n, { shape: base.shape(n), data: await base.get(n) });
    tensors.set(visionNames.clip(0, 'gate_proj', 'output_max'), { shape: [], data: Float32Array.of(0.05) });
    const src = mapWeightSource(tensors);
    const out = await writeVisionEncoderModel(path.join(dir, 'clip'), cfg, src);
    const s2 = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
    try {
      const input = gridInput(3, 6, D, 3);
      const want = (await VisionReference.load(cfg, src)).encode(input.pixelValues, input.positionIds);
      const got = await runVision(s2, [input], D);
      expect(relErr(got.data, want.embeds)).toBeLessThanOrEqual(1e-4);
      const orig = await runVision(session, [input], D);
      expect(relErr(got.data, orig.data)).toBeGreaterThan(1e-3);
    } finally {
      await s2.release();
    }
  });

  it('the fused variant (SimplifiedLayerNormalization, Gelu tanh) matches too, on a padded input', async () => {
    const out = await writeVisionEncoderModel(path.join(dir, 'fused'), cfg, syntheticVisionWeightSource(cfg, 11), {
      fusedNorm: true,
      onnxGelu: true,
    });
    const s2 = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
    try {
      const input = gridInput(6, 3, D, 4, 27);
      const got = await runVision(s2, [input], D);
      expect(fs.readFileSync(out.modelPath).toString('latin1')).toContain('SimplifiedLayerNormalization');
      expect(relErr(got.data, ref.encode(input.pixelValues, input.positionIds).embeds)).toBeLessThanOrEqual(1e-4);
    } finally {
      await s2.release();
    }
  });

  it('refuses weights that do not fit the config', async () => {
    const base = syntheticVisionWeightSource(cfg, 1);
    const bad = {
      shape: (n: string) => (n === visionNames.inputProj ? [cfg.hiddenSize, 12] : base.shape(n)),
      get: base.get,
    };
    await expect(writeVisionEncoderModel(path.join(dir, 'bad'), cfg, bad)).rejects.toThrow(/input_proj.*expected/);
  });
});
