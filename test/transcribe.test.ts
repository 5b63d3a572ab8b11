/**
 * Transcriber: a clip through the real log-mel features, the real audio encoder session and the real decoder
 * session of a tiny package that can hear. Random weights, so the text means nothing; what is checked is that
 * it is deterministic, that the audio reaches the decoder, and the refusals.
 */
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { AudioEncoderMissingError, ClipLengthError, Transcriber, asrInstruction } from '../src/engine/transcriber.js';
import { makeTinyPackage, tempRoot } from './engine-helpers.js';
import { makeHearingPackage, phraseSamples } from './transcribe-helpers.js';

let root: string;
let dir: string;
let t: Transcriber;

beforeAll(async () => {
  root = tempRoot('transcribe');
  dir = await makeHearingPackage(root);
  t = await Transcriber.load(dir, { threads: 1, contextTokens: 1024, pleCacheMb: 1 });
}, 180_000);
afterAll(async () => {
  await t?.close();
  rmSync(root, { recursive: true, force: true });
});

describe('Transcriber', () => {
  it('turns an utterance into the same transcript every time, streamed as it is made', async () => {
    const clip = phraseSamples(1);
    let streamed = '';
    const a = await t.transcribe(clip, { maxTokens: 12, onToken: (d) => (streamed += d) });
    const b = await t.transcribe(clip, { maxTokens: 12 });
    expect(a.tokens.length).toBeGreaterThan(0);
    expect(a.tokens).toEqual(b.tokens);
    expect(a.text).toBe(b.text);
    expect(streamed.replace(/\s*\n\s*/g, ' ').trim()).toBe(a.text);
    // 25 soft tokens per second of audio.
    expect(Math.abs(a.audioTokens - (clip.length / 16000) * 25)).toBeLessThanOrEqual(2);
    // Prompt = template + instruction + begin marker + soft tokens + end marker.
    expect(a.promptTokens).toBeGreaterThan(a.audioTokens + 2);
    const tm = a.timings;
    for (const v of Object.values(tm)) expect(v).toBeGreaterThanOrEqual(0);
    expect(tm.totalMs).toBeGreaterThanOrEqual(tm.firstTokenMs);
    expect(tm.firstTokenMs).toBeGreaterThanOrEqual(tm.featuresMs + tm.encodeMs);
    // Int16 and float input are the same clip.
    const f = Float32Array.from(clip, (s) => s / 32768);
    expect((await t.transcribe(f, { maxTokens: 12 })).tokens).toEqual(a.tokens);
  }, 60_000);

  it('hears a clip while it is spoken: the streamed transcript equals the whole clip’s, after the end is cut back', async () => {
    // The phrase, then 0.8 s of near-silence the segmenter streamed before its hang-over ended the utterance;
    // it cuts the clip 0.2 s after the speech (post-roll), so the stream must go back over audio it encoded.
    const phrase = phraseSamples(1);
    const heard = new Int16Array(phrase.length + 12800);
    heard.set(phrase);
    for (let i = phrase.length; i < heard.length; i++) heard[i] = ((i * 7919) % 61) - 30;
    const clip = heard.slice(0, phrase.length + 3200);
    const logitsOf = async (stream?: ReturnType<Transcriber['openStream']>) => {
      const logits: Float32Array[] = [];
      const r = await t.transcribe(clip, {
        maxTokens: 12,
        ...(stream ? { stream } : {}),
        onLogits: (l) => logits.push(l.slice()),
      });
      return { r, logits };
    };
    const whole = await logitsOf();
    for (const window of [512, 1600, 16000]) {
      const stream = t.openStream()!;
      for (let at = window; at < heard.length + window; at += window) {
        stream.update(heard.subarray(0, Math.min(at, heard.length)));
        await stream.caughtUp();
      }
      const got = await logitsOf(stream);
      expect(got.r.tokens).toEqual(whole.r.tokens);
      expect(got.r.audioTokens).toBe(whole.r.audioTokens);
      // Most of the audio was heard before the end; the last chunk or two are redone from the clip.
      expect(got.r.streamedTokens).toBeGreaterThan(whole.r.audioTokens - 2 * 12 - 12);
      expect(got.r.streamedTokens).toBeLessThan(whole.r.audioTokens);
      expect(got.r.reusedTokens).toBeGreaterThan(got.r.streamedTokens);
      expect(got.r.timings.streamedEncodeMs).toBeGreaterThan(0);
      for (let i = 0; i < whole.logits.length; i++) {
        let d = 0;
        for (let k = 0; k < whole.logits[i]!.length; k++)
          d = Math.max(d, Math.abs(whole.logits[i]![k]! - got.logits[i]![k]!));
        // Measured 0 here (the same rows through the same kernels); another CPU may sum chunks differently.
        expect(d).toBeLessThanOrEqual(1e-5);
      }
    }
    // A stream that never caught up (the end came at once) still gives the same transcript.
    const late = t.openStream()!;
    late.update(heard.subarray(0, 8000));
    expect((await logitsOf(late)).r.tokens).toEqual(whole.r.tokens);
    // A discarded stream (speech the segmenter dropped) is not used: the clip is heard whole.
    const dropped = t.openStream()!;
    dropped.update(heard);
    await dropped.caughtUp();
    dropped.discard();
    const after = await logitsOf(dropped);
    expect(after.r.streamedTokens).toBe(0);
    expect(after.r.tokens).toEqual(whole.r.tokens);
  }, 120_000);

  it('maps the audio encoder’s packed weights from the prepacked cache, with the same transcript', async () => {
    const cache = { dir: join(root, 'prepacked') };
    const clip = phraseSamples(2);
    const want = await t.transcribe(clip, { maxTokens: 8 });
    for (let i = 0; i < 2; i++) {
      const cached = await Transcriber.load(dir, { threads: 1, engine: t.engine, prepackedCache: cache });
      try {
        const got = await cached.transcribe(clip, { maxTokens: 8 });
        expect(got.tokens).toEqual(want.tokens);
        expect(got.audioTokens).toBe(want.audioTokens);
      } finally {
        await cached.close();
      }
    }
    // Built once, then reused.
    expect(readdirSync(cache.dir).filter((n) => n.startsWith('audio_encoder-'))).toHaveLength(1);
  }, 60_000);

  it('places the audio rows in the prompt: other audio gives other rows and other first logits', async () => {
    const one = await t.encodeAudio(phraseSamples(1));
    const two = await t.encodeAudio(phraseSamples(2));
    expect(one.rows.length).toBe(one.count * t.engine.config.hiddenSize);
    expect(two.count).toBeGreaterThan(0);
    expect(Array.from(one.rows.slice(0, 64))).not.toEqual(Array.from(two.rows.slice(0, 64)));
    const firstLogits = async (clip: Int16Array): Promise<Float32Array> => {
      let first: Float32Array | undefined;
      await t.transcribe(clip, {
        maxTokens: 1,
        onLogits: (l, step) => void (step === 0 ? (first = l.slice()) : undefined),
      });
      return first!;
    };
    const a = await firstLogits(phraseSamples(1));
    const a2 = await firstLogits(phraseSamples(1));
    // The same clip with its first half silenced: same length (same prompt), other audio.
    const quiet = phraseSamples(1).slice();
    quiet.fill(0, 0, Math.floor(quiet.length / 2));
    const b = await firstLogits(quiet);
    expect(a2).toEqual(a);
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    expect(diff).toBeGreaterThan(1e-4);
  }, 60_000);

  it('uses the documented ASR instruction, with the language when given, or a prompt of the caller', () => {
    expect(asrInstruction()).toMatch(/^Transcribe the following speech segment in its original language\./);
    expect(asrInstruction('English')).toMatch(/^Transcribe the following speech segment in English\./);
    const decode = (ids: number[]): string => t.engine.tokenizer.decode(ids);
    const p = t.promptFor(10, { language: 'German' });
    const text = decode(p.ids);
    expect(text).toContain('speech segment in German');
    // Audio after the instruction; the run of 10 placeholders starts at `position`.
    const m = t.engine.tokenizer.special.markers;
    expect(p.ids[p.position - 1]).toBe(m.audioStart);
    expect(p.ids.slice(p.position, p.position + 10).every((id) => id === m.audio)).toBe(true);
    expect(p.ids[p.position + 10]).toBe(m.audioEnd);
    expect(text.indexOf('German')).toBeLessThan(text.indexOf('<|audio>'));
    expect(decode(t.promptFor(3, { prompt: 'Who is speaking?' }).ids)).toContain('Who is speaking?');
  });

  it('refuses clips over 30 s and empty ones', async () => {
    await expect(t.transcribe(new Int16Array(30 * 16000 + 1))).rejects.toThrow(ClipLengthError);
    await expect(t.transcribe(new Int16Array(30 * 16000 + 1))).rejects.toThrow(/at most 30 s/);
    await expect(t.transcribe(new Int16Array(0))).rejects.toThrow(/empty/);
  });

  it('shares an engine it is given and leaves it open', async () => {
    const engine = await Engine.load(dir, { threads: 1, contextTokens: 1024, pleCacheMb: 1 });
    try {
      const shared = await Transcriber.load(dir, { threads: 1, engine });
      expect(shared.engine).toBe(engine);
      const r = await shared.transcribe(phraseSamples(1), { maxTokens: 12 });
      expect(r.tokens).toEqual((await t.transcribe(phraseSamples(1), { maxTokens: 12 })).tokens);
      await shared.close();
      // Still usable: the transcriber did not close what it did not open.
      expect(
        (await engine.generate({ messages: [{ role: 'user', content: 'hi' }], maxTokens: 2 })).tokens.length,
      ).toBeGreaterThan(0);
    } finally {
      await engine.close();
    }
  }, 60_000);

  it('says clearly when a package has no audio encoder', async () => {
    const { dir: plain } = await makeTinyPackage(root, 'plain');
    await expect(Transcriber.load(plain, { threads: 1 })).rejects.toThrow(AudioEncoderMissingError);
    await expect(Transcriber.load(join(root, 'nowhere'), { threads: 1 })).rejects.toThrow(
      /this package has no audio encoder/,
    );
  }, 60_000);
});
