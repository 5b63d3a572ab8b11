/**
 * Turns a 16 kHz audio stream into utterances for the transcriber, plus speech-activity on/off and sound level
 * for automations.
 *
 * The stream is cut into 32 ms windows (512 samples) for the VAD. Speech starts on a window whose probability
 * reaches start_threshold and continues while windows stay at or above end_threshold (hysteresis); hang_over_ms
 * of windows below it end the utterance. The utterance's samples run from pre_roll_ms before the first speech
 * window to post_roll_ms after the last. Speech shorter than min_utterance_ms is dropped (clicks), and
 * speech-activity "on" is only reported once speech has lasted that long. Speech longer than max_utterance_ms is
 * handed on in parts as it goes (latency stays bounded); each part starts split_overlap_ms before the previous
 * one ended and carries {group, part, last, overlapMs}, plus `of` on the last part (only known then).
 * Times are stream times (AudioChunk.startMs based), not wall-clock times.
 */
import { EventEmitter } from 'node:events';
import type { AudioChunk, AudioSource } from '../sources/types.js';
import { silentLogger, type Logger } from '../common/log.js';
import { LevelMeter, type SoundLevel } from './level.js';
import type { SegmenterSettings } from '../config/segmenter-settings.js';
import { SileroVad, VAD_WINDOW, type SpeechDetector } from './vad.js';
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';

const RATE = AUDIO_SAMPLE_RATE;
const msToSamples = (ms: number): number => Math.round((ms * RATE) / 1000);
const samplesToMs = (s: number): number => (s * 1000) / RATE;
/** A chunk whose startMs is further than this from where the stream should be is a discontinuity. */
const GAP_TOLERANCE_MS = 100;
/**
 * Silero's probability decays over a few windows after speech stops (longer over steady noise), so the
 * VAD's end runs late. At the end of an utterance, trailing speech windows whose level is within this many dB
 * of the background are given back, at most END_TRIM_MAX_MS of them. The background is the median level of
 * the hang-over windows, which the VAD itself called silence: it is the noise right after the speech.
 */
const END_TRIM_MARGIN_DB = 6;
const END_TRIM_MAX_MS = 320;

export interface UtteranceSplit {
  /** Shared by all parts of one long utterance. */
  group: string;
  /** 1-based. */
  part: number;
  /** Number of parts; set on the last part only. */
  of?: number;
  last: boolean;
  /** This part's first overlapMs repeat the end of the previous part (0 on part 1). */
  overlapMs: number;
}

export interface Utterance {
  id: string;
  /** Stream time of samples[0]. */
  startMs: number;
  /** Stream time just after the last sample. */
  endMs: number;
  /** Where the VAD found speech begin and end within this utterance (or part). */
  speechStartMs: number;
  speechEndMs: number;
  samples: Int16Array;
  split?: UtteranceSplit;
}

/**
 * An utterance in progress: all its samples so far, from its first (pre-roll included), after each 32 ms
 * window. `samples` is a view of the segmenter's buffer, valid only during the call: copy what you keep.
 */
export interface SpeechProgress {
  /** The utterance id (a long utterance's group id). */
  id: string;
  /** 1 until the utterance is split into parts; a later part's samples start at its overlap. */
  part: number;
  samples: Int16Array;
}

export interface SpeechActivity {
  speaking: boolean;
  /** Stream time of the speech start (on) or end (off). */
  atMs: number;
  utteranceId: string;
}

export interface SegmenterStats {
  utterances: number;
  parts: number;
  /** Speech shorter than min_utterance_ms. */
  droppedShort: number;
  /** Audio dropped because the VAD fell behind by more than max_backlog_ms. */
  droppedBacklogMs: number;
  discontinuities: number;
}

interface Active {
  /** The utterance id; parts are <group>.<part>. */
  group: string;
  buf: Int16Array;
  len: number;
  /** Absolute stream sample of buf[0]. */
  start: number;
  speechStart: number;
  /** End (exclusive) of the last window at or above end_threshold. */
  speechEnd: number;
  silence: number;
  confirmed: boolean;
  /** Level (dB) of each window since speechStart, for trimming the end. */
  levels: number[];
  part: number;
  overlap: number;
}

export interface SegmenterOptions {
  logger?: Logger;
  /** Utterance ids are prefix + counter; default a base-36 start time, so ids differ across restarts. */
  idPrefix?: string;
}

export interface Segmenter {
  on(event: 'utterance', listener: (u: Utterance) => void): this;
  on(event: 'activity', listener: (a: SpeechActivity) => void): this;
  /** The utterance in progress grew (see SpeechProgress); only with listeners is anything emitted. */
  on(event: 'progress', listener: (p: SpeechProgress) => void): this;
  /** The utterance in progress was dropped (shorter than min_utterance_ms): its progress meant nothing. */
  on(event: 'dropped', listener: (id: string) => void): this;
  on(event: 'level', listener: (l: SoundLevel) => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  /** A chunk went through voice activity detection without error (for health tracking). */
  on(event: 'processed', listener: () => void): this;
}

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: the interface above only types the events
export class Segmenter extends EventEmitter {
  private readonly s: SegmenterSettings;
  private readonly log: Logger;
  private readonly idPrefix: string;
  private counter = 0;
  private readonly level: LevelMeter;
  private readonly preRoll: number;
  private readonly maxSamples: number;
  private readonly hangOver: number;
  private readonly postRoll: number;
  private readonly minSpeech: number;
  private readonly overlap: number;
  // Stream position: absolute sample index of the next sample to come.
  private pos: number | undefined;
  private readonly window = new Int16Array(VAD_WINDOW);
  private readonly floatWindow = new Float32Array(VAD_WINDOW);
  private windowFill = 0;
  /** The last preRoll samples before the current window, for pre-roll. */
  private readonly ring: Int16Array;
  private ringLen = 0;
  private ringEnd = 0; // absolute sample after the ring's newest
  private lastEmittedEnd = -Infinity;
  private active: Active | undefined;
  private readonly queue: AudioChunk[] = [];
  private queuedSamples = 0;
  private draining: Promise<void> | undefined;
  private closed = false;
  private readonly counters: SegmenterStats = {
    utterances: 0,
    parts: 0,
    droppedShort: 0,
    droppedBacklogMs: 0,
    discontinuities: 0,
  };

  constructor(
    private readonly detector: SpeechDetector,
    settings: SegmenterSettings,
    opts: SegmenterOptions = {},
  ) {
    super();
    this.s = settings;
    this.log = (opts.logger ?? silentLogger).child({ module: 'segmenter' });
    this.idPrefix = opts.idPrefix ?? `u${Date.now().toString(36)}-`;
    this.level = new LevelMeter({
      windowMs: settings.level_window_ms,
      minChangeDb: settings.level_min_change_db,
      maxIntervalMs: settings.level_max_interval_ms,
    });
    this.preRoll = msToSamples(settings.pre_roll_ms);
    this.maxSamples = msToSamples(settings.max_utterance_ms);
    this.hangOver = msToSamples(settings.hang_over_ms);
    this.postRoll = Math.min(msToSamples(settings.post_roll_ms), this.hangOver);
    this.minSpeech = msToSamples(settings.min_utterance_ms);
    this.overlap = msToSamples(settings.split_overlap_ms);
    this.ring = new Int16Array(Math.max(1, this.preRoll));
  }

  /** A segmenter with its own Silero VAD session (one per stream). */
  static async create(settings: SegmenterSettings, opts: SegmenterOptions = {}): Promise<Segmenter> {
    const vad = await SileroVad.create({ modelPath: settings.vad_model, energyFloorDbfs: settings.energy_floor_dbfs });
    return new Segmenter(vad, settings, opts);
  }

  stats(): SegmenterStats {
    return { ...this.counters };
  }

  /** Queues a chunk; processing runs in order in the background. Bounded: see max_backlog_ms. */
  push(chunk: AudioChunk): void {
    if (this.closed) return;
    this.queue.push(chunk);
    this.queuedSamples += chunk.samples.length;
    const max = msToSamples(this.s.max_backlog_ms);
    while (this.queuedSamples > max && this.queue.length > 1) {
      const dropped = this.queue.shift()!;
      this.queuedSamples -= dropped.samples.length;
      this.counters.droppedBacklogMs += samplesToMs(dropped.samples.length);
    }
    this.kick();
  }

  private kick(): void {
    if (this.draining) return;
    this.draining = this.drain().finally(() => {
      this.draining = undefined;
      // A chunk pushed between the loop's last check and this callback would otherwise wait for the next push.
      if (this.queue.length > 0 && !this.closed) this.kick();
    });
  }

  /** Resolves when every queued chunk has been processed. */
  async idle(): Promise<void> {
    while (this.draining) await this.draining;
  }

  /** End of stream: processes what is queued and ends an utterance in progress. */
  async flush(): Promise<void> {
    await this.idle();
    this.finish();
  }

  /** Feeds a source's chunks in; returns a function that detaches. */
  attach(source: AudioSource): () => void {
    const onChunk = (c: AudioChunk): void => this.push(c);
    source.on('chunk', onChunk);
    return () => {
      source.off('chunk', onChunk);
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.queuedSamples = 0;
    await this.idle();
    await this.detector.close();
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && !this.closed) {
      const chunk = this.queue.shift()!;
      this.queuedSamples -= chunk.samples.length;
      try {
        await this.processChunk(chunk);
        this.emit('processed');
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        this.log.warn({ err: e.message }, 'segmenter failed on a chunk');
        if (this.listenerCount('error') > 0) this.emit('error', e);
      }
    }
  }

  private async processChunk(chunk: AudioChunk): Promise<void> {
    const at = msToSamples(chunk.startMs);
    if (this.pos === undefined || Math.abs(at - this.pos) > msToSamples(GAP_TOLERANCE_MS)) {
      if (this.pos !== undefined) {
        this.counters.discontinuities++;
        this.finish();
        this.detector.reset();
      }
      this.pos = at;
      this.windowFill = 0;
      this.ringLen = 0;
      this.ringEnd = at;
      // Pre-roll never reaches back across the break; a stream whose time went backwards must not leave
      // the last utterance's end ahead of every window (a negative pre-roll would throw on each one).
      this.lastEmittedEnd = -Infinity;
      this.level.reset();
    }
    for (const l of this.level.push(chunk.samples, this.pos)) this.emit('level', l);
    const samples = chunk.samples;
    let i = 0;
    while (i < samples.length) {
      const take = Math.min(VAD_WINDOW - this.windowFill, samples.length - i);
      this.window.set(samples.subarray(i, i + take), this.windowFill);
      this.windowFill += take;
      i += take;
      this.pos += take;
      if (this.windowFill === VAD_WINDOW) {
        this.windowFill = 0;
        await this.processWindow(this.pos - VAD_WINDOW);
      }
    }
  }

  private async processWindow(windowStart: number): Promise<void> {
    const w = this.window;
    for (let k = 0; k < VAD_WINDOW; k++) this.floatWindow[k] = w[k]! / 32768;
    const p = await this.detector.probability(this.floatWindow);
    let sum = 0;
    for (let k = 0; k < VAD_WINDOW; k++) sum += this.floatWindow[k]! * this.floatWindow[k]!;
    const db = 10 * Math.log10(sum / VAD_WINDOW + 1e-12);
    let cur = this.active;
    if (cur && cur.len + VAD_WINDOW > this.maxSamples) {
      this.splitPart(cur);
      cur = this.active;
    }
    if (!cur) {
      if (p >= this.s.start_threshold) this.begin(windowStart, db);
    } else {
      this.append(cur, w);
      cur.levels.push(db);
      if (p >= this.s.end_threshold) {
        cur.speechEnd = windowStart + VAD_WINDOW;
        cur.silence = 0;
      } else {
        cur.silence += VAD_WINDOW;
      }
      if (!cur.confirmed && cur.speechEnd - cur.speechStart >= this.minSpeech) this.confirm(cur);
      if (cur.silence >= this.hangOver) this.finish();
      else this.progress(cur);
    }
    this.remember(windowStart);
  }

  private begin(windowStart: number, db: number): void {
    const from = Math.max(windowStart - this.preRoll, this.ringEnd - this.ringLen, this.lastEmittedEnd);
    const a: Active = {
      group: `${this.idPrefix}${++this.counter}`,
      buf: new Int16Array(this.maxSamples),
      len: 0,
      start: from,
      speechStart: windowStart,
      speechEnd: windowStart + VAD_WINDOW,
      silence: 0,
      confirmed: false,
      levels: [db],
      part: 1,
      overlap: 0,
    };
    // Pre-roll: the ring's newest (windowStart - from) samples, oldest first.
    const n = windowStart - from;
    for (let k = 0; k < n; k++) a.buf[k] = this.ring[(this.ringEnd - n + k) % this.ring.length]!;
    a.len = n;
    this.append(a, this.window);
    this.active = a;
    if (a.speechEnd - a.speechStart >= this.minSpeech) this.confirm(a);
    this.progress(a);
  }

  private progress(a: Active): void {
    if (this.listenerCount('progress') === 0) return;
    this.emit('progress', { id: a.group, part: a.part, samples: a.buf.subarray(0, a.len) } satisfies SpeechProgress);
  }

  private append(a: Active, w: Int16Array): void {
    a.buf.set(w, a.len);
    a.len += w.length;
  }

  /** Keeps the newest preRoll samples of the stream (the current window included) for the next start. */
  private remember(windowStart: number): void {
    if (this.preRoll === 0) return;
    for (let k = 0; k < VAD_WINDOW; k++) this.ring[(windowStart + k) % this.ring.length] = this.window[k]!;
    this.ringEnd = windowStart + VAD_WINDOW;
    this.ringLen = Math.min(this.ring.length, this.ringLen + VAD_WINDOW);
  }

  private confirm(a: Active): void {
    a.confirmed = true;
    this.emit('activity', {
      speaking: true,
      atMs: samplesToMs(a.speechStart),
      utteranceId: a.group,
    } satisfies SpeechActivity);
  }

  /** The buffer is full while speech goes on: hand this part on and start the next with an overlap. */
  private splitPart(a: Active): void {
    this.active = undefined;
    if (!a.confirmed) {
      // Only a click followed by a long stretch of near-threshold sound gets here; nothing worth keeping.
      this.counters.droppedShort++;
      this.emit('dropped', a.group);
      return;
    }
    const end = a.start + a.len;
    this.emitUtterance(a, a.len, `${a.group}.${a.part}`, {
      group: a.group,
      part: a.part,
      last: false,
      overlapMs: samplesToMs(a.overlap),
    });
    this.counters.parts++;
    const keep = Math.min(this.overlap, a.len);
    a.buf.copyWithin(0, a.len - keep, a.len); // the emitted part was copied out; the buffer is reused
    this.active = {
      ...a,
      len: keep,
      start: end - keep,
      speechStart: end - keep,
      speechEnd: Math.max(a.speechEnd, end - keep),
      levels: [],
      part: a.part + 1,
      overlap: keep,
    };
  }

  /** Ends the utterance in progress, if any (hang-over reached, discontinuity or end of stream). */
  private finish(): void {
    const a = this.active;
    if (!a) return;
    this.active = undefined;
    if (!a.confirmed) {
      this.counters.droppedShort++;
      this.emit('dropped', a.group);
      return;
    }
    this.trimEnd(a);
    const cut = Math.min(a.len, a.speechEnd + this.postRoll - a.start);
    const split =
      a.part > 1
        ? { group: a.group, part: a.part, of: a.part, last: true, overlapMs: samplesToMs(a.overlap) }
        : undefined;
    if (split) this.counters.parts++;
    this.emitUtterance(a, cut, split ? `${a.group}.${a.part}` : a.group, split);
    this.emit('activity', {
      speaking: false,
      atMs: samplesToMs(a.speechEnd),
      utteranceId: a.group,
    } satisfies SpeechActivity);
  }

  /** Moves speechEnd back over trailing windows that are as quiet as the background (see END_TRIM_MARGIN_DB). */
  private trimEnd(a: Active): void {
    // levels[k] is the window [base + k*512, +512): part 1 starts at the first speech window; a continuation
    // part's levels start at the first window after its overlap.
    const base = a.part === 1 ? a.speechStart : a.start + a.overlap;
    const firstQuiet = (a.speechEnd - base) / VAD_WINDOW;
    const quiet = a.levels.slice(Math.max(0, firstQuiet)).sort((x, y) => x - y);
    if (quiet.length === 0) return; // ended by a flush or gap: no hang-over to measure the background on
    const limit = quiet[quiet.length >> 1]! + END_TRIM_MARGIN_DB;
    const earliest = a.speechEnd - msToSamples(END_TRIM_MAX_MS);
    let end = a.speechEnd;
    while (end - VAD_WINDOW > a.speechStart + VAD_WINDOW && end > earliest) {
      const level = a.levels[(end - VAD_WINDOW - base) / VAD_WINDOW];
      if (level === undefined || level >= limit) break;
      end -= VAD_WINDOW;
    }
    a.speechEnd = end;
  }

  private emitUtterance(a: Active, len: number, id: string, split: UtteranceSplit | undefined): void {
    const end = a.start + len;
    this.lastEmittedEnd = end;
    this.counters.utterances++;
    const u: Utterance = {
      id,
      startMs: samplesToMs(a.start),
      endMs: samplesToMs(end),
      speechStartMs: samplesToMs(a.speechStart),
      speechEndMs: samplesToMs(Math.min(a.speechEnd, end)),
      samples: a.buf.slice(0, len),
      ...(split ? { split } : {}),
    };
    this.log.debug({ id: u.id, startMs: u.startMs, endMs: u.endMs, part: split?.part }, 'utterance');
    this.emit('utterance', u);
  }
}
