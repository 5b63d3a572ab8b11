/**
 * Runs audio_encoder.onnx for one clip and returns the soft tokens the decoder's `media` input takes: only the
 * rows of real audio, in order (transformers' Gemma4Model strips the padded ones the same way), one per
 * <|audio|> placeholder. Their count equals softTokenCount(mask) from src/audio/features.ts.
 */
import * as ort from 'onnxruntime-node';
import { AUDIO_GRAPH_IO } from '../model/gemma4/contract.js';

/** 30 s of 10 ms frames plus the extractor's padding (2999 for 480 000 samples); longer input is refused. */
export const MAX_AUDIO_FRAMES = 3000;

export interface AudioSoftTokens {
  /** [count, text hidden] row-major. */
  rows: Float32Array;
  count: number;
  hidden: number;
}

export class AudioEncoderSession {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly featureSize: number,
  ) {}

  static async open(
    modelPath: string,
    opts: { intraOpNumThreads?: number; featureSize?: number } = {},
  ): Promise<AudioEncoderSession> {
    const session = await ort.InferenceSession.create(modelPath, { intraOpNumThreads: opts.intraOpNumThreads ?? 0 });
    return new AudioEncoderSession(session, opts.featureSize ?? 128);
  }

  /** features [frames, featureSize] row-major and the frame mask (1 = real), as LogMelExtractor returns them. */
  async encode(features: Float32Array, mask: Uint8Array): Promise<AudioSoftTokens> {
    const frames = mask.length;
    if (frames === 0 || frames > MAX_AUDIO_FRAMES)
      throw new RangeError(`audio clip has ${frames} frames; 1..${MAX_AUDIO_FRAMES} are accepted (30 s)`);
    if (features.length !== frames * this.featureSize)
      throw new RangeError(`features hold ${features.length} values, expected ${frames} x ${this.featureSize}`);
    const out = await this.session.run({
      [AUDIO_GRAPH_IO.features]: new ort.Tensor('float32', features, [1, frames, this.featureSize]),
      [AUDIO_GRAPH_IO.mask]: new ort.Tensor(
        'bool',
        Uint8Array.from(mask, (v) => (v ? 1 : 0)),
        [1, frames],
      ),
    });
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

  async close(): Promise<void> {
    await this.session.release();
  }
}
