import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tinyConfig } from '../src/model/gemma4/config.js';
import { writeDecoderModel } from '../src/model/gemma4/decoder-graph.js';
import { type QuantPolicy, dequantisedWeightSource, uniformPolicy } from '../src/model/gemma4/quantize.js';
import { Gemma4Reference } from '../src/model/gemma4/reference.js';
import {
  MULTIMODAL_TEXT_PREFIX,
  globalName,
  randomWeightSource,
  textTensorTable,
} from '../src/model/gemma4/weights.js';
import { dequantizeInt8Channels, quantizeInt8Channels } from '../src/model/quant.js';
import { ortRunsInt8Activations } from '../src/engine/int8-activations.js';
import { argmax, emptyCache, relErr, runChunk } from './gemma4-helpers.js';

const cfg = tinyConfig();
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma4-quant-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** 2-bit linears (block 32, incl. K=8 and K=96/192 rows that need block padding), 4-bit tied embedding. */
function policy(accuracyLevel: 0 | 4): QuantPolicy {
  return uniformPolicy({ bits: 2, blockSize: 32, accuracyLevel }, { bits: 4, blockSize: 32, accuracyLevel });
}

/** Prefill 10 + 20 decode steps; returns the max error over all logits vectors. */
async function maxError(
  p: QuantPolicy,
  name: string,
  int8ActivationBlock?: number,
  fused = false,
): Promise<{ err: number; modelPath: string; agree: number }> {
  const src = randomWeightSource(cfg, 11);
  const variant = fused ? { attention: 'gqa' as const, fusedNorm: true, onnxGelu: true } : {};
  const out = await writeDecoderModel(path.join(dir, name), cfg, src, { quant: p, ...variant });
  const session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
  const ref = await Gemma4Reference.load(cfg, dequantisedWeightSource(src, cfg, p), { int8ActivationBlock });
  const prompt = [2, 9, 250, 33, 470, 12, 12, 88, 301, 5];
  const want = ref.prefill(prompt);
  let r = await runChunk(session, out.info.cache, emptyCache(out.info.cache), prompt, 0, ref.pleRows(prompt));
  let err = relErr(r.logits, want);
  let agree = 0;
  let next = argmax(want.subarray((prompt.length - 1) * cfg.vocabSize));
  for (let step = 0; step < 20; step++) {
    const w = ref.step(next);
    r = await runChunk(session, out.info.cache, r.cache, [next], prompt.length + step, ref.pleRows([next]));
    err = Math.max(err, relErr(r.logits, w));
    if (argmax(r.logits) === argmax(w)) agree++;
    next = step % 3 === 0 ? (step * 53 + 7) % cfg.vocabSize : argmax(w);
  }
  await session.release();
  return { err, modelPath: out.modelPath, agree };
}

describe('gemma4 quantised decoder graph vs reference on the dequantised weights', () => {
  it.each([false, true])('accuracy_level 0 (float activations) matches tightly (fused ops: %s)', async (fused) => {
    const { err } = await maxError(policy(0), `q-acc0-${fused}`, undefined, fused);
    console.log(`quantised parity, accuracy_level 0${fused ? ', fused ops' : ''}: max rel err ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-4);
  });

  it('accuracy_level 4 matches the reference that does what this CPU does (int8 activations where MLAS has them)', async () => {
    const int8 = await ortRunsInt8Activations(2, 32);
    const plain = await maxError(policy(4), 'q-acc4-plain');
    const emulated = await maxError(policy(4), 'q-acc4', 32);
    console.log(
      `quantised parity, accuracy_level 4 (int8 activations on this CPU: ${int8}): max rel err ${emulated.err.toExponential(2)} vs int8-emulating reference, ${plain.err.toExponential(2)} vs float-activation reference (argmax agreement ${plain.agree}/20)`,
    );
    const [matching, other] = int8 ? [emulated, plain] : [plain, emulated];
    expect(matching.err).toBeLessThanOrEqual(BOUND_ACC4);
    // The other reference is far off (measured 0.27 either way round): int8 rounding of this tiny model's
    // activations is a real perturbation, so the match above says which arithmetic ran. Ceiling 2x measured.
    expect(other.err).toBeGreaterThan(0.1);
    expect(other.err).toBeLessThan(0.6);
    // ...yet it rarely changes the greedy token: measured 20/20 steps agree.
    expect(other.agree).toBeGreaterThanOrEqual(18);
  });

  it('the LM head reads the embedding table bytes (no second copy in the data file)', async () => {
    const { modelPath } = await maxError(policy(0), 'q-shared');
    const model = onnxProto.onnx.ModelProto.decode(fs.readFileSync(modelPath));
    const loc = (name: string): string => {
      const t = model.graph?.initializer?.find((i) => i.name === name);
      if (!t) throw new Error(`no initializer ${name}`);
      return (t.externalData ?? []).map((e) => `${e.key}=${e.value}`).join(';');
    };
    expect(loc('lm_head.qweight')).toBe(loc('embed_tokens.qweight'));
    expect(loc('lm_head.scales')).toBe(loc('embed_tokens.scales'));
  });
});

// The emulating reference rounds each 32-wide activation block to symmetric int8 (scale max|x|/127, ties to even),
// which reproduced ORT 1.30 x86-64 results to ~3e-7, so only float summation order differs: 1e-4 as for float.
const BOUND_ACC4 = 1e-4;

describe('int8-channels linears (the pi4 profile: per-row int8 activations, MatMulInteger, untied int8 LM head)', () => {
  const int8Policy: QuantPolicy = {
    linear: () => ({ bits: 8, blockSize: 64, accuracyLevel: 0, kernel: 'int8-channels' }),
    embedding: { bits: 4, blockSize: 32, accuracyLevel: 0, lmHead: 'int8-channels' },
  };

  /** A 12-token prefill in one call (each row rounded with its own scale) and 10 decode steps: the error of each position. */
  async function parity(
    int8RowActivations: boolean,
    untiedHead: boolean,
  ): Promise<{ errs: number[]; agree: number; modelPath: string }> {
    const src = randomWeightSource(cfg, 11);
    const out = await writeDecoderModel(path.join(dir, `int8-${int8RowActivations}-${untiedHead}`), cfg, src, {
      quant: int8Policy,
    });
    const session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
    const deq = dequantisedWeightSource(src, cfg, int8Policy);
    const lmHead = untiedHead
      ? dequantizeInt8Channels(
          quantizeInt8Channels(
            await src.get(globalName('embed', MULTIMODAL_TEXT_PREFIX)),
            cfg.vocabSize,
            cfg.hiddenSize,
          ),
        )
      : undefined;
    const ref = await Gemma4Reference.load(cfg, deq, { int8RowActivations, lmHead });
    const prompt = [2, 9, 250, 33, 470, 12, 12, 88, 301, 5, 77, 140];
    const V = cfg.vocabSize;
    const want = ref.prefill(prompt);
    let r = await runChunk(session, out.info.cache, emptyCache(out.info.cache), prompt, 0, ref.pleRows(prompt));
    const errs = prompt.map((_, p) => relErr(r.logits.subarray(p * V, (p + 1) * V), want.subarray(p * V, (p + 1) * V)));
    let agree = 0;
    let next = argmax(want.subarray((prompt.length - 1) * V));
    for (let step = 0; step < 10; step++) {
      const w = ref.step(next);
      r = await runChunk(session, out.info.cache, r.cache, [next], prompt.length + step, ref.pleRows([next]));
      errs.push(relErr(r.logits, w));
      if (argmax(r.logits) === argmax(w)) agree++;
      next = argmax(w);
    }
    await session.release();
    return { errs, agree, modelPath: out.modelPath };
  }

  it('matches the reference that rounds each activation row to int8 and uses its own int8 head', async () => {
    const exact = await parity(true, true);
    const floatActs = await parity(false, true);
    const tiedHead = await parity(true, false);
    const worst = (e: number[]) => Math.max(...e);
    console.log(
      `int8-channels parity: per-position max rel err ${exact.errs.map((e) => e.toExponential(1)).join(' ')} (float-activation reference ${worst(floatActs.errs).toExponential(2)}, tied-head reference ${worst(tiedHead.errs).toExponential(2)})`,
    );
    // Summation order differs by ~2e-7; now and then an activation sits on a rounding boundary and one code
    // moves by one step in one position (measured 1.2e-3 once in 22 positions): most positions are exact.
    expect(exact.errs.filter((e) => e <= BOUND_INT8).length).toBeGreaterThanOrEqual(exact.errs.length - 2);
    expect(worst(exact.errs)).toBeLessThan(BOUND_INT8_FLIP);
    expect(exact.agree).toBe(10);
    // Each half of the emulation matters: without it the reference is far off at every position.
    expect(Math.min(...floatActs.errs)).toBeGreaterThan(BOUND_INT8_FLIP);
    expect(Math.min(...tiedHead.errs)).toBeGreaterThan(BOUND_INT8_FLIP);
  });

  it('stores the linears as int8 [K, N] with one scale per output channel, and the LM head apart from the 4-bit table', async () => {
    const { modelPath } = await parity(true, true);
    const model = onnxProto.onnx.ModelProto.decode(fs.readFileSync(modelPath));
    const nodes = model.graph!.node!;
    const ops = new Set(nodes.map((n) => n.opType));
    expect(ops.has('MatMulNBits')).toBe(false);
    expect(ops.has('GatherBlockQuantized')).toBe(true);
    // every Linear of the checkpoint plus the LM head
    expect(nodes.filter((n) => n.opType === 'MatMulInteger').length).toBe(
      textTensorTable(cfg, MULTIMODAL_TEXT_PREFIX).filter((t) => t.kind === 'linear').length + 1,
    );
    const head = model.graph!.initializer!.find((i) => i.name === 'lm_head.int8_weight')!;
    expect(head.dataType).toBe(onnxProto.onnx.TensorProto.DataType.INT8);
    expect(head.dims!.map(Number)).toEqual([cfg.hiddenSize, cfg.vocabSize]);
  });
});

// Measured 1e-7 to 3e-7 at most positions: the reference's rounding reproduces the graph's; one code flipped
// by summation order gave 1.2e-3 at one position.
const BOUND_INT8 = 1e-5;
const BOUND_INT8_FLIP = 5e-3;
