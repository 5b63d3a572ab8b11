/**
 * Seeing in the engine: the vision encoder session on a package, and GemmaAnswerEngine answering about an
 * image (request JPEG or a frame handed in) with the encoder rows placed in the prompt. Real ORT sessions on
 * a tiny package that can see.
 */
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { perchConfigSchema } from '../src/config/schema.js';
import { GemmaAnswerEngine } from '../src/engine/gemma-engine.js';
import { EngineUnavailableError, type GenerationResult, InvalidInputError } from '../src/engine/types.js';
import { VisionEncoder, VisionEncoderMissingError } from '../src/engine/vision.js';
import type { AskRequest } from '../src/mqtt/messages.js';
import { askEngine, makeTinyPackage, tempRoot } from './engine-helpers.js';
import { frame, makeSeeingPackage } from './seeing-helpers.js';

let root: string;
let dir: string;

beforeAll(async () => {
  root = tempRoot('engine-vision');
  dir = await makeSeeingPackage(root);
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

function settings(modelDir: string) {
  return perchConfigSchema.parse({
    model: { dir: modelDir, threads: 1, context_tokens: 512, ple_cache_mb: 1, max_answer_tokens: 16 },
  }).model;
}

const noop = { signal: new AbortController().signal, onToken: () => undefined };

describe('VisionEncoder', () => {
  it('encodes a JPEG into one text-width row per soft token, within the budget', async () => {
    const v = await VisionEncoder.load(dir, { threads: 1 });
    try {
      expect(v.patchSize).toBe(16);
      expect(v.hidden).toBe(64);
      const r = await v.encode(frame(1), { tokenBudget: 70 });
      // 640x360 at 70 tokens: 528x288 pixels, 33x18 patches, 11x6 soft tokens.
      expect({ w: r.width, h: r.height, n: r.numSoftTokens }).toEqual({ w: 528, h: 288, n: 66 });
      expect(r.embeddings.length).toBe(66 * 64);
      expect(r.embeddings.every(Number.isFinite)).toBe(true);
      const again = await v.encode(frame(1), { tokenBudget: 70 });
      expect(again.embeddings).toEqual(r.embeddings);
      const other = await v.encode(frame(4), { tokenBudget: 70 });
      expect(other.embeddings).not.toEqual(r.embeddings);
      const more = await v.encode(frame(1), { tokenBudget: 140 });
      expect(more.numSoftTokens).toBeGreaterThan(66);
      expect(more.numSoftTokens).toBeLessThanOrEqual(140);
    } finally {
      await v.close();
    }
  });

  it('gives the same rows with its weights mapped from the prepacked cache', async () => {
    const cache = { dir: join(root, 'prepacked') };
    const plain = await VisionEncoder.load(dir, { threads: 1 });
    const want = await plain.encode(frame(2), { tokenBudget: 70 }).finally(() => plain.close());
    for (let i = 0; i < 2; i++) {
      const v = await VisionEncoder.load(dir, { threads: 1, prepacked: { cache, checksum: 'tiny-vision' } });
      try {
        expect(Array.from((await v.encode(frame(2), { tokenBudget: 70 })).embeddings)).toEqual(
          Array.from(want.embeddings),
        );
      } finally {
        await v.close();
      }
    }
    expect(readdirSync(cache.dir).filter((n) => n.startsWith('vision_encoder-'))).toHaveLength(1);
  });

  it('says clearly when a package has no vision encoder', async () => {
    await expect(VisionEncoder.load(join(root, 'nowhere'), { threads: 1 })).rejects.toThrow(VisionEncoderMissingError);
    await expect(VisionEncoder.load(join(root, 'nowhere'), { threads: 1 })).rejects.toThrow(
      /this package has no vision encoder/,
    );
  });
});

describe('GemmaAnswerEngine with images', () => {
  it('answers about an image deterministically with a seed; another image gives another answer', async () => {
    const engine = new GemmaAnswerEngine(settings(dir));
    await engine.start();
    try {
      expect(engine.status()).toMatchObject({ state: 'ready', vision: true });
      const ask = (img: Buffer, id: string): Promise<{ text: string; streamed: string; r: GenerationResult }> => {
        let streamed = '';
        const req: AskRequest = {
          id,
          text: 'What is in this picture?',
          image: img.toString('base64'),
          seed: 11,
          max_tokens: 24,
        };
        return askEngine(engine, req, { ...noop, onToken: (d) => (streamed += d), imageTokens: 70 }).then((r) => ({
          text: r.text,
          streamed,
          r,
        }));
      };
      const a1 = await ask(frame(1), 'a1');
      const a2 = await ask(frame(1), 'a2');
      const b = await ask(frame(4), 'b');
      expect(a1.text.length).toBeGreaterThan(0);
      expect(a1.streamed).toBe(a1.text);
      expect(a2.text).toBe(a1.text);
      expect(b.text).not.toBe(a1.text);
      // The soft tokens are part of the prompt: 66 rows plus their two markers.
      const textOnly = await askEngine(
        engine,
        { id: 't', text: 'What is in this picture?', seed: 11, max_tokens: 24 },
        noop,
      );
      expect(a1.r.tokens.prompt - textOnly.tokens.prompt).toBeGreaterThanOrEqual(66 + 2);
      expect(a1.r.image).toEqual({ width: 528, height: 288, tokens: 66 });
      expect(a1.r.timings.visionMs).toBeGreaterThanOrEqual(0);
      expect(textOnly.image).toBeUndefined();
      expect(textOnly.timings.visionMs).toBeUndefined();

      // A frame handed in (a camera question) is the same as the same JPEG in the request.
      const cam = await askEngine(
        engine,
        { id: 'c', text: 'What is in this picture?', camera: 'yard', seed: 11, max_tokens: 24 },
        { ...noop, image: frame(1), imageTokens: 70 },
      );
      expect(cam.text).toBe(a1.text);
    } finally {
      await engine.close();
    }
  });

  it('refuses a corrupt JPEG with an invalid-input error naming the problem, then keeps answering', async () => {
    const engine = new GemmaAnswerEngine(settings(dir));
    await engine.start();
    try {
      const corrupt = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(200, 7)]);
      const err = await askEngine(
        engine,
        { id: 'x', text: 'What is this?', image: corrupt.toString('base64') },
        noop,
      ).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidInputError);
      expect((err as Error).message).toMatch(/^image: cannot decode image/);
      const truncated = frame(2).subarray(0, 600);
      await expect(
        askEngine(engine, { id: 'y', text: 'What is this?' }, { ...noop, image: truncated }),
      ).rejects.toThrow(InvalidInputError);
      // A JPEG that ends inside its header: libvips complains several times over.
      const headerOnly = Buffer.from('/9j/4AAQSkZJRgABAQ==', 'base64');
      const cut = await askEngine(engine, { id: 'z', text: 'What is this?' }, { ...noop, image: headerOnly }).catch(
        (e: unknown) => e,
      );
      expect(cut).toBeInstanceOf(InvalidInputError);
      // One line, each of libvips' complaints once (it repeats them for every pass over the file).
      const reasons = (cut as Error).message.replace(/^image: cannot decode image: /, '').split('; ');
      expect(reasons.length).toBeGreaterThan(0);
      expect(new Set(reasons).size, (cut as Error).message).toBe(reasons.length);
      expect((cut as Error).message).not.toContain('\n');
      const ok = await askEngine(
        engine,
        { id: 'z', text: 'And this?', max_tokens: 4, seed: 1 },
        { ...noop, image: frame(3), imageTokens: 70 },
      );
      expect(ok.tokens.completion).toBeGreaterThan(0);
    } finally {
      await engine.close();
    }
  });

  it('a camera question without a frame, and a package without a vision encoder, are unavailable', async () => {
    const { dir: plain } = await makeTinyPackage(root, 'plain');
    const engine = new GemmaAnswerEngine(settings(plain));
    await engine.start();
    try {
      expect(engine.status()).toMatchObject({ state: 'ready', vision: false });
      expect(engine.status().detail).toMatch(/images: no \(this model package has no vision encoder/);
      const err = await askEngine(
        engine,
        { id: 'x', text: 'What is this?', image: frame(1).toString('base64') },
        noop,
      ).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(EngineUnavailableError);
      expect((err as Error).message).toMatch(/no vision encoder/);
      await expect(askEngine(engine, { id: 'y', text: 'What is at the door?', camera: 'door' }, noop)).rejects.toThrow(
        /no frame from camera door yet/,
      );
      // Text questions still work.
      const r = await askEngine(engine, { id: 'z', text: 'Hello', max_tokens: 3, seed: 1 }, noop);
      expect(r.tokens.completion).toBeGreaterThan(0);
    } finally {
      await engine.close();
    }
  });
});
