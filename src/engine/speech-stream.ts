/**
 * Hearing while the person is still speaking. As an utterance's samples arrive, its log-mel frames go through
 * the streaming audio encoder a chunk at a time and the soft tokens are prefilled into the decoder's KV cache
 * behind the instruction (Engine.prefill). When the segmenter hands over the finished clip, only its last few
 * tokens, the closing tokens of the turn and the transcript's own decode remain.
 *
 * The finished clip ends where the segmenter cut it, which is usually before the audio already streamed (the
 * hang-over silence, the trimmed end). A frame covering only real audio has the same value whatever follows,
 * and the encoder looks only backwards, so every chunk boundary at or before the clip's last valid frame is
 * exact: the stream goes back to the latest such mark (its encoder state and its prefilled prompt are kept,
 * both free to keep) and runs the rest of the clip from there. The result equals the whole-clip path's.
 */
import type { LogMelExtractor } from '../audio/features.js';
import {
  type AudioSoftTokens,
  type AudioStream,
  type AudioStreamMark,
  FRAMES_PER_TOKEN,
  joinTokens,
} from './audio-encoder.js';
import type { Engine, PrefilledPrompt } from './engine.js';

/**
 * A run takes every whole unit of this many soft tokens that is ready: a stream that keeps up runs often on
 * little audio (so little is left when the speaker stops), one that falls behind catches up in bigger runs,
 * which cost less per token.
 */
export const STREAM_UNIT_TOKENS = 4;
/** At most this many tokens a run (bounds the encoder's attention matrices and a run's time). */
const MAX_TOKENS_PER_RUN = 48;
/**
 * Marks kept besides the instruction's, each with a KV cache of the prompt so far. The end goes back over
 * the hang-over the segmenter streamed past the clip and its trimmed end, about 0.3 to 0.6 s: 8 to 16 tokens.
 */
const KEPT_MARKS = 6;

/** The prompt around the audio: prefix ids (ending with the audio start marker), then the audio, then closing ids. */
export interface SpeechPromptLayout {
  prefix: readonly number[];
  closing: readonly number[];
  audioId: number;
  /** The prefix-cache kind the instruction is pinned under. */
  prefixKind: string;
}

/** What the stream did before the clip ended, and the state to finish from. */
export interface StreamedSpeech {
  /** Soft tokens of the clip, all of them. */
  rows: Float32Array;
  count: number;
  /** The prompt prefilled up to `count - tailTokens` audio tokens. */
  resume: PrefilledPrompt;
  /** Tokens encoded and prefilled while the person spoke (kept: not redone at the end). */
  streamedTokens: number;
  /** Encoder and decoder work done after the end: the clip's last tokens. */
  tailTokens: number;
  featuresMs: number;
  encodeMs: number;
  /** Work done while the person spoke. */
  streamedEncodeMs: number;
  streamedPrefillMs: number;
}

interface Mark {
  frames: number;
  tokens: number;
  /** Encoder runs (entries of chunks) that made those tokens. */
  chunks: number;
  audio: AudioStreamMark;
  prompt: PrefilledPrompt;
}

export class SpeechStream {
  private buf = new Int16Array(16000 * 4);
  private len = 0;
  /** Soft-token rows per encoder run, in order. */
  private readonly chunks: AudioSoftTokens[] = [];
  /** The instruction alone, then the newest marks. */
  private readonly marks: Mark[] = [];
  private work: Promise<void> = Promise.resolve();
  private busy = false;
  private stopped = false;
  private failure: Error | null = null;
  private encodeMs = 0;
  private prefillMs = 0;

  constructor(
    private readonly engine: Engine,
    private readonly encoder: AudioStream,
    private readonly extractor: LogMelExtractor,
    private readonly layout: SpeechPromptLayout,
    /** Frames the stream may take (30 s). */
    private readonly maxFrames: number,
  ) {}

  /** Why streaming stopped early (the clip is then heard whole), or null. */
  get error(): Error | null {
    return this.failure;
  }

  /** The utterance's samples so far, from its first; only those past the ones already given are read (now). */
  update(samples: Int16Array): void {
    if (this.stopped || samples.length <= this.len) return;
    if (samples.length > this.buf.length) {
      const grown = new Int16Array(Math.max(samples.length, this.buf.length * 2));
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(samples.subarray(this.len), this.len);
    this.len = samples.length;
    if (!this.busy && !this.failure) {
      this.busy = true;
      this.work = this.pump();
    }
  }

  /** Resolves when the audio given so far has been encoded and prefilled, as far as whole chunks go. */
  caughtUp(): Promise<void> {
    return this.work;
  }

  /** Drops the stream (speech that was not kept): work under way finishes, nothing more starts. */
  discard(): void {
    this.stopped = true;
    this.chunks.length = 0;
    this.marks.length = 0;
  }

  /**
   * Takes the finished clip (the utterance's samples from its first, as the segmenter cut them) and returns its
   * soft tokens and the prompt prefilled as far as they were exact; null when streaming failed or nothing of
   * the clip can be kept (the caller hears the clip whole).
   */
  async finish(clip: Int16Array): Promise<StreamedSpeech | null> {
    this.stopped = true;
    await this.work;
    if (this.failure || this.marks.length === 0) return null;
    const ex = this.extractor;
    const valid = ex.validFrames(clip.length);
    const total = ex.frameCount(clip.length);
    if (total > this.maxFrames) return null;
    let mark: Mark | undefined;
    for (const m of this.marks) if (m.frames <= valid && (!mark || m.frames > mark.frames)) mark = m;
    if (!mark) return null;
    this.encoder.rewind(mark.audio);
    const t0 = performance.now();
    const tail = ex.extractRange(clip, mark.frames, total);
    const t1 = performance.now();
    const rows = await this.encoder.push(tail.features, tail.mask);
    const t2 = performance.now();
    const all = joinTokens([...this.chunks.slice(0, mark.chunks), rows]);
    return {
      rows: all.rows,
      count: all.count,
      resume: mark.prompt,
      streamedTokens: mark.tokens,
      tailTokens: rows.count,
      featuresMs: t1 - t0,
      encodeMs: t2 - t1,
      streamedEncodeMs: this.encodeMs,
      streamedPrefillMs: this.prefillMs,
    };
  }

  private async pump(): Promise<void> {
    try {
      const { prefix, audioId, prefixKind } = this.layout;
      if (this.marks.length === 0) {
        const t0 = performance.now();
        // The instruction: from the prefix cache after the first utterance (pinned by kind).
        const prompt = await this.engine.prefill({ promptIds: prefix, prefixTokens: prefix.length, prefixKind });
        this.prefillMs += performance.now() - t0;
        this.marks.push({ frames: 0, tokens: 0, chunks: 0, audio: this.encoder.mark(), prompt });
      }
      const unit = STREAM_UNIT_TOKENS * FRAMES_PER_TOKEN;
      while (!this.stopped) {
        const last = this.marks[this.marks.length - 1]!;
        const ready = Math.min(this.extractor.validFrames(this.len), this.maxFrames) - last.frames;
        const n = Math.min(Math.floor(ready / unit) * unit, MAX_TOKENS_PER_RUN * FRAMES_PER_TOKEN);
        if (n === 0) break;
        const t0 = performance.now();
        const f = this.extractor.extractRange(this.buf.subarray(0, this.len), last.frames, last.frames + n);
        const rows = await this.encoder.push(f.features, f.mask);
        const t1 = performance.now();
        const tokens = last.tokens + rows.count;
        const prompt = await this.engine.prefill({
          promptIds: [...prefix, ...new Array<number>(tokens).fill(audioId)],
          media: [{ position: prefix.length + last.tokens, embeddings: rows.rows }],
          from: last.prompt,
        });
        this.encodeMs += t1 - t0;
        this.prefillMs += performance.now() - t1;
        if (this.stopped) break;
        this.chunks.push(rows);
        this.marks.push({
          frames: last.frames + n,
          tokens,
          chunks: this.chunks.length,
          audio: this.encoder.mark(),
          prompt,
        });
        // Keep the instruction's mark and the newest few: the end rarely goes back further than the hang-over.
        if (this.marks.length > KEPT_MARKS + 1) this.marks.splice(1, 1);
      }
    } catch (err) {
      this.failure = err as Error;
    } finally {
      // Synchronously after the last check of the samples: an update from now on starts a new pump.
      this.busy = false;
    }
  }
}
