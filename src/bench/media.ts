/**
 * Speech and caption latency, on the bench's already loaded engine (so the decoder is not loaded twice).
 *
 *  - speech: the segmenter hands an utterance over at end of speech, so "end of speech -> final transcript"
 *    is Transcriber.transcribe()'s total on the whole utterance (features, audio encoder, prefill, greedy
 *    decode until the transcript ends or --speech-tokens). Real-time factor = that total / audio duration.
 *    Timed two ways, alternating in each run: heard whole after the end (audio.stream off), and heard while
 *    spoken (the daemon's default): the clip and the hang-over audio the segmenter streams past the clip's
 *    end are fed to a SpeechStream at the microphone's pace, 32 ms at a time, then the clip is handed over.
 *  - caption: frame -> caption text the way the daemon does it (VisionEncoder.encode at the token budget,
 *    the image's rows in the prompt, greedy decode). Stop ids are masked so every run decodes exactly
 *    --caption-tokens tokens: a random-weight package would otherwise stop anywhere.
 * Each is warmed up once (ORT's first run of a shape is the slow one), then timed --runs times; medians.
 * A package without the encoder gives a `skipped` section with the reason instead of figures.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CAPTION_PROMPT } from '../config/schema.js';
import type { Engine } from '../engine/engine.js';
import { packageChecksum } from '../engine/prepacked-cache.js';
import { expandMediaPlaceholders } from '../engine/prompt.js';
import { AudioEncoderMissingError, SAMPLE_RATE, Transcriber, type TranscribeTimings } from '../engine/transcriber.js';
import { VisionEncoder, VisionEncoderMissingError, visionEncoderPath } from '../engine/vision.js';
import { wavTo16kMono } from '../sources/wav-decode.js';
import type { TokenBudget } from '../vision/preprocess.js';
import { median } from '../common/stats.js';

/** The targets, for a Raspberry Pi 5 (the bench usually runs elsewhere: it says so beside them). */
export const PI5_TARGETS = { speechEndToTranscriptMs: 1500, frameToCaptionMs: 8000 } as const;
/** The early caption of a motion event should come within this of the event's first frame (issue #14). */
export const EARLY_CAPTION_TARGET_MS = 5000;

const SAMPLES = fileURLToPath(new URL('../../config/samples/', import.meta.url));
export const DEFAULT_SPEECH_WAV = `${SAMPLES}speech.wav`;
export const DEFAULT_FRAME = `${SAMPLES}frames/frame-01.jpg`;

/** Largest input file read (the samples are far smaller). */
const MAX_FILE_BYTES = 32 * 1024 * 1024;
/** Transcript kept in the result, for a look at what a real model heard. */
const MAX_TEXT_CHARS = 300;

export interface Skipped {
  skipped: true;
  reason: string;
}

export interface SpeechOptions {
  wav: string;
  /** Utterance length taken from the start of the file (shorter files are used whole). */
  seconds: number;
  /** Transcript token bound (transcribe()'s maxTokens). */
  maxTokens: number;
  runs: number;
  threads: number;
  /** The prepacked weight cache the engine used (null: none), so the encoder loads as the daemon's does. */
  prepackedCacheDir: string | null;
}

export interface SpeechResult {
  skipped: false;
  file: string;
  audioSeconds: number;
  /** Soft tokens the utterance became (25 per second). */
  audioTokens: number;
  /** The whole prompt: the instruction (through the package's tokenizer), the clip, the turn's closing tokens. */
  promptTokens: number;
  /** Median prompt tokens taken from the prefix cache (the instruction, once the first clip has been heard). */
  reusedTokens: number;
  maxTokens: number;
  /** Medians over the runs. */
  endToTranscriptMs: number;
  firstTokenMs: number;
  realTimeFactor: number;
  split: { featuresMs: number; encodeMs: number; prefillMs: number; decodeMs: number };
  decodedTokens: number;
  transcript: string;
  targetPi5Ms: number;
  runs: Array<TranscribeTimings & { decodedTokens: number; promptTokens: number; reusedTokens: number }>;
  /** Heard while spoken: medians over as many runs, alternating with the whole-clip ones. */
  streamed: {
    endToTranscriptMs: number;
    firstTokenMs: number;
    /** Soft tokens encoded and prefilled before the hand-over (the rest is done after it). */
    streamedTokens: number;
    split: { featuresMs: number; encodeMs: number; prefillMs: number; decodeMs: number };
    /** The bound: the transcript's own decode time plus 0.5 s. */
    targetMs: number;
    /** Whether every streamed run gave the tokens of the whole-clip run beside it. */
    sameTranscript: boolean;
    /**
     * Largest difference of the first transcript token's logits between the streamed and the whole-clip run,
     * over the largest |logit|: the same computation in other run sizes differs only by rounding (int8
     * activations, other kernel tilings). The synthetic E2B package's random weights are chaotic (measured: a
     * 1e-7 relative change of one input row moves its last logits by 1.2 of their largest), so there this is
     * O(1) and the tokens differ; tests check the equality on the tiny package.
     */
    firstLogitsRelDiff: number;
    runs: Array<TranscribeTimings & { streamedTokens: number }>;
  } | null;
}

/** Audio the segmenter streams past the clip it hands over: hang_over_ms minus post_roll_ms (defaults). */
const STREAMED_PAST_CLIP_MS = 500 - 200;
/** The segmenter's window: how often a stream is given more audio. */
const WINDOW_SAMPLES = 512;

export interface CaptionOptions {
  frame: string;
  imageTokens: TokenBudget;
  /** Budget of the early caption (a camera's early_image_tokens), timed alternately with the final one. */
  earlyImageTokens: TokenBudget;
  /** Caption tokens decoded per run (stop ids masked). */
  captionTokens: number;
  runs: number;
  threads: number;
  /** The prepacked weight cache the engine used (null: none), so the encoder loads as the daemon's does. */
  prepackedCacheDir: string | null;
}

export interface CaptionRun {
  preprocessMs: number;
  encodeMs: number;
  prefillMs: number;
  decodeMs: number;
  /** Frame -> first caption token. */
  firstTokenMs: number;
  /** Frame -> whole caption. */
  totalMs: number;
  decodedTokens: number;
}

export interface CaptionResult {
  skipped: false;
  file: string;
  width: number;
  height: number;
  imageTokens: number;
  promptTokens: number;
  captionTokens: number;
  /** Medians over the runs: preprocess + encode, and frame -> caption. */
  imageEncodeMs: number;
  frameToCaptionMs: number;
  firstTokenMs: number;
  split: { preprocessMs: number; encodeMs: number; prefillMs: number; decodeMs: number };
  decodedTokens: number;
  targetPi5Ms: number;
  runs: CaptionRun[];
  /** The early caption at earlyImageTokens, same frame and caption length: medians over as many runs. */
  early: {
    budget: number;
    imageTokens: number;
    frameToCaptionMs: number;
    firstTokenMs: number;
    imageEncodeMs: number;
    targetMs: number;
    runs: CaptionRun[];
  };
}

async function readBounded(file: string): Promise<Buffer> {
  const buf = await readFile(file);
  if (buf.length > MAX_FILE_BYTES) throw new Error(`${file} is larger than ${MAX_FILE_BYTES} bytes`);
  return buf;
}

export async function benchSpeech(engine: Engine, dir: string, o: SpeechOptions): Promise<SpeechResult | Skipped> {
  let transcriber: Transcriber;
  try {
    transcriber = await Transcriber.load(dir, {
      threads: o.threads,
      engine,
      ...(o.prepackedCacheDir === null ? {} : { prepackedCache: { dir: o.prepackedCacheDir } }),
    });
  } catch (err) {
    if (err instanceof AudioEncoderMissingError) return { skipped: true, reason: err.message };
    throw err;
  }
  try {
    const all = wavTo16kMono(await readBounded(o.wav)).samples;
    const samples = all.subarray(0, Math.min(all.length, Math.round(o.seconds * SAMPLE_RATE)));
    const audioMs = (samples.length / SAMPLE_RATE) * 1000;
    await transcriber.transcribe(samples, { maxTokens: Math.min(2, o.maxTokens) });
    const runs: SpeechResult['runs'] = [];
    const streamedRuns: NonNullable<SpeechResult['streamed']>['runs'] = [];
    let last = { text: '', audioTokens: 0 };
    let same = true;
    let logitsDiff = 0;
    // The clip, then what the segmenter heard of the hang-over before it cut the clip (the file's next audio).
    const heard = new Int16Array(samples.length + Math.round((STREAMED_PAST_CLIP_MS * SAMPLE_RATE) / 1000));
    heard.set(all.subarray(0, Math.min(all.length, heard.length)));
    const canStream = transcriber.openStream() !== null;
    for (let r = 0; r < o.runs; r++) {
      let wholeFirst = new Float32Array(0);
      const res = await transcriber.transcribe(samples, {
        maxTokens: o.maxTokens,
        onLogits: (l, step) => void (step === 0 ? (wholeFirst = l.slice()) : undefined),
      });
      runs.push({
        ...res.timings,
        decodedTokens: res.tokens.length,
        promptTokens: res.promptTokens,
        reusedTokens: res.reusedTokens,
      });
      last = { text: res.text, audioTokens: res.audioTokens };
      if (!canStream) continue;
      const stream = transcriber.openStream()!;
      const t0 = performance.now();
      for (let at = WINDOW_SAMPLES; at < heard.length + WINDOW_SAMPLES; at += WINDOW_SAMPLES) {
        const wait = t0 + (Math.min(at, heard.length) * 1000) / SAMPLE_RATE - performance.now();
        if (wait > 0) await new Promise((done) => setTimeout(done, wait));
        stream.update(heard.subarray(0, Math.min(at, heard.length)));
      }
      let streamedFirst = new Float32Array(0);
      const sr = await transcriber.transcribe(samples, {
        maxTokens: o.maxTokens,
        stream,
        onLogits: (l, step) => void (step === 0 ? (streamedFirst = l.slice()) : undefined),
      });
      streamedRuns.push({ ...sr.timings, streamedTokens: sr.streamedTokens });
      if (sr.tokens.join() !== res.tokens.join()) same = false;
      logitsDiff = Math.max(logitsDiff, relDiff(streamedFirst, wholeFirst));
    }
    const med = (f: (t: SpeechResult['runs'][number]) => number): number => median(runs.map(f));
    return {
      skipped: false,
      file: o.wav,
      audioSeconds: audioMs / 1000,
      audioTokens: last.audioTokens,
      promptTokens: med((t) => t.promptTokens),
      reusedTokens: med((t) => t.reusedTokens),
      maxTokens: o.maxTokens,
      endToTranscriptMs: med((t) => t.totalMs),
      firstTokenMs: med((t) => t.firstTokenMs),
      realTimeFactor: med((t) => t.totalMs / audioMs),
      split: {
        featuresMs: med((t) => t.featuresMs),
        encodeMs: med((t) => t.encodeMs),
        prefillMs: med((t) => t.prefillMs),
        decodeMs: med((t) => t.decodeMs),
      },
      decodedTokens: med((t) => t.decodedTokens),
      transcript: last.text.slice(0, MAX_TEXT_CHARS),
      targetPi5Ms: PI5_TARGETS.speechEndToTranscriptMs,
      runs,
      streamed: canStream ? streamedSummary(streamedRuns, same, logitsDiff) : null,
    };
  } finally {
    await transcriber.close(); // the encoder only: the engine is the bench's
  }
}

function streamedSummary(
  runs: NonNullable<SpeechResult['streamed']>['runs'],
  sameTranscript: boolean,
  firstLogitsRelDiff: number,
): NonNullable<SpeechResult['streamed']> {
  const med = (f: (t: (typeof runs)[number]) => number): number => median(runs.map(f));
  return {
    endToTranscriptMs: med((t) => t.totalMs),
    firstTokenMs: med((t) => t.firstTokenMs),
    streamedTokens: med((t) => t.streamedTokens),
    split: {
      featuresMs: med((t) => t.featuresMs),
      encodeMs: med((t) => t.encodeMs),
      prefillMs: med((t) => t.prefillMs),
      decodeMs: med((t) => t.decodeMs),
    },
    targetMs: med((t) => t.decodeMs) + 500,
    sameTranscript,
    firstLogitsRelDiff,
    runs,
  };
}

function relDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length || a.length === 0) return Number.POSITIVE_INFINITY;
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / Math.max(m, 1e-30);
}

/** Why this engine cannot take images, or null when it can (the checks GemmaAnswerEngine makes). */
function imageGap(engine: Engine): string | null {
  const m = engine.tokenizer.special.markers;
  if (!engine.acceptsMedia) return "this package's decoder was built without media inputs";
  if (m.image === undefined || m.imageStart === undefined || m.imageEnd === undefined)
    return "this package's tokenizer lacks the image markers";
  return null;
}

/** The caption prompt with one image placeholder before the text (string form for templates without items). */
function captionPrompt(engine: Engine): number[] {
  const placeholder = engine.tokenizer.special.markers.image;
  try {
    const p = engine.preparePrompt([
      { role: 'user', content: [{ type: 'image' }, { type: 'text', text: DEFAULT_CAPTION_PROMPT }] },
    ]);
    if (p.ids.filter((id) => id === placeholder).length === 1) return p.ids;
  } catch {
    // falls through to the string form
  }
  return engine.preparePrompt([{ role: 'user', content: `<|image|>\n\n${DEFAULT_CAPTION_PROMPT}` }]).ids;
}

export async function benchCaption(engine: Engine, dir: string, o: CaptionOptions): Promise<CaptionResult | Skipped> {
  if (!visionEncoderPath(dir))
    return { skipped: true, reason: 'this package has no vision encoder (vision_encoder.onnx)' };
  const gap = imageGap(engine);
  if (gap) return { skipped: true, reason: gap };
  let vision: VisionEncoder;
  try {
    vision = await VisionEncoder.load(dir, {
      threads: o.threads,
      prepacked:
        o.prepackedCacheDir === null
          ? undefined
          : { cache: { dir: o.prepackedCacheDir }, checksum: packageChecksum(engine.manifest, 'vision') },
    });
  } catch (err) {
    if (err instanceof VisionEncoderMissingError) return { skipped: true, reason: err.message };
    throw err;
  }
  try {
    if (vision.hidden !== engine.config.hiddenSize)
      return {
        skipped: true,
        reason: `the vision encoder gives rows of ${vision.hidden} values, the decoder takes ${engine.config.hiddenSize}`,
      };
    const jpeg = await readBounded(o.frame);
    const base = captionPrompt(engine);
    const once = async (
      maxTokens: number,
      budget: TokenBudget = o.imageTokens,
    ): Promise<CaptionRun & { width: number; height: number; imageTokens: number; promptTokens: number }> => {
      const t0 = performance.now();
      const enc = await vision.encode(jpeg, { tokenBudget: budget });
      const expanded = expandMediaPlaceholders(base, engine.tokenizer.special, { imageTokens: [enc.numSoftTokens] });
      const tGen = performance.now();
      const r = await engine.generate({
        promptIds: expanded.ids,
        media: [{ position: expanded.media[0]!.start, embeddings: enc.embeddings }],
        maxTokens,
        sampling: { temperature: 0 },
        ignoreEos: true,
      });
      const totalMs = performance.now() - t0;
      return {
        preprocessMs: enc.timings.preprocessMs,
        encodeMs: enc.timings.encodeMs,
        prefillMs: r.timings.prefillMs,
        decodeMs: r.timings.decodeMs,
        firstTokenMs: tGen - t0 + r.timings.firstTokenMs,
        totalMs,
        decodedTokens: r.tokens.length,
        width: enc.width,
        height: enc.height,
        imageTokens: enc.numSoftTokens,
        promptTokens: r.promptTokens,
      };
    };
    await once(Math.min(2, o.captionTokens));
    const runs: CaptionRun[] = [];
    let info = { width: 0, height: 0, imageTokens: 0, promptTokens: 0 };
    const earlyRuns: CaptionRun[] = [];
    let earlyTokens = 0;
    await once(Math.min(2, o.captionTokens), o.earlyImageTokens);
    // Final and early captions alternate, so their ratio is from the same conditions.
    for (let r = 0; r < o.runs; r++) {
      const { width, height, imageTokens, promptTokens, ...run } = await once(o.captionTokens);
      runs.push(run);
      info = { width, height, imageTokens, promptTokens };
      const {
        imageTokens: e,
        width: _w,
        height: _h,
        promptTokens: _p,
        ...early
      } = await once(o.captionTokens, o.earlyImageTokens);
      earlyRuns.push(early);
      earlyTokens = e;
    }
    const med = (f: (t: CaptionRun) => number): number => median(runs.map(f));
    const medEarly = (f: (t: CaptionRun) => number): number => median(earlyRuns.map(f));
    return {
      skipped: false,
      file: o.frame,
      ...info,
      captionTokens: o.captionTokens,
      imageEncodeMs: med((t) => t.preprocessMs + t.encodeMs),
      frameToCaptionMs: med((t) => t.totalMs),
      firstTokenMs: med((t) => t.firstTokenMs),
      split: {
        preprocessMs: med((t) => t.preprocessMs),
        encodeMs: med((t) => t.encodeMs),
        prefillMs: med((t) => t.prefillMs),
        decodeMs: med((t) => t.decodeMs),
      },
      decodedTokens: med((t) => t.decodedTokens),
      targetPi5Ms: PI5_TARGETS.frameToCaptionMs,
      runs,
      early: {
        budget: o.earlyImageTokens,
        imageTokens: earlyTokens,
        frameToCaptionMs: medEarly((t) => t.totalMs),
        firstTokenMs: medEarly((t) => t.firstTokenMs),
        imageEncodeMs: medEarly((t) => t.preprocessMs + t.encodeMs),
        targetMs: EARLY_CAPTION_TARGET_MS,
        runs: earlyRuns,
      },
    };
  } finally {
    await vision.close();
  }
}
