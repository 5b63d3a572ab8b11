/**
 * Quantisation policy for the decoder graph, over H6's MatMulNBits / GatherBlockQuantized quantisers.
 */
import { type QuantizedMatrix, dequantizeMatMulNBits, quantizeGatherBlockQuantized, quantizeMatMulNBits } from '../quant.js';
import type { Gemma4TextConfig } from './config.js';
import { type TensorSpec, type WeightSource, MULTIMODAL_TEXT_PREFIX, globalName, textTensorTable } from './weights.js';

export interface LinearQuant {
  bits: 2 | 4 | 8;
  blockSize: number;
  /** MatMulNBits accuracy_level: 4 = int8 activations (fast 2-bit on ARMv8.2 dot-product cores), 0 = float. */
  accuracyLevel: 0 | 1 | 2 | 3 | 4;
  method?: 'search' | 'rtn';
}

export interface EmbeddingQuant {
  bits: 2 | 4 | 8;
  blockSize: number;
  /** accuracy_level of the tied LM head's MatMulNBits. */
  accuracyLevel: 0 | 1 | 2 | 3 | 4;
  method?: 'search' | 'rtn';
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

/** The tied table in GatherBlockQuantized layout; the same bytes serve the LM head's MatMulNBits. */
export function quantizeEmbedding(w: Float32Array, vocab: number, hidden: number, q: EmbeddingQuant): QuantizedMatrix {
  return quantizeGatherBlockQuantized(w, vocab, hidden, { bits: q.bits, blockSize: q.blockSize, method: q.method ?? 'search' });
}

/**
 * The weights the quantised graph actually computes with: every tensor the policy quantises replaced by
 * dequantize(quantize(w)) (same code path as the graph writer), the rest passed through. For parity tests
 * and for measuring quantisation error against a float reference.
 */
export function dequantisedWeightSource(src: WeightSource, cfg: Gemma4TextConfig, policy: QuantPolicy, prefix = MULTIMODAL_TEXT_PREFIX): WeightSource {
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
      return lq ? dequantizeMatMulNBits(quantizeLinear(w, spec.shape[0]!, spec.shape[1]!, lq)) : w;
    },
  };
}
