/**
 * The Gemma 4 vision encoder's checkpoint tensors: ONE table, driven by the config.
 *
 * Official names (modeling_gemma4.py module tree: Gemma4Model.vision_tower = Gemma4VisionModel,
 * Gemma4Model.embed_vision = Gemma4MultimodalEmbedder; convert_gemma4_weights.py
 * convert_vision_encoder_weights). Linear weights are torch layout [out, in], no biases.
 *   model.vision_tower.patch_embedder.input_proj.weight              [H, 3*patch^2]  plain nn.Linear (no clipping)
 *   model.vision_tower.patch_embedder.position_embedding_table       [2, E, H]       row 0 indexed by x, row 1 by y
 *   model.vision_tower.encoder.layers.N.input_layernorm.weight       [H]
 *   model.vision_tower.encoder.layers.N.self_attn.{q,k,v}_proj.linear.weight  [heads*hd, H]  (k, v: kv_heads*hd)
 *   model.vision_tower.encoder.layers.N.self_attn.o_proj.linear.weight        [H, heads*hd]
 *   model.vision_tower.encoder.layers.N.self_attn.{q,k}_norm.weight  [hd]            (v_norm has no weight)
 *   model.vision_tower.encoder.layers.N.{post_attention,pre_feedforward,post_feedforward}_layernorm.weight [H]
 *   model.vision_tower.encoder.layers.N.mlp.{gate,up}_proj.linear.weight [I, H]; mlp.down_proj.linear.weight [H, I]
 *   ...<every encoder linear>.{input_min,input_max,output_min,output_max}   scalar   only when use_clipped_linears
 *   model.vision_tower.std_bias / std_scale                          [H]             only when standardize
 *   model.embed_vision.embedding_projection.weight                   [text_H, H]     (its pre-norm has no weight)
 * The converter may also write model.vision_tower.pooler.scale, which Gemma4VisionPooler never reads: ignored.
 * RMSNorm weights are used as is (x * rms^-1 * w), as in the text decoder.
 */
import { type Gemma4VisionConfig, patchDim } from './vision-config.js';
import { type WeightSource, seededTensorSource, shapeProblems } from './weights.js';

export const VISION_TOWER_PREFIX = 'model.vision_tower.';
export const EMBED_VISION_PREFIX = 'model.embed_vision.';

/** linear: quantisable [out, in]; table: the position tables; clip: one bound of a clipped linear. */
export type VisionTensorKind = 'linear' | 'table' | 'norm' | 'clip' | 'vector';

export type VisionLinearRole = 'q_proj' | 'k_proj' | 'v_proj' | 'o_proj' | 'gate_proj' | 'up_proj' | 'down_proj';
export type VisionLayerNormRole =
  | 'input_norm'
  | 'q_norm'
  | 'k_norm'
  | 'post_attn_norm'
  | 'pre_ff_norm'
  | 'post_ff_norm';
export type ClipBound = 'input_min' | 'input_max' | 'output_min' | 'output_max';
export const CLIP_BOUNDS: readonly ClipBound[] = ['input_min', 'input_max', 'output_min', 'output_max'];

export interface VisionTensorSpec {
  name: string;
  shape: number[];
  kind: VisionTensorKind;
  /** Layer index, or null for model-level tensors. */
  layer: number | null;
}

const LINEAR_PATH: Record<VisionLinearRole, string> = {
  q_proj: 'self_attn.q_proj',
  k_proj: 'self_attn.k_proj',
  v_proj: 'self_attn.v_proj',
  o_proj: 'self_attn.o_proj',
  gate_proj: 'mlp.gate_proj',
  up_proj: 'mlp.up_proj',
  down_proj: 'mlp.down_proj',
};

const NORM_PATH: Record<VisionLayerNormRole, string> = {
  input_norm: 'input_layernorm',
  q_norm: 'self_attn.q_norm',
  k_norm: 'self_attn.k_norm',
  post_attn_norm: 'post_attention_layernorm',
  pre_ff_norm: 'pre_feedforward_layernorm',
  post_ff_norm: 'post_feedforward_layernorm',
};

export const VISION_LINEAR_ROLES = Object.keys(LINEAR_PATH) as VisionLinearRole[];

export const visionNames = {
  inputProj: `${VISION_TOWER_PREFIX}patch_embedder.input_proj.weight`,
  positionTable: `${VISION_TOWER_PREFIX}patch_embedder.position_embedding_table`,
  stdBias: `${VISION_TOWER_PREFIX}std_bias`,
  stdScale: `${VISION_TOWER_PREFIX}std_scale`,
  embedProjection: `${EMBED_VISION_PREFIX}embedding_projection.weight`,
  /** The ClippableLinear's weight. */
  linear: (l: number, r: VisionLinearRole): string =>
    `${VISION_TOWER_PREFIX}encoder.layers.${l}.${LINEAR_PATH[r]}.linear.weight`,
  clip: (l: number, r: VisionLinearRole, b: ClipBound): string =>
    `${VISION_TOWER_PREFIX}encoder.layers.${l}.${LINEAR_PATH[r]}.${b}`,
  norm: (l: number, r: VisionLayerNormRole): string =>
    `${VISION_TOWER_PREFIX}encoder.layers.${l}.${NORM_PATH[r]}.weight`,
};

function linearShape(c: Gemma4VisionConfig, r: VisionLinearRole): [number, number] {
  const H = c.hiddenSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  switch (r) {
    case 'q_proj':
      return [q, H];
    case 'k_proj':
    case 'v_proj':
      return [kv, H];
    case 'o_proj':
      return [H, q];
    case 'gate_proj':
    case 'up_proj':
      return [c.intermediateSize, H];
    case 'down_proj':
      return [H, c.intermediateSize];
  }
}

/** Every tensor the encoder reads, in graph order. */
export function visionTensorTable(c: Gemma4VisionConfig): VisionTensorSpec[] {
  const H = c.hiddenSize;
  const out: VisionTensorSpec[] = [
    { name: visionNames.inputProj, shape: [H, patchDim(c)], kind: 'linear', layer: null },
    { name: visionNames.positionTable, shape: [2, c.positionEmbeddingSize, H], kind: 'table', layer: null },
  ];
  for (let l = 0; l < c.numHiddenLayers; l++) {
    for (const r of Object.keys(NORM_PATH) as VisionLayerNormRole[]) {
      out.push({
        name: visionNames.norm(l, r),
        shape: [r === 'q_norm' || r === 'k_norm' ? c.headDim : H],
        kind: 'norm',
        layer: l,
      });
    }
    for (const r of VISION_LINEAR_ROLES) {
      out.push({ name: visionNames.linear(l, r), shape: linearShape(c, r), kind: 'linear', layer: l });
      if (c.useClippedLinears)
        for (const b of CLIP_BOUNDS) out.push({ name: visionNames.clip(l, r, b), shape: [], kind: 'clip', layer: l });
    }
  }
  if (c.standardize) {
    out.push({ name: visionNames.stdBias, shape: [H], kind: 'vector', layer: null });
    out.push({ name: visionNames.stdScale, shape: [H], kind: 'vector', layer: null });
  }
  out.push({ name: visionNames.embedProjection, shape: [c.textHiddenSize, H], kind: 'linear', layer: null });
  return out;
}

/** Shape problems (missing tensors, wrong shapes); empty when the source fits the config. Clip bounds may be [] or [1]. */
export function checkVisionWeightShapes(c: Gemma4VisionConfig, src: Pick<WeightSource, 'shape'>): string[] {
  return shapeProblems(visionTensorTable(c), src);
}

function fillRandom(spec: VisionTensorSpec, out: Float32Array, rand: () => number): void {
  const u = (): number => rand() * 2 - 1;
  const n = out.length;
  if (spec.kind === 'norm') for (let i = 0; i < n; i++) out[i] = 1 + 0.2 * u();
  else if (spec.kind === 'table') for (let i = 0; i < n; i++) out[i] = 0.5 * u();
  else if (spec.kind === 'vector')
    for (let i = 0; i < n; i++) out[i] = spec.name.endsWith('std_scale') ? 1 + 0.2 * u() : 0.1 * u();
  else if (spec.kind === 'clip') {
    // Tight enough that a few percent of O(1) activations are clamped, so tests see the clipping.
    const mag = 1.5 + rand();
    out[0] = spec.name.endsWith('_min') ? -mag : mag;
  } else {
    // Uniform with variance 1/fan_in keeps activations O(1) through the stack.
    const bound = Math.sqrt(3 / spec.shape[1]!);
    for (let i = 0; i < n; i++) out[i] = bound * u();
  }
}

/**
 * Seeded random weights for every tensor of the table (tests, synthetic packages). Each tensor's values
 * depend only on (seed, name); generated on demand and not kept (an E2B synth stays within memory).
 */
export function syntheticVisionWeightSource(c: Gemma4VisionConfig, seed = 1): WeightSource & { names(): string[] } {
  return seededTensorSource(visionTensorTable(c), seed, fillRandom, 'vision encoder');
}
