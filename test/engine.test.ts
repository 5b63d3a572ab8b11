import { rmSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gemma4TextConfig } from '../src/model/gemma4/config.js';
import type { Gemma4Reference } from '../src/model/gemma4/reference.js';
import type { Manifest } from '../src/model/package/manifest.js';
import { ContextLimitError, Engine, type GenerateRequest } from '../src/engine/engine.js';
import { FAST_VARIANT } from '../src/model/gemma4/decoder-graph.js';
import {
  argmax,
  copyPackage,
  makeTinyPackage,
  rebuildDecoder,
  referenceFor,
  relErr,
  tempRoot,
} from './engine-helpers.js';

let root: string;
let dir: string;
let manifest: Manifest;
let cfg: Gemma4TextConfig;
let engine: Engine;
let ref: Gemma4Reference;

const LOAD = { threads: 1, contextTokens: 64, pleCacheMb: 1 } as const;
/** Token ids the tiny vocabulary can emit freely (above the specials). */
const PROMPT = [2, 300, 41, 120, 77, 301, 302, 90, 91, 92, 200, 201, 150, 151, 152, 400, 401, 33, 34, 35];

beforeAll(async () => {
  root = tempRoot('engine');
  ({ dir, manifest, cfg } = await makeTinyPackage(root));
  engine = await Engine.load(dir, LOAD);
  ref = await referenceFor(dir, manifest, cfg);
});
afterAll(async () => {
  await engine?.close();
  rmSync(root, { recursive: true, force: true });
});

/** Runs a greedy generation and records the logits of every step. */
async function greedy(e: Engine, ids: number[], extra: Partial<GenerateRequest> = {}) {
  const logits: Float32Array[] = [];
  const r = await e.generate({
    promptIds: ids,
    maxTokens: 10,
    sampling: { temperature: 0 },
    onLogits: (l) => logits.push(l),
    ...extra,
  });
  return { ...r, logits };
}

/** The reference's greedy sequence (same stop ids as the engine) and its logits per step. */
function referenceGreedy(
  ids: number[],
  maxTokens: number,
  stopIds: number[],
): { tokens: number[]; logits: Float32Array[] } {
  ref.reset();
  const all = ref.prefill(ids);
  let logits: Float32Array = all.slice((ids.length - 1) * cfg.vocabSize);
  const tokens: number[] = [];
  const seen: Float32Array[] = [];
  for (;;) {
    seen.push(logits);
    const next = argmax(logits);
    if (stopIds.includes(next)) break;
    tokens.push(next);
    if (tokens.length >= maxTokens) break;
    logits = ref.step(next);
  }
  return { tokens, logits: seen };
}

/**
 * The same logits computed through other chunk splits (chunked prefill, a resumed prefix, a follow-up turn).
 * Measured: 1-3e-7 on x86-64 and the Cortex-A76 (int8 activations: each row's sums in the same order whatever
 * the chunk), 5e-6 to 1.7e-5 on the Cortex-A72 (float activations: one-row and many-row kernels add in other
 * orders): the bound sits 5x above the A72's largest. The tokens and the reused-token counts are checked exactly.
 */
const RESUME_BOUND = 1e-4;

describe('Engine on a tiny synthetic pi5 package (2-bit linears, accuracy_level 4)', () => {
  // `ref` rounds activations to int8 only where this CPU's ORT does (referenceFor asks ORT), so a graph that
  // computes anything else still misses by far more than the bound.
  it('greedy generation equals the reference argmax sequence on the dequantised weights', async () => {
    const r = await greedy(engine, PROMPT, { prefillChunk: 7 });
    const want = referenceGreedy(PROMPT, 10, engine.tokenizer.stopIds());
    expect(r.tokens).toEqual(want.tokens);
    expect(r.logits.length).toBe(want.logits.length);
    const err = Math.max(...r.logits.map((l, i) => relErr(l, want.logits[i]!)));
    console.log(
      `engine vs reference: ${r.tokens.length} greedy tokens equal [${r.tokens.join(' ')}], max logits rel err ${err.toExponential(2)} (finish ${r.finishReason})`,
    );
    expect(err).toBeLessThanOrEqual(1e-4);
    expect(r.promptTokens).toBe(PROMPT.length);
    expect(r.timings.prefillMs).toBeGreaterThan(0);
  });

  it('keeps the KV cache itself: the package graph returns only each run’s new rows', () => {
    expect(engine.decoder.cacheOutputs).toBe('new');
    const outs = engine.decoder.session.outputNames;
    expect(outs.filter((n) => n.startsWith('present.'))).toEqual([]);
    expect(outs.filter((n) => n.startsWith('new.'))).toHaveLength(2 * engine.decoder.slots.length);
  });

  it('chunked prefill gives the same logits and tokens as one-shot prefill', async () => {
    engine.clearPrefixCache();
    const oneShot = await greedy(engine, PROMPT, { prefillChunk: 64 });
    engine.clearPrefixCache();
    const chunked = await greedy(engine, PROMPT, { prefillChunk: 3 });
    expect(chunked.tokens).toEqual(oneShot.tokens);
    expect(relErr(chunked.logits[0]!, oneShot.logits[0]!)).toBeLessThanOrEqual(RESUME_BOUND);
  });

  it('prefix reuse resumes from a snapshot and gives the same logits as a fresh run', async () => {
    const system = PROMPT.slice(0, 12);
    const p1 = [...system, 60, 61, 62, 63, 64];
    const p2 = [...system, 70, 71, 72, 73, 74, 75, 76];
    engine.clearPrefixCache();
    const first = await greedy(engine, p1, { prefixTokens: system.length, prefillChunk: 5 });
    expect(first.timings.reusedTokens).toBe(0);
    const reused = await greedy(engine, p2, { prefillChunk: 5 });
    // 12 > window 8: the sliding caches of the snapshot were truncated, so this only matches if the
    // snapshot was taken exactly at the boundary.
    expect(reused.timings.reusedTokens).toBe(system.length);
    engine.clearPrefixCache();
    const fresh = await greedy(engine, p2, { prefillChunk: 64 });
    expect(fresh.timings.reusedTokens).toBe(0);
    expect(reused.tokens).toEqual(fresh.tokens);
    const err = Math.max(...reused.logits.map((l, i) => relErr(l, fresh.logits[i]!)));
    console.log(`prefix reuse vs fresh: max logits rel err ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(RESUME_BOUND);
  });

  it('reusePrefix false computes the whole prompt and stores nothing; pinned prefixes of two kinds coexist', async () => {
    const system = PROMPT.slice(0, 12);
    engine.clearPrefixCache();
    await greedy(engine, [...system, 60, 61], { prefixTokens: system.length, reusePrefix: false });
    const again = await greedy(engine, [...system, 70, 71], { prefixTokens: system.length, reusePrefix: false });
    expect(again.timings.reusedTokens).toBe(0);
    expect(engine.stats().prefixSnapshots).toBe(0);
    // A system turn and an instruction of another kind, both pinned: neither evicts the other.
    const other = PROMPT.slice(0, 9);
    await greedy(engine, [...system, 60, 61], { prefixTokens: system.length });
    await greedy(engine, [...other, 90, 91], { prefixTokens: other.length, prefixKind: 'transcript' });
    for (let i = 0; i < 3; i++) await greedy(engine, [50 + i, 51, 52, 53], { maxTokens: 2 });
    expect((await greedy(engine, [...system, 80, 81])).timings.reusedTokens).toBe(system.length);
    expect((await greedy(engine, [...other, 95, 96])).timings.reusedTokens).toBe(other.length);
  });

  it("reads each prefill chunk's PLE rows while the chunk before it runs", async () => {
    const events: string[] = [];
    const pager = engine.pkg.pager;
    const session = engine.decoder.session;
    const rowsFor = pager.rowsFor.bind(pager);
    const run = session.run.bind(session);
    pager.rowsFor = (ids) => {
      events.push(`read ${ids.length}`);
      return rowsFor(ids);
    };
    session.run = ((...args: Parameters<typeof run>) => {
      events.push('run');
      return run(...args);
    }) as typeof session.run;
    try {
      engine.clearPrefixCache();
      await greedy(engine, PROMPT, { prefillChunk: 8, maxTokens: 1, reusePrefix: false });
    } finally {
      pager.rowsFor = rowsFor;
      session.run = run;
    }
    // 20 prompt tokens in chunks of 8, 8, 4: the next chunk's read starts before each run.
    expect(events.slice(0, 6)).toEqual(['read 8', 'read 8', 'run', 'read 4', 'run', 'run']);
  });

  it('prefixSnapshots 0 disables reuse', async () => {
    const off = await Engine.load(dir, { ...LOAD, prefixSnapshots: 0 });
    try {
      await off.generate({ promptIds: PROMPT, maxTokens: 2, prefixTokens: 10 });
      const r = await off.generate({ promptIds: PROMPT, maxTokens: 2, prefixTokens: 10 });
      expect(r.timings.reusedTokens).toBe(0);
      expect(off.stats().prefixSnapshots).toBe(0);
    } finally {
      await off.close();
    }
  });

  it('a follow-up turn resumes from the end of the previous generation', async () => {
    engine.clearPrefixCache();
    const first = await greedy(engine, PROMPT, { maxTokens: 6 });
    expect(first.finishReason).toBe('length');
    // The last sampled token was never run, so the stored state covers prompt + all but the last token.
    const follow = [...PROMPT, ...first.tokens, 80, 81];
    const cont = await greedy(engine, follow, { maxTokens: 4 });
    expect(cont.timings.reusedTokens).toBe(PROMPT.length + first.tokens.length - 1);
    engine.clearPrefixCache();
    const fresh = await greedy(engine, follow, { maxTokens: 4 });
    expect(cont.tokens).toEqual(fresh.tokens);
    expect(relErr(cont.logits[0]!, fresh.logits[0]!)).toBeLessThanOrEqual(RESUME_BOUND);
  });

  it('seeded sampling is reproducible, and the seed matters', async () => {
    const run = (seed: number) =>
      engine.generate({ promptIds: PROMPT, maxTokens: 12, sampling: { temperature: 1, seed } });
    const a = await run(42);
    const b = await run(42);
    const c = await run(7);
    expect(b.tokens).toEqual(a.tokens);
    expect(b.text).toBe(a.text);
    expect(c.tokens).not.toEqual(a.tokens);
  });

  it('cancellation stops at the next step with the partial text and drops the state', async () => {
    engine.clearPrefixCache();
    const ac = new AbortController();
    let deltas = 0;
    let streamed = '';
    const r = await engine.generate({
      promptIds: PROMPT,
      maxTokens: 20,
      sampling: { temperature: 0 },
      signal: ac.signal,
      onToken: (d, info) => {
        streamed += d;
        if (info.tokenId >= 0 && ++deltas === 3) ac.abort();
      },
    });
    expect(r.finishReason).toBe('cancelled');
    expect(r.tokens.length).toBe(3);
    expect(streamed.trim()).toBe(r.text);
    const full = await greedy(engine, PROMPT, { maxTokens: 3 });
    expect(full.tokens).toEqual(r.tokens);
    // Nothing of the cancelled run was kept (the run above started from scratch).
    expect(full.timings.reusedTokens).toBe(0);
    // Aborted before it starts: no work at all.
    const pre = await engine.generate({ promptIds: PROMPT, maxTokens: 5, signal: AbortSignal.abort() });
    expect(pre).toMatchObject({ finishReason: 'cancelled', tokens: [], text: '' });
  });

  it('refuses a prompt that cannot fit the context before doing any work', async () => {
    const long = Array.from({ length: 60 }, (_, i) => 100 + i);
    const p = engine.generate({ promptIds: long, maxTokens: 10 });
    await expect(p).rejects.toThrow(ContextLimitError);
    await expect(p).rejects.toThrow('prompt of 60 tokens + max_tokens 10 exceeds model.context_tokens 64');
    // The engine still works afterwards.
    await expect(engine.generate({ promptIds: long.slice(0, 10), maxTokens: 2 })).resolves.toMatchObject({
      promptTokens: 10,
    });
  });

  it('renders messages with the package template and streams the answer text', async () => {
    let streamed = '';
    const r = await engine.generate({
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'hello there' },
      ],
      maxTokens: 8,
      sampling: { temperature: 0 },
      onToken: (d) => (streamed += d),
    });
    const ids = engine.encodeMessages([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'hello there' },
    ]);
    expect(r.promptTokens).toBe(ids.length);
    expect(ids[0]).toBe(engine.tokenizer.special.bos);
    expect(streamed.trim()).toBe(r.text);
    // The system turn was kept as a prefix: the next question reuses it.
    const again = await engine.generate({
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'other words' },
      ],
      maxTokens: 2,
    });
    const sys = engine.encodeMessages([{ role: 'system', content: 'Be brief.' }], { addGenerationPrompt: false });
    expect(again.timings.reusedTokens).toBe(sys.length);
    // The system turn stays pinned while other snapshots come and go.
    for (const q of ['what now', 'what then', 'zebra', 'what now again', 'quiet']) {
      const r2 = await engine.generate({
        messages: [
          { role: 'system', content: 'Be brief.' },
          { role: 'user', content: q },
        ],
        maxTokens: 2,
      });
      expect(r2.timings.reusedTokens).toBeGreaterThanOrEqual(sys.length);
    }
  });

  it('custom stop ids end the answer with finish reason stop', async () => {
    const free = await greedy(engine, PROMPT, { maxTokens: 6 });
    const stopAt = free.tokens[3]!;
    const r = await greedy(engine, PROMPT, { maxTokens: 6, stop: [stopAt] });
    expect(r.finishReason).toBe('stop');
    expect(r.tokens).toEqual(free.tokens.slice(0, free.tokens.indexOf(stopAt)));
  });
});

describe('stops', () => {
  it('a stop string cuts the answer before it, in the stream too', async () => {
    const free = await engine.generate({ promptIds: PROMPT, maxTokens: 10, sampling: { temperature: 0 } });
    expect(free.text.length).toBeGreaterThan(8);
    const stop = free.text.slice(4, 7);
    let streamed = '';
    const r = await engine.generate({
      promptIds: PROMPT,
      maxTokens: 10,
      sampling: { temperature: 0 },
      stop: [stop],
      onToken: (d) => (streamed += d),
    });
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(free.text.slice(0, free.text.indexOf(stop)).trimEnd());
    expect(streamed.trim()).toBe(r.text);
  });

  it('eos / end of turn end generation (finish stop); ignoreEos runs on through them', async () => {
    const stopIds = engine.tokenizer.stopIds();
    // Find a seeded run that samples a model stop token when stops are ignored (deterministic search).
    for (let seed = 0; seed < 200; seed++) {
      const sampling = { temperature: 1.5, seed };
      const through = await engine.generate({ promptIds: PROMPT, maxTokens: 40, sampling, ignoreEos: true });
      const at = through.tokens.findIndex((t) => stopIds.includes(t));
      if (at < 0 || at === through.tokens.length - 1) continue;
      expect(through.finishReason).toBe('length');
      const stopped = await engine.generate({ promptIds: PROMPT, maxTokens: 40, sampling });
      expect(stopped.finishReason).toBe('stop');
      expect(stopped.tokens).toEqual(through.tokens.slice(0, at));
      return;
    }
    throw new Error('no seed produced a stop token');
  });
});

describe('Engine on the GroupQueryAttention variant (the package graph with attention: gqa)', () => {
  it('greedy generation still equals the reference (a graph returning past + new, as older packages do)', async () => {
    const fast = await Engine.load(
      await rebuildDecoder(dir, manifest, cfg, join(root, 'fast'), {
        ...FAST_VARIANT,
        attention: 'gqa',
        cacheOutputs: 'present',
      }),
      LOAD,
    );
    try {
      expect(fast.decoder.cacheOutputs).toBe('present');
      const r = await greedy(fast, PROMPT, { prefillChunk: 7 });
      const want = referenceGreedy(PROMPT, 10, fast.tokenizer.stopIds());
      expect(r.tokens).toEqual(want.tokens);
      const err = Math.max(...r.logits.map((l, i) => relErr(l, want.logits[i]!)));
      console.log(`GroupQueryAttention variant vs reference: max logits rel err ${err.toExponential(2)}`);
      expect(err).toBeLessThanOrEqual(1e-4);
    } finally {
      await fast.close();
    }
  });
});

describe('Engine.load', () => {
  it('fails on a damaged package with the verifier message', async () => {
    const bad = copyPackage(dir, join(root, 'damaged'));
    truncateSync(join(bad, 'ple.bin'), 5000);
    await expect(Engine.load(bad, LOAD)).rejects.toThrow(/ple\.bin: truncated/);
  });

  it('refuses a package over the memory budget', async () => {
    await expect(Engine.load(dir, { ...LOAD, memoryBudgetMb: 64 })).rejects.toThrow(/over model.memory_budget_mb 64/);
  });

  it('applies the session tuning knobs (no arena, basic optimisation) with the same results', async () => {
    const tuned = await Engine.load(dir, {
      ...LOAD,
      tuning: { enableCpuMemArena: false, graphOptimizationLevel: 'basic', enableMemPattern: true },
    });
    try {
      const a = await greedy(tuned, PROMPT);
      const b = await greedy(engine, PROMPT);
      expect(a.tokens).toEqual(b.tokens);
      expect(relErr(a.logits[0]!, b.logits[0]!)).toBeLessThanOrEqual(1e-4);
    } finally {
      await tuned.close();
    }
  });

  it('disablePrepacking reaches ORT: MatMulNBits then runs with float activations (no int8 path)', async () => {
    const unpacked = await Engine.load(dir, { ...LOAD, tuning: { disablePrepacking: true } });
    try {
      const r = await greedy(unpacked, PROMPT, { maxTokens: 1 });
      const floatRef = await referenceFor(dir, manifest, cfg, { int8Activations: false });
      const want = floatRef.prefill(PROMPT).slice((PROMPT.length - 1) * cfg.vocabSize);
      const errFloat = relErr(r.logits[0]!, want);
      // Built explicitly: `ref` itself has float activations on CPUs where ORT has no int8 kernels.
      const int8Ref = await referenceFor(dir, manifest, cfg, { int8Activations: true });
      const errInt8 = relErr(r.logits[0]!, int8Ref.prefill(PROMPT).slice((PROMPT.length - 1) * cfg.vocabSize));
      console.log(
        `prepacking off: rel err ${errFloat.toExponential(2)} vs float-activation reference, ${errInt8.toExponential(2)} vs int8 reference`,
      );
      expect(errFloat).toBeLessThanOrEqual(1e-4);
      expect(errInt8).toBeGreaterThan(errFloat);
    } finally {
      await unpacked.close();
    }
  });
});
