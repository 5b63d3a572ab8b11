/** Shared helpers for the gemma4 audio tests: batches of log-mel-like features and graph runs. */
import * as ort from 'onnxruntime-node';
import { seededRandom } from '../src/model/gemma4/weights.js';

export interface AudioBatch {
  /** [batch, frames, F] */
  features: Float32Array;
  /** [batch, frames] 1 = real */
  mask: Uint8Array;
  batch: number;
  frames: number;
  /** Clip b's features [frames, F] (a view). */
  clip(b: number): Float32Array;
  maskOf(b: number): Uint8Array;
}

/**
 * Random features in the log-mel range (about -7 .. 2); clip b has `lengths[b]` real frames, the rest masked
 * and zeroed as the feature extractor leaves them.
 */
export function audioBatch(featureSize: number, frames: number, lengths: number[], seed: number): AudioBatch {
  const rand = seededRandom(seed);
  const n = lengths.length;
  const features = new Float32Array(n * frames * featureSize);
  const mask = new Uint8Array(n * frames);
  for (let b = 0; b < n; b++) {
    for (let t = 0; t < lengths[b]!; t++) {
      mask[b * frames + t] = 1;
      for (let f = 0; f < featureSize; f++) features[(b * frames + t) * featureSize + f] = -7 + 9 * rand();
    }
  }
  return {
    features,
    mask,
    batch: n,
    frames,
    clip: (b) => features.subarray(b * frames * featureSize, (b + 1) * frames * featureSize),
    maskOf: (b) => mask.subarray(b * frames, (b + 1) * frames),
  };
}

export async function runAudio(
  session: ort.InferenceSession,
  batch: Pick<AudioBatch, 'features' | 'mask' | 'batch' | 'frames'>,
): Promise<{ embeds: Float32Array; dims: readonly number[]; mask: Uint8Array }> {
  const featureSize = batch.features.length / (batch.batch * batch.frames);
  const out = await session.run({
    input_features: new ort.Tensor('float32', batch.features, [batch.batch, batch.frames, featureSize]),
    input_mask: new ort.Tensor('bool', Uint8Array.from(batch.mask), [batch.batch, batch.frames]),
  });
  const e = out.audio_embeds!;
  const m = out.audio_mask!;
  return {
    embeds: e.data as Float32Array,
    dims: e.dims,
    mask: Uint8Array.from(m.data as Uint8Array, (v) => (v ? 1 : 0)),
  };
}
