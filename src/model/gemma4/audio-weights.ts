/**
 * The Gemma 4 audio encoder's checkpoint tensors (audio tower + embed_audio): ONE table, driven by the config.
 *
 * Names and shapes (modeling_gemma4.py module tree; convert_gemma4_weights.py writes them under
 * "model.audio_tower." and "model.embed_audio."). Linear weights are torch layout [out, in].
 *   subsample_conv_projection.layer{0,1}.conv.weight   [C_out, C_in, 3, 3]  Conv2d stride 2, padding 1, no bias
 *   subsample_conv_projection.layer{0,1}.norm.weight   [C_out]              LayerNorm over channels, no bias
 *   subsample_conv_projection.input_proj_linear.weight [hidden, F/4 * C1]  no bias
 *   layers.N.feed_forward{1,2}.ffw_layer_1.linear.weight [4 hidden, hidden]   (Gemma4ClippableLinear)
 *   layers.N.feed_forward{1,2}.ffw_layer_2.linear.weight [hidden, 4 hidden]
 *   layers.N.feed_forward{1,2}.{pre,post}_layer_norm.weight [hidden]
 *   layers.N.self_attn.{q,k,v}_proj.linear.weight       [hidden, hidden]
 *   layers.N.self_attn.post.linear.weight               [hidden, hidden]
 *   layers.N.self_attn.relative_k_proj.weight           [hidden, hidden]   plain nn.Linear (not clipped)
 *   layers.N.self_attn.per_dim_scale                    [head_dim]
 *   layers.N.lconv1d.linear_start.linear.weight         [2 hidden, hidden]
 *   layers.N.lconv1d.linear_end.linear.weight           [hidden, hidden]
 *   layers.N.lconv1d.depthwise_conv1d.weight            [hidden, 1, kernel]  causal, groups = hidden, no bias
 *   layers.N.lconv1d.{pre_layer_norm,conv_norm}.weight  [hidden]
 *   layers.N.norm_{pre_attn,post_attn,out}.weight       [hidden]
 *   output_proj.weight [output_proj_dims, hidden], output_proj.bias [output_proj_dims]
 *   embed_audio.embedding_projection.weight [text hidden, output_proj_dims]   (its RMSNorm has no scale)
 * With use_clipped_linears every ClippableLinear also has scalar buffers <linear>.{input,output}_{min,max}
 * (the converter writes one bound pair per einsum; q/k/v share theirs).
 */
import { type Gemma4AudioConfig, audioDerived } from './audio-config.js';
import { seededTensorSource, shapeProblems, type WeightSource } from './weights.js';

export const AUDIO_TOWER_PREFIX = 'model.audio_tower.';
export const EMBED_AUDIO_PREFIX = 'model.embed_audio.';

/** linear: quantisable Linear; relpos: relative_k_proj (folded into a constant); clip: scalar bound. */
export type AudioTensorKind =
  | 'linear'
  | 'relpos'
  | 'conv'
  | 'norm'
  | 'bias'
  | 'per_dim_scale'
  | 'clip_min'
  | 'clip_max';

export interface AudioTensorSpec {
  name: string;
  shape: number[];
  kind: AudioTensorKind;
  layer: number | null;
}

/** The clipped linears of one layer, by their path under layers.N. */
export const CLIPPED_LINEARS = [
  'feed_forward1.ffw_layer_1',
  'feed_forward1.ffw_layer_2',
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.post',
  'lconv1d.linear_start',
  'lconv1d.linear_end',
  'feed_forward2.ffw_layer_1',
  'feed_forward2.ffw_layer_2',
] as const;
export type ClippedLinearPath = (typeof CLIPPED_LINEARS)[number];

export const CLIP_BOUNDS = ['input_min', 'input_max', 'output_min', 'output_max'] as const;

export function audioLayerName(layer: number, suffix: string): string {
  return `${AUDIO_TOWER_PREFIX}layers.${layer}.${suffix}`;
}

function linearShape(c: Gemma4AudioConfig, p: ClippedLinearPath): [number, number] {
  const h = c.hiddenSize;
  if (p.endsWith('ffw_layer_1')) return [4 * h, h];
  if (p.endsWith('ffw_layer_2')) return [h, 4 * h];
  if (p === 'lconv1d.linear_start') return [2 * h, h];
  return [h, h];
}

/** Every audio-encoder and audio-embedder tensor with its shape and kind. */
export function audioTensorTable(c: Gemma4AudioConfig): AudioTensorSpec[] {
  const d = audioDerived(c);
  const [c0, c1] = c.subsamplingConvChannels;
  const h = c.hiddenSize;
  const sub = `${AUDIO_TOWER_PREFIX}subsample_conv_projection.`;
  const out: AudioTensorSpec[] = [
    { name: `${sub}layer0.conv.weight`, shape: [c0, 1, 3, 3], kind: 'conv', layer: null },
    { name: `${sub}layer0.norm.weight`, shape: [c0], kind: 'norm', layer: null },
    { name: `${sub}layer1.conv.weight`, shape: [c1, c0, 3, 3], kind: 'conv', layer: null },
    { name: `${sub}layer1.norm.weight`, shape: [c1], kind: 'norm', layer: null },
    { name: `${sub}input_proj_linear.weight`, shape: [h, d.projInputDim], kind: 'linear', layer: null },
  ];
  for (let l = 0; l < c.numHiddenLayers; l++) {
    const add = (suffix: string, shape: number[], kind: AudioTensorKind): void => {
      out.push({ name: audioLayerName(l, suffix), shape, kind, layer: l });
    };
    for (const p of CLIPPED_LINEARS) {
      add(`${p}.linear.weight`, linearShape(c, p), 'linear');
      if (c.useClippedLinears)
        for (const b of CLIP_BOUNDS) add(`${p}.${b}`, [], b.endsWith('min') ? 'clip_min' : 'clip_max');
    }
    for (const ff of ['feed_forward1', 'feed_forward2']) {
      add(`${ff}.pre_layer_norm.weight`, [h], 'norm');
      add(`${ff}.post_layer_norm.weight`, [h], 'norm');
    }
    add('self_attn.relative_k_proj.weight', [h, h], 'relpos');
    add('self_attn.per_dim_scale', [d.headDim], 'per_dim_scale');
    add('lconv1d.depthwise_conv1d.weight', [h, 1, c.convKernelSize], 'conv');
    add('lconv1d.pre_layer_norm.weight', [h], 'norm');
    add('lconv1d.conv_norm.weight', [h], 'norm');
    add('norm_pre_attn.weight', [h], 'norm');
    add('norm_post_attn.weight', [h], 'norm');
    add('norm_out.weight', [h], 'norm');
  }
  out.push({
    name: `${AUDIO_TOWER_PREFIX}output_proj.weight`,
    shape: [c.outputProjDims, h],
    kind: 'linear',
    layer: null,
  });
  out.push({ name: `${AUDIO_TOWER_PREFIX}output_proj.bias`, shape: [c.outputProjDims], kind: 'bias', layer: null });
  out.push({
    name: `${EMBED_AUDIO_PREFIX}embedding_projection.weight`,
    shape: [c.textHiddenSize, c.outputProjDims],
    kind: 'linear',
    layer: null,
  });
  return out;
}

/** Readable problems with a source's audio tensors (missing, wrong shape); clip bounds may be 0-d or [1]. */
export function checkAudioWeightShapes(c: Gemma4AudioConfig, src: Pick<WeightSource, 'shape'>): string[] {
  return shapeProblems(audioTensorTable(c), src);
}

/**
 * Seeded random values per tensor. Clip bounds are finite and near the activations' range (|x| ~ 1.5-3) so
 * tests see them bind; linear/conv weights have variance 1/fan_in to keep activations O(1).
 */
export function fillAudioTensor(spec: AudioTensorSpec, out: Float32Array, rand: () => number): void {
  const u = (): number => rand() * 2 - 1;
  const n = out.length;
  switch (spec.kind) {
    case 'norm':
      for (let i = 0; i < n; i++) out[i] = 1 + 0.2 * u();
      return;
    case 'bias':
    case 'per_dim_scale':
      for (let i = 0; i < n; i++) out[i] = 0.5 * u();
      return;
    case 'clip_min':
      out[0] = -(1.5 + 1.5 * rand());
      return;
    case 'clip_max':
      out[0] = 1.5 + 1.5 * rand();
      return;
    default: {
      const fanIn = spec.shape.slice(1).reduce((a, b) => a * b, 1);
      const bound = Math.sqrt(3 / fanIn);
      for (let i = 0; i < n; i++) out[i] = bound * u();
    }
  }
}

/** Random audio weights, generated per tensor when asked for (nothing kept): for synth and tests. */
export function syntheticAudioWeightSource(c: Gemma4AudioConfig, seed: number): WeightSource & { names(): string[] } {
  return seededTensorSource(audioTensorTable(c), seed, fillAudioTensor, 'audio model');
}
