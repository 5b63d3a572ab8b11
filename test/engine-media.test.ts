/**
 * Media soft tokens: the decoder graph's optional media_embeds/media_mask inputs against the reference's
 * embedding override, and the engine placing encoder rows at prompt positions.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tinyConfig } from '../src/model/gemma4/config.js';
import { writeDecoderModel } from '../src/model/gemma4/decoder-graph.js';
import { Gemma4Reference } from '../src/model/gemma4/reference.js';
import { randomWeightSource, seededRandom } from '../src/model/gemma4/weights.js';
import { Engine, type MediaInput } from '../src/engine/engine.js';
import { emptyCache } from './gemma4-helpers.js';
import { argmax, makeTinyPackage, rebuildDecoder, referenceFor, relErr, tempRoot } from './engine-helpers.js';

const cfg = tinyConfig();
const H = cfg.hiddenSize;
const PAD = 0;
let root: string;

beforeAll(() => {
  root = tempRoot('engine-media');
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** n rows of hidden values at the scale of scaled token embeddings. */
function mediaRows(n: number, seed: number): Float32Array {
  const rand = seededRandom(seed);
  return Float32Array.from({ length: n * H }, () => rand() - 0.5);
}

describe('decoder graph media inputs (float, logits all)', () => {
  it('replaces the embedding where media_mask is set and matches the reference override; mask off is plain text', async () => {
    const src = randomWeightSource(cfg, 7);
    const out = await writeDecoderModel(join(root, 'graph'), cfg, src, { logits: 'all', media: true });
    const session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
    const ref = await Gemma4Reference.load(cfg, src);
    const ids = [2, 17, 300, 45, PAD, PAD, PAD, 128, 99, 7, 300, 301];
    const rows = mediaRows(3, 11);
    const isMedia = (i: number): boolean => i >= 4 && i < 7;
    const embeds = new Float32Array(ids.length * H);
    ids.forEach((_, i) => isMedia(i) && embeds.set(rows.subarray((i - 4) * H, (i - 3) * H), i * H));
    const run = async (mask: boolean[]) => {
      const r = await session.run({
        ...emptyCache(out.info.cache),
        input_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from(ids, (i) => BigInt(i)),
          [1, ids.length],
        ),
        position_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from(ids, (_, i) => BigInt(i)),
          [1, ids.length],
        ),
        per_layer_rows: new ort.Tensor('float32', ref.pleRows(ids), [
          1,
          ids.length,
          cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput,
        ]),
        media_embeds: new ort.Tensor('float32', embeds, [1, ids.length, H]),
        media_mask: new ort.Tensor(
          'bool',
          Uint8Array.from(mask, (m) => (m ? 1 : 0)),
          [1, ids.length],
        ),
      });
      return r.logits!.data as Float32Array;
    };
    const withMedia = await run(ids.map((_, i) => isMedia(i)));
    ref.reset();
    const want = new Float32Array(ids.length * cfg.vocabSize);
    ids.forEach((id, i) =>
      want.set(ref.step(id, isMedia(i) ? rows.subarray((i - 4) * H, (i - 3) * H) : undefined), i * cfg.vocabSize),
    );
    const err = relErr(withMedia, want);
    console.log(`media graph vs reference override: max rel err ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-4);

    const textOnly = await run(ids.map(() => false));
    ref.reset();
    expect(relErr(textOnly, ref.prefill(ids))).toBeLessThanOrEqual(1e-4);
    // The media rows really changed the result.
    expect(relErr(textOnly, withMedia)).toBeGreaterThan(1e-2);
    await session.release();
  });
});

describe('Engine with media', () => {
  it('places encoder rows at their positions (greedy equals the reference), never reuses a prefix across media', async () => {
    const { dir: base, manifest } = await makeTinyPackage(root, 'base');
    // Packages always take media rows now: rebuild a decoder without the media inputs.
    const plainDir = await rebuildDecoder(base, manifest, cfg, join(root, 'plain-pkg'), {});
    const plain = await Engine.load(plainDir, { threads: 1, contextTokens: 64, pleCacheMb: 1 });
    const prompt = [2, 300, 41, 120, 77, 301, 302, 303, 304, 90, 91, 92, 200, 201];
    const media: MediaInput[] = [{ position: 5, embeddings: mediaRows(4, 3) }];
    await expect(plain.generate({ promptIds: prompt, maxTokens: 2, media })).rejects.toThrow(
      /built without media inputs/,
    );
    await plain.close();

    const dir = await rebuildDecoder(base, manifest, cfg, join(root, 'media-pkg'), { media: true });
    const engine = await Engine.load(dir, { threads: 1, contextTokens: 64, pleCacheMb: 1 });
    try {
      expect(engine.acceptsMedia).toBe(true);
      const logits: Float32Array[] = [];
      const r = await engine.generate({
        promptIds: prompt,
        maxTokens: 8,
        media,
        sampling: { temperature: 0 },
        prefillChunk: 3,
        onLogits: (l) => logits.push(l),
      });

      const ref = await referenceFor(dir, manifest, cfg);
      const rows = media[0]!.embeddings;
      let last: Float32Array = new Float32Array(0);
      prompt.forEach((id, i) => {
        const m = i >= 5 && i < 9;
        last = ref.step(m ? PAD : id, m ? rows.subarray((i - 5) * H, (i - 4) * H) : undefined);
      });
      const want: number[] = [];
      const stops = engine.tokenizer.stopIds();
      let err = relErr(logits[0]!, last);
      for (let step = 0; step < 8; step++) {
        const next = argmax(last);
        if (stops.includes(next)) break;
        want.push(next);
        if (want.length === 8) break;
        last = ref.step(next);
        if (logits[step + 1]) err = Math.max(err, relErr(logits[step + 1]!, last));
      }
      console.log(`engine with media vs reference: ${want.length} tokens, max logits rel err ${err.toExponential(2)}`);
      expect(r.tokens).toEqual(want);
      expect(err).toBeLessThanOrEqual(1e-4);

      // A follow-up with the same ids but other media: nothing past the first media position may come from
      // the previous run (its end state would match the ids exactly).
      const follow = [...prompt, ...r.tokens.slice(0, 7), 50];
      const other: MediaInput[] = [{ position: 5, embeddings: mediaRows(4, 99) }];
      const r2 = await engine.generate({ promptIds: follow, maxTokens: 1, media: other, sampling: { temperature: 0 } });
      expect(r2.timings.reusedTokens).toBeLessThanOrEqual(5);
      const r3 = await engine.generate({ promptIds: follow, maxTokens: 1, media, sampling: { temperature: 0 } });
      expect(r3.timings.reusedTokens).toBeLessThanOrEqual(5);
    } finally {
      await engine.close();
    }
  });

  it('prefills a prompt piece by piece as its media rows arrive, and generates from it as from the whole prompt', async () => {
    const { dir: base, manifest } = await makeTinyPackage(root, 'base-prefill');
    const dir = await rebuildDecoder(base, manifest, cfg, join(root, 'media-prefill'), { media: true });
    const engine = await Engine.load(dir, { threads: 1, contextTokens: 64, pleCacheMb: 1 });
    try {
      // [prefix 5][media 6 rows][closing 3]: the rows come in pieces of 2, as speech is encoded.
      const prompt = [2, 300, 41, 120, 77, 303, 303, 303, 303, 303, 303, 90, 91, 92];
      const rows = mediaRows(6, 5);
      const whole: Float32Array[] = [];
      const want = await engine.generate({
        promptIds: prompt,
        maxTokens: 6,
        media: [{ position: 5, embeddings: rows }],
        sampling: { temperature: 0 },
        reusePrefix: false,
        onLogits: (l) => whole.push(l),
      });
      let p = await engine.prefill({ promptIds: prompt.slice(0, 5) });
      const marks = [p];
      for (let r = 0; r < 6; r += 2) {
        p = await engine.prefill({
          promptIds: prompt.slice(0, 5 + r + 2),
          media: [{ position: 5 + r, embeddings: rows.subarray(r * H, (r + 2) * H) }],
          from: p,
        });
        marks.push(p);
      }
      expect(p.length).toBe(11);
      const resumed = async (from: typeof p, media: MediaInput[]) => {
        const logits: Float32Array[] = [];
        const r = await engine.generate({
          promptIds: prompt,
          maxTokens: 6,
          media,
          resume: from,
          sampling: { temperature: 0 },
          onLogits: (l) => logits.push(l),
        });
        return { ...r, logits };
      };
      const got = await resumed(p, [{ position: 5, embeddings: rows }]);
      expect(got.timings.reusedTokens).toBe(11);
      expect(got.tokens).toEqual(want.tokens);
      for (let i = 0; i < whole.length; i++) expect(relErr(got.logits[i]!, whole[i]!)).toBeLessThanOrEqual(1e-5);
      // Back to the mark after the first two rows (later speech was cut off): only the rest is computed again.
      const back = await resumed(marks[1]!, [{ position: 5, embeddings: rows }]);
      expect(back.timings.reusedTokens).toBe(7);
      expect(back.tokens).toEqual(want.tokens);
      // Other rows after the mark give another answer: the resumed state holds only the first two rows.
      const other = Float32Array.from(rows);
      other.set(mediaRows(4, 77), 2 * H);
      const changed = await resumed(marks[1]!, [{ position: 5, embeddings: other }]);
      expect(relErr(changed.logits[0]!, whole[0]!)).toBeGreaterThan(1e-3);
      // A prompt that does not continue the prefilled one is refused.
      await expect(
        engine.generate({ promptIds: [2, 300, 41, 121, 77, 303, 90], maxTokens: 1, resume: marks[0]! }),
      ).rejects.toThrow(/does not continue/);
    } finally {
      await engine.close();
    }
  });
});
