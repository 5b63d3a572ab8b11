/**
 * The streaming audio encoder (model/gemma4/audio-stream.ts) gives the soft tokens of the one-pass graph: the
 * same synthetic tower written both ways, the clip fed whole or in pieces of any whole-token size, ending on a
 * part token with masked frames as the feature extractor leaves them. Against transformers' own outputs in
 * test/golden-audio.test.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AudioEncoderSession, type AudioSoftTokens, joinTokens } from '../src/engine/audio-encoder.js';
import { tinyAudioConfig, type Gemma4AudioConfig } from '../src/model/gemma4/audio-config.js';
import { writeAudioEncoderModel } from '../src/model/gemma4/audio-graph.js';
import { syntheticAudioWeightSource } from '../src/model/gemma4/audio-weights.js';
import { relErr } from './gemma4-helpers.js';
import { audioBatch } from './gemma4-audio-helpers.js';

let dir: string;
const sessions: AudioEncoderSession[] = [];

async function pair(
  cfg: Gemma4AudioConfig,
  name: string,
): Promise<{ whole: AudioEncoderSession; stream: AudioEncoderSession }> {
  const src = syntheticAudioWeightSource(cfg, 11);
  const one = await writeAudioEncoderModel(path.join(dir, `${name}-whole`), cfg, src);
  const str = await writeAudioEncoderModel(path.join(dir, `${name}-stream`), cfg, syntheticAudioWeightSource(cfg, 11), {
    streaming: true,
  });
  const whole = await AudioEncoderSession.open(one.modelPath, { intraOpNumThreads: 1 });
  const stream = await AudioEncoderSession.open(str.modelPath, { intraOpNumThreads: 1 });
  sessions.push(whole, stream);
  return { whole, stream };
}

/** Feeds the clip in pieces of `sizes` frames (cycled; multiples of 4), the rest in the last push. */
async function fedInPieces(
  enc: AudioEncoderSession,
  features: Float32Array,
  mask: Uint8Array,
  sizes: number[],
): Promise<AudioSoftTokens> {
  const F = enc.featureSize;
  const s = enc.openStream();
  const parts: AudioSoftTokens[] = [];
  let at = 0;
  for (let i = 0; at < mask.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, mask.length - at);
    parts.push(await s.push(features.subarray(at * F, (at + n) * F), mask.subarray(at, at + n)));
    at += n;
  }
  return joinTokens(parts);
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'perch-audio-stream-'));
});
afterAll(async () => {
  for (const s of sessions) await s.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('streaming audio encoder', () => {
  // Both graphs run float32 on the same weights; measured 6e-7 at most. Watched failing: an attention window one
  // key short 4e-1, the carried mel frame zeroed 7e-2, the carried conv inputs zeroed 6e-1.
  const TOL = 1e-5;
  const configs: Array<[string, Gemma4AudioConfig]> = [
    ['tiny E2B shape (chunk 12, left 13, kernel 5)', tinyAudioConfig()],
    // Every streaming constant moved: 4 past keys (left 6), a context P smaller than maxPast + 1, kernel 3.
    [
      'moved constants (chunk 9, left 6, kernel 3)',
      { ...tinyAudioConfig(), attentionChunkSize: 9, attentionContextLeft: 6, convKernelSize: 3 },
    ],
  ];

  for (const [label, cfg] of configs) {
    it(`equals the one-pass graph fed whole and in pieces: ${label}`, async () => {
      const { whole, stream } = await pair(cfg, label.split(' ')[0]!);
      expect(whole.streaming).toBe(false);
      expect(stream.streaming).toBe(true);
      // 4.13 s of real frames then the extractor's masked tail; lengths with every remainder mod 4.
      for (const [frames, real] of [
        [420, 413],
        [401, 401],
        [66, 62],
        [7, 5],
      ] as const) {
        const b = audioBatch(cfg.inputFeatureSize, frames, [real], frames);
        const want = await whole.encode(b.features, b.mask);
        expect(want.count).toBe(Math.ceil(real / 4));
        const got = [
          await stream.encode(b.features, b.mask),
          await fedInPieces(stream, b.features, b.mask, [4]),
          await fedInPieces(stream, b.features, b.mask, [12]),
          await fedInPieces(stream, b.features, b.mask, [48]),
          await fedInPieces(stream, b.features, b.mask, [8, 44, 4, 96]),
        ];
        for (const g of got) {
          expect(g.count).toBe(want.count);
          expect(relErr(g.rows, want.rows)).toBeLessThanOrEqual(TOL);
        }
      }
    });
  }

  it('rewinds to a mark: audio pushed after it is forgotten', async () => {
    const cfg = tinyAudioConfig();
    const { whole, stream } = await pair(cfg, 'rewind');
    const b = audioBatch(cfg.inputFeatureSize, 200, [197], 3);
    const noise = audioBatch(cfg.inputFeatureSize, 96, [96], 4);
    const F = cfg.inputFeatureSize;
    const s = stream.openStream();
    const first = await s.push(b.features.subarray(0, 96 * F), b.mask.subarray(0, 96));
    const mark = s.mark();
    await s.push(noise.features, noise.mask); // speech the segmenter later cut off
    await s.push(noise.features.subarray(0, 7 * F), noise.mask.subarray(0, 7)); // and an ending
    s.rewind(mark);
    expect(s.position).toBe(96);
    const rest = await s.push(b.features.subarray(96 * F), b.mask.subarray(96));
    const want = await whole.encode(b.features, b.mask);
    expect(relErr(joinTokens([first, rest]).rows, want.rows)).toBeLessThanOrEqual(TOL);
    // Without the rewind the same pushes give other tokens (the check above is not vacuous).
    const s2 = stream.openStream();
    await s2.push(noise.features, noise.mask);
    const off = joinTokens([await s2.push(b.features.subarray(96 * F), b.mask.subarray(96))]);
    expect(relErr(off.rows, rest.rows)).toBeGreaterThan(1e-2);
  });

  it('refuses pushes after the ending one, and more than 30 s', async () => {
    const cfg = tinyAudioConfig();
    const { stream } = await pair(cfg, 'refuse');
    const s = stream.openStream();
    const b = audioBatch(cfg.inputFeatureSize, 6, [6], 1);
    await s.push(b.features, b.mask);
    await expect(s.push(b.features, b.mask)).rejects.toThrow(/has ended/);
    const long = audioBatch(cfg.inputFeatureSize, 3004, [3004], 1);
    await expect(stream.openStream().push(long.features, long.mask)).rejects.toThrow(/at most 3000 frames/);
  });
});
