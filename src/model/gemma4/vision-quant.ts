/**
 * Quantisation policy for the vision encoder graph, and the measurements that justify it.
 *
 * Which tensors: every Linear of the table (input_proj, the 7 per-layer ClippableLinears, the embedder's
 * projection) may become MatMulNBits; the [2, E, H] position table may become two 8-bit
 * GatherBlockQuantized tables (exact lookups; 63 MB float on E2B). Norms and clip bounds stay float.
 *
 * Default (defaultVisionPolicy): 8-bit, block 128, for every linear (block 32 until the vision encoder was
 * profiled: with int8 activations the block is also the activation-scale block, and ORT's int8 kernel ran E2B's
 * shapes at 2,376 rows 1.25-1.4x faster at 128 than at 32 on an AVX2 EPYC; the golden tower's error stayed
 * 0.038-0.050 either way). Measured (test/gemma4-vision-quant.test.ts
 * prints the table): relative RMS reconstruction error of E2B-shaped matrices (synthetic uniform weights, rtn)
 * 0.33 at 2 bits, 0.064 at 4 bits, 0.0037 at 8 bits, the same for all nine matrix kinds. End to end the
 * error is amplified: attention logits are dot products of RMS-normed q and k with scaling 1.0, so small
 * q/k errors move the softmax a lot; on the tiny model the soft tokens move by 73% / 35% / 1.9% (2/4/8-bit)
 * against the float model. Every soft token then enters the decoder as if it were a word embedding, so
 * only 8-bit is acceptable. The E2B encoder is ~150 M parameters: 202 MB of external data at 8-bit (measured, with
 * scales, zero points and the 8-bit position tables; ~115 MB at 4-bit), run
 * once per image, not per token. accuracy_level 4 (int8 activations, the fast path on the Pi 5's dot-product
 * cores) adds ~3% on the tiny model; a Pi benchmark should decide between it and 0 (with ~2500 patch rows
 * per call, level 0's de-quantise-B-per-call fallback is amortised).
 */
import {
  type QuantizedMatrix,
  dequantizeMatMulNBits,
  quantizeGatherBlockQuantized,
  reconstructionError,
} from '../quant.js';
import { type LinearQuant, quantizeLinear } from './quantize.js';
import type { Gemma4VisionConfig } from './vision-config.js';
import { type VisionTensorSpec, visionNames, visionTensorTable } from './vision-weights.js';
import type { WeightSource } from './weights.js';

export interface TableQuant {
  bits: 4 | 8;
  blockSize: number;
}

export interface VisionQuantPolicy {
  /** Quantisation for one Linear (kind 'linear'), or null to keep it float32. */
  linear(spec: VisionTensorSpec): LinearQuant | null;
  /** The position tables (GatherBlockQuantized), or null for float32. */
  table: TableQuant | null;
}

export function uniformVisionPolicy(linear: LinearQuant | null, table: TableQuant | null): VisionQuantPolicy {
  return { linear: () => linear, table };
}

/** The package default (see the header): 8-bit block-128 linears, accuracy_level 4; 8-bit position tables. */
export function defaultVisionPolicy(method: 'search' | 'rtn' = 'search'): VisionQuantPolicy {
  return uniformVisionPolicy({ bits: 8, blockSize: 128, accuracyLevel: 4, method }, { bits: 8, blockSize: 32 });
}

/** The [2, E, H] table as its x half and y half, each [E, H]. */
export function splitPositionTable(table: Float32Array, e: number, h: number): [Float32Array, Float32Array] {
  return [table.subarray(0, e * h), table.subarray(e * h, 2 * e * h)];
}

export function quantizeTable(t: Float32Array, rows: number, width: number, q: TableQuant): QuantizedMatrix {
  return quantizeGatherBlockQuantized(t, rows, width, { bits: q.bits, blockSize: q.blockSize, method: 'rtn' });
}

/**
 * The weights the quantised graph computes with: quantised tensors replaced by dequantize(quantize(w)) (the
 * graph writer's code path), the rest passed through. For parity tests against VisionReference.
 */
export function dequantisedVisionWeightSource(
  src: WeightSource,
  cfg: Gemma4VisionConfig,
  policy: VisionQuantPolicy,
): WeightSource {
  const specs = new Map(visionTensorTable(cfg).map((s) => [s.name, s]));
  return {
    shape: (name) => src.shape(name),
    async get(name) {
      const w = await src.get(name);
      const spec = specs.get(name);
      if (!spec) return w;
      if (name === visionNames.positionTable && policy.table) {
        const E = cfg.positionEmbeddingSize;
        const H = cfg.hiddenSize;
        const out = new Float32Array(w.length);
        splitPositionTable(w, E, H).forEach((half, i) =>
          out.set(dequantizeMatMulNBits(quantizeTable(half, E, H, policy.table!)), i * E * H),
        );
        return out;
      }
      const lq = spec.kind === 'linear' ? policy.linear(spec) : null;
      return lq ? dequantizeMatMulNBits(quantizeLinear(w, spec.shape[0]!, spec.shape[1]!, lq)) : w;
    },
  };
}

export interface MatrixQuantError {
  name: string;
  shape: [number, number];
  /** Relative RMS error at each bit width. */
  relative: Record<2 | 4 | 8, number>;
}

/** Relative RMS reconstruction error of each listed linear at 2, 4 and 8 bits (for choosing and reporting a policy). */
export async function measureLinearErrors(
  src: WeightSource,
  specs: VisionTensorSpec[],
  blockSize = 32,
  method: 'search' | 'rtn' = 'search',
): Promise<MatrixQuantError[]> {
  const out: MatrixQuantError[] = [];
  for (const s of specs) {
    if (s.kind !== 'linear') continue;
    const w = await src.get(s.name);
    const [n, k] = s.shape as [number, number];
    const rel = {} as Record<2 | 4 | 8, number>;
    for (const bits of [2, 4, 8] as const)
      rel[bits] = reconstructionError(
        w,
        quantizeLinear(w, n, k, { bits, blockSize, accuracyLevel: 0, method }),
      ).relative;
    out.push({ name: s.name, shape: [n, k], relative: rel });
  }
  return out;
}
