/**
 * `perch transcribe` as a child process (a test entry with only that command, until src/cli.ts registers it):
 * a WAV with two phrases and silence between them gives two utterances, as lines or as JSON, the same text
 * as the Transcriber gives those utterances directly.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { segment } from '../src/audio/segment-clip.js';
import { Transcriber } from '../src/engine/transcriber.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';
import { runScript } from './cli-helpers.js';
import { makeTinyPackage, tempRoot } from './engine-helpers.js';
import { encodeWav } from './fixtures/media.js';
import { makeHearingPackage, phraseSamples } from './transcribe-helpers.js';

/** The real perch command. */
const ENTRY = 'src/cli.ts';
let root: string;
let dir: string;
let wav: string;
let silent: string;

/** phrase 1, 1.5 s of silence, phrase 2, with 0.5 s of silence around them, as a 16-bit WAV. */
function twoPhrases(): Int16Array {
  const gap = (ms: number) => new Int16Array(ms * 16);
  const parts = [gap(500), phraseSamples(1), gap(1500), phraseSamples(2), gap(500)];
  const out = new Int16Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const toWav = (s: Int16Array): Buffer =>
  encodeWav({ sampleRate: 16000, channels: 1, format: 'int', bits: 16 }, [Float32Array.from(s, (v) => v / 32768)]);

beforeAll(async () => {
  root = tempRoot('transcribe-cli');
  dir = await makeHearingPackage(root);
  wav = join(root, 'two.wav');
  writeFileSync(wav, toWav(twoPhrases()));
  silent = join(root, 'silent.wav');
  writeFileSync(silent, toWav(new Int16Array(16000 * 2)));
}, 180_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('perch transcribe', () => {
  it('prints one JSON item per utterance, with its times and the transcript of that utterance', async () => {
    const r = await runScript(ENTRY, [
      'transcribe',
      wav,
      '--model',
      dir,
      '--json',
      '--max-tokens',
      '8',
      '--threads',
      '1',
      '--context-tokens',
      '1024',
    ]);
    expect(r.stderr).toContain('random weights');
    expect(r.code).toBe(0);
    const items = JSON.parse(r.stdout) as Array<{
      id: string;
      start_ms: number;
      end_ms: number;
      text: string;
      latency_ms: { total: number };
    }>;
    expect(items).toHaveLength(2);
    // Phrase 1 starts at 0.5 s; phrase 2 after phrase 1 and 1.5 s of silence.
    const p1 = phraseSamples(1).length / 16;
    expect(items[0]!.start_ms).toBeGreaterThanOrEqual(400);
    expect(items[0]!.end_ms).toBeLessThanOrEqual(500 + p1 + 150);
    expect(items[1]!.start_ms).toBeGreaterThanOrEqual(500 + p1 + 1400);
    expect(items[0]!.id).not.toBe(items[1]!.id);
    for (const it of items) expect(it.latency_ms.total).toBeGreaterThan(0);

    // The same text as transcribing the segmenter's utterances in process.
    const t = await Transcriber.load(dir, { threads: 1, contextTokens: 1024, pleCacheMb: 1 });
    try {
      const utterances = await segment(wavTo16kMono(readFileSync(wav)).samples);
      expect(utterances).toHaveLength(2);
      const texts = [];
      for (const u of utterances) texts.push((await t.transcribe(u.samples, { maxTokens: 8 })).text);
      expect(items.map((i) => i.text)).toEqual(texts);
    } finally {
      await t.close();
    }

    const lines = await runScript(ENTRY, [
      'transcribe',
      wav,
      '--model',
      dir,
      '--max-tokens',
      '8',
      '--threads',
      '1',
      '--context-tokens',
      '1024',
    ]);
    expect(lines.code).toBe(0);
    expect(lines.stdout).toBe(items.map((i) => `${i.text}\n`).join(''));
  }, 120_000);

  it('says when there is no speech, and fails clearly without an audio encoder or a readable WAV', async () => {
    const quiet = await runScript(ENTRY, [
      'transcribe',
      silent,
      '--model',
      dir,
      '--json',
      '--threads',
      '1',
      '--context-tokens',
      '1024',
    ]);
    expect(quiet.code).toBe(0);
    expect(JSON.parse(quiet.stdout)).toEqual([]);
    expect(quiet.stderr).toContain('no speech found');

    const { dir: plain } = await makeTinyPackage(root, 'plain');
    const noEncoder = await runScript(ENTRY, ['transcribe', wav, '--model', plain]);
    expect(noEncoder.code).toBe(1);
    expect(noEncoder.stderr).toMatch(/this package has no audio encoder/);

    const notWav = join(root, 'not.wav');
    writeFileSync(notWav, 'hello');
    const bad = await runScript(ENTRY, ['transcribe', notWav, '--model', dir]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/not\.wav/);
  }, 120_000);
});
