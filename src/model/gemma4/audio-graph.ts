/**
 * Writes the Gemma 4 audio encoder + audio embedder as ONE ONNX graph (plain ops; MatMulNBits linears when
 * quantised). Math as in audio-reference.ts (which documents it from modeling_gemma4.py). Two ways to see the
 * time axis (TimeAxis): the whole clip at once (below), or one chunk of a stream with state in and out
 * (audio-stream.ts, what packages hold); the layers are the same code.
 *
 * One-pass graph
 * I/O:
 *   input_features float32 [batch, frames, F]   log-mel frames (src/audio/features.ts), F = 128
 *   input_mask     bool    [batch, frames]      true = real frame
 * Outputs:
 *   audio_embeds   float32 [batch, tokens, text hidden]  soft tokens, tokens = ceil(ceil(frames / 2) / 2)
 *   audio_mask     bool    [batch, tokens]      true = real token (input_mask[:, ::4]); only these rows replace
 *                                               <|audio|> placeholders, in order (transformers strips the rest)
 */
import * as path from 'node:path';
import { GraphBuilder, attrFloat, type SaveResult } from '../../onnx/graph.js';
import { type Gemma4AudioConfig, AUDIO_BLOCK_NORM_EPS, audioDerived } from './audio-config.js';
import { blockContext, chunkedAttention, relativeKeys, type BlockContext } from './audio-attention.js';
import {
  AUDIO_TOWER_PREFIX,
  EMBED_AUDIO_PREFIX,
  type AudioTensorSpec,
  type ClippedLinearPath,
  audioLayerName,
  audioTensorTable,
  checkAudioWeightShapes,
} from './audio-weights.js';
import { type LinearWeight, Ops } from './graph-ops.js';
import { type LinearQuant, quantizeLinear } from './quantize.js';
import type { WeightSource } from './weights.js';
import { AUDIO_GRAPH_IO } from './contract.js';
import { buildStreamGraph } from './audio-stream.js';

export { AUDIO_GRAPH_IO } from './contract.js';

/** Quantisation of one audio Linear (kind 'linear'), or null to keep it float32. */
export type AudioQuantPolicy = (spec: AudioTensorSpec) => LinearQuant | null;

export interface AudioGraphOptions {
  /** null / absent: float32 everywhere (parity tests). */
  quant?: AudioQuantPolicy | null;
  /** com.microsoft SimplifiedLayerNormalization for the RMSNorms (default false: plain ops). */
  fusedNorm?: boolean;
  /** Write the streaming graph (audio-stream.ts: one chunk per run, state in and out) instead of the one-pass one. */
  streaming?: boolean;
}

export class AudioGraphWriter {
  readonly o: Ops;
  protected readonly specs: Map<string, AudioTensorSpec>;

  constructor(
    protected readonly b: GraphBuilder,
    protected readonly cfg: Gemma4AudioConfig,
    protected readonly src: WeightSource,
    protected readonly opts: AudioGraphOptions,
  ) {
    this.o = new Ops(b, { fusedNorm: opts.fusedNorm ?? false, onnxGelu: false });
    this.specs = new Map(audioTensorTable(cfg).map((s) => [s.name, s]));
  }

  protected async linearWeight(name: string): Promise<LinearWeight> {
    const spec = this.specs.get(name)!;
    const [n, k] = spec.shape as [number, number];
    const w = await this.src.get(name);
    const lq = this.opts.quant?.(spec) ?? null;
    if (!lq) return { kind: 'float', n, k, w };
    return { kind: 'nbits', packed: quantizeLinear(w, n, k, lq), accuracyLevel: lq.accuracyLevel };
  }

  protected async linear(x: string, name: string): Promise<string> {
    return this.o.linear(x, name.replace(/\.weight$/, ''), await this.linearWeight(name));
  }

  protected async scalar(name: string): Promise<number> {
    return (await this.src.get(name))[0]!;
  }

  /** Clip to [lo, hi]; no node when both bounds are infinite (transformers' default buffers). */
  protected clip(x: string, lo: number, hi: number): string {
    if (lo === -Infinity && hi === Infinity) return x;
    return this.o.op('Clip', [x, lo === -Infinity ? '' : this.o.f32(lo), hi === Infinity ? '' : this.o.f32(hi)]);
  }

  protected gradClip(x: string): string {
    return this.clip(x, -this.cfg.gradientClipping, this.cfg.gradientClipping);
  }

  /** Gemma4ClippableLinear: clamp the input and output to the checkpoint's bounds. */
  protected async clippedLinear(x: string, layer: number, p: ClippedLinearPath): Promise<string> {
    const base = audioLayerName(layer, p);
    const bounds = this.cfg.useClippedLinears
      ? await Promise.all(
          ['input_min', 'input_max', 'output_min', 'output_max'].map((s) => this.scalar(`${base}.${s}`)),
        )
      : [-Infinity, Infinity, -Infinity, Infinity];
    const y = await this.linear(this.clip(x, bounds[0]!, bounds[1]!), `${base}.linear.weight`);
    return this.clip(y, bounds[2]!, bounds[3]!);
  }

  /** RMSNorm with scale; eps rms_norm_eps unless given (the block norms take AUDIO_BLOCK_NORM_EPS, see audio-config.ts). */
  protected async norm(x: string, name: string, eps = this.cfg.rmsNormEps): Promise<string> {
    return this.o.rmsNorm(x, name.replace(/\.weight$/, ''), await this.src.get(name), eps);
  }

  protected silu(x: string): string {
    return this.o.op('Mul', [x, this.o.op('Sigmoid', [x])]);
  }

  /** Two Conv2d(3x3, stride 2) + LayerNorm(channels) + ReLU stages, masking frames before each. */
  private async subsample(features: string, maskF: string, time: TimeAxis): Promise<{ x: string; maskF: string }> {
    const o = this.o;
    const every2 = (m: string): string =>
      o.op('Slice', [m, o.i64([0]), o.i64([Number.MAX_SAFE_INTEGER]), o.i64([1]), o.i64([2])]);
    let x = o.op('Unsqueeze', [o.op('Mul', [features, o.op('Unsqueeze', [maskF, o.i64([2])])]), o.i64([1])]); // [B, 1, T, F]
    let m = maskF;
    for (const layer of [0, 1] as const) {
      const pre = `${AUDIO_TOWER_PREFIX}subsample_conv_projection.layer${layer}`;
      if (layer === 1) x = o.op('Mul', [x, o.op('Unsqueeze', [m, o.i64([1, 3])])]); // [B, C, T, F] * [B, 1, T, 1]
      const spec = this.specs.get(`${pre}.conv.weight`)!;
      const w = this.b.initializer(`${pre}.conv.weight`, 'float32', spec.shape, await this.src.get(spec.name));
      const y = time.subsampleConv(x, w, layer);
      const scale = this.b.initializer(
        `${pre}.norm.weight`,
        'float32',
        [spec.shape[0]!],
        await this.src.get(`${pre}.norm.weight`),
      );
      const ln = this.b.node('LayerNormalization', [o.op('Transpose', [y], { perm: [0, 2, 3, 1] }), scale], 1, {
        axis: -1,
        epsilon: attrFloat(this.cfg.rmsNormEps),
      })[0]!;
      const act = o.op('Relu', [ln]); // [B, T', F', C]
      m = every2(m);
      x = layer === 0 ? o.op('Transpose', [act], { perm: [0, 3, 1, 2] }) : act;
    }
    const flat = o.op('Reshape', [x, o.i64([0, 0, -1])]); // [B, T/4, F/4 * C1], channel fastest
    return {
      x: await this.linear(flat, `${AUDIO_TOWER_PREFIX}subsample_conv_projection.input_proj_linear.weight`),
      maskF: m,
    };
  }

  protected async feedForward(h: string, layer: number, which: 'feed_forward1' | 'feed_forward2'): Promise<string> {
    let x = await this.norm(
      this.gradClip(h),
      audioLayerName(layer, `${which}.pre_layer_norm.weight`),
      AUDIO_BLOCK_NORM_EPS,
    );
    x = this.silu(await this.clippedLinear(x, layer, `${which}.ffw_layer_1`));
    x = this.gradClip(await this.clippedLinear(x, layer, `${which}.ffw_layer_2`));
    x = await this.norm(x, audioLayerName(layer, `${which}.post_layer_norm.weight`), AUDIO_BLOCK_NORM_EPS);
    return this.o.op('Add', [h, this.o.op('Mul', [x, this.o.f32(this.cfg.residualWeight)])]);
  }

  private async attention(x: string, layer: number, time: TimeAxis): Promise<string> {
    const d = audioDerived(this.cfg);
    const o = this.o;
    const pds = await this.src.get(audioLayerName(layer, 'self_attn.per_dim_scale'));
    const qMul = Array.from(
      { length: this.cfg.hiddenSize },
      (_, i) => d.qScale * Math.log1p(Math.exp(pds[i % d.headDim]!)),
    );
    const q = o.op('Mul', [await this.clippedLinear(x, layer, 'self_attn.q_proj'), o.f32(qMul)]);
    const k = o.op('Mul', [await this.clippedLinear(x, layer, 'self_attn.k_proj'), o.f32(d.kScale)]);
    const v = await this.clippedLinear(x, layer, 'self_attn.v_proj');
    const relName = audioLayerName(layer, 'self_attn.relative_k_proj.weight');
    const relk = { name: `${relName}.folded`, data: relativeKeys(this.cfg, await this.src.get(relName)) };
    return this.clippedLinear(time.attend(q, k, v, relk, layer), layer, 'self_attn.post');
  }

  private async lightConv(h: string, layer: number, time: TimeAxis): Promise<string> {
    const o = this.o;
    const H = this.cfg.hiddenSize;
    const K = this.cfg.convKernelSize;
    let x = await this.norm(h, audioLayerName(layer, 'lconv1d.pre_layer_norm.weight'));
    x = await this.clippedLinear(x, layer, 'lconv1d.linear_start');
    const [a, gate] = this.b.node('Split', [x, o.i64([H, H])], 2, { axis: -1 });
    const glu = o.op('Mul', [a!, o.op('Sigmoid', [gate!])]);
    const wName = audioLayerName(layer, 'lconv1d.depthwise_conv1d.weight');
    const w = this.b.initializer(wName, 'float32', [H, 1, K], await this.src.get(wName));
    x = this.gradClip(time.causalConv(glu, w, layer));
    x = this.silu(await this.norm(x, audioLayerName(layer, 'lconv1d.conv_norm.weight')));
    x = await this.clippedLinear(x, layer, 'lconv1d.linear_end');
    return o.op('Add', [h, x]);
  }

  private async conformerLayer(h: string, layer: number, time: TimeAxis): Promise<string> {
    h = await this.feedForward(h, layer, 'feed_forward1');
    let a = await this.norm(this.gradClip(h), audioLayerName(layer, 'norm_pre_attn.weight'), AUDIO_BLOCK_NORM_EPS);
    a = this.gradClip(await this.attention(a, layer, time));
    a = await this.norm(a, audioLayerName(layer, 'norm_post_attn.weight'), AUDIO_BLOCK_NORM_EPS);
    h = this.o.op('Add', [h, a]);
    h = await this.lightConv(h, layer, time);
    h = await this.feedForward(h, layer, 'feed_forward2');
    return this.norm(this.gradClip(h), audioLayerName(layer, 'norm_out.weight'), AUDIO_BLOCK_NORM_EPS);
  }

  /**
   * Features [B, T, F] and their float mask -> soft tokens [B, S, text hidden] and the token mask (float [B, S]).
   * `time` decides how the time axis is seen (the whole clip, or one chunk of a stream).
   */
  async encode(features: string, maskF: string, time: TimeAxis): Promise<{ embeds: string; tokenMaskF: string }> {
    const { b, cfg, o } = this;
    const problems = checkAudioWeightShapes(cfg, this.src);
    if (problems.length > 0)
      throw new Error(`audio weights do not match the config:\n  ${problems.slice(0, 10).join('\n  ')}`);
    const sub = await this.subsample(features, maskF, time);
    time.tokens(sub.maskF);
    let h = sub.x;
    for (let l = 0; l < cfg.numHiddenLayers; l++) h = await this.conformerLayer(h, l, time);
    let out = await this.linear(h, `${AUDIO_TOWER_PREFIX}output_proj.weight`);
    const bias = b.initializer(
      `${AUDIO_TOWER_PREFIX}output_proj.bias`,
      'float32',
      [cfg.outputProjDims],
      await this.src.get(`${AUDIO_TOWER_PREFIX}output_proj.bias`),
    );
    out = o.op('Add', [out, bias]);
    // embed_audio: RMSNorm without scale, then the projection to the text width.
    const normed = o.rmsNormNoScale(
      out,
      `${EMBED_AUDIO_PREFIX}embedding_pre_projection_norm`,
      cfg.outputProjDims,
      cfg.rmsNormEps,
    );
    const embeds = await this.linear(normed, `${EMBED_AUDIO_PREFIX}embedding_projection.weight`);
    return { embeds, tokenMaskF: sub.maskF };
  }
}

/**
 * How a graph sees the time axis. The encoder's only links between time steps are the subsampling
 * convolutions, the local attention and the causal depthwise convolution; everything else is per step.
 */
export interface TimeAxis {
  /** Conv2d(3x3, stride 2) over [B, C, T, F] for subsampling stage 0 or 1. */
  subsampleConv(x: string, w: string, stage: 0 | 1): string;
  /** Told the token mask (float [B, S]) once, before the layers. */
  tokens(tokenMaskF: string): void;
  /** Attention core on scaled q, k and v [B, S, H]; relk is the layer's relative-key table [heads, D, P]. */
  attend(q: string, k: string, v: string, relk: { name: string; data: Float32Array }, layer: number): string;
  /** Causal depthwise convolution over time, [B, S, H] -> [B, S, H], kernel w [H, 1, K]. */
  causalConv(x: string, w: string, layer: number): string;
}

/** The whole clip in one run: zero padding at both ends, the blocked attention of transformers. */
class WholeClip implements TimeAxis {
  private bc: BlockContext | null = null;

  constructor(
    private readonly o: Ops,
    private readonly b: GraphBuilder,
    private readonly cfg: Gemma4AudioConfig,
  ) {}

  subsampleConv(x: string, w: string): string {
    return this.o.op('Conv', [x, w], { kernel_shape: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1] });
  }

  tokens(tokenMaskF: string): void {
    this.bc = blockContext(this.o, this.cfg, tokenMaskF);
  }

  attend(q: string, k: string, v: string, relk: { name: string; data: Float32Array }): string {
    const d = audioDerived(this.cfg);
    const r = this.b.initializer(
      relk.name,
      'float32',
      [this.cfg.numAttentionHeads, 1, d.headDim, d.numRelPositions],
      relk.data,
    );
    return chunkedAttention(this.o, this.cfg, this.bc!, q, k, v, r);
  }

  causalConv(x: string, w: string): string {
    const o = this.o;
    const K = this.cfg.convKernelSize;
    // Left pad kernel - 1, none on the right.
    const conv = o.op('Conv', [o.op('Transpose', [x], { perm: [0, 2, 1] }), w], {
      kernel_shape: [K],
      pads: [K - 1, 0],
      group: this.cfg.hiddenSize,
    });
    return o.op('Transpose', [conv], { perm: [0, 2, 1] });
  }
}

/** Writes the one-pass graph: inputs and outputs as AUDIO_GRAPH_IO says. */
async function buildWholeClipGraph(w: AudioGraphWriter, b: GraphBuilder, cfg: Gemma4AudioConfig): Promise<void> {
  const o = w.o;
  b.input(AUDIO_GRAPH_IO.features, 'float32', ['batch', 'frames', cfg.inputFeatureSize]);
  b.input(AUDIO_GRAPH_IO.mask, 'bool', ['batch', 'frames']);
  const maskF = o.op('Cast', [AUDIO_GRAPH_IO.mask], { to: 1 });
  const { embeds, tokenMaskF } = await w.encode(AUDIO_GRAPH_IO.features, maskF, new WholeClip(o, b, cfg));
  b.node('Identity', [embeds], [AUDIO_GRAPH_IO.embeds]);
  b.node('Cast', [tokenMaskF], [AUDIO_GRAPH_IO.outMask], { to: 9 });
  b.output(AUDIO_GRAPH_IO.embeds, 'float32', ['batch', 'tokens', cfg.textHiddenSize]);
  b.output(AUDIO_GRAPH_IO.outMask, 'bool', ['batch', 'tokens']);
}

/** Adds the audio encoder graph (inputs, nodes, outputs) to `b`. */
export async function buildAudioGraph(
  b: GraphBuilder,
  cfg: Gemma4AudioConfig,
  src: WeightSource,
  opts: AudioGraphOptions = {},
): Promise<void> {
  const w = new AudioGraphWriter(b, cfg, src, opts);
  if (opts.streaming) await buildStreamGraph((f, m, t) => w.encode(f, m, t), w.o, b, cfg);
  else await buildWholeClipGraph(w, b, cfg);
}

export interface AudioModelFiles extends SaveResult {
  onnxFile: string;
  dataFile: string;
}

/**
 * Writes audio_encoder.onnx + its external-data file into `dir` (weights streamed to disk as they are added).
 * Returns the paths and byte sizes for the package manifest.
 */
export async function writeAudioEncoderModel(
  dir: string,
  cfg: Gemma4AudioConfig,
  src: WeightSource,
  opts: AudioGraphOptions & { onnxFile?: string; dataFile?: string } = {},
): Promise<AudioModelFiles> {
  const onnxFile = opts.onnxFile ?? 'audio_encoder.onnx';
  const dataFile = opts.dataFile ?? 'audio_encoder.onnx.data';
  const fs = await import('node:fs');
  await fs.promises.mkdir(dir, { recursive: true });
  const b = new GraphBuilder({
    name: 'gemma4_audio_encoder',
    externalData: { path: path.join(path.resolve(dir), dataFile) },
  });
  try {
    await buildAudioGraph(b, cfg, src, opts);
  } catch (e) {
    b.discard();
    throw e;
  }
  b.setMetadata('perch.model', 'gemma4_audio_encoder');
  b.setMetadata('perch.quant', opts.quant ? 'matmulnbits' : 'float32');
  b.setMetadata('perch.audio_stream', opts.streaming ? 'true' : 'false');
  const saved = await b.save(dir, onnxFile);
  return { ...saved, onnxFile, dataFile };
}
