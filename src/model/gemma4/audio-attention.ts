/**
 * Graph pieces for the audio encoder's chunked local self-attention (Gemma4AudioAttention), written as the
 * blocked computation transformers performs, with plain ONNX ops:
 *   queries padded to nb * chunk and cut into nb blocks of `chunk`;
 *   keys/values padded by maxPast in front (and to the end) and gathered into per-block contexts of `ctx`
 *   (block b sees padded positions b*chunk .. b*chunk+ctx-1);
 *   logits = q.k + rel_shift(q.relk), soft-capped; invisible keys take attention_invalid_logits_value;
 *   softmax over the context, times values, blocks joined and cut back to S.
 * relk = relative_k_proj(sinusoid table) does not depend on the input, so it is a constant [heads, 1, D, P].
 */
import { type Gemma4AudioConfig, type AudioDerived, audioDerived } from './audio-config.js';
import type { Ops } from './graph-ops.js';

/** Gemma4AudioRelPositionalEncoding: sinusoid table [P, hidden] for relative positions P - 1 .. 0: [sin(p * inv_i) ..., cos(p * inv_i) ...]. */
export function relativePositionTable(c: Gemma4AudioConfig, d: AudioDerived): Float64Array {
  const half = c.hiddenSize / 2;
  const inc = Math.log(10000) / Math.max(half - 1, 1);
  const out = new Float64Array(d.numRelPositions * c.hiddenSize);
  for (let p = 0; p < d.numRelPositions; p++) {
    const pos = d.numRelPositions - 1 - p;
    for (let i = 0; i < half; i++) {
      const t = pos * Math.exp(-i * inc);
      out[p * c.hiddenSize + i] = Math.sin(t);
      out[p * c.hiddenSize + half + i] = Math.cos(t);
    }
  }
  return out;
}

/** Sequence-dependent tensors shared by every layer (computed once per graph run). */
export interface BlockContext {
  /** Scalar int64: tokens S. */
  seq: string;
  /** [1] int64: nb * chunk - S (query padding). */
  padQ: string;
  /** [nb, ctx] int64 gather indices into the front/back-padded key axis. */
  ctxIdx: string;
  /** [B, 1, nb, chunk, ctx] bool: key visible to query. */
  visible: string;
}

/** Pads axis 1 of a rank-`rank` tensor by `front` (static) and `back` ([1] int64, dynamic). */
function padAxis1(o: Ops, x: string, rank: number, front: number, back: string, value: string): string {
  const zeros = (n: number): number[] => Array.from({ length: n }, () => 0);
  const pads = o.op('Concat', [o.i64([...zeros(1), front, ...zeros(rank - 2), 0]), back, o.i64(zeros(rank - 2))], {
    axis: 0,
  });
  return o.op('Pad', [x, pads, value], { mode: 'constant' });
}

/** Block indices and the visibility mask from the token mask (float 0/1 [B, S]). */
export function blockContext(o: Ops, cfg: Gemma4AudioConfig, tokenMaskF: string): BlockContext {
  const d = audioDerived(cfg);
  const chunk = cfg.attentionChunkSize;
  const ctx = d.contextSize;
  const seq = o.dim(tokenMaskF, 1);
  const nb = o.op('Div', [o.op('Add', [seq, o.i64(chunk - 1)]), o.i64(chunk)]);
  const padQ = o.op('Unsqueeze', [o.op('Sub', [o.op('Mul', [nb, o.i64(chunk)]), seq]), o.i64([0])]);
  const starts = o.op('Unsqueeze', [o.op('Mul', [o.op('Range', [o.i64(0), nb, o.i64(1)]), o.i64(chunk)]), o.i64([1])]);
  const ctxIdx = o.op('Add', [
    starts,
    o.i64(
      Array.from({ length: ctx }, (_, j) => j),
      [1, ctx],
    ),
  ]);
  // Key validity per block context: padding (before 0 or past S) is invalid.
  const back = o.op('Add', [padQ, o.i64([d.maxFutureHorizon])]);
  const keyValid = o.op('Gather', [padAxis1(o, tokenMaskF, 2, d.maxPastHorizon, back, o.f32(0)), ctxIdx], { axis: 1 }); // [B, nb, ctx]
  // Window: query i (in block) sees context j when dist = maxPast + i - j is in [0, maxPast) (or a future key
  // within the right context), as sliding_window_mask_function((left - 1, right)) decides.
  const win = new Array<number>(chunk * ctx);
  for (let i = 0; i < chunk; i++) {
    for (let j = 0; j < ctx; j++) {
      const dist = d.maxPastHorizon + i - j;
      win[i * ctx + j] = (dist >= 0 && dist < d.maxPastHorizon) || (dist < 0 && -dist < d.maxFutureHorizon) ? 1 : 0;
    }
  }
  const both = o.op('Mul', [o.op('Unsqueeze', [keyValid, o.i64([2])]), o.f32(win, [chunk, ctx])]); // [B, nb, chunk, ctx]
  const visible = o.op('Greater', [o.op('Unsqueeze', [both, o.i64([1])]), o.f32(0.5)]);
  return { seq, padQ, ctxIdx, visible };
}

/** Relative keys for one layer: relk[h][d][p] = (relative_k_proj . sinusoid[p])[h*D + d], as [heads, 1, D, P]. */
export function relativeKeys(cfg: Gemma4AudioConfig, w: Float32Array): Float32Array {
  const d = audioDerived(cfg);
  const H = cfg.hiddenSize;
  const P = d.numRelPositions;
  const pe = relativePositionTable(cfg, d);
  const out = new Float32Array(H * P);
  for (let p = 0; p < P; p++) {
    for (let o = 0; o < H; o++) {
      let s = 0;
      for (let i = 0; i < H; i++) s += w[o * H + i]! * pe[p * H + i]!;
      // o = h * D + e  ->  [h][e][p]
      out[o * P + p] = s;
    }
  }
  return out;
}

/**
 * Attention core: q (already scaled), k (scaled), v as [B, S, heads * D]; relk initializer [heads, 1, D, P].
 * Returns [B, S, heads * D] (before the output projection).
 */
export function chunkedAttention(
  o: Ops,
  cfg: Gemma4AudioConfig,
  bc: BlockContext,
  q: string,
  k: string,
  v: string,
  relk: string,
): string {
  const d = audioDerived(cfg);
  const nH = cfg.numAttentionHeads;
  const D = d.headDim;
  const chunk = cfg.attentionChunkSize;
  const ctx = d.contextSize;
  const P = d.numRelPositions;
  const zero = o.f32(0);
  // Queries: [B, S, HD] -> pad to nb*chunk -> [B, nH, nb, chunk, D]
  const qp = padAxis1(o, q, 3, 0, bc.padQ, zero);
  const qb = o.op('Transpose', [o.op('Reshape', [qp, o.i64([0, -1, chunk, nH, D])])], { perm: [0, 3, 1, 2, 4] });
  // Keys/values: pad maxPast in front, gather block contexts -> [B, nb, ctx, nH, D]
  const back = o.op('Add', [bc.padQ, o.i64([d.maxFutureHorizon])]);
  const context = (x: string): string => {
    const g = o.op('Gather', [padAxis1(o, x, 3, d.maxPastHorizon, back, zero), bc.ctxIdx], { axis: 1 });
    return o.op('Reshape', [g, o.i64([0, 0, 0, nH, D])]);
  };
  const kT = o.op('Transpose', [context(k)], { perm: [0, 3, 1, 4, 2] }); // [B, nH, nb, D, ctx]
  const vb = o.op('Transpose', [context(v)], { perm: [0, 3, 1, 2, 4] }); // [B, nH, nb, ctx, D]
  const ac = o.op('MatMul', [qb, kT]);
  // Relative term [B, nH, nb, chunk, P], then _rel_shift: pad to ctx + 1, flatten, drop the tail, reshape.
  const bdRaw = o.op('MatMul', [qb, relk]);
  const padded = o.op('Pad', [bdRaw, o.i64([0, 0, 0, 0, 0, 0, 0, 0, 0, ctx + 1 - P]), zero], { mode: 'constant' });
  const flat = o.op('Reshape', [padded, o.i64([0, 0, 0, chunk * (ctx + 1)])]);
  const cut = o.op('Slice', [flat, o.i64([0]), o.i64([chunk * ctx]), o.i64([3])]);
  const bd = o.op('Reshape', [cut, o.i64([0, 0, 0, chunk, ctx])]);
  const cap = o.f32(cfg.attentionLogitCap);
  const capped = o.op('Mul', [o.op('Tanh', [o.op('Div', [o.op('Add', [ac, bd]), cap])]), cap]);
  const logits = o.op('Where', [bc.visible, capped, o.f32(cfg.attentionInvalidLogitsValue)]);
  const probs = o.op('Softmax', [logits], { axis: -1 });
  const att = o.op('MatMul', [probs, vb]); // [B, nH, nb, chunk, D]
  const joined = o.op('Reshape', [o.op('Transpose', [att], { perm: [0, 2, 3, 1, 4] }), o.i64([0, -1, nH * D])]);
  return o.op('Slice', [joined, o.i64([0]), o.op('Unsqueeze', [bc.seq, o.i64([0])]), o.i64([1])]);
}
