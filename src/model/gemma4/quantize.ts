/**
 * Quantisation policy for the decoder graph, over H6's MatMulNBits / GatherBlockQuantized quantisers.
 */
import {
  type Int8ChannelMatrix,
  type QuantizedMatrix,
  dequantizeInt8Channels,
  dequantizeMatMulNBits,
  quantizeGatherBlockQuantized,
  quantizeInt8Channels,
  quantizeMatMulNBits,
} from '../quant.js';
import type { Gemma4TextConfig } from './config.js';
import { type TensorSpec, type WeightSource, MULTIMODAL_TEXT_PREFIX, globalName, textTensorTable } from './weights.js';

export interface LinearQuant {
  bits: 2 | 4 | 8;
  blockSize: number;
  /** MatMulNBits accuracy_level: 4 = int8 activations (fast 2-bit on ARMv8.2 dot-product cores), 0 = float. */
  accuracyLevel: 0 | 1 | 2 | 3 | 4;
  method?: 'search' | 'rtn';
  /** 'int8-channels': int8 per output channel, per-row int8 activations, MatMulInteger (Ops.int8Linear; bits 8, block and accuracy unused). */
  kernel?: 'matmul-nbits' | 'int8-channels';
}

export interface EmbeddingQuant {
  bits: 2 | 4 | 8;
  blockSize: number;
  /** accuracy_level of the tied LM head's MatMulNBits. */
  accuracyLevel: 0 | 1 | 2 | 3 | 4;
  method?: 'search' | 'rtn';
  /** 'int8-channels': the LM head is its own int8 per-channel matrix (Ops.int8Linear), not tied. */
  lmHead?: 'tied' | 'int8-channels';
}

export interface QuantPolicy {
  /** Quantisation for one Linear weight (kind 'linear'), or null to keep it float32. */
  linear(spec: TensorSpec): LinearQuant | null;
  /** The tied embedding table (GatherBlockQuantized) and LM head (MatMulNBits over the same bytes); null: float. */
  embedding: EmbeddingQuant | null;
}

/** Uniform policy: every linear with `linear`, the embedding with `embedding`. */
export function uniformPolicy(linear: LinearQuant | null, embedding: EmbeddingQuant | null): QuantPolicy {
  return { linear: () => linear, embedding };
}

export function quantizeLinear(w: Float32Array, n: number, k: number, q: LinearQuant): QuantizedMatrix {
  return quantizeMatMulNBits(w, n, k, { bits: q.bits, blockSize: q.blockSize, method: q.method ?? 'search' });
}

/** One Linear as the graph stores it under `q`: MatMulNBits blocks or int8 channels. */
export function quantizeLinearFor(
  w: Float32Array,
  n: number,
  k: number,
  q: LinearQuant,
): { kind: 'nbits'; q: QuantizedMatrix } | { kind: 'int8'; q: Int8ChannelMatrix } {
  return q.kernel === 'int8-channels'
    ? { kind: 'int8', q: quantizeInt8Channels(w, n, k) }
    : { kind: 'nbits', q: quantizeLinear(w, n, k, q) };
}

/** dequantize(quantize(w)) under `q`: the weights the graph multiplies with. */
export function requantizeLinear(w: Float32Array, n: number, k: number, q: LinearQuant): Float32Array {
  const r = quantizeLinearFor(w, n, k, q);
  return r.kind === 'int8' ? dequantizeInt8Channels(r.q) : dequantizeMatMulNBits(r.q);
}

/** The tied table in GatherBlockQuantized layout; the same bytes serve the LM head's MatMulNBits. */
export function quantizeEmbedding(w: Float32Array, vocab: number, hidden: number, q: EmbeddingQuant): QuantizedMatrix {
  return quantizeGatherBlockQuantized(w, vocab, hidden, {
    bits: q.bits,
    blockSize: q.blockSize,
    method: q.method ?? 'search',
  });
}

/**
 * The weights the quantised graph actually computes with: every tensor the policy quantises replaced by
 * dequantize(quantize(w)) (same code path as the graph writer), the rest passed through. For parity tests
 * and for measuring quantisation error against a float reference.
 */
export function dequantisedWeightSource(
  src: WeightSource,
  cfg: Gemma4TextConfig,
  policy: QuantPolicy,
  prefix = MULTIMODAL_TEXT_PREFIX,
): WeightSource {
  const specs = new Map(textTensorTable(cfg, prefix).map((s) => [s.name, s]));
  const embedName = globalName('embed', prefix);
  return {
    shape: (name) => src.shape(name),
    async get(name) {
      const w = await src.get(name);
      const spec = specs.get(name);
      if (!spec) return w;
      if (name === embedName && policy.embedding) {
        return dequantizeMatMulNBits(quantizeEmbedding(w, spec.shape[0]!, spec.shape[1]!, policy.embedding));
      }
      const lq = spec.kind === 'linear' ? policy.linear(spec) : null;
      return lq ? requantizeLinear(w, spec.shape[0]!, spec.shape[1]!, lq) : w;
    },
  };
}
