/**
 * Gemma 4's audio front end: log-mel features as transformers' Gemma4AudioFeatureExtractor computes them
 * (src/transformers/models/gemma4/feature_extraction_gemma4.py, with audio_utils.py for the window and the
 * filterbank, and processing_gemma4.py for the soft-token count). Facts read there, defaults in brackets:
 *   - 16 kHz mono float input; our Int16Array samples are scaled by 1/32768. No dither [0], input scale [1].
 *   - Padding: right-padded with zeros to a multiple of 128 samples [pad_to_multiple_of=128] and truncated to
 *     480 000 samples = 30 s [max_length]; the sample mask marks the real samples.
 *   - "Semicausal" time padding: frame_length // 2 = 160 zeros are prepended, so frame 0 is centred at t = 0.
 *   - Frames of frame_length + 1 = 321 samples every hop = 160 samples (10 ms); the extra sample only feeds
 *     preemphasis [0: off], so a frame is 320 samples (20 ms). frames = (160 + padded - 321) // 160 + 1.
 *   - Window: periodic Hann of 320 samples, 0.5 - 0.5 cos(2πn/320), float32.
 *   - FFT length 2^ceil(log2(320)) = 512 [fft_overdrive=false], the frame zero-padded on the right; magnitude
 *     |X| (not power) of the 257 bins.
 *   - Mel: 128 HTK-scale triangles from 0 to 8000 Hz, no area normalisation (see mel.ts).
 *   - log(mel + 1e-3) [mel_floor]: natural log, additive floor, so silence gives ln(0.001) ≈ -6.9078.
 *   - No normalisation unless the config carries per_bin_mean / per_bin_stddev [none].
 *   - Frame mask: frame i is valid only when the last sample of its window (padded index i*160 + 320, i.e. real
 *     sample i*160 + 160) is real audio; masked frames' features are set to 0 (not to the log floor).
 *   - 100 frames a second. The encoder's two stride-2 convolutions (kernel 3, pad 1) cut the frames by 4:
 *     40 ms per soft token, 25 a second, at most 750 [audio_seq_length]. The processor counts the tokens from
 *     the mask: twice mask = mask[::2][:(t - 1) // 2 + 1], then sum.
 * Gemma's released processor config uses exactly these defaults; other values can be passed from
 * processor_config.json (optionsFromProcessorConfig) since the model's own config is the source of truth.
 */
import { RealFft } from './fft.js';
import { melFilterbank, type MelFilterbank } from './mel.js';
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';

export interface LogMelOptions {
  sampleRate: number;
  featureSize: number;
  frameLengthMs: number;
  hopLengthMs: number;
  minFrequency: number;
  maxFrequency: number;
  melFloor: number;
  preemphasis: number;
  preemphasisHtkFlavor: boolean;
  fftOverdrive: boolean;
  inputScaleFactor: number;
  perBinMean?: number[];
  perBinStddev?: number[];
  /** Samples are right-padded to a multiple of this (0: no padding). */
  padToMultipleOf: number;
  /** Longer input is truncated to this many samples. */
  maxSamples: number;
  /** Soft-token cap (processor audio_seq_length). */
  maxSoftTokens: number;
}

export const GEMMA4_LOG_MEL_DEFAULTS: Readonly<LogMelOptions> = Object.freeze({
  sampleRate: AUDIO_SAMPLE_RATE,
  featureSize: 128,
  frameLengthMs: 20,
  hopLengthMs: 10,
  minFrequency: 0,
  maxFrequency: 8000,
  melFloor: 1e-3,
  preemphasis: 0,
  preemphasisHtkFlavor: true,
  fftOverdrive: false,
  inputScaleFactor: 1,
  padToMultipleOf: 128,
  maxSamples: 480000,
  maxSoftTokens: 750,
});

export interface LogMelResult {
  /** Row-major [frames, featureSize]. */
  features: Float32Array;
  /** 1 where the frame covers real audio, per frame. */
  mask: Uint8Array;
  frames: number;
  featureSize: number;
}

export class LogMelExtractor {
  readonly options: Readonly<LogMelOptions>;
  readonly frameLength: number;
  readonly hop: number;
  readonly fftSize: number;
  readonly window: Float32Array;
  readonly filterbank: MelFilterbank;
  private readonly fft: RealFft;
  private readonly frame: Float64Array;
  private readonly specRe: Float64Array;
  private readonly specIm: Float64Array;
  private readonly magnitude: Float64Array;

  constructor(options: Partial<LogMelOptions> = {}) {
    const o: LogMelOptions = { ...GEMMA4_LOG_MEL_DEFAULTS, ...options };
    this.options = Object.freeze(o);
    this.frameLength = Math.round((o.sampleRate * o.frameLengthMs) / 1000);
    this.hop = Math.round((o.sampleRate * o.hopLengthMs) / 1000);
    if (this.frameLength < 2 || this.hop < 1) throw new Error('log-mel: frame and hop must be positive');
    this.fftSize = 2 ** Math.ceil(Math.log2(this.frameLength)) * (o.fftOverdrive ? 2 : 1);
    for (const [name, v] of [
      ['perBinMean', o.perBinMean],
      ['perBinStddev', o.perBinStddev],
    ] as const) {
      if (v !== undefined && v.length !== o.featureSize)
        throw new Error(`log-mel: ${name} needs ${o.featureSize} values, got ${v.length}`);
    }
    this.window = new Float32Array(this.frameLength);
    for (let n = 0; n < this.frameLength; n++)
      this.window[n] = 0.5 - 0.5 * Math.cos((2 * Math.PI * n) / this.frameLength);
    this.filterbank = melFilterbank({
      filters: o.featureSize,
      fftSize: this.fftSize,
      sampleRate: o.sampleRate,
      minHz: o.minFrequency,
      maxHz: o.maxFrequency,
    });
    this.fft = new RealFft(this.fftSize);
    this.frame = new Float64Array(this.frameLength);
    this.specRe = new Float64Array(this.fft.bins);
    this.specIm = new Float64Array(this.fft.bins);
    this.magnitude = new Float64Array(this.fft.bins);
  }

  /** Samples after truncation and padding. */
  paddedLength(samples: number): number {
    const n = Math.min(samples, this.options.maxSamples);
    const m = this.options.padToMultipleOf;
    return m > 0 ? Math.ceil(n / m) * m : n;
  }

  /** Frames produced for `samples` input samples (valid or masked). */
  frameCount(samples: number): number {
    const total = (this.frameLength >> 1) + this.paddedLength(samples);
    const span = this.frameLength + 1;
    return total < span ? 0 : Math.floor((total - span) / this.hop) + 1;
  }

  /**
   * Frames that cover only real audio (mask 1) for `samples` input samples. Such a frame's values depend on
   * its own samples only, so a frame valid now keeps its values as more audio arrives: speech can be
   * featurised as it comes (extractRange).
   */
  validFrames(samples: number): number {
    const n = Math.min(samples, this.options.maxSamples);
    // Frame f is valid when its window's last real sample, f * hop + frameLength - padLeft, is below n.
    const reach = this.frameLength - (this.frameLength >> 1);
    return Math.min(this.frameCount(samples), n > reach ? Math.floor((n - reach - 1) / this.hop) + 1 : 0);
  }

  extract(samples: Float32Array | Int16Array): LogMelResult {
    return this.extractRange(samples, 0, this.frameCount(samples.length));
  }

  /** Frames from..to-1 of what extract(samples) gives (features [to - from, F] and their mask). */
  extractRange(samples: Float32Array | Int16Array, from: number, to: number): LogMelResult {
    const o = this.options;
    const n = Math.min(samples.length, o.maxSamples);
    const scale = (samples instanceof Int16Array ? 1 / 32768 : 1) * o.inputScaleFactor;
    const padLeft = this.frameLength >> 1;
    if (!(Number.isInteger(from) && Number.isInteger(to) && 0 <= from && from <= to && to <= this.frameCount(n)))
      throw new RangeError(`frames ${from}..${to} are outside the ${this.frameCount(n)} frames of ${n} samples`);
    const frames = to - from;
    const size = o.featureSize;
    const features = new Float32Array(frames * size);
    const mask = new Uint8Array(frames);
    // Padded index p holds real sample p - padLeft when that lies in [0, n); zero elsewhere.
    const at = (p: number): number => {
      const i = p - padLeft;
      return i >= 0 && i < n ? Math.fround(samples[i]! * scale) : 0;
    };
    const L = this.frameLength;
    const pre = o.preemphasis;
    const { frame, window, specRe, specIm, magnitude, filterbank: fb } = this;
    for (let f = 0; f < frames; f++) {
      const base = (from + f) * this.hop;
      if (base + L - padLeft >= n) continue; // masked frame: stays 0, as features * mask leaves it
      mask[f] = 1;
      if (pre > 0 && o.preemphasisHtkFlavor) {
        frame[0] = at(base) * (1 - pre);
        for (let i = 1; i < L; i++) frame[i] = at(base + i) - pre * at(base + i - 1);
      } else if (pre > 0) {
        for (let i = 0; i < L; i++) frame[i] = at(base + i + 1) - pre * at(base + i);
      } else {
        for (let i = 0; i < L; i++) frame[i] = at(base + i);
      }
      for (let i = 0; i < L; i++) frame[i] = Math.fround(frame[i]! * window[i]!);
      this.fft.forward(frame, specRe, specIm);
      for (let k = 0; k < magnitude.length; k++) magnitude[k] = Math.hypot(specRe[k]!, specIm[k]!);
      const row = f * size;
      for (let m = 0; m < size; m++) {
        const w = fb.weights[m]!;
        const first = fb.first[m]!;
        let acc = 0;
        for (let i = 0; i < w.length; i++) acc += w[i]! * magnitude[first + i]!;
        let v = Math.log(acc + o.melFloor);
        if (o.perBinMean) v -= o.perBinMean[m]!;
        if (o.perBinStddev) v /= o.perBinStddev[m]!;
        features[row + m] = v;
      }
    }
    return { features, mask, frames, featureSize: size };
  }

  /** Soft tokens the encoder makes of these features (see softTokenCount), capped at maxSoftTokens. */
  softTokens(mask: Uint8Array): number {
    return Math.min(softTokenCount(mask), this.options.maxSoftTokens);
  }
}

let defaultExtractor: LogMelExtractor | undefined;

/** Gemma 4 log-mel features with the released defaults (one shared extractor; tables built once). */
export function logMelFeatures(samples: Float32Array | Int16Array): LogMelResult {
  defaultExtractor ??= new LogMelExtractor();
  return defaultExtractor.extract(samples);
}

/**
 * Soft tokens from a frame mask, as Gemma4Processor.replace_audio_token counts them: two stride-2 convolutions
 * (kernel 3, padding 1) each keep every second frame, t_out = (t - 1) // 2 + 1; the count is the valid ones left.
 */
export function softTokenCount(mask: Uint8Array): number {
  let count = 0;
  // After two rounds of mask[::2], surviving frame j of the result is input frame 4j.
  for (let i = 0; i < mask.length; i += 4) count += mask[i]! ? 1 : 0;
  return count;
}

/** LogMelOptions from a processor_config.json object ({feature_extractor: {...}, audio_seq_length}); unknown keys ignored. */
export function optionsFromProcessorConfig(config: unknown): Partial<LogMelOptions> {
  const root = isRecord(config) ? config : {};
  const fe = isRecord(root.feature_extractor) ? root.feature_extractor : root;
  const out: Partial<LogMelOptions> = {};
  const num = (k: string): number | undefined =>
    typeof fe[k] === 'number' && Number.isFinite(fe[k]) ? (fe[k] as number) : undefined;
  const nums = (k: string): number[] | undefined =>
    Array.isArray(fe[k]) && (fe[k] as unknown[]).every((x) => typeof x === 'number') ? (fe[k] as number[]) : undefined;
  const set = <K extends keyof LogMelOptions>(key: K, v: LogMelOptions[K] | undefined): void => {
    if (v !== undefined) out[key] = v;
  };
  set('sampleRate', num('sampling_rate'));
  set('featureSize', num('feature_size'));
  set('frameLengthMs', num('frame_length_ms'));
  set('hopLengthMs', num('hop_length_ms'));
  set('minFrequency', num('min_frequency'));
  set('maxFrequency', num('max_frequency'));
  set('melFloor', num('mel_floor'));
  set('preemphasis', num('preemphasis'));
  set('inputScaleFactor', num('input_scale_factor'));
  set('perBinMean', nums('per_bin_mean'));
  set('perBinStddev', nums('per_bin_stddev'));
  if (typeof fe.preemphasis_htk_flavor === 'boolean') out.preemphasisHtkFlavor = fe.preemphasis_htk_flavor;
  if (typeof fe.fft_overdrive === 'boolean') out.fftOverdrive = fe.fft_overdrive;
  if (typeof root.audio_seq_length === 'number') out.maxSoftTokens = root.audio_seq_length;
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
