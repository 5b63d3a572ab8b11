/**
 * Speech to text with Gemma 4 itself: a clip's log-mel features go through the package's audio encoder
 * (audio_encoder.onnx), its soft-token rows replace the `<|audio|>` run of a user turn, and the decoder
 * writes the transcript greedily (temperature 0: the same clip always gives the same text).
 *
 * The instruction is the ASR prompt of Gemma 4's model card, with the audio after the text (the card asks
 * for that order). Clips are at most 30 s, the encoder's limit; the segmenter splits longer speech.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { LogMelExtractor, optionsFromProcessorConfig } from '../audio/features.js';
import { type Logger, silentLogger } from '../common/log.js';
import { AudioEncoderSession, MAX_AUDIO_FRAMES } from './audio-encoder.js';
import { packageChecksum } from './prepacked-cache.js';
import { Engine, type EngineLoadOptions, type FinishReason, type PrefilledPrompt } from './engine.js';
import { SpeechStream, type SpeechPromptLayout } from './speech-stream.js';
import { type ChatMessage, type ContentItem, expandMediaPlaceholders, placeholderContent } from './prompt.js';
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';
import type { SpeechEngine } from './types.js';

export const AUDIO_ENCODER_FILE = 'audio_encoder.onnx';
export const SAMPLE_RATE = AUDIO_SAMPLE_RATE;
/** The audio encoder takes at most 30 s. */
export const MAX_CLIP_SAMPLES = 30 * SAMPLE_RATE;
/** Default transcript length bound: fast speech is ~5 tokens/s, so 30 s fits well within this. */
export const DEFAULT_TRANSCRIPT_TOKENS = 256;

/** The package has no audio_encoder.onnx (or its decoder/tokenizer cannot take audio). */
export class AudioEncoderMissingError extends Error {
  override readonly name = 'AudioEncoderMissingError';
}

/** A clip longer than the encoder takes, or an empty one. */
export class ClipLengthError extends RangeError {
  override readonly name = 'ClipLengthError';
}

/** Gemma 4's documented ASR instruction; `language` replaces "its original language". */
export function asrInstruction(language?: string): string {
  const lang = language?.trim() ? language.trim() : 'its original language';
  return [
    `Transcribe the following speech segment in ${lang}. Follow these specific instructions for formatting the answer:`,
    '* Only output the transcription, with no newlines.',
    '* When transcribing numbers, write the digits, i.e. write 1.7 and not one point seven, and write 3 instead of three.',
  ].join('\n');
}

export interface TranscriberLoadOptions {
  /** ORT intra-op threads for the encoder (and the engine, when this loads one). */
  threads: number;
  /** Share a loaded engine (the daemon's); otherwise one is loaded and owned by this transcriber. */
  engine?: Engine;
  /** For an engine loaded here: context and PLE cache (defaults 2048 tokens, 64 MiB). */
  contextTokens?: number;
  pleCacheMb?: number;
  /** The per-machine cache of packed weights: the audio encoder's (and an engine loaded here). */
  prepackedCache?: EngineLoadOptions['prepackedCache'];
  logger?: Logger;
}

export interface TranscribeOptions {
  signal?: AbortSignal;
  /** Each piece of transcript text as it is generated. */
  onToken?: (delta: string) => void;
  /** Bound on transcript tokens (default 256, lowered to what the context has room for). */
  maxTokens?: number;
  /** Spoken language, e.g. "English"; default: the model finds it. */
  language?: string;
  /** Replaces the whole instruction (the audio still follows it). */
  prompt?: string;
  /** Test hook: the logits each transcript token was drawn from. */
  onLogits?: (logits: Float32Array, step: number) => void;
  /**
   * The stream this clip was heard through while it was spoken (openStream, with the same language and
   * prompt): what it already encoded and prefilled is kept. If it failed, the clip is heard whole.
   */
  stream?: SpeechStream;
}

export interface TranscribeTimings {
  featuresMs: number;
  encodeMs: number;
  prefillMs: number;
  /** From the call to the first transcript token (features and encoder included). */
  firstTokenMs: number;
  decodeMs: number;
  totalMs: number;
  /** With a stream: encoder and prefill work done while the person spoke (before this call). */
  streamedEncodeMs?: number;
  streamedPrefillMs?: number;
}

export interface TranscribeResult {
  text: string;
  /** Generated ids (stop excluded). */
  tokens: number[];
  finishReason: FinishReason;
  /** Soft tokens the clip became (25 per second). */
  audioTokens: number;
  promptTokens: number;
  /** Prompt tokens taken from the prefix cache or the stream (the instruction, and audio heard while spoken). */
  reusedTokens: number;
  /** With a stream: soft tokens encoded and prefilled before the end of speech (0 when heard whole). */
  streamedTokens: number;
  timings: TranscribeTimings;
}

export interface EncodedClip {
  /** [count, hidden] row-major. */
  rows: Float32Array;
  count: number;
  featuresMs: number;
  encodeMs: number;
}

export class Transcriber implements SpeechEngine {
  private closed = false;
  /** The last clip's soft tokens: a spoken question answered from the clip just transcribed is not encoded again. */
  private lastClip: { samples: Int16Array | Float32Array; clip: EncodedClip } | null = null;

  private constructor(
    readonly engine: Engine,
    private readonly encoder: AudioEncoderSession,
    private readonly extractor: LogMelExtractor,
    private readonly ownsEngine: boolean,
    private readonly log: Logger,
  ) {}

  /** Opens the package's audio encoder; AudioEncoderMissingError when the package cannot take audio. */
  static async load(packageDir: string, opts: TranscriberLoadOptions): Promise<Transcriber> {
    const log = (opts.logger ?? silentLogger).child({ module: 'transcriber' });
    const file = path.join(packageDir, AUDIO_ENCODER_FILE);
    if (!existsSync(file))
      throw new AudioEncoderMissingError(
        `this package has no audio encoder (${file} is missing): transcripts are unavailable`,
      );
    const engine =
      opts.engine ??
      (await Engine.load(packageDir, {
        threads: opts.threads,
        contextTokens: opts.contextTokens ?? 2048,
        pleCacheMb: opts.pleCacheMb ?? 64,
        prepackedCache: opts.prepackedCache,
        logger: opts.logger,
      }));
    const owns = opts.engine === undefined;
    let encoder: AudioEncoderSession | undefined;
    try {
      const m = engine.tokenizer.special.markers;
      if (!engine.acceptsMedia)
        throw new AudioEncoderMissingError(
          "this package's decoder was built without media inputs: rebuild the package to transcribe audio",
        );
      if (m.audio === undefined || m.audioStart === undefined || m.audioEnd === undefined)
        throw new AudioEncoderMissingError(
          "this package's tokenizer lacks the audio markers: transcripts are unavailable",
        );
      const extractor = new LogMelExtractor(processorOptions(packageDir));
      encoder = await AudioEncoderSession.open(file, {
        intraOpNumThreads: opts.threads,
        featureSize: extractor.options.featureSize,
        ...(opts.prepackedCache
          ? {
              prepacked: {
                cache: { ...opts.prepackedCache, logger: log },
                checksum: packageChecksum(engine.manifest, 'audio'),
              },
            }
          : {}),
      });
      const t = new Transcriber(engine, encoder, extractor, owns, log);
      // One second of silence: checks the encoder's width against the decoder now, not at the first
      // utterance, and warms the session up (ORT's first run is the slow one).
      const probe = await t.encodeAudio(new Int16Array(SAMPLE_RATE));
      const hidden = probe.rows.length / Math.max(1, probe.count);
      if (hidden !== engine.config.hiddenSize)
        throw new Error(
          `the audio encoder gives rows of ${hidden} values, the decoder takes ${engine.config.hiddenSize}`,
        );
      log.info({ dir: packageDir, warmup_ms: Math.round(probe.featuresMs + probe.encodeMs) }, 'audio encoder ready');
      return t;
    } catch (err) {
      await encoder?.close();
      if (owns) await engine.close();
      throw err;
    }
  }

  get randomWeights(): boolean {
    return this.engine.randomWeights;
  }

  /** Log-mel features and encoder rows of one clip (16 kHz mono; int16 or float in [-1, 1]). */
  async encodeAudio(samples: Int16Array | Float32Array): Promise<EncodedClip> {
    if (samples.length === 0) throw new ClipLengthError('the audio clip is empty');
    if (samples.length > MAX_CLIP_SAMPLES) {
      throw new ClipLengthError(
        `the audio clip is ${(samples.length / SAMPLE_RATE).toFixed(1)} s long; at most 30 s can be transcribed at once (the segmenter splits longer speech)`,
      );
    }
    const t0 = performance.now();
    const f = this.extractor.extract(samples);
    const t1 = performance.now();
    const enc = await this.encoder.encode(f.features, f.mask);
    // The processor caps soft tokens at audio_seq_length; only then could the encoder give more.
    const count = Math.min(enc.count, this.extractor.softTokens(f.mask));
    const rows = count === enc.count ? enc.rows : enc.rows.slice(0, count * enc.hidden);
    return { rows, count, featuresMs: t1 - t0, encodeMs: performance.now() - t1 };
  }

  /** Prompt ids with the clip's placeholder run expanded, and where its first soft token sits. */
  promptFor(
    audioTokens: number,
    opts: Pick<TranscribeOptions, 'language' | 'prompt'> = {},
  ): { ids: number[]; position: number } {
    const instruction = opts.prompt?.trim() ? opts.prompt.trim() : asrInstruction(opts.language);
    const base = this.renderWithAudio(instruction);
    const expanded = expandMediaPlaceholders(base, this.engine.tokenizer.special, { audioTokens: [audioTokens] });
    return { ids: expanded.ids, position: expanded.media[0]!.start };
  }

  /** The prompt around the audio for these options (the pinned instruction is its prefix). */
  private layout(opts: Pick<TranscribeOptions, 'language' | 'prompt'>, oneLine: boolean): SpeechPromptLayout {
    const { ids, position } = this.promptFor(1, opts);
    return {
      prefix: ids.slice(0, position),
      closing: ids.slice(position + 1),
      audioId: this.engine.tokenizer.special.markers.audio!,
      prefixKind: oneLine ? 'transcript' : 'spoken-question',
    };
  }

  /**
   * A stream for an utterance while it is spoken (give it to transcribe as `stream`); null when the package's
   * audio encoder is the one-pass kind of older packages.
   */
  openStream(opts: Pick<TranscribeOptions, 'language' | 'prompt'> = {}): SpeechStream | null {
    if (this.closed || !this.encoder.streaming) return null;
    return new SpeechStream(
      this.engine,
      this.encoder.openStream(),
      this.extractor,
      this.layout(opts, true),
      MAX_AUDIO_FRAMES,
    );
  }

  /** Transcribes one clip; queued behind other generations on the shared engine. */
  transcribe(samples: Int16Array | Float32Array, opts: TranscribeOptions = {}): Promise<TranscribeResult> {
    return this.run(samples, opts, true);
  }

  /**
   * Answers what is said in a clip (a spoken question): `prompt` is the instruction; the answer keeps its
   * line breaks. Greedy like transcripts.
   */
  answer(samples: Int16Array | Float32Array, opts: TranscribeOptions & { prompt: string }): Promise<TranscribeResult> {
    return this.run(samples, opts, false);
  }

  private async run(
    samples: Int16Array | Float32Array,
    opts: TranscribeOptions,
    oneLine: boolean,
  ): Promise<TranscribeResult> {
    if (this.closed) throw new Error('transcriber is closed');
    const t0 = performance.now();
    let clip: EncodedClip | undefined;
    let resume: PrefilledPrompt | undefined;
    let streamed = { tokens: 0, encodeMs: 0, prefillMs: 0 };
    if (opts.stream && oneLine && samples instanceof Int16Array && samples.length > 0) {
      const s = await opts.stream.finish(samples);
      if (s) {
        clip = { rows: s.rows, count: s.count, featuresMs: s.featuresMs, encodeMs: s.encodeMs };
        resume = s.resume;
        streamed = { tokens: s.streamedTokens, encodeMs: s.streamedEncodeMs, prefillMs: s.streamedPrefillMs };
      } else {
        this.log.warn(
          { err: opts.stream.error?.message },
          'the speech stream could not be used: hearing the clip whole',
        );
      }
    }
    const last = this.lastClip;
    // A spoken question about the clip just transcribed: its soft tokens are at hand.
    if (!clip && !oneLine && last && sameSamples(last.samples, samples))
      clip = { ...last.clip, featuresMs: 0, encodeMs: 0 };
    clip ??= await this.encodeAudio(samples);
    this.lastClip = { samples, clip };
    const layout = this.layout(opts, oneLine);
    const prompt = {
      ids: [...layout.prefix, ...new Array<number>(clip.count).fill(layout.audioId), ...layout.closing],
      position: layout.prefix.length,
    };
    const room = this.engine.contextTokens - prompt.ids.length;
    if (room < 1)
      throw new ClipLengthError(
        `the clip needs ${prompt.ids.length} prompt tokens, over model.context_tokens ${this.engine.contextTokens}`,
      );
    const maxTokens = Math.max(1, Math.min(opts.maxTokens ?? DEFAULT_TRANSCRIPT_TOKENS, room));
    const tGen = performance.now();
    const r = await this.engine.generate({
      promptIds: prompt.ids,
      media: [{ position: prompt.position, embeddings: clip.rows }],
      // The instruction before the clip is the same every time: kept in the prefix cache, only the clip and
      // the closing tokens of the turn are prefilled.
      prefixTokens: prompt.position,
      prefixKind: layout.prefixKind,
      resume,
      maxTokens,
      sampling: { temperature: 0 },
      signal: opts.signal,
      onLogits: opts.onLogits,
      onToken: (delta) => {
        if (delta) opts.onToken?.(delta);
      },
    });
    const totalMs = performance.now() - t0;
    const timings: TranscribeTimings = {
      featuresMs: clip.featuresMs,
      encodeMs: clip.encodeMs,
      prefillMs: r.timings.prefillMs,
      firstTokenMs: r.timings.firstTokenMs > 0 ? tGen - t0 + r.timings.firstTokenMs : totalMs,
      decodeMs: r.timings.decodeMs,
      totalMs,
      ...(opts.stream ? { streamedEncodeMs: streamed.encodeMs, streamedPrefillMs: streamed.prefillMs } : {}),
    };
    this.log.debug(
      { audio_tokens: clip.count, completion: r.tokens.length, total_ms: Math.round(totalMs) },
      'transcribed',
    );
    // The model is told to write one line; a stray newline should not split a transcript.
    const text = oneLine ? r.text.replace(/\s*\n\s*/g, ' ').trim() : r.text.trim();
    return {
      text,
      tokens: r.tokens,
      finishReason: r.finishReason,
      audioTokens: clip.count,
      promptTokens: r.promptTokens,
      reusedTokens: r.timings.reusedTokens,
      streamedTokens: streamed.tokens,
      timings,
    };
  }

  /** Closes the encoder, and the engine when this transcriber loaded it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.encoder.close();
    if (this.ownsEngine) await this.engine.close();
  }

  /**
   * The user turn, instruction then audio. Gemma's template renders an audio item as its placeholder;
   * templates that only take string content (the synthetic package's) get the placeholder text, which the
   * tokenizer maps to the same id.
   */
  private renderWithAudio(instruction: string): number[] {
    const placeholder = this.engine.tokenizer.special.markers.audio;
    const count = (ids: number[]): number => ids.filter((id) => id === placeholder).length;
    const items: ChatMessage = { role: 'user', content: [{ type: 'text', text: instruction }, { type: 'audio' }] };
    try {
      const ids = this.engine.encodeMessages([items]);
      if (count(ids) === 1) return ids;
    } catch {
      // falls through to the string form
    }
    const ids = this.engine.encodeMessages([
      { role: 'user', content: placeholderContent(items.content as ContentItem[]) },
    ]);
    if (count(ids) !== 1)
      throw new AudioEncoderMissingError(
        'the chat template and tokenizer do not yield one audio placeholder: this package cannot transcribe',
      );
    return ids;
  }
}

function sameSamples(a: Int16Array | Float32Array, b: Int16Array | Float32Array): boolean {
  if (a === b) return true;
  if (a.constructor !== b.constructor || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Log-mel options from the package's processor_config.json, when it ships one (real packages do). */
function processorOptions(dir: string): ConstructorParameters<typeof LogMelExtractor>[0] {
  const file = path.join(dir, 'processor_config.json');
  if (!existsSync(file)) return {};
  try {
    return optionsFromProcessorConfig(JSON.parse(readFileSync(file, 'utf8')) as unknown);
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
}
