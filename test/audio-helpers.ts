/** Shared by the audio tests: fixture phrases, streams with speech at known places, feeding a segmenter. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  segmenterSettingsSchema,
  type SegmenterSettings,
  type SegmenterSettingsInput,
} from '../src/config/segmenter-settings.js';
import type { Segmenter, SpeechActivity, Utterance } from '../src/audio/segmenter.js';
import type { SoundLevel } from '../src/audio/level.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';
import { nonSilentExtent } from './fixtures/audio/make-audio-fixtures.js';

export { nonSilentExtent };

const fixtures = fileURLToPath(new URL('./fixtures/audio/', import.meta.url));

export function phrase(n: 1 | 2 | 3): Int16Array {
  return wavTo16kMono(readFileSync(join(fixtures, `phrase-${n}.wav`))).samples;
}

export function settings(over: SegmenterSettingsInput = {}): SegmenterSettings {
  return segmenterSettingsSchema.parse(over);
}

/** Deterministic PRNG so noise is the same on every run. */
export function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type Piece =
  | { silenceMs: number }
  | { noiseDbfs: number; ms: number }
  | { speech: Int16Array }
  | { sine: { hz: number; amp: number; ms: number } };

export interface Placed {
  samples: Int16Array;
  /** Per speech piece: stream ms of its own non-silent extent. */
  speech: Array<{ startMs: number; endMs: number }>;
}

/** Concatenates pieces; noise is uniform white noise at the given RMS level (dBFS of full scale). */
export function buildStream(pieces: Piece[], seed = 1): Placed {
  const rand = rng(seed);
  const parts: Int16Array[] = [];
  const speech: Placed['speech'] = [];
  let at = 0;
  for (const p of pieces) {
    let s: Int16Array;
    if ('silenceMs' in p) s = new Int16Array(Math.round(p.silenceMs * 16));
    else if ('noiseDbfs' in p) {
      s = new Int16Array(Math.round(p.ms * 16));
      const rms = 10 ** (p.noiseDbfs / 20) * 32768;
      const amp = rms * Math.sqrt(3); // uniform on [-a, a] has RMS a / sqrt 3
      for (let i = 0; i < s.length; i++) s[i] = Math.round((rand() * 2 - 1) * amp);
    } else if ('sine' in p) {
      s = new Int16Array(Math.round(p.sine.ms * 16));
      for (let i = 0; i < s.length; i++)
        s[i] = Math.round(p.sine.amp * 32767 * Math.sin((2 * Math.PI * p.sine.hz * i) / 16000));
    } else {
      s = p.speech;
      const { first, last } = nonSilentExtent(s);
      speech.push({ startMs: (at + first) / 16, endMs: (at + last + 1) / 16 });
    }
    parts.push(s);
    at += s.length;
  }
  const samples = new Int16Array(at);
  let o = 0;
  for (const s of parts) {
    samples.set(s, o);
    o += s.length;
  }
  return { samples, speech };
}

export interface Collected {
  utterances: Utterance[];
  activity: SpeechActivity[];
  levels: SoundLevel[];
  errors: Error[];
}

/** Feeds samples as 50 ms chunks (like WavSource), then flushes. */
export async function run(seg: Segmenter, samples: Int16Array, chunk = 800, startMs = 0): Promise<Collected> {
  const c: Collected = { utterances: [], activity: [], levels: [], errors: [] };
  seg.on('utterance', (u) => c.utterances.push(u));
  seg.on('activity', (a) => c.activity.push(a));
  seg.on('level', (l) => c.levels.push(l));
  seg.on('error', (e) => c.errors.push(e));
  for (let i = 0; i < samples.length; i += chunk) {
    seg.push({ samples: samples.slice(i, i + chunk), sampleRate: 16000, startMs: startMs + i / 16 });
    // Let the VAD keep up, as a real-time source would; max_backlog_ms never drops audio here.
    if ((i / chunk) % 20 === 19) await seg.idle();
  }
  await seg.flush();
  return c;
}
