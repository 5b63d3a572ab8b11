/**
 * Plain TypeScript forward pass of the Gemma 4 audio encoder and audio embedder, for tests only: one clip
 * (batch 1), float64 loops, written straight from modeling_gemma4.py so the ONNX graph can be checked.
 *
 *   features [T, F] (masked frames zeroed)
 *   subsampling, twice: x *= mask; Conv2d 3x3 stride 2 pad 1 (no bias); LayerNorm over channels (scale, no
 *                       bias); ReLU; mask = mask[::2]               -> [T/4, F/4 * C1] (freq-major, channel-minor)
 *   input_proj_linear                                              -> [S, hidden]
 *   per conformer layer:
 *     h = ff1(h)                 ff(x) = x + w_res * postNorm(clip(lin2(silu(lin1(preNorm(clip(x)))))))
 *     h = h + postAttnNorm(clip(attn(preAttnNorm(clip(h)))))
 *     h = h + lin_end(silu(convNorm(clip(causalDepthwiseConv(glu(lin_start(preNorm(h))))))))
 *     h = normOut(clip(ff2(h)))
 *   output_proj (with bias) -> embed_audio: RMSNorm without scale, then embedding_projection -> [S, text hidden]
 * RMSNorm eps: rms_norm_eps in lconv1d's two norms and the embedder, 1e-6 in the others (AUDIO_BLOCK_NORM_EPS);
 * the subsampling LayerNorms take rms_norm_eps. clip(x) clamps to +-gradient_clipping; each
 * Gemma4ClippableLinear clamps its input and output to the checkpoint's bounds. Attention (Gemma4AudioAttention): queries in blocks of `chunk`, each block sees a context
 * of chunk + left - 1 + right keys starting left - 1 before it; q *= head_dim^-0.5 / ln2 * softplus(per_dim_scale),
 * k *= ln(1 + e) / ln2; logits = q.k + q.relk[rel-shifted], soft-capped cap * tanh(x / cap); a key is visible when
 * it is a real, unmasked frame with 0 <= q - k < left - 1; others get attention_invalid_logits_value.
 */
import {
  type Gemma4AudioConfig,
  type AudioDerived,
  AUDIO_BLOCK_NORM_EPS,
  audioDerived,
  halve,
} from './audio-config.js';
import {
  AUDIO_TOWER_PREFIX,
  CLIPPED_LINEARS,
  EMBED_AUDIO_PREFIX,
  type ClippedLinearPath,
  audioLayerName,
} from './audio-weights.js';
import type { WeightSource } from './weights.js';
import { relativePositionTable } from './audio-attention.js';
import { rmsNormRows } from './reference-math.js';

interface Clipped {
  w: Float32Array;
  n: number;
  k: number;
  /** [inMin, inMax, outMin, outMax]; infinite when the config has no clipped linears. */
  bounds: [number, number, number, number];
}

interface LayerWeights {
  lin: Record<ClippedLinearPath, Clipped>;
  norms: Record<string, Float32Array>;
  /** Relative keys [P, hidden] (relative_k_proj applied to the sinusoid table). */
  relk: Float64Array;
  qMul: Float64Array;
  conv: Float32Array;
}

export interface AudioReferenceOutput {
  /** [S, text hidden] soft tokens, padded rows included. */
  embeds: Float32Array;
  /** [S, output_proj_dims] audio tower output before the embedder. */
  towerOut: Float32Array;
  /** [S] 1 where the token is real audio (input mask subsampled twice by [::2]). */
  mask: Uint8Array;
  tokens: number;
}

function linear(
  x: Float64Array,
  rows: number,
  w: Float32Array,
  n: number,
  k: number,
  bias?: Float32Array,
): Float64Array {
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < n; o++) {
      let s = bias ? bias[o]! : 0;
      const wb = o * k;
      const xb = r * k;
      for (let i = 0; i < k; i++) s += w[wb + i]! * x[xb + i]!;
      out[r * n + o] = s;
    }
  }
  return out;
}

function clamp(x: Float64Array, lo: number, hi: number): Float64Array {
  return x.map((v) => Math.min(Math.max(v, lo), hi));
}

const silu = (v: number): number => v / (1 + Math.exp(-v));
const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));
const softplus = (v: number): number => Math.log1p(Math.exp(v));

export class AudioReference {
  private readonly d: AudioDerived;

  private constructor(
    readonly cfg: Gemma4AudioConfig,
    private readonly g: Map<string, Float32Array>,
    private readonly layers: LayerWeights[],
  ) {
    this.d = audioDerived(cfg);
  }

  static async load(cfg: Gemma4AudioConfig, src: WeightSource): Promise<AudioReference> {
    const d = audioDerived(cfg);
    const g = new Map<string, Float32Array>();
    const sub = `${AUDIO_TOWER_PREFIX}subsample_conv_projection.`;
    for (const n of [
      'layer0.conv.weight',
      'layer0.norm.weight',
      'layer1.conv.weight',
      'layer1.norm.weight',
      'input_proj_linear.weight',
    ])
      g.set(n, await src.get(sub + n));
    g.set('output_proj.weight', await src.get(`${AUDIO_TOWER_PREFIX}output_proj.weight`));
    g.set('output_proj.bias', await src.get(`${AUDIO_TOWER_PREFIX}output_proj.bias`));
    g.set('embed', await src.get(`${EMBED_AUDIO_PREFIX}embedding_projection.weight`));
    const pe = relativePositionTable(cfg, d);
    const layers: LayerWeights[] = [];
    for (let l = 0; l < cfg.numHiddenLayers; l++) {
      const get = (s: string): Promise<Float32Array> => src.get(audioLayerName(l, s));
      const lin = {} as Record<ClippedLinearPath, Clipped>;
      for (const p of CLIPPED_LINEARS) {
        const shape = src.shape(audioLayerName(l, `${p}.linear.weight`));
        const b: [number, number, number, number] = [-Infinity, Infinity, -Infinity, Infinity];
        if (cfg.useClippedLinears) {
          const names = ['input_min', 'input_max', 'output_min', 'output_max'];
          for (let i = 0; i < 4; i++) b[i] = (await get(`${p}.${names[i]}`))[0]!;
        }
        lin[p] = { w: await get(`${p}.linear.weight`), n: shape[0]!, k: shape[1]!, bounds: b };
      }
      const norms: Record<string, Float32Array> = {};
      for (const n of [
        'feed_forward1.pre_layer_norm',
        'feed_forward1.post_layer_norm',
        'feed_forward2.pre_layer_norm',
        'feed_forward2.post_layer_norm',
        'lconv1d.pre_layer_norm',
        'lconv1d.conv_norm',
        'norm_pre_attn',
        'norm_post_attn',
        'norm_out',
      ]) {
        norms[n] = await get(`${n}.weight`);
      }
      const relk = linear(
        pe,
        d.numRelPositions,
        await get('self_attn.relative_k_proj.weight'),
        cfg.hiddenSize,
        cfg.hiddenSize,
      );
      const pds = await get('self_attn.per_dim_scale');
      const qMul = Float64Array.from(pds, (v) => d.qScale * softplus(v));
      layers.push({ lin, norms, relk, qMul, conv: await get('lconv1d.depthwise_conv1d.weight') });
    }
    return new AudioReference(cfg, g, layers);
  }

  /** Encodes one clip: features [frames, F] row-major with its frame mask (1 = real). */
  encode(features: Float32Array, frameMask: Uint8Array): AudioReferenceOutput {
    const c = this.cfg;
    const { x, mask, tokens } = this.subsample(features, frameMask);
    let h = linear(x, tokens, this.g.get('input_proj_linear.weight')!, c.hiddenSize, this.d.projInputDim);
    for (const lw of this.layers) h = this.layer(h, tokens, mask, lw);
    const out = linear(
      h,
      tokens,
      this.g.get('output_proj.weight')!,
      c.outputProjDims,
      c.hiddenSize,
      this.g.get('output_proj.bias')!,
    );
    const normed = rmsNormRows(out, c.outputProjDims, null, c.rmsNormEps);
    const emb = linear(normed, tokens, this.g.get('embed')!, c.textHiddenSize, c.outputProjDims);
    return { embeds: Float32Array.from(emb), towerOut: Float32Array.from(out), mask, tokens };
  }

  private subsample(
    features: Float32Array,
    frameMask: Uint8Array,
  ): { x: Float64Array; mask: Uint8Array; tokens: number } {
    const c = this.cfg;
    let t = frameMask.length;
    let f = c.inputFeatureSize;
    let ch = 1;
    let mask = frameMask;
    let x = Float64Array.from(features); // layout [t][f][ch]
    for (const layer of [0, 1]) {
      const w = this.g.get(`layer${layer}.conv.weight`)!;
      const ln = this.g.get(`layer${layer}.norm.weight`)!;
      const co = c.subsamplingConvChannels[layer]!;
      for (let i = 0; i < t; i++) if (!mask[i]) x.fill(0, i * f * ch, (i + 1) * f * ch);
      const t2 = halve(t);
      const f2 = halve(f);
      const y = new Float64Array(t2 * f2 * co);
      for (let ti = 0; ti < t2; ti++) {
        for (let fi = 0; fi < f2; fi++) {
          const o = (ti * f2 + fi) * co;
          for (let oc = 0; oc < co; oc++) {
            let s = 0;
            for (let kt = 0; kt < 3; kt++) {
              const st = 2 * ti + kt - 1;
              if (st < 0 || st >= t) continue;
              for (let kf = 0; kf < 3; kf++) {
                const sf = 2 * fi + kf - 1;
                if (sf < 0 || sf >= f) continue;
                for (let ic = 0; ic < ch; ic++)
                  s += w[((oc * ch + ic) * 3 + kt) * 3 + kf]! * x[(st * f + sf) * ch + ic]!;
              }
            }
            y[o + oc] = s;
          }
          // LayerNorm over channels (biased variance), scale only, then ReLU.
          let mean = 0;
          for (let oc = 0; oc < co; oc++) mean += y[o + oc]!;
          mean /= co;
          let v = 0;
          for (let oc = 0; oc < co; oc++) v += (y[o + oc]! - mean) ** 2;
          const inv = 1 / Math.sqrt(v / co + c.rmsNormEps);
          for (let oc = 0; oc < co; oc++) y[o + oc] = Math.max(0, (y[o + oc]! - mean) * inv * ln[oc]!);
        }
      }
      mask = Uint8Array.from({ length: t2 }, (_, i) => mask[2 * i]!);
      x = y;
      t = t2;
      f = f2;
      ch = co;
    }
    return { x, mask, tokens: t };
  }

  private clipped(x: Float64Array, rows: number, l: Clipped): Float64Array {
    const [a, b, lo, hi] = l.bounds;
    return clamp(linear(clamp(x, a, b), rows, l.w, l.n, l.k), lo, hi);
  }

  private feedForward(
    h: Float64Array,
    s: number,
    lw: LayerWeights,
    which: 'feed_forward1' | 'feed_forward2',
  ): Float64Array {
    const c = this.cfg;
    const gc = c.gradientClipping;
    let x = rmsNormRows(clamp(h, -gc, gc), c.hiddenSize, lw.norms[`${which}.pre_layer_norm`]!, AUDIO_BLOCK_NORM_EPS);
    x = this.clipped(x, s, lw.lin[`${which}.ffw_layer_1`]).map(silu);
    x = clamp(this.clipped(x, s, lw.lin[`${which}.ffw_layer_2`]), -gc, gc);
    x = rmsNormRows(x, c.hiddenSize, lw.norms[`${which}.post_layer_norm`]!, AUDIO_BLOCK_NORM_EPS);
    return h.map((v, i) => v + x[i]! * c.residualWeight);
  }

  private layer(h: Float64Array, s: number, mask: Uint8Array, lw: LayerWeights): Float64Array {
    const c = this.cfg;
    const gc = c.gradientClipping;
    const H = c.hiddenSize;
    h = this.feedForward(h, s, lw, 'feed_forward1');
    let a = rmsNormRows(clamp(h, -gc, gc), H, lw.norms.norm_pre_attn!, AUDIO_BLOCK_NORM_EPS);
    a = clamp(this.attention(a, s, mask, lw), -gc, gc);
    a = rmsNormRows(a, H, lw.norms.norm_post_attn!, AUDIO_BLOCK_NORM_EPS);
    h = h.map((v, i) => v + a[i]!);
    // Light convolution module: GLU, causal depthwise conv over time (left pad kernel - 1), norm, SiLU.
    const x = this.clipped(
      rmsNormRows(h, H, lw.norms['lconv1d.pre_layer_norm']!, c.rmsNormEps),
      s,
      lw.lin['lconv1d.linear_start'],
    );
    const glu = new Float64Array(s * H);
    for (let t = 0; t < s; t++)
      for (let i = 0; i < H; i++) glu[t * H + i] = x[t * 2 * H + i]! * sigmoid(x[t * 2 * H + H + i]!);
    const K = c.convKernelSize;
    let conv = new Float64Array(s * H);
    for (let t = 0; t < s; t++) {
      for (let i = 0; i < H; i++) {
        let acc = 0;
        for (let k = 0; k < K; k++) {
          const src = t - (K - 1) + k;
          if (src >= 0) acc += lw.conv[i * K + k]! * glu[src * H + i]!;
        }
        conv[t * H + i] = acc;
      }
    }
    conv = rmsNormRows(clamp(conv, -gc, gc), H, lw.norms['lconv1d.conv_norm']!, c.rmsNormEps).map(silu);
    const end = this.clipped(conv, s, lw.lin['lconv1d.linear_end']);
    h = h.map((v, i) => v + end[i]!);
    h = this.feedForward(h, s, lw, 'feed_forward2');
    return rmsNormRows(clamp(h, -gc, gc), H, lw.norms.norm_out!, AUDIO_BLOCK_NORM_EPS);
  }

  /** Chunked local attention exactly as the blocked transformers code computes it, one query at a time. */
  private attention(x: Float64Array, s: number, mask: Uint8Array, lw: LayerWeights): Float64Array {
    const c = this.cfg;
    const d = this.d;
    const H = c.hiddenSize;
    const D = d.headDim;
    const q = this.clipped(x, s, lw.lin['self_attn.q_proj']);
    const k = this.clipped(x, s, lw.lin['self_attn.k_proj']).map((v) => v * d.kScale);
    const v = this.clipped(x, s, lw.lin['self_attn.v_proj']);
    for (let t = 0; t < s; t++) for (let i = 0; i < H; i++) q[t * H + i] = q[t * H + i]! * lw.qMul[i % D]!;
    const chunk = c.attentionChunkSize;
    const ctx = d.contextSize;
    const P = d.numRelPositions;
    const out = new Float64Array(s * H);
    const logits = new Float64Array(ctx);
    const dotRel = (qi: number, h: number, p: number): number => {
      let acc = 0;
      for (let e = 0; e < D; e++) acc += q[qi * H + h * D + e]! * lw.relk[p * H + h * D + e]!;
      return acc;
    };
    for (let qi = 0; qi < s; qi++) {
      const blockStart = Math.floor(qi / chunk) * chunk;
      const i = qi - blockStart;
      for (let h = 0; h < c.numAttentionHeads; h++) {
        for (let j = 0; j < ctx; j++) {
          const kj = blockStart - d.maxPastHorizon + j;
          let ac = 0;
          if (kj >= 0 && kj < s) for (let e = 0; e < D; e++) ac += q[qi * H + h * D + e]! * k[kj * H + h * D + e]!;
          // _rel_shift: row i of the padded [chunk, ctx + 1] matrix read as [chunk, ctx]; a negative offset
          // reads the tail of the previous row (zero padding unless ctx is small).
          const cOff = j - i;
          let bd = 0;
          if (cOff >= 0) bd = cOff < P ? dotRel(qi, h, cOff) : 0;
          else if (ctx + 1 + cOff < P) bd = dotRel(qi - 1, h, ctx + 1 + cOff);
          const capped = Math.tanh((ac + bd) / c.attentionLogitCap) * c.attentionLogitCap;
          const dist = qi - kj;
          const inWindow = (dist >= 0 && dist < d.maxPastHorizon) || (dist < 0 && -dist < d.maxFutureHorizon);
          const visible = kj >= 0 && kj < s && mask[kj] === 1 && inWindow;
          logits[j] = visible ? capped : c.attentionInvalidLogitsValue;
        }
        let max = -Infinity;
        for (let j = 0; j < ctx; j++) max = Math.max(max, logits[j]!);
        let sum = 0;
        for (let j = 0; j < ctx; j++) sum += logits[j] = Math.exp(logits[j]! - max);
        for (let j = 0; j < ctx; j++) {
          const kj = blockStart - d.maxPastHorizon + j;
          if (kj < 0 || kj >= s) continue;
          const p = logits[j]! / sum;
          for (let e = 0; e < D; e++) out[qi * H + h * D + e] += p * v[kj * H + h * D + e]!;
        }
      }
    }
    return this.clipped(out, s, lw.lin['self_attn.post']);
  }
}
