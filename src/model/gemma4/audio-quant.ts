/**
 * Quantisation of the audio encoder's Linear layers (MatMulNBits): policies, per-matrix error reports, and the
 * dequantised weights the quantised graph effectively computes with (for parity tests).
 *
 * Policy (AUDIO_DEFAULT_POLICY): every Linear 8-bit, block 32, accuracy level 4 (int8 activations, as the vision
 * encoder); the convolutions, norms, relative-position keys and biases stay float32 (small). Measured on the tiny
 * config with random weights (test/gemma4-audio-quant.test.ts; real checkpoint weights were not available here):
 *   per-matrix relative RMSE   2-bit 0.32-0.34   4-bit 0.062-0.065   8-bit 0.0036-0.0038
 *   soft tokens vs float model (max abs error / max abs value)   8-bit ~1.1e-2   4-bit ~1.5e-1 to 1.9e-1
 *   graph vs reference on the dequantised weights: accuracy level 0 ~6e-7; accuracy level 4 ~1.5e-2 to 2.6e-2
 * and against transformers on the golden clips 2.3e-2 to 3.5e-2 at level 4, 1.3e-2 to 1.9e-2 at level 0.
 * Level 4 because hearing streams: the encoder runs on every 12-token chunk of speech, and at level 0 ONNX
 * Runtime widens the whole 8-bit weight to float on every run. E2B's encoder on 5 s of audio, 2 threads, AMD
 * EPYC: level 0 1042 ms in one pass, 6460 ms in 12-token chunks; level 4 394 ms and 559 ms. Its error compounds
 * through the residual layers into every soft token: 8-bit, not 4. E2B's ~295 M Linear weights are ~300 MB at
 * 8 bits vs ~1.2 GB float32.
 */
import { dequantizeMatMulNBits, reconstructionError, type QuantBits } from '../quant.js';
import type { Gemma4AudioConfig } from './audio-config.js';
import type { AudioQuantPolicy } from './audio-graph.js';
import { type AudioTensorSpec, audioTensorTable } from './audio-weights.js';
import { type LinearQuant, quantizeLinear } from './quantize.js';
import type { WeightSource } from './weights.js';

/** The same LinearQuant for every quantisable audio Linear. */
export function uniformAudioPolicy(q: LinearQuant | null): AudioQuantPolicy {
  return (spec) => (spec.kind === 'linear' ? q : null);
}

export const AUDIO_DEFAULT_LINEAR: LinearQuant = { bits: 8, blockSize: 32, accuracyLevel: 4 };
export const AUDIO_DEFAULT_POLICY: AudioQuantPolicy = uniformAudioPolicy(AUDIO_DEFAULT_LINEAR);

/** Weights as the quantised graph sees them: dequantize(quantize(w)) where the policy quantises. */
export function dequantisedAudioWeightSource(
  src: WeightSource,
  cfg: Gemma4AudioConfig,
  policy: AudioQuantPolicy,
): WeightSource {
  const specs = new Map(audioTensorTable(cfg).map((s) => [s.name, s]));
  return {
    shape: (name) => src.shape(name),
    async get(name) {
      const w = await src.get(name);
      const spec = specs.get(name);
      const q = spec ? policy(spec) : null;
      return spec && q ? dequantizeMatMulNBits(quantizeLinear(w, spec.shape[0]!, spec.shape[1]!, q)) : w;
    },
  };
}

export interface MatrixQuantError {
  name: string;
  shape: [number, number];
  bits: QuantBits;
  /** RMSE relative to the weights' RMS. */
  relative: number;
  maxAbs: number;
}

/** Reconstruction error of every quantisable audio Linear at each bit width (to choose and justify a policy). */
export async function audioQuantErrors(
  cfg: Gemma4AudioConfig,
  src: WeightSource,
  bits: readonly QuantBits[] = [2, 4, 8],
  blockSize = 32,
  method: 'search' | 'rtn' = 'rtn',
): Promise<MatrixQuantError[]> {
  const out: MatrixQuantError[] = [];
  const linears = audioTensorTable(cfg).filter((s: AudioTensorSpec) => s.kind === 'linear');
  for (const spec of linears) {
    const w = await src.get(spec.name);
    const [n, k] = spec.shape as [number, number];
    for (const b of bits) {
      const e = reconstructionError(w, quantizeLinear(w, n, k, { bits: b, blockSize, accuracyLevel: 0, method }));
      out.push({ name: spec.name, shape: [n, k], bits: b, relative: e.relative, maxAbs: e.maxAbs });
    }
  }
  return out;
}
