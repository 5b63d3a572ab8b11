/**
 * Graph helpers for quantised weights: a MatMulNBits linear layer, a GatherBlockQuantized table lookup,
 * and a tied embedding / LM head whose bytes are stored once and read by both ops.
 */
import { type QuantizedMatrix, gatherBlockQuantizedDims, matMulNBitsDims } from '../model/quant.js';
import type { ExternalRef } from './external-data.js';
import type { GraphBuilder } from './graph.js';

export interface MatMulNBitsOptions {
  /** 0: float activations; 4: int8 activations (fast 2-bit path on ARMv8.2+ with dot-product). */
  accuracyLevel?: 0 | 1 | 2 | 3 | 4;
  /** Optional float bias [N]. */
  bias?: string;
}

/** y = input @ W^T for a quantised W [N, K]; input [..., K] → [..., N]. Returns the output name. */
export function addMatMulNBits(g: GraphBuilder, name: string, input: string, q: QuantizedMatrix, opts: MatMulNBitsOptions = {}): string {
  const d = matMulNBitsDims(q);
  const b = g.initializer(`${name}.qweight`, 'uint8', d.data, q.data);
  const s = g.initializer(`${name}.scales`, 'float32', d.scales, q.scales);
  const z = g.initializer(`${name}.zero_points`, 'uint8', d.zeroPoints, q.zeroPoints);
  return matMulNBitsNode(g, name, input, q, [b, s, z], opts);
}

function matMulNBitsNode(g: GraphBuilder, name: string, input: string, q: QuantizedMatrix, weights: string[], opts: MatMulNBitsOptions): string {
  const inputs = [input, ...weights];
  if (opts.bias) inputs.push('', opts.bias); // input 4 is g_idx (unused), 5 is bias
  const attrs = { K: q.k, N: q.n, bits: q.bits, block_size: q.blockSize, accuracy_level: opts.accuracyLevel ?? 0 };
  return g.node('MatMulNBits', inputs, 1, attrs, 'com.microsoft', name)[0]!;
}

/** rows = table[ids] dequantised; ids int64/int32 of any shape → [...ids.shape, width]. */
export function addGatherBlockQuantized(g: GraphBuilder, name: string, ids: string, q: QuantizedMatrix): string {
  const d = gatherBlockQuantizedDims(q);
  const data = g.initializer(`${name}.qweight`, 'uint8', d.data, q.data);
  const s = g.initializer(`${name}.scales`, 'float32', d.scales, q.scales);
  const z = g.initializer(`${name}.zero_points`, 'uint8', d.zeroPoints, q.zeroPoints);
  return gatherNode(g, name, ids, q, [data, s, z]);
}

function gatherNode(g: GraphBuilder, name: string, ids: string, q: QuantizedMatrix, weights: string[]): string {
  const [data, s, z] = weights as [string, string, string];
  const attrs = { gather_axis: 0, quantize_axis: 1, block_size: q.blockSize, bits: q.bits };
  return g.node('GatherBlockQuantized', [data, ids, s, z], 1, attrs, 'com.microsoft', name)[0]!;
}

export interface TiedEmbedding {
  /** Embedding lookup of `ids` (GatherBlockQuantized). */
  gather(ids: string, nodeName?: string): string;
  /** LM head: hidden [..., width] → logits [..., vocab] (MatMulNBits on the same bytes). */
  lmHead(hidden: string, opts?: MatMulNBitsOptions & { nodeName?: string }): string;
  refs: { data: ExternalRef; scales: ExternalRef; zeroPoints: ExternalRef };
}

/**
 * Writes a [vocab, width] table's bytes once (streaming external data required) and returns builders for
 * both uses. Verified in ORT 1.30: the MatMulNBits B / scales / zero points of W [N=vocab, K=width] and the
 * GatherBlockQuantized data / scales / zero points are the same bytes when width % blockSize == 0.
 */
export function addTiedEmbedding(g: GraphBuilder, name: string, q: QuantizedMatrix): TiedEmbedding {
  const ext = g.externalData;
  const refs = {
    data: ext.append(q.data),
    scales: ext.append(new Uint8Array(q.scales.buffer, q.scales.byteOffset, q.scales.byteLength)),
    zeroPoints: ext.append(q.zeroPoints),
  };
  const gd = gatherBlockQuantizedDims(q);
  const md = matMulNBitsDims(q);
  let gatherW: string[] | null = null;
  let headW: string[] | null = null;
  return {
    refs,
    gather(ids, nodeName) {
      gatherW ??= [
        g.initializerFromRef(`${name}.qweight`, 'uint8', gd.data, refs.data),
        g.initializerFromRef(`${name}.scales`, 'float32', gd.scales, refs.scales),
        g.initializerFromRef(`${name}.zero_points`, 'uint8', gd.zeroPoints, refs.zeroPoints),
      ];
      return gatherNode(g, nodeName ?? `${name}.gather`, ids, q, gatherW);
    },
    lmHead(hidden, opts = {}) {
      headW ??= [
        g.initializerFromRef(`${name}.lm_head.qweight`, 'uint8', md.data, refs.data),
        g.initializerFromRef(`${name}.lm_head.scales`, 'float32', md.scales, refs.scales),
        g.initializerFromRef(`${name}.lm_head.zero_points`, 'uint8', md.zeroPoints, refs.zeroPoints),
      ];
      return matMulNBitsNode(g, opts.nodeName ?? `${name}.lm_head`, hidden, q, headW, opts);
    },
  };
}
