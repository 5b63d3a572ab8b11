/**
 * Plain TypeScript forward pass of the Gemma 4 vision encoder + vision embedder, one image at a time, for
 * tests only. Clarity over speed: simple loops, float64 accumulation.
 *
 * modeling_gemma4.py (Gemma4VisionModel.forward, then Gemma4Model.get_image_features -> embed_vision):
 *   padding  = position (-1, -1)
 *   h        = input_proj(2 * (pixels - 0.5)) + (padding ? 0 : table[0][max(x,0)] + table[1][max(y,0)])
 *   per layer (bidirectional attention; padding patches are masked out as keys):
 *     h += postAttnNorm(o_proj(attn(inputNorm(h))))
 *     h += postFfNorm(down(gelu_tanh(gate(x)) * up(x))),  x = preFfNorm(h)
 *   every encoder Linear is a ClippableLinear: clamp(input) -> linear -> clamp(output) when use_clipped_linears
 *   attention: q = rope2d(qNorm(q_proj x)), k = rope2d(kNorm(k_proj x)), v = vNorm(v_proj x) (no scale),
 *     scores = q.k (scaling 1.0); rope2d: channels [0, hd/2) rotate (rotate_half) with x, [hd/2, hd) with y,
 *     using the RAW positions (padding's -1 too: those rows are masked / zeroed anyway)
 *   pooler: padding rows zeroed; soft token of a patch = floor(x/k) + (maxX+1)/k * floor(y/k) with
 *     maxX over the clamped x; each soft token = sum of its patches / k^2, times sqrt(H)
 *     (output_length = rows / k^2; slots no patch maps to stay zero; transformers strips them)
 *   standardize (optional): (h - std_bias) * std_scale
 *   embed_vision: RMSNorm without scale (vision rms_norm_eps), then embedding_projection -> text hidden
 */
import { geluTanh, rmsNormRows } from './reference-math.js';
import { type Gemma4VisionConfig, patchDim, visionInvFreq } from './vision-config.js';
import {
  CLIP_BOUNDS,
  VISION_LINEAR_ROLES,
  type VisionLayerNormRole,
  type VisionLinearRole,
  visionNames,
} from './vision-weights.js';
import type { WeightSource } from './weights.js';

interface Linear {
  w: Float32Array;
  n: number;
  k: number;
  /** [inMin, inMax, outMin, outMax], or null (plain nn.Linear). */
  clip: [number, number, number, number] | null;
}

interface Layer {
  linears: Record<VisionLinearRole, Linear>;
  norms: Record<VisionLayerNormRole, Float32Array>;
}

export interface VisionReferenceOutput {
  /** [outputLength, textHidden]: one row per pooled slot (rows / k^2), trailing unused slots included. */
  embeds: Float32Array;
  outputLength: number;
  /** Slots some patch maps to (the soft tokens transformers keeps); always a prefix of the rows. */
  softTokens: number;
}

/** y [rows, n] = x [rows, k] W^T, with optional ClippableLinear clamps. */
function linear(x: Float64Array, rows: number, lin: Linear): Float64Array {
  const { w, n, k, clip } = lin;
  const xin = clip ? x.map((v) => Math.min(Math.max(v, clip[0]), clip[1])) : x;
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    const xo = r * k;
    for (let o = 0; o < n; o++) {
      let s = 0;
      const wo = o * k;
      for (let i = 0; i < k; i++) s += xin[xo + i]! * w[wo + i]!;
      out[r * n + o] = clip ? Math.min(Math.max(s, clip[2]), clip[3]) : s;
    }
  }
  return out;
}

export class VisionReference {
  private constructor(
    readonly cfg: Gemma4VisionConfig,
    private readonly inputProj: Linear,
    private readonly table: Float32Array,
    private readonly layers: Layer[],
    private readonly std: { bias: Float32Array; scale: Float32Array } | null,
    private readonly projection: Linear,
  ) {}

  static async load(cfg: Gemma4VisionConfig, src: WeightSource): Promise<VisionReference> {
    const H = cfg.hiddenSize;
    const plain = async (name: string, n: number, k: number): Promise<Linear> => ({
      w: await src.get(name),
      n,
      k,
      clip: null,
    });
    const layers: Layer[] = [];
    for (let l = 0; l < cfg.numHiddenLayers; l++) {
      const linears = {} as Record<VisionLinearRole, Linear>;
      for (const r of VISION_LINEAR_ROLES) {
        const name = visionNames.linear(l, r);
        const [n, k] = src.shape(name) as [number, number];
        let clip: Linear['clip'] = null;
        if (cfg.useClippedLinears) {
          const b = await Promise.all(CLIP_BOUNDS.map(async (c) => (await src.get(visionNames.clip(l, r, c)))[0]!));
          clip = [b[0]!, b[1]!, b[2]!, b[3]!];
        }
        linears[r] = { w: await src.get(name), n, k, clip };
      }
      const norms = {} as Record<VisionLayerNormRole, Float32Array>;
      for (const r of ['input_norm', 'q_norm', 'k_norm', 'post_attn_norm', 'pre_ff_norm', 'post_ff_norm'] as const) {
        norms[r] = await src.get(visionNames.norm(l, r));
      }
      layers.push({ linears, norms });
    }
    const std = cfg.standardize
      ? { bias: await src.get(visionNames.stdBias), scale: await src.get(visionNames.stdScale) }
      : null;
    return new VisionReference(
      cfg,
      await plain(visionNames.inputProj, H, patchDim(cfg)),
      await src.get(visionNames.positionTable),
      layers,
      std,
      await plain(visionNames.embedProjection, cfg.textHiddenSize, H),
    );
  }

  /** pixelValues [rows, 3*patch^2] in [0, 1]; positionIds [rows, 2] as (x, y), (-1, -1) for padding rows. */
  encode(pixelValues: Float32Array, positionIds: Int32Array): VisionReferenceOutput {
    const c = this.cfg;
    const H = c.hiddenSize;
    const D = patchDim(c);
    const P = positionIds.length / 2;
    const k = c.poolingKernelSize;
    if (pixelValues.length !== P * D)
      throw new Error(`pixelValues has ${pixelValues.length} values, expected ${P} x ${D}`);
    if (P % (k * k) !== 0) throw new Error(`${P} patches is not a multiple of pooling_kernel_size^2 = ${k * k}`);
    const pad: boolean[] = [];
    for (let p = 0; p < P; p++) pad.push(positionIds[2 * p] === -1 && positionIds[2 * p + 1] === -1);

    // ---- patch embedder
    const x = Float64Array.from(pixelValues, (v) => 2 * (v - 0.5));
    const h = linear(x, P, this.inputProj);
    const E = c.positionEmbeddingSize;
    for (let p = 0; p < P; p++) {
      if (pad[p]) continue;
      for (let a = 0; a < 2; a++) {
        const idx = Math.max(positionIds[2 * p + a]!, 0);
        if (idx >= E) throw new Error(`patch position ${idx} is outside the ${E}-row position table`);
        const off = (a * E + idx) * H;
        for (let i = 0; i < H; i++) h[p * H + i] = h[p * H + i]! + this.table[off + i]!;
      }
    }

    // ---- encoder
    for (const layer of this.layers) {
      const a = this.attention(rmsNormRows(h, H, layer.norms.input_norm, c.rmsNormEps), P, pad, positionIds, layer);
      const an = rmsNormRows(a, H, layer.norms.post_attn_norm, c.rmsNormEps);
      for (let i = 0; i < h.length; i++) h[i] = h[i]! + an[i]!;
      const xf = rmsNormRows(h, H, layer.norms.pre_ff_norm, c.rmsNormEps);
      const g = linear(xf, P, layer.linears.gate_proj);
      const u = linear(xf, P, layer.linears.up_proj);
      for (let i = 0; i < g.length; i++) g[i] = geluTanh(g[i]!) * u[i]!;
      const f = rmsNormRows(linear(g, P, layer.linears.down_proj), H, layer.norms.post_ff_norm, c.rmsNormEps);
      for (let i = 0; i < h.length; i++) h[i] = h[i]! + f[i]!;
    }

    // ---- pooler
    const L = P / (k * k);
    let maxX = 0;
    for (let p = 0; p < P; p++) maxX = Math.max(maxX, Math.max(positionIds[2 * p]!, 0));
    const perRow = Math.floor((maxX + 1) / k);
    const pooled = new Float64Array(L * H);
    const used = new Uint8Array(L);
    for (let p = 0; p < P; p++) {
      const px = Math.max(positionIds[2 * p]!, 0);
      const py = Math.max(positionIds[2 * p + 1]!, 0);
      const slot = Math.floor(px / k) + perRow * Math.floor(py / k);
      if (slot >= L) throw new Error(`patch (${px}, ${py}) pools into slot ${slot} of ${L}`);
      used[slot] = 1;
      if (pad[p]) continue; // zeroed before pooling
      for (let i = 0; i < H; i++) pooled[slot * H + i] = pooled[slot * H + i]! + h[p * H + i]!;
    }
    const scale = Math.sqrt(H) / (k * k);
    for (let i = 0; i < pooled.length; i++) pooled[i] = pooled[i]! * scale;
    if (this.std) {
      for (let s = 0; s < L; s++)
        for (let i = 0; i < H; i++) pooled[s * H + i] = (pooled[s * H + i]! - this.std.bias[i]!) * this.std.scale[i]!;
    }
    let softTokens = 0;
    while (softTokens < L && used[softTokens]) softTokens++;

    // ---- embed_vision
    const out = linear(rmsNormRows(pooled, H, null, c.rmsNormEps), L, this.projection);
    return { embeds: Float32Array.from(out), outputLength: L, softTokens };
  }

  private attention(x: Float64Array, P: number, pad: boolean[], pos: Int32Array, layer: Layer): Float64Array {
    const c = this.cfg;
    const nh = c.numAttentionHeads;
    const nkv = c.numKeyValueHeads;
    const hd = c.headDim;
    const eps = c.rmsNormEps;
    const q = rmsNormRows(linear(x, P, layer.linears.q_proj), hd, layer.norms.q_norm, eps);
    const k = rmsNormRows(linear(x, P, layer.linears.k_proj), hd, layer.norms.k_norm, eps);
    const v = rmsNormRows(linear(x, P, layer.linears.v_proj), hd, null, eps);
    const inv = visionInvFreq(c);
    this.rope2d(q, P, nh, pos, inv);
    this.rope2d(k, P, nkv, pos, inv);
    const out = new Float64Array(P * nh * hd);
    const scores = new Float64Array(P);
    const group = nh / nkv;
    for (let hI = 0; hI < nh; hI++) {
      const kvI = Math.floor(hI / group);
      for (let i = 0; i < P; i++) {
        const qo = (i * nh + hI) * hd;
        let max = -Infinity;
        for (let j = 0; j < P; j++) {
          if (pad[j]) continue;
          const ko = (j * nkv + kvI) * hd;
          let s = 0;
          for (let d = 0; d < hd; d++) s += q[qo + d]! * k[ko + d]!;
          scores[j] = s;
          if (s > max) max = s;
        }
        let sum = 0;
        for (let j = 0; j < P; j++) {
          if (pad[j]) continue;
          scores[j] = Math.exp(scores[j]! - max);
          sum += scores[j]!;
        }
        for (let j = 0; j < P; j++) {
          if (pad[j]) continue;
          const wgt = scores[j]! / sum;
          const vo = (j * nkv + kvI) * hd;
          for (let d = 0; d < hd; d++) out[qo + d] = out[qo + d]! + wgt * v[vo + d]!;
        }
      }
    }
    return linear(out, P, layer.linears.o_proj);
  }

  /** In place: per head, channels [0, hd/2) rotate with x and [hd/2, hd) with y (rotate_half within each half). */
  private rope2d(t: Float64Array, P: number, heads: number, pos: Int32Array, inv: Float64Array): void {
    const hd = this.cfg.headDim;
    const half = hd / 2;
    const quarter = hd / 4;
    for (let p = 0; p < P; p++) {
      for (let a = 0; a < 2; a++) {
        const position = pos[2 * p + a]!;
        for (let i = 0; i < quarter; i++) {
          // float32 angle, as transformers and the graph compute it
          const ang = Math.fround(Math.fround(inv[i]!) * position);
          const cs = Math.cos(ang);
          const sn = Math.sin(ang);
          for (let hI = 0; hI < heads; hI++) {
            const o = (p * heads + hI) * hd + a * half;
            const x1 = t[o + i]!;
            const x2 = t[o + quarter + i]!;
            t[o + i] = x1 * cs - x2 * sn;
            t[o + quarter + i] = x2 * cs + x1 * sn;
          }
        }
      }
    }
  }
}
