/** GemmaAnswerEngine (the daemon's AnswerEngine) over a tiny synthetic package. */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { perchConfigSchema } from '../src/config/schema.js';
import { GemmaAnswerEngine, type ModelSettings } from '../src/engine/gemma-engine.js';
import { EngineUnavailableError } from '../src/engine/types.js';
import { askEngine, makeTinyPackage, tempRoot } from './engine-helpers.js';

let root: string;
let pkg: string;
let settings: ModelSettings;

beforeAll(async () => {
  root = tempRoot('gemma-engine');
  ({ dir: pkg } = await makeTinyPackage(root));
  settings = perchConfigSchema.parse({
    model: {
      dir: pkg,
      threads: 1,
      context_tokens: 128,
      ple_cache_mb: 1,
      max_answer_tokens: 6,
      system_prompt: 'Be brief.',
    },
  }).model;
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const noop = (): void => {};

describe('GemmaAnswerEngine', () => {
  it('loads in the background, flags random weights, answers reproducibly with the request settings', async () => {
    const e = new GemmaAnswerEngine(settings);
    try {
      expect(e.status().state).toBe('loading');
      await expect(
        askEngine(e, { id: 'a', text: 'hi' }, { signal: new AbortController().signal, onToken: noop }),
      ).rejects.toThrow(EngineUnavailableError);
      await e.start();
      expect(e.status()).toMatchObject({ state: 'ready', randomWeights: true });
      let streamed = '';
      const a = await askEngine(
        e,
        { id: 'a', text: 'hello', seed: 3, temperature: 0.8 },
        { signal: new AbortController().signal, onToken: (d) => (streamed += d) },
      );
      expect(a.tokens.completion).toBeGreaterThan(0);
      expect(a.tokens.completion).toBeLessThanOrEqual(6); // max_answer_tokens
      expect(streamed.trim()).toBe(a.text);
      expect(a.timings.totalMs).toBeGreaterThanOrEqual(a.timings.firstTokenMs);
      const b = await askEngine(
        e,
        { id: 'b', text: 'hello', seed: 3, temperature: 0.8 },
        { signal: new AbortController().signal, onToken: noop },
      );
      expect(b.text).toBe(a.text);
      const long = await askEngine(
        e,
        { id: 'c', text: 'hello', max_tokens: 9, temperature: 0 },
        { signal: new AbortController().signal, onToken: noop },
      );
      expect(long.tokens.completion).toBeLessThanOrEqual(9);
      expect(long.tokens.prompt).toBe(a.tokens.prompt);
    } finally {
      await e.close();
    }
    expect(e.status().state).toBe('unavailable');
  });

  it('a cancelled answer finishes with reason cancelled', async () => {
    const e = new GemmaAnswerEngine(settings);
    try {
      await e.start();
      const ac = new AbortController();
      let n = 0;
      const r = await askEngine(
        e,
        { id: 'x', text: 'hello', max_tokens: 50, temperature: 0 },
        { signal: ac.signal, onToken: () => ++n === 2 && ac.abort() },
      );
      expect(r.finishReason).toBe('cancelled');
      expect(r.tokens.completion).toBeLessThan(50);
    } finally {
      await e.close();
    }
  });

  it('reports an unloadable package as error and refuses image questions as unavailable', async () => {
    const broken = new GemmaAnswerEngine({ ...settings, dir: join(root, 'missing') });
    await broken.start();
    expect(broken.status().state).toBe('error');
    expect(broken.status().detail).toMatch(/could not be loaded/);
    await expect(
      askEngine(broken, { id: 'a', text: 'hi' }, { signal: new AbortController().signal, onToken: noop }),
    ).rejects.toThrow(EngineUnavailableError);
    await broken.close();

    const e = new GemmaAnswerEngine(settings);
    try {
      await e.start();
      await expect(
        askEngine(
          e,
          { id: 'i', text: 'what is this?', image: '/9j/AAAA' },
          { signal: new AbortController().signal, onToken: noop },
        ),
      ).rejects.toThrow(/vision encoder/);
    } finally {
      await e.close();
    }
  });
});
