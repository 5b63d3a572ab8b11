/**
 * Plain TypeScript forward pass of the Gemma 4 text decoder, one token at a time, for tests only.
 * Clarity over speed: simple loops, float64 accumulation, a full-history KV cache per KV-owning layer
 * (windows are applied by position in the attention loop, so it checks the graph's cache truncation
 * independently). Processing a prompt token by token is mathematically the same as a causal prefill.
 *
 * Per token at position p (modeling_gemma4.py, Gemma4TextModel / Gemma4TextDecoderLayer):
 *   x   = embed[id] * sqrt(hidden)
 *   ple = ( RMSNorm_pleNorm( reshape(W_pmp x * hidden^-0.5, [L, ple]) ) + pleTable[id] * sqrt(ple) ) * 2^-0.5
 *   per layer: h += postAttnNorm(attn(inputNorm(h)))
 *              h += postFfNorm(mlp(preFfNorm(h)))           mlp = down(gelu_tanh(gate x) * up x)
 *              h += plePostNorm(pleProj(gelu_tanh(pleGate h) * ple[layer]))
 *              h *= layer_scalar
 *   logits = softcap(embed . finalNorm(h)),  softcap(z) = cap * tanh(z / cap)
 * Attention: q = rope(qNorm(q_proj x)), k = rope(kNorm(k_proj x)), v = vNorm(v_proj x) (no scale),
 * scores = q.k (scaling 1.0), GQA, causal; sliding layers see keys with p - t < window.
 * Gemma 3 (config.family 'gemma3') is the same without the PLE block, v norm and layer scalar, with RMSNorm
 * scales (1 + w) and scores = q.k * query_pre_attn_scalar^-0.5.
 */
import { type Gemma4TextConfig, type LayerInfo, layerInfos } from './config.js';
import { geluTanh, rmsNormAt } from './reference-math.js';
import {
  type GlobalRole,
  type LayerRole,
  type WeightSource,
  MULTIMODAL_TEXT_PREFIX,
  globalName,
  layerName,
  textTensorTable,
} from './weights.js';

/** out = W x for a row-major [rows, cols] matrix. */
function matvec(w: Float32Array, x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) s += w[base + c]! * x[c]!;
    out[r] = s;
  }
  return out;
}

/** In-place RoPE (rotate_half convention: pairs (i, i + d/2)) of v[off .. off+d) at position pos. */
function rope(v: Float64Array, off: number, d: number, invFreq: Float64Array, pos: number): void {
  const half = d / 2;
  for (let i = 0; i < half; i++) {
    // float32 angle, as transformers and the graph compute it
    const ang = Math.fround(Math.fround(invFreq[i]!) * pos);
    const c = Math.cos(ang);
    const s = Math.sin(ang);
    const x1 = v[off + i]!;
    const x2 = v[off + half + i]!;
    v[off + i] = x1 * c - x2 * s;
    v[off + half + i] = x2 * c + x1 * s;
  }
}

/**
 * Emulates MatMulNBits accuracy_level 4 (int8 activations): each block of `bs` inputs is rounded to
 * symmetric int8 with scale max|x| / 127, then used as floats again.
 */
function int8Blocks(x: ArrayLike<number>, bs: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let b0 = 0; b0 < x.length; b0 += bs) {
    const end = Math.min(x.length, b0 + bs);
    let amax = 0;
    for (let i = b0; i < end; i++) amax = Math.max(amax, Math.abs(Math.fround(x[i]!)));
    const scale = Math.fround(amax / 127);
    const inv = amax === 0 ? 0 : Math.fround(127 / amax);
    for (let i = b0; i < end; i++) out[i] = roundHalfEven(Math.fround(Math.fround(x[i]!) * inv)) * scale;
  }
  return out;
}

/**
 * Emulates the int8-channels linears' activations (Ops.int8Linear): the vector rounded to int8 with scale
 * max|x| / 127 (float32, as the graph divides), ties to even as QuantizeLinear.
 */
function int8Row(x: ArrayLike<number>): Float64Array {
  let amax = 0;
  for (let i = 0; i < x.length; i++) amax = Math.max(amax, Math.abs(Math.fround(x[i]!)));
  const scale = Math.fround(Math.max(Math.fround(amax / 127), Math.fround(1e-30)));
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++)
    out[i] = Math.min(127, Math.max(-128, roundHalfEven(Math.fround(Math.fround(x[i]!) / scale)))) * scale;
  return out;
}

function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export interface ReferenceOptions {
  /** Checkpoint name prefix (default model.language_model.). */
  prefix?: string;
  /** Emulate int8 activation quantisation (MatMulNBits accuracy_level 4) with this block size in every Linear and the LM head. */
  int8ActivationBlock?: number;
  /** Emulate the int8-channels linears' per-row int8 activations in every Linear and the LM head. */
  int8RowActivations?: boolean;
  /** An untied LM head [vocab, hidden] (default: the embedding table). */
  lmHead?: Float32Array;
}

interface LayerCache {
  keys: Float64Array[];
  values: Float64Array[];
}

export class Gemma4Reference {
  readonly layers: LayerInfo[];
  /** Number of tokens processed so far (= position of the next token). */
  position = 0;
  /** Sees every decoder layer's output (the residual stream after the layer scalar), e.g. to hold it against transformers'. */
  onLayerOutput?: (layer: number, hidden: Float64Array) => void;
  private caches: LayerCache[] = [];

  private constructor(
    readonly cfg: Gemma4TextConfig,
    private readonly w: Map<string, Float32Array>,
    private readonly prefix: string,
    private readonly activations: ((x: ArrayLike<number>) => ArrayLike<number>) | null,
    private readonly lmHead: Float32Array | null,
  ) {
    this.layers = layerInfos(cfg);
    this.reset();
  }

  /** Loads every used text tensor from `src` into memory. */
  /** `opts` may be just the checkpoint prefix (string) for callers that need nothing else. */
  static async load(
    cfg: Gemma4TextConfig,
    src: WeightSource,
    opts: ReferenceOptions | string = {},
  ): Promise<Gemma4Reference> {
    if (typeof opts === 'string') opts = { prefix: opts };
    const prefix = opts.prefix ?? MULTIMODAL_TEXT_PREFIX;
    const w = new Map<string, Float32Array>();
    for (const t of textTensorTable(cfg, prefix)) w.set(t.name, await src.get(t.name));
    const block = opts.int8ActivationBlock;
    const activations = block
      ? (x: ArrayLike<number>) => int8Blocks(x, block)
      : opts.int8RowActivations
        ? int8Row
        : null;
    return new Gemma4Reference(cfg, w, prefix, activations, opts.lmHead ?? null);
  }

  /** A Linear layer: W x, with the optional activation rounding of the quantised graph's kernel. */
  private linear(w: Float32Array, x: ArrayLike<number>, rows: number, cols: number): Float64Array {
    return matvec(w, this.activations ? this.activations(x) : x, rows, cols);
  }

  reset(): void {
    this.position = 0;
    this.caches = this.layers.map(() => ({ keys: [], values: [] }));
  }

  /** Raw PLE rows for ids (embed_tokens_per_layer rows, before any scaling): the graph's per_layer_rows. */
  pleRows(ids: number[]): Float32Array {
    const width = this.cfg.numHiddenLayers * this.cfg.hiddenSizePerLayerInput;
    if (width === 0) return new Float32Array(0);
    const table = this.g('ple_table');
    const out = new Float32Array(ids.length * width);
    ids.forEach((id, i) => out.set(table.subarray(id * width, (id + 1) * width), i * width));
    return out;
  }

  /** Runs a prompt; returns logits [ids.length, vocab]. */
  prefill(ids: number[]): Float32Array {
    const V = this.cfg.vocabSize;
    const out = new Float32Array(ids.length * V);
    ids.forEach((id, i) => out.set(this.step(id), i * V));
    return out;
  }

  /**
   * Runs one token at the current position; returns its logits [vocab]. `embedding` (hidden values) replaces
   * the scaled token embedding, as a media soft token does; callers pass the pad id as `id` there (transformers
   * looks up the pad id's PLE row at media positions and projects the merged embedding).
   */
  step(id: number, embedding?: ArrayLike<number>): Float32Array {
    const c = this.cfg;
    if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new Error(`token id ${id} out of range`);
    const H = c.hiddenSize;
    const P = c.hiddenSizePerLayerInput;
    const L = c.numHiddenLayers;
    const pos = this.position;

    const embed = this.g('embed');
    const h = new Float64Array(H);
    const embedScale = Math.sqrt(H);
    if (embedding) {
      if (embedding.length !== H)
        throw new Error(`embedding override has ${embedding.length} values, hidden size is ${H}`);
      for (let i = 0; i < H; i++) h[i] = Math.fround(embedding[i]!);
    } else {
      for (let i = 0; i < H; i++) h[i] = embed[id * H + i]! * embedScale;
    }

    // Per-layer inputs: context projection (from the scaled embedding) + token-identity rows.
    const ple = new Float64Array(L * P);
    if (P > 0) {
      const proj = this.linear(this.g('ple_model_proj'), h, L * P, H);
      const pleNorm = this.g('ple_proj_norm');
      const raw = this.g('ple_table').subarray(id * L * P, (id + 1) * L * P);
      for (let l = 0; l < L; l++) {
        for (let j = 0; j < P; j++) proj[l * P + j] = proj[l * P + j]! * H ** -0.5;
        rmsNormAt(proj, l * P, P, pleNorm, c.rmsNormEps);
        for (let j = 0; j < P; j++) ple[l * P + j] = (proj[l * P + j]! + raw[l * P + j]! * Math.sqrt(P)) * Math.SQRT1_2;
      }
    }

    for (const info of this.layers) {
      this.layer(info, h, ple.subarray(info.index * P, (info.index + 1) * P), pos);
      this.onLayerOutput?.(info.index, h);
    }

    rmsNormAt(h, 0, H, this.g('final_norm'), c.rmsNormEps, c.normScaleOffset);
    const logits = new Float32Array(c.vocabSize);
    const cap = c.finalLogitSoftcapping;
    const head = this.linear(this.lmHead ?? embed, h, c.vocabSize, H); // tied LM head unless given its own
    for (let v = 0; v < c.vocabSize; v++) logits[v] = cap === null ? head[v]! : cap * Math.tanh(head[v]! / cap);
    this.position++;
    return logits;
  }

  private layer(info: LayerInfo, h: Float64Array, ple: Float64Array, pos: number): void {
    const c = this.cfg;
    const H = c.hiddenSize;
    const eps = c.rmsNormEps;
    const off = c.normScaleOffset;
    const l = info.index;
    const d = info.headDim;
    const nH = c.numAttentionHeads;
    const nKv = c.numKeyValueHeads;
    const lw = (role: LayerRole): Float32Array => this.lw(l, role);

    // --- attention block
    const x = Float64Array.from(h);
    rmsNormAt(x, 0, H, lw('input_norm'), eps, off);
    const q = this.linear(lw('q_proj'), x, nH * d, H);
    for (let hh = 0; hh < nH; hh++) {
      rmsNormAt(q, hh * d, d, lw('q_norm'), eps, off);
      rope(q, hh * d, d, info.invFreq, pos);
    }
    if (info.ownsKv) {
      const k = this.linear(lw('k_proj'), x, nKv * d, H);
      const v = this.linear(lw('v_proj'), x, nKv * d, H);
      for (let kh = 0; kh < nKv; kh++) {
        rmsNormAt(k, kh * d, d, lw('k_norm'), eps, off);
        rope(k, kh * d, d, info.invFreq, pos);
        if (c.valueNorm) rmsNormAt(v, kh * d, d, null, eps);
      }
      this.caches[l]!.keys.push(k);
      this.caches[l]!.values.push(v);
    }
    // KV-shared layers attend with their source layer's cache, which already holds this position.
    const cache = this.caches[info.kvSource]!;
    const first = info.window === null ? 0 : Math.max(0, pos - info.window + 1);
    const attn = new Float64Array(nH * d);
    const group = nH / nKv;
    for (let hh = 0; hh < nH; hh++) {
      const kh = Math.floor(hh / group);
      const scores: number[] = [];
      let max = -Infinity;
      for (let t = first; t <= pos; t++) {
        const key = cache.keys[t]!;
        let s = 0;
        for (let i = 0; i < d; i++) s += q[hh * d + i]! * key[kh * d + i]!;
        s *= c.attentionScale;
        scores.push(s);
        if (s > max) max = s;
      }
      let sum = 0;
      for (let j = 0; j < scores.length; j++) {
        scores[j] = Math.exp(scores[j]! - max);
        sum += scores[j]!;
      }
      for (let t = first; t <= pos; t++) {
        const p = scores[t - first]! / sum;
        const val = cache.values[t]!;
        for (let i = 0; i < d; i++) attn[hh * d + i] = attn[hh * d + i]! + p * val[kh * d + i]!;
      }
    }
    const o = this.linear(lw('o_proj'), attn, H, nH * d);
    rmsNormAt(o, 0, H, lw('post_attn_norm'), eps, off);
    for (let i = 0; i < H; i++) h[i] = h[i]! + o[i]!;

    // --- MLP block
    const f = Float64Array.from(h);
    rmsNormAt(f, 0, H, lw('pre_ff_norm'), eps, off);
    const W = info.mlpWidth;
    const gate = this.linear(lw('gate_proj'), f, W, H);
    const up = this.linear(lw('up_proj'), f, W, H);
    for (let i = 0; i < W; i++) gate[i] = geluTanh(gate[i]!) * up[i]!;
    const down = this.linear(lw('down_proj'), gate, H, W);
    rmsNormAt(down, 0, H, lw('post_ff_norm'), eps, off);
    for (let i = 0; i < H; i++) h[i] = h[i]! + down[i]!;

    // --- per-layer input block (Gemma 4)
    const P = c.hiddenSizePerLayerInput;
    if (P > 0) {
      const g = this.linear(lw('ple_gate'), h, P, H);
      for (let i = 0; i < P; i++) g[i] = geluTanh(g[i]!) * ple[i]!;
      const pp = this.linear(lw('ple_proj'), g, H, P);
      rmsNormAt(pp, 0, H, lw('ple_post_norm'), eps, off);
      for (let i = 0; i < H; i++) h[i] = h[i]! + pp[i]!;
    }
    if (c.layerScalar) {
      const scalar = lw('layer_scalar')[0]!;
      for (let i = 0; i < H; i++) h[i] = h[i]! * scalar;
    }
  }

  private g(role: GlobalRole): Float32Array {
    return this.need(globalName(role, this.prefix));
  }

  private lw(layer: number, role: LayerRole): Float32Array {
    return this.need(layerName(layer, role, this.prefix));
  }

  private need(name: string): Float32Array {
    const t = this.w.get(name);
    if (!t) throw new Error(`reference: tensor ${name} not loaded`);
    return t;
  }
}
