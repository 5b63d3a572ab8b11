import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2bVisionConfig, patchDim, tinyVisionConfig } from '../src/model/gemma4/vision-config.js';
import { writeVisionEncoderModel } from '../src/model/gemma4/vision-graph.js';
import {
  type VisionQuantPolicy,
  defaultVisionPolicy,
  dequantisedVisionWeightSource,
  measureLinearErrors,
  uniformVisionPolicy,
} from '../src/model/gemma4/vision-quant.js';
import { VisionReference } from '../src/model/gemma4/vision-reference.js';
import { syntheticVisionWeightSource, visionTensorTable } from '../src/model/gemma4/vision-weights.js';
import { relErr } from './gemma4-helpers.js';
import { gridInput, runVision } from './gemma4-vision-helpers.js';

const cfg = tinyVisionConfig();
const D = patchDim(cfg);
const SEED = 21;
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma4-vision-quant-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const input = gridInput(6, 9, D, 77, 63); // 54 real patches + 9 padding rows

async function quantRun(name: string, policy: VisionQuantPolicy): Promise<{ got: Float32Array; model: string }> {
  const out = await writeVisionEncoderModel(path.join(dir, name), cfg, syntheticVisionWeightSource(cfg, SEED), { quant: policy });
  const session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
  try {
    return { got: (await runVision(session, [input], D)).data, model: fs.readFileSync(out.modelPath).toString('latin1') };
  } finally {
    await session.release();
  }
}

async function reference(policy: VisionQuantPolicy | null): Promise<Float32Array> {
  const base = syntheticVisionWeightSource(cfg, SEED);
  const src = policy ? dequantisedVisionWeightSource(base, cfg, policy) : base;
  return (await VisionReference.load(cfg, src)).encode(input.pixelValues, input.positionIds).embeds;
}

describe('gemma4 vision encoder quantisation', () => {
  it('per-matrix reconstruction error at 2/4/8 bits on E2B-shaped matrices justifies 8-bit', async () => {
    const e2b = e2bVisionConfig();
    const specs = visionTensorTable(e2b).filter((s) => s.kind === 'linear' && (s.layer === null || s.layer === 0));
    // rtn: the error-searching quantiser only shaves ~10% off on these (uniform random) matrices and is 5x slower.
    const errs = await measureLinearErrors(syntheticVisionWeightSource(e2b, 3), specs, 32, 'rtn');
    expect(errs).toHaveLength(9);
    console.log('vision per-matrix relative RMS error (E2B shapes, synthetic weights, block 32):');
    for (const e of errs) {
      console.log(`  ${e.name.replace('model.', '').padEnd(62)} [${e.shape.join('x')}]  2b ${e.relative[2].toFixed(4)}  4b ${e.relative[4].toFixed(4)}  8b ${e.relative[8].toFixed(5)}`);
      expect(e.relative[8]).toBeLessThan(e.relative[4]);
      expect(e.relative[4]).toBeLessThan(e.relative[2]);
      expect(e.relative[8]).toBeLessThan(0.01);
    }
  });

  it.each([
    { bits: 8 as const, accuracyLevel: 0 as const, bound: 1e-4 },
    { bits: 4 as const, accuracyLevel: 0 as const, bound: 1e-4 },
    // int8 activations (per 32-block, scale max/127) perturb every Linear input by ~0.4%, the same order as 8-bit
    // weights, which alone move this tiny model's output by ~2% (last test): measured ~3%, bound 2x that.
    { bits: 8 as const, accuracyLevel: 4 as const, bound: 6e-2 },
  ])('$bits-bit linears, 8-bit position tables, accuracy_level $accuracyLevel: graph matches the reference on dequantised weights within $bound', async ({ bits, accuracyLevel, bound }) => {
    const policy = uniformVisionPolicy({ bits, blockSize: 32, accuracyLevel, method: 'rtn' }, { bits: 8, blockSize: 32 });
    const { got, model } = await quantRun(`q${bits}-a${accuracyLevel}`, policy);
    expect(model).toContain('MatMulNBits');
    expect(model).toContain('GatherBlockQuantized');
    const want = await reference(policy);
    const err = relErr(got, want);
    const vsFloat = relErr(got, await reference(null));
    console.log(`vision ${bits}-bit acc${accuracyLevel}: vs dequantised reference ${err.toExponential(2)}, vs float reference ${vsFloat.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(bound);
  });

  it('end-to-end error against the float model shrinks with bits (2 > 4 > 8), 8-bit well under 2%', async () => {
    const float = await reference(null);
    const errs: Record<number, number> = {};
    for (const bits of [2, 4, 8] as const) {
      errs[bits] = relErr(await reference(uniformVisionPolicy({ bits, blockSize: 32, accuracyLevel: 0, method: 'search' }, { bits: 8, blockSize: 32 })), float);
    }
    console.log(`vision e2e rel err vs float (tiny, search): 2b ${errs[2]!.toExponential(2)} 4b ${errs[4]!.toExponential(2)} 8b ${errs[8]!.toExponential(2)}`);
    expect(errs[8]!).toBeLessThan(errs[4]!);
    expect(errs[4]!).toBeLessThan(errs[2]!);
    expect(errs[8]!).toBeLessThan(0.02);
  });

  it('the default policy is 8-bit block-32 accuracy_level 4 with 8-bit tables', () => {
    const p = defaultVisionPolicy();
    expect(p.linear(visionTensorTable(cfg)[0]!)).toEqual({ bits: 8, blockSize: 32, accuracyLevel: 4, method: 'search' });
    expect(p.table).toEqual({ bits: 8, blockSize: 32 });
  });
});
