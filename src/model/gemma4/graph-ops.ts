/**
 * Building blocks of the decoder graph (linear, RMSNorm, RoPE, GELU, masks) over H6's GraphBuilder.
 * Each helper takes tensor names and returns the output name; weights arrive already prepared
 * (float, or MatMulNBits-packed) so this file knows nothing about checkpoints or policies.
 */
import { type GraphBuilder, attrFloat } from '../../onnx/graph.js';

/** MatMulNBits-packed weight of a Linear [n (out), k (in)] (layout per ORT's contrib op). */
export interface PackedLinear {
  bits: number;
  blockSize: number;
  n: number;
  k: number;
  data: Uint8Array;
  scales: Float32Array;
  zeroPoints?: Uint8Array | null;
}

export interface QuantInits {
  data: string;
  scales: string;
  zeroPoints: string | null;
}

/** int8 codes per output channel, transposed to [k, n] as MatMulInteger's B (src/model/quant.ts). */
export interface Int8Linear {
  n: number;
  k: number;
  codes: Int8Array;
  scales: Float32Array;
}

export type LinearWeight =
  | { kind: 'float'; n: number; k: number; w: Float32Array /* [n, k] torch layout */ }
  | { kind: 'nbits'; packed: PackedLinear; accuracyLevel: number }
  | { kind: 'int8'; matrix: Int8Linear };

export interface OpsOptions {
  /** Use com.microsoft SimplifiedLayerNormalization instead of plain ops for RMSNorm. */
  fusedNorm: boolean;
  /** Use ONNX Gelu(approximate="tanh") instead of the explicit tanh formula. */
  onnxGelu: boolean;
}

const NEG_INF_MASK = -1e30;

/** RoPE for com.microsoft.RotaryEmbedding (Ops.rotaryCaches). */
export interface RotaryCaches {
  cos: string;
  sin: string;
  ids: string;
}

export class Ops {
  private readonly consts = new Map<string, string>();

  constructor(
    readonly b: GraphBuilder,
    readonly opts: OpsOptions,
  ) {}

  /** A uint8 scalar constant (cached by value). */
  u8(value: number): string {
    const key = `u8:${value}`;
    let name = this.consts.get(key);
    if (!name) {
      name = this.b.initializer('const_u8', 'uint8', [], Uint8Array.of(value), { external: false });
      this.consts.set(key, name);
    }
    return name;
  }

  /** A small float32 constant (cached by value). */
  f32(values: number | number[], dims?: number[]): string {
    const arr = typeof values === 'number' ? [values] : values;
    const d = dims ?? (typeof values === 'number' ? [] : [arr.length]);
    const key = `f:${d.join('x')}:${arr.join(',')}`;
    let name = this.consts.get(key);
    if (!name) {
      name = this.b.initializer('const_f32', 'float32', d, Float32Array.from(arr), { external: false });
      this.consts.set(key, name);
    }
    return name;
  }

  /** A small int64 constant (cached by value). */
  i64(values: number | number[], dims?: number[]): string {
    const arr = typeof values === 'number' ? [values] : values;
    const d = dims ?? (typeof values === 'number' ? [] : [arr.length]);
    const key = `i:${d.join('x')}:${arr.join(',')}`;
    let name = this.consts.get(key);
    if (!name) {
      name = this.b.initializer('const_i64', 'int64', d, BigInt64Array.from(arr.map((v) => BigInt(v))), {
        external: false,
      });
      this.consts.set(key, name);
    }
    return name;
  }

  op(type: string, inputs: string[], attrs: Parameters<GraphBuilder['op']>[2] = {}, domain = ''): string {
    return this.b.op(type, inputs, attrs, domain);
  }

  /** y = x W^T for a torch Linear weight [n, k]; x [..., k] -> [..., n]. */
  linear(x: string, name: string, lw: LinearWeight): string {
    if (lw.kind === 'float') {
      const wt = transpose(lw.w, lw.n, lw.k);
      const init = this.b.initializer(`${name}.wT`, 'float32', [lw.k, lw.n], wt);
      return this.op('MatMul', [x, init]);
    }
    if (lw.kind === 'int8') return this.int8Linear(x, name, lw.matrix);
    const p = lw.packed;
    const kBlocks = Math.ceil(p.k / p.blockSize);
    const blob = (p.blockSize * p.bits) / 8;
    const B = this.b.initializer(`${name}.qweight`, 'uint8', [p.n, kBlocks, blob], p.data);
    const scales = this.b.initializer(`${name}.scales`, 'float32', [p.n * kBlocks], p.scales);
    const inputs = [x, B, scales];
    if (p.zeroPoints && p.zeroPoints.length > 0) {
      inputs.push(this.b.initializer(`${name}.zero_points`, 'uint8', [p.zeroPoints.length], p.zeroPoints));
    }
    return this.op(
      'MatMulNBits',
      inputs,
      { K: p.k, N: p.n, bits: p.bits, block_size: p.blockSize, accuracy_level: lw.accuracyLevel },
      'com.microsoft',
    );
  }

  /**
   * y = x W^T with W as int8 per output channel. Each row of x (one token) is rounded to int8 with its own
   * scale max|x_row| / 127 and stored as uint8 around 128, so MatMulInteger runs ORT's uint8 x int8 kernel
   * (no dot product needed; on x86-64 the weights' 7-bit range keeps it exact), then
   *   y = (int32 product) * row scale * channel scale.
   * Per row, not per call: one scale for a whole prompt chunk (DynamicQuantizeMatMul) let one token's large
   * activations coarsen every other token's, which measured 3x the KL on Gemma 3 270M (models/README.md).
   */
  int8Linear(x: string, name: string, m: Int8Linear): string {
    const B = this.b.initializer(`${name}.int8_weight`, 'int8', [m.k, m.n], m.codes);
    const channelScales = this.b.initializer(`${name}.int8_scales`, 'float32', [m.n], m.scales);
    const rows = this.op('Reshape', [x, this.i64([-1, m.k])]);
    const amax = this.op('ReduceMax', [this.op('Abs', [rows]), this.i64([1])], { keepdims: 0 });
    const rowScale = this.op('Max', [this.op('Div', [amax, this.f32(127)]), this.f32(1e-30)]);
    const mid = this.u8(128);
    const q = this.op('QuantizeLinear', [rows, rowScale, this.op('Expand', [mid, this.op('Shape', [rowScale])])], {
      axis: 0,
    });
    const acc = this.op('MatMulInteger', [q, B, mid]);
    const y = this.op('Mul', [
      this.op('Mul', [this.op('Cast', [acc], { to: 1 }), this.op('Unsqueeze', [rowScale, this.i64([1])])]),
      channelScales,
    ]);
    const outShape = this.op(
      'Concat',
      [this.op('Slice', [this.op('Shape', [x]), this.i64([0]), this.i64([-1])]), this.i64([m.n])],
      { axis: 0 },
    );
    return this.op('Reshape', [y, outShape]);
  }

  /**
   * Embedding lookup from a block-quantised table (com.microsoft.GatherBlockQuantized, uint8 data, quantised
   * along the last axis). Returns the output and the initializer names, so the LM head can share the bytes.
   */
  gatherQuantized(q: PackedLinear, ids: string, name: string): { out: string; inits: QuantInits } {
    const nb = q.k / q.blockSize;
    const zpRow = Math.ceil((nb * q.bits) / 8);
    const inits: QuantInits = {
      data: this.b.initializer(`${name}.qweight`, 'uint8', [q.n, (q.k * q.bits) / 8], q.data),
      scales: this.b.initializer(`${name}.scales`, 'float32', [q.n, nb], q.scales),
      zeroPoints: q.zeroPoints ? this.b.initializer(`${name}.zero_points`, 'uint8', [q.n, zpRow], q.zeroPoints) : null,
    };
    const inputs = [inits.data, ids, inits.scales, ...(inits.zeroPoints ? [inits.zeroPoints] : [])];
    const out = this.op(
      'GatherBlockQuantized',
      inputs,
      { gather_axis: 0, quantize_axis: 1, block_size: q.blockSize, bits: q.bits },
      'com.microsoft',
    );
    return { out, inits };
  }

  /**
   * MatMulNBits over the bytes of a GatherBlockQuantized table (tied LM head): the byte layouts are identical
   * when width % blockSize == 0. Streamed (external) initializers are shared by reference; small ones copied.
   */
  linearFromTable(x: string, name: string, q: PackedLinear, table: QuantInits, accuracyLevel: number): string {
    const nb = Math.ceil(q.k / q.blockSize);
    const share = (
      suffix: string,
      type: 'uint8' | 'float32',
      dims: number[],
      from: string,
      bytes: Uint8Array | Float32Array,
    ): string => {
      const ref = this.b.externalRef(from);
      return ref
        ? this.b.initializerFromRef(`${name}.${suffix}`, type, dims, ref)
        : this.b.initializer(`${name}.${suffix}`, type, dims, bytes);
    };
    const inputs = [
      x,
      share('qweight', 'uint8', [q.n, nb, (q.blockSize * q.bits) / 8], table.data, q.data),
      share('scales', 'float32', [q.n * nb], table.scales, q.scales),
    ];
    if (table.zeroPoints && q.zeroPoints)
      inputs.push(share('zero_points', 'uint8', [q.zeroPoints.length], table.zeroPoints, q.zeroPoints));
    return this.op(
      'MatMulNBits',
      inputs,
      { K: q.k, N: q.n, bits: q.bits, block_size: q.blockSize, accuracy_level: accuracyLevel },
      'com.microsoft',
    );
  }

  /** RMSNorm over the last axis: x * (mean(x^2) + eps)^-0.5 [* w]. */
  rmsNorm(x: string, name: string, w: Float32Array | null, eps: number): string {
    if (this.opts.fusedNorm) {
      // SimplifiedLayerNormalization always takes a scale (rmsNormNoScale passes ones).
      if (!w) throw new Error('fused RMSNorm needs a scale: use rmsNormNoScale');
      const s = this.b.initializer(`${name}.weight`, 'float32', [w.length], w);
      return this.op('SimplifiedLayerNormalization', [x, s], { axis: -1, epsilon: attrFloat(eps), stash_type: 1 });
    }
    const sq = this.op('Mul', [x, x]);
    const ms = this.op('ReduceMean', [sq, this.i64([-1])], { keepdims: 1 });
    const inv = this.op('Pow', [this.op('Add', [ms, this.f32(eps)]), this.f32(-0.5)]);
    const y = this.op('Mul', [x, inv]);
    return w ? this.op('Mul', [y, this.b.initializer(`${name}.weight`, 'float32', [w.length], w)]) : y;
  }

  /**
   * sum = x + skip and RMSNorm(sum) * w in one com.microsoft.SkipSimplifiedLayerNormalization (fusedNorm),
   * or plain ops. Returns [normed, sum].
   */
  skipRmsNorm(x: string, skip: string, name: string, w: Float32Array, eps: number): [string, string] {
    if (!this.opts.fusedNorm) {
      const sum = this.op('Add', [skip, x]);
      return [this.rmsNorm(sum, name, w, eps), sum];
    }
    const gamma = this.b.initializer(`${name}.weight`, 'float32', [w.length], w);
    // node() claims explicit output names; `name` is unique per norm, so these are too.
    const out = `${name}/out`;
    const sum = `${name}/sum`;
    this.b.node(
      'SkipSimplifiedLayerNormalization',
      [x, skip, gamma],
      [out, '', '', sum],
      { epsilon: attrFloat(eps) },
      'com.microsoft',
    );
    return [out, sum];
  }

  /** RMSNorm without a learned scale (v-norm); `dim` is the size of the last axis. */
  rmsNormNoScale(x: string, name: string, dim: number, eps: number): string {
    if (this.opts.fusedNorm) {
      const ones = new Float32Array(dim).fill(1);
      return this.rmsNorm(x, name, ones, eps);
    }
    return this.rmsNorm(x, name, null, eps);
  }

  /** gelu with the tanh approximation (transformers' gelu_pytorch_tanh). */
  geluTanh(x: string): string {
    if (this.opts.onnxGelu) return this.op('Gelu', [x], { approximate: 'tanh' });
    const x3 = this.op('Mul', [this.op('Mul', [x, x]), x]);
    const inner = this.op('Mul', [
      this.op('Add', [x, this.op('Mul', [x3, this.f32(0.044715)])]),
      this.f32(Math.sqrt(2 / Math.PI)),
    ]);
    const t = this.op('Add', [this.op('Tanh', [inner]), this.f32(1)]);
    return this.op('Mul', [this.op('Mul', [x, t]), this.f32(0.5)]);
  }

  /** cos/sin tables [batch, seq, 1, headDim] (for x in [batch, seq, heads, d]) from float positions [batch, seq, 1]. */
  ropeTables(posF: string, invFreq: Float64Array): { cos: string; sin: string } {
    const freqs = this.op('Mul', [posF, this.f32([...Float32Array.from(invFreq)])]);
    const emb = this.op('Concat', [freqs, freqs], { axis: -1 });
    const cos = this.op('Unsqueeze', [this.op('Cos', [emb]), this.i64([2])]);
    const sin = this.op('Unsqueeze', [this.op('Sin', [emb]), this.i64([2])]);
    return { cos, sin };
  }

  /**
   * Caches for com.microsoft.RotaryEmbedding holding exactly this run's positions: cos/sin [B*S, d/2] (the
   * first half of ropeTables' rows), indexed by ids [B, S] = 0 .. B*S-1. No table of every position a context
   * could reach (E2B's full layers: 131,072 x 256 floats each).
   */
  rotaryCaches(posF: string, positionIds: string, invFreq: Float64Array): RotaryCaches {
    const half = invFreq.length;
    const freqs = this.op('Reshape', [
      this.op('Mul', [posF, this.f32([...Float32Array.from(invFreq)])]),
      this.i64([-1, half]),
    ]);
    const count = this.op('Mul', [this.dim(positionIds, 0), this.dim(positionIds, 1)]);
    const ids = this.op('Reshape', [
      this.op('Range', [this.i64(0), count, this.i64(1)]),
      this.op('Shape', [positionIds]),
    ]);
    return { cos: this.op('Cos', [freqs]), sin: this.op('Sin', [freqs]), ids };
  }

  /** applyRope in one node, on x [batch, heads, seq, d]: x * cos + rotate_half(x) * sin. */
  rotary(x: string, c: RotaryCaches): string {
    return this.b.node('RotaryEmbedding', [x, c.ids, c.cos, c.sin], 1, {}, 'com.microsoft')[0]!;
  }

  /** x * cos + rotate_half(x) * sin, x [batch, seq, heads, d]; rotate_half(x) = concat(-x2, x1). */
  applyRope(x: string, t: { cos: string; sin: string }, d: number): string {
    const [x1, x2] = this.b.node('Split', [x, this.i64([d / 2, d / 2])], 2, { axis: -1 });
    const rot = this.op('Concat', [this.op('Neg', [x2!]), x1!], { axis: -1 });
    return this.op('Add', [this.op('Mul', [x, t.cos]), this.op('Mul', [rot, t.sin])]);
  }

  /**
   * Plain attention core (scaling 1.0): q [B, nH, S, d], k/v [B, nKv, T, d] (past + new). The g = nH/nKv query
   * heads of a KV head are stacked as the rows of one matrix, q [B, nKv, g*S, d] x k^T [B, nKv, d, T]: one
   * matrix product per KV head, not g vector products (at decode, S = 1). The additive mask is either per query
   * row, [S, T] (tiled over the g heads here), or the same for every row, broadcastable to [B, 1, 1, T]
   * (`maskRows: 'all'`). Returns [B, S, nH*d].
   */
  attention(
    q: string,
    k: string,
    v: string,
    mask: string,
    nH: number,
    nKv: number,
    d: number,
    maskRows: 'per-query' | 'all' = 'per-query',
  ): string {
    const g = nH / nKv;
    const rows = this.op('Reshape', [q, this.i64([0, nKv, -1, d])]);
    const m = maskRows === 'per-query' && g > 1 ? this.op('Tile', [mask, this.i64([g, 1])]) : mask;
    const scores = this.op('Add', [this.op('MatMul', [rows, this.op('Transpose', [k], { perm: [0, 1, 3, 2] })]), m]);
    const probs = this.op('Softmax', [scores], { axis: -1 });
    const attn = this.op('Reshape', [this.op('MatMul', [probs, v]), this.i64([0, nH, -1, d])]);
    return this.op('Reshape', [this.op('Transpose', [attn], { perm: [0, 2, 1, 3] }), this.i64([0, 0, nH * d])]);
  }

  /**
   * Attention for one KV head: q [B, 1, S * nH, d] with rows in (position, head) order, k/v [B, 1, T, d] (past +
   * new), mask [S * nH, T] (repeatRows). Returns [B, S, nH * d] by a reshape alone, the rows being in that order.
   */
  attentionOneKvHead(q: string, k: string, v: string, mask: string, nH: number, d: number): string {
    const scores = this.op('Add', [this.op('MatMul', [q, this.op('Transpose', [k], { perm: [0, 1, 3, 2] })]), mask]);
    const probs = this.op('Softmax', [scores], { axis: -1 });
    return this.op('Reshape', [this.op('MatMul', [probs, v]), this.i64([0, -1, nH * d])]);
  }

  /** Each row of a [S, T] mask `times` times in a row: [S * times, T] (row s * times + h is row s). */
  repeatRows(mask: string, times: number): string {
    const expanded = this.op('Expand', [this.op('Unsqueeze', [mask, this.i64([1])]), this.i64([1, times, 1])]);
    return this.op('Flatten', [expanded], { axis: 2 });
  }

  /**
   * com.microsoft.GroupQueryAttention with RoPE already applied (do_rotary 0) and scale 1.0: q [B, S, nH*d],
   * new k/v [B, S, nKv*d], past [B, nKv, P, d]. It masks causally by relative position (past = P), with
   * local_window_size = window on sliding layers (ORT keeps keys with q - k < local_window_size, checked against
   * the reference). Returns [output, presentKey, presentValue] (present = past + new).
   */
  gqa(
    q: string,
    k: string,
    v: string,
    pastK: string,
    pastV: string,
    seq: string,
    nH: number,
    nKv: number,
    window: number | null,
  ): string[] {
    const total = this.op('Add', [this.dim(pastK, 2), seq]);
    const batch = this.op('Slice', [this.op('Shape', [q]), this.i64([0]), this.i64([1]), this.i64([0])]);
    const seqlensK = this.op('Cast', [this.op('Expand', [this.op('Sub', [total, this.i64(1)]), batch])], { to: 6 });
    const totalLen = this.op('Cast', [total], { to: 6 });
    return this.b.node(
      'GroupQueryAttention',
      [q, k, v, pastK, pastV, seqlensK, totalLen],
      3,
      {
        num_heads: nH,
        kv_num_heads: nKv,
        scale: attrFloat(1.0),
        local_window_size: window === null ? -1 : window,
        do_rotary: 0,
      },
      'com.microsoft',
    );
  }

  /** Scalar int64 size of axis `axis` of tensor x. */
  dim(x: string, axis: number): string {
    return this.op('Gather', [this.op('Shape', [x]), this.i64(axis)], { axis: 0 });
  }

  /**
   * Additive attention mask [seq, total] for queries that are the LAST `seq` of `total` consecutive
   * positions: key j is visible to query i iff j <= past + i and (window: past + i - j < window).
   */
  causalMask(seq: string, total: string, window: number | null): string {
    const past = this.op('Sub', [total, seq]);
    const qi = this.op('Unsqueeze', [
      this.op('Add', [this.op('Range', [this.i64(0), seq, this.i64(1)]), past]),
      this.i64([1]),
    ]);
    const kj = this.op('Unsqueeze', [this.op('Range', [this.i64(0), total, this.i64(1)]), this.i64([0])]);
    let ok = this.op('LessOrEqual', [kj, qi]);
    if (window !== null) ok = this.op('And', [ok, this.op('Less', [this.op('Sub', [qi, kj]), this.i64(window)])]);
    return this.op('Where', [ok, this.f32(0), this.f32(NEG_INF_MASK)]);
  }
}

export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c]!;
  return out;
}
