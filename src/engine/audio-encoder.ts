/**
 * Runs the package's audio encoder and returns the soft tokens the decoder's `media` input takes: only the
 * rows of real audio, in order (transformers' Gemma4Model strips the padded ones the same way), one per
 * <|audio|> placeholder. Their count equals softTokenCount(mask) from src/audio/features.ts.
 *
 * Packages hold one of two graphs (model/gemma4/audio-graph.ts): the streaming one (state in, state out; what
 * packages are written with now), which also serves whole clips by running them chunk by chunk, or the
 * one-pass one of older packages, which serves whole clips only.
 */
import * as ort from 'onnxruntime-node';
import { AUDIO_GRAPH_IO, AUDIO_STREAM_STATE, audioStateInput, audioStateOutput } from '../model/gemma4/contract.js';
import { type PrepackedCacheOptions, createCachedSession } from './prepacked-cache.js';
import { DEFAULT_TUNING } from './session.js';

/** 30 s of 10 ms frames plus the extractor's padding (2999 for 480 000 samples); longer input is refused. */
export const MAX_AUDIO_FRAMES = 3000;
/** Frames per soft token: the two stride-2 subsampling convolutions. */
export const FRAMES_PER_TOKEN = 4;
/** Soft tokens per run when a whole clip goes through the streaming graph (bounds the attention matrices). */
const WHOLE_CLIP_CHUNK_TOKENS = 48;

export interface AudioSoftTokens {
  /** [count, text hidden] row-major. */
  rows: Float32Array;
  count: number;
  hidden: number;
}

type State = Record<string, ort.Tensor>;

export class AudioEncoderSession {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly featureSize: number,
    /** Zero state of the streaming graph; null for a one-pass graph. */
    private readonly zeroState: State | null,
  ) {}

  static async open(
    modelPath: string,
    opts: {
      intraOpNumThreads?: number;
      featureSize?: number;
      /**
       * Map ORT's packed weights from this per-machine cache (checksum: the package's audio files): at accuracy
       * level 4 ORT repacks the 8-bit weights, which would otherwise sit in anonymous memory (E2B: ~280 MiB).
       */
      prepacked?: { cache: PrepackedCacheOptions; checksum: string };
    } = {},
  ): Promise<AudioEncoderSession> {
    const { session } = opts.prepacked
      ? await createCachedSession(
          { modelPath, checksum: opts.prepacked.checksum },
          { ...DEFAULT_TUNING, threads: opts.intraOpNumThreads ?? 0 },
          opts.prepacked.cache,
        )
      : { session: await ort.InferenceSession.create(modelPath, { intraOpNumThreads: opts.intraOpNumThreads ?? 0 }) };
    let zero: State | null = null;
    if (session.inputNames.includes(audioStateInput('keys'))) {
      zero = {};
      const meta = session.inputMetadata as unknown as ReadonlyArray<{ name: string; shape?: ReadonlyArray<unknown> }>;
      for (const s of AUDIO_STREAM_STATE) {
        const name = audioStateInput(s);
        const shape = meta.find((m) => m.name === name)?.shape;
        if (!shape?.every((d) => typeof d === 'number'))
          throw new Error(`${modelPath}: the streaming audio encoder's ${name} has no fixed shape`);
        const dims = shape as number[];
        zero[name] = new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
      }
    }
    return new AudioEncoderSession(session, opts.featureSize ?? 128, zero);
  }

  /** Whether this encoder can take audio as it arrives (openStream). */
  get streaming(): boolean {
    return this.zeroState !== null;
  }

  /** features [frames, featureSize] row-major and the frame mask (1 = real), as LogMelExtractor returns them. */
  async encode(features: Float32Array, mask: Uint8Array): Promise<AudioSoftTokens> {
    const frames = mask.length;
    if (frames === 0 || frames > MAX_AUDIO_FRAMES)
      throw new RangeError(`audio clip has ${frames} frames; 1..${MAX_AUDIO_FRAMES} are accepted (30 s)`);
    if (features.length !== frames * this.featureSize)
      throw new RangeError(`features hold ${features.length} values, expected ${frames} x ${this.featureSize}`);
    if (this.streaming) {
      const stream = this.openStream();
      const parts: AudioSoftTokens[] = [];
      const step = WHOLE_CLIP_CHUNK_TOKENS * FRAMES_PER_TOKEN;
      for (let at = 0; at < frames; at += step) {
        const end = Math.min(frames, at + step);
        parts.push(
          await stream.push(features.subarray(at * this.featureSize, end * this.featureSize), mask.subarray(at, end)),
        );
      }
      return joinTokens(parts);
    }
    const out = await this.session.run({
      [AUDIO_GRAPH_IO.features]: new ort.Tensor('float32', features, [1, frames, this.featureSize]),
      [AUDIO_GRAPH_IO.mask]: new ort.Tensor('bool', toBool(mask), [1, frames]),
    });
    return realRows(out);
  }

  /** A stream starting at the first frame of a clip. */
  openStream(): AudioStream {
    if (!this.zeroState) throw new Error('this audio encoder is a one-pass graph: rebuild the package to stream audio');
    return new AudioStream(this.session, this.featureSize, this.zeroState);
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}

/**
 * One clip fed as it arrives. Each push takes the next frames (and their mask) and returns the soft tokens they
 * complete; a push whose frame count is not a multiple of 4 ends the stream (its last token is padded, as the
 * one-pass graph pads the clip's end). The state is a set of tensors a run returns and never mutates, so `mark`
 * and `rewind` cost nothing: a stream can go back to any chunk boundary it passed.
 */
export class AudioStream {
  private ended = false;
  private frames = 0;

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly featureSize: number,
    private state: State,
  ) {}

  /** Frames consumed so far. */
  get position(): number {
    return this.frames;
  }

  async push(features: Float32Array, mask: Uint8Array): Promise<AudioSoftTokens> {
    if (this.ended) throw new Error('this audio stream has ended (its last push was not a multiple of 4 frames)');
    const n = mask.length;
    if (n === 0) return { rows: new Float32Array(0), count: 0, hidden: 0 };
    if (features.length !== n * this.featureSize)
      throw new RangeError(`features hold ${features.length} values, expected ${n} x ${this.featureSize}`);
    if (this.frames + n > MAX_AUDIO_FRAMES)
      throw new RangeError(`an audio stream takes at most ${MAX_AUDIO_FRAMES} frames (30 s)`);
    // Pad to whole tokens with masked zero frames: what the one-pass graph's convolution padding gives.
    const padded = Math.ceil(n / FRAMES_PER_TOKEN) * FRAMES_PER_TOKEN;
    let f = features;
    let m = mask;
    if (padded !== n) {
      f = new Float32Array(padded * this.featureSize);
      f.set(features);
      m = new Uint8Array(padded);
      m.set(mask);
      this.ended = true;
    }
    const feeds: State = {
      ...this.state,
      [AUDIO_GRAPH_IO.features]: new ort.Tensor('float32', f, [1, padded, this.featureSize]),
      [AUDIO_GRAPH_IO.mask]: new ort.Tensor('bool', toBool(m), [1, padded]),
    };
    const out = await this.session.run(feeds);
    const next: State = {};
    for (const s of AUDIO_STREAM_STATE) next[audioStateInput(s)] = out[audioStateOutput(s)]!;
    this.state = next;
    this.frames += n;
    return realRows(out);
  }

  /** Where the stream is now, to come back to with rewind. */
  mark(): AudioStreamMark {
    return { frames: this.frames, state: this.state, ended: this.ended };
  }

  rewind(m: AudioStreamMark): void {
    this.frames = m.frames;
    this.state = m.state;
    this.ended = m.ended;
  }
}

export interface AudioStreamMark {
  readonly frames: number;
  readonly state: Readonly<Record<string, ort.Tensor>>;
  readonly ended: boolean;
}

function toBool(mask: Uint8Array): Uint8Array {
  return Uint8Array.from(mask, (v) => (v ? 1 : 0));
}

/** The rows whose token mask is set, in order. */
function realRows(out: ort.InferenceSession.OnnxValueMapType): AudioSoftTokens {
  const emb = out[AUDIO_GRAPH_IO.embeds]!;
  const valid = out[AUDIO_GRAPH_IO.outMask]!.data as Uint8Array;
  const hidden = emb.dims[2]!;
  const data = emb.data as Float32Array;
  let count = 0;
  for (const v of valid) if (v) count++;
  const rows = new Float32Array(count * hidden);
  let r = 0;
  for (let t = 0; t < valid.length; t++) {
    if (!valid[t]) continue;
    rows.set(data.subarray(t * hidden, (t + 1) * hidden), r * hidden);
    r++;
  }
  return { rows, count, hidden };
}

export function joinTokens(parts: readonly AudioSoftTokens[]): AudioSoftTokens {
  const hidden = parts.find((p) => p.count > 0)?.hidden ?? 0;
  const count = parts.reduce((a, p) => a + p.count, 0);
  const rows = new Float32Array(count * hidden);
  let at = 0;
  for (const p of parts) {
    rows.set(p.rows, at);
    at += p.rows.length;
  }
  return { rows, count, hidden };
}
