import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { Segmenter, type Utterance } from '../src/audio/segmenter.js';
import { silentLogger } from '../src/common/log.js';
import { WavSource } from '../src/sources/wav.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';
import { segmenterSettingsSchema, type SegmenterSettings } from '../src/config/segmenter-settings.js';
import { SileroVad } from '../src/audio/vad.js';
import { buildStream, nonSilentExtent, phrase, run, settings, type Piece } from './audio-helpers.js';

const open: Segmenter[] = [];
async function segmenter(s: SegmenterSettings = settings()): Promise<{ seg: Segmenter; vad: SileroVad }> {
  const vad = await SileroVad.create({ energyFloorDbfs: s.energy_floor_dbfs });
  const seg = new Segmenter(vad, s, { idPrefix: 't-' });
  open.push(seg);
  return { seg, vad };
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

const slice = (x: Int16Array, fromMs: number, toMs: number): Int16Array =>
  x.subarray(Math.round(fromMs * 16), Math.round(toMs * 16));

describe('Segmenter with the Silero VAD', () => {
  it('finds each placed utterance within 100 ms, with pre-roll and post-roll audio from the stream', async () => {
    const pieces: Piece[] = [
      { noiseDbfs: -50, ms: 1000 },
      { speech: phrase(1) },
      { noiseDbfs: -50, ms: 1500 },
      { speech: phrase(2) },
      { silenceMs: 2000 },
      { speech: phrase(3) },
      { noiseDbfs: -45, ms: 900 },
      { speech: phrase(2) },
      { noiseDbfs: -55, ms: 1200 },
    ];
    const placed = buildStream(pieces, 11);
    const { seg } = await segmenter();
    const got = await run(seg, placed.samples);
    expect(got.errors).toEqual([]);
    expect(got.utterances.map((u) => u.id)).toEqual(['t-1', 't-2', 't-3', 't-4']);
    got.utterances.forEach((u, i) => {
      const want = placed.speech[i]!;
      expect(Math.abs(u.speechStartMs - want.startMs), `utterance ${i + 1} start`).toBeLessThanOrEqual(100);
      expect(Math.abs(u.speechEndMs - want.endMs), `utterance ${i + 1} end`).toBeLessThanOrEqual(100);
      expect(u.startMs).toBeCloseTo(u.speechStartMs - 300, 6); // pre-roll
      expect(u.endMs).toBeCloseTo(u.speechEndMs + 200, 6); // post-roll
      expect(u.samples.length).toBe(Math.round((u.endMs - u.startMs) * 16));
      expect(Array.from(u.samples)).toEqual(Array.from(slice(placed.samples, u.startMs, u.endMs)));
      expect(u.split).toBeUndefined();
    });
    // Speech activity: on at each start, off at each end, in order.
    expect(got.activity.map((a) => [a.speaking, a.utteranceId])).toEqual([
      [true, 't-1'],
      [false, 't-1'],
      [true, 't-2'],
      [false, 't-2'],
      [true, 't-3'],
      [false, 't-3'],
      [true, 't-4'],
      [false, 't-4'],
    ]);
    got.activity.forEach((a, i) => {
      const u = got.utterances[i >> 1]!;
      expect(a.atMs).toBe(a.speaking ? u.speechStartMs : u.speechEndMs);
    });
    expect(seg.stats()).toMatchObject({ utterances: 4, droppedShort: 0, droppedBacklogMs: 0, discontinuities: 0 });
  });

  it("keeps stream time: utterance times follow the chunks' startMs", async () => {
    const placed = buildStream([{ silenceMs: 800 }, { speech: phrase(3) }, { silenceMs: 1000 }]);
    const { seg } = await segmenter();
    const got = await run(seg, placed.samples, 1000, 60000);
    expect(got.utterances).toHaveLength(1);
    expect(Math.abs(got.utterances[0]!.speechStartMs - (60000 + placed.speech[0]!.startMs))).toBeLessThanOrEqual(100);
  });

  it('reports no utterance and no activity for silence and low noise, and silence skips the model', async () => {
    const { seg, vad } = await segmenter();
    const silent = await run(seg, buildStream([{ silenceMs: 3000 }, { noiseDbfs: -75, ms: 2000 }]).samples);
    expect(silent.utterances).toEqual([]);
    expect(silent.activity).toEqual([]);
    expect(vad.getStats().modelRuns).toBe(0);

    const { seg: seg2, vad: vad2 } = await segmenter();
    const noisy = await run(
      seg2,
      buildStream(
        [
          { noiseDbfs: -45, ms: 3000 },
          { noiseDbfs: -35, ms: 3000 },
        ],
        5,
      ).samples,
    );
    expect(noisy.utterances).toEqual([]);
    expect(noisy.activity).toEqual([]);
    expect(vad2.getStats().modelRuns).toBeGreaterThan(150); // noise above the floor does reach the model
  });

  it('drops speech shorter than min_utterance_ms and counts it', async () => {
    const placed = buildStream([{ silenceMs: 500 }, { speech: phrase(1) }, { silenceMs: 1000 }]);
    const { seg } = await segmenter(settings({ min_utterance_ms: 5000 }));
    const got = await run(seg, placed.samples);
    expect(got.utterances).toEqual([]);
    expect(got.activity).toEqual([]);
    expect(seg.stats().droppedShort).toBe(1);
  });

  it('reports an utterance in progress window by window: its samples so far, a prefix of what it hands on', async () => {
    const placed = buildStream(
      [
        { noiseDbfs: -50, ms: 800 },
        { speech: phrase(1) },
        { silenceMs: 1200 },
        { speech: phrase(2) },
        { silenceMs: 300 },
      ],
      4,
    );
    const { seg } = await segmenter(settings({ min_utterance_ms: 250 }));
    const progress = new Map<string, Int16Array[]>();
    seg.on('progress', (p) => {
      expect(p.part).toBe(1);
      // A view of the segmenter's buffer: copied, as a listener must.
      progress.set(p.id, [...(progress.get(p.id) ?? []), p.samples.slice()]);
    });
    const got = await run(seg, placed.samples);
    expect(got.utterances.map((u) => u.id)).toEqual(['t-1', 't-2']);
    for (const u of got.utterances) {
      const seen = progress.get(u.id)!;
      // Each report grows by one 32 ms window and starts at the utterance's first sample (pre-roll included).
      for (let i = 1; i < seen.length; i++) expect(seen[i]!.length - seen[i - 1]!.length).toBe(512);
      const last = seen[seen.length - 1]!;
      // The stream got at least the clip (the end is cut back after the hang-over it also streamed).
      expect(last.length).toBeGreaterThanOrEqual(u.samples.length);
      expect(Array.from(last.subarray(0, u.samples.length))).toEqual(Array.from(u.samples));
    }
  });

  it('says when an utterance in progress is dropped as too short', async () => {
    const placed = buildStream([{ silenceMs: 500 }, { speech: phrase(1) }, { silenceMs: 1000 }]);
    const { seg } = await segmenter(settings({ min_utterance_ms: 5000 }));
    const ids: string[] = [];
    let reported = 0;
    seg.on('progress', () => reported++);
    seg.on('dropped', (id) => ids.push(id));
    await run(seg, placed.samples);
    expect(reported).toBeGreaterThan(10);
    expect(ids).toEqual(['t-1']);
  });

  it('splits 45 s of continuous speech into parts of at most 30 s that overlap by 1 s', async () => {
    const pieces: Piece[] = [{ silenceMs: 500 }];
    let ms = 0;
    for (let k = 0; ms < 45000; k++) {
      const p = phrase(((k % 3) + 1) as 1 | 2 | 3);
      pieces.push({ speech: p });
      ms += p.length / 16;
    }
    pieces.push({ silenceMs: 1000 });
    const placed = buildStream(pieces);
    const { seg } = await segmenter();
    const got = await run(seg, placed.samples);
    const parts = got.utterances;
    expect(parts).toHaveLength(2);
    const [a, b] = parts as [(typeof parts)[0], (typeof parts)[0]];
    expect(a.split).toEqual({ group: 't-1', part: 1, last: false, overlapMs: 0 });
    expect(b.split).toEqual({ group: 't-1', part: 2, of: 2, last: true, overlapMs: 1000 });
    expect([a.id, b.id]).toEqual(['t-1.1', 't-1.2']);
    for (const p of parts) expect(p.samples.length).toBeLessThanOrEqual(30 * 16000);
    expect(a.endMs - a.startMs).toBeGreaterThan(29000);
    expect(b.startMs).toBeCloseTo(a.endMs - 1000, 6);
    // The overlap is the same audio in both parts.
    expect(Array.from(b.samples.subarray(0, 16000))).toEqual(Array.from(a.samples.subarray(a.samples.length - 16000)));
    expect(Array.from(b.samples)).toEqual(Array.from(slice(placed.samples, b.startMs, b.endMs)));
    expect(Math.abs(a.speechStartMs - placed.speech[0]!.startMs)).toBeLessThanOrEqual(100);
    expect(Math.abs(b.speechEndMs - placed.speech.at(-1)!.endMs)).toBeLessThanOrEqual(100);
    // One stretch of speech: one on, one off.
    expect(got.activity.map((x) => [x.speaking, x.utteranceId])).toEqual([
      [true, 't-1'],
      [false, 't-1'],
    ]);
  });

  it('reports the sound level of a known sine as 20 log10(A / sqrt 2) dBFS, throttled', async () => {
    const amp = 0.25;
    const placed = buildStream([{ sine: { hz: 1000, amp, ms: 5000 } }, { sine: { hz: 1000, amp: amp / 4, ms: 3000 } }]);
    const { seg } = await segmenter(
      settings({ level_window_ms: 1000, level_min_change_db: 1, level_max_interval_ms: 60000 }),
    );
    const got = await run(seg, placed.samples);
    const expected = 20 * Math.log10((amp * 32767) / 32768 / Math.SQRT2); // -15.05 dBFS
    // The first window is reported; the next four are within 1 dB and stay quiet; the 12 dB drop is reported.
    expect(got.levels.map((l) => l.atMs)).toEqual([1000, 6000]);
    expect(got.levels[0]!.dbfs).toBeCloseTo(expected, 2);
    expect(got.levels[1]!.dbfs).toBeCloseTo(expected - 20 * Math.log10(4), 1);
    expect(got.levels[0]!.windowMs).toBe(1000);
  });

  it('reports the level at least every level_max_interval_ms even when steady, and -120 dBFS for digital silence', async () => {
    const { seg } = await segmenter(settings({ level_window_ms: 500, level_max_interval_ms: 2000 }));
    const got = await run(seg, new Int16Array(16000 * 5));
    expect(got.levels.map((l) => l.atMs)).toEqual([500, 2500, 4500]);
    expect(got.levels.every((l) => l.dbfs === -120)).toBe(true);
  });

  it('survives stream time going backwards (a source whose timeline restarted): no errors, the next speech is found', async () => {
    const placed = buildStream([{ silenceMs: 500 }, { speech: phrase(2) }, { silenceMs: 1000 }]);
    const { seg } = await segmenter();
    const first = await run(seg, placed.samples, 800, 60000);
    expect(first.utterances).toHaveLength(1);
    // The same audio again, its time back at 0: before, every speech window threw "offset is out of bounds".
    const before = first.utterances.length;
    for (let i = 0; i < placed.samples.length; i += 800) {
      seg.push({ samples: placed.samples.slice(i, i + 800), sampleRate: 16000, startMs: i / 16 });
      if ((i / 800) % 20 === 19) await seg.idle();
    }
    await seg.flush();
    expect(first.errors).toEqual([]);
    expect(first.utterances.length - before).toBe(1);
    const again = first.utterances.at(-1)!;
    expect(Math.abs(again.speechStartMs - placed.speech[0]!.startMs)).toBeLessThanOrEqual(100);
    expect(again.samples.length).toBe(Math.round((again.endMs - again.startMs) * 16));
  });

  it('ends an utterance at a gap in the stream and starts afresh', async () => {
    const placed = buildStream([{ silenceMs: 500 }, { speech: phrase(2) }]);
    const { seg } = await segmenter();
    const half = Math.round(placed.samples.length * 0.7);
    const got: string[] = [];
    seg.on('utterance', (u) => got.push(`${u.id}:${u.endMs}`));
    for (let i = 0; i < half; i += 800)
      seg.push({ samples: placed.samples.slice(i, Math.min(i + 800, half)), sampleRate: 16000, startMs: i / 16 });
    // The source restarted: time jumps ahead by 10 s.
    seg.push({ samples: new Int16Array(16000), sampleRate: 16000, startMs: half / 16 + 10000 });
    await seg.flush();
    expect(seg.stats().discontinuities).toBe(1);
    expect(got).toHaveLength(1);
    expect(Number(got[0]!.split(':')[1])).toBeLessThanOrEqual(half / 16 + 0.001);
  });
});

describe('Segmenter backlog', () => {
  it('drops the oldest queued audio beyond max_backlog_ms and treats the jump as a gap', async () => {
    const { seg } = await segmenter(settings({ max_backlog_ms: 2000 }));
    const audio = buildStream([{ noiseDbfs: -40, ms: 6000 }]).samples;
    // Pushed all at once (faster than the VAD can run): only about the newest 2 s can be kept.
    for (let i = 0; i < audio.length; i += 800)
      seg.push({ samples: audio.slice(i, i + 800), sampleRate: 16000, startMs: i / 16 });
    await seg.flush();
    const st = seg.stats();
    expect(st.droppedBacklogMs).toBeGreaterThanOrEqual(3500);
    expect(st.droppedBacklogMs % 50).toBe(0);
    expect(st.discontinuities).toBe(1);
  });
});

describe('Segmenter attached to a WavSource', () => {
  it('finds the spoken question in config/samples/speech.wav', async () => {
    const path = fileURLToPath(new URL('../config/samples/speech.wav', import.meta.url));
    const source = new WavSource(
      { type: 'wav', path, realtime: false, loop: false, restart_min_ms: 1000, restart_max_ms: 60000 },
      silentLogger,
    );
    const { seg } = await segmenter();
    const utterances: Utterance[] = [];
    seg.on('utterance', (u) => utterances.push(u));
    const detach = seg.attach(source);
    const ended = new Promise<void>((resolve) => source.once('end', () => resolve()));
    await source.start();
    await ended;
    detach();
    await source.stop();
    await seg.flush();
    // The sample is speech with one second of silence on each side (test/fixtures/make-samples.ts).
    const { samples } = wavTo16kMono(readFileSync(path));
    const { first, last } = nonSilentExtent(samples);
    expect(utterances).toHaveLength(1);
    expect(Math.abs(utterances[0]!.speechStartMs - first / 16)).toBeLessThanOrEqual(100);
    expect(Math.abs(utterances[0]!.speechEndMs - (last + 1) / 16)).toBeLessThanOrEqual(100);
  });
});

describe('segmenterSettingsSchema', () => {
  it('has defaults, a description on every key, and rejects inconsistent thresholds', () => {
    const d = segmenterSettingsSchema.parse({});
    expect(d).toMatchObject({
      start_threshold: 0.5,
      end_threshold: 0.35,
      pre_roll_ms: 300,
      hang_over_ms: 500,
      min_utterance_ms: 250,
      max_utterance_ms: 30000,
      split_overlap_ms: 1000,
      level_window_ms: 1000,
    });
    for (const [key, field] of Object.entries(segmenterSettingsSchema.shape))
      expect(field.description, key).toBeTruthy();
    expect(segmenterSettingsSchema.description).toBeTruthy();
    expect(segmenterSettingsSchema.safeParse({ start_threshold: 0.3, end_threshold: 0.4 }).success).toBe(false);
    expect(segmenterSettingsSchema.safeParse({ max_utterance_ms: 31000 }).success).toBe(false);
    expect(segmenterSettingsSchema.safeParse({ max_utterance_ms: 2000, split_overlap_ms: 1000 }).success).toBe(false);
  });
});
