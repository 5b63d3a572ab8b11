/**
 * Gemma 4 vision encoder configuration: parse from a checkpoint's config.json, validate, tiny/E2B presets.
 *
 * Facts (huggingface/transformers src/transformers/models/gemma4/):
 * - configuration_gemma4.py (Gemma4VisionConfig, nested as "vision_config"): hidden_size 768,
 *   intermediate_size 3072, num_hidden_layers 16, num_attention_heads 12, num_key_value_heads 12, head_dim 64,
 *   hidden_activation gelu_pytorch_tanh, rms_norm_eps 1e-6, rope_parameters {axial, theta 100},
 *   pooling_kernel_size 3, patch_size 16, position_embedding_size 10240, use_clipped_linears False,
 *   standardize False.
 * - convert_gemma4_weights.py: the on-device vision config (E2B, E4B) sets use_clipped_linears=True
 *   (every encoder Linear clamps its input and output to bounds stored in the checkpoint).
 * - modeling_gemma4.py: Gemma4MultimodalEmbedder projects vision hidden -> text_config.hidden_size, so the
 *   text hidden size is part of this config.
 */

export interface Gemma4VisionConfig {
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  /** Only gelu_pytorch_tanh is supported (the value every Gemma 4 checkpoint uses). */
  hiddenActivation: 'gelu_pytorch_tanh';
  rmsNormEps: number;
  ropeTheta: number;
  poolingKernelSize: number;
  patchSize: number;
  /** Rows of each of the two (x, y) learned position tables: patch coordinates must stay below it. */
  positionEmbeddingSize: number;
  useClippedLinears: boolean;
  /** Soft tokens get (h - std_bias) * std_scale after pooling (large models only). */
  standardize: boolean;
  /** text_config.hidden_size: width of the soft tokens handed to the decoder. */
  textHiddenSize: number;
}

export class Gemma4VisionConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Gemma4VisionConfigError';
  }
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function num(o: Json, key: string, def: number, where: string): number {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new Gemma4VisionConfigError(`${where}.${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function bool(o: Json, key: string, def: boolean, where: string): boolean {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'boolean')
    throw new Gemma4VisionConfigError(`${where}.${key} must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Reads the vision encoder's config from a multimodal Gemma 4 config.json (keys vision_config and
 * text_config.hidden_size). Missing keys take transformers' Gemma4VisionConfig defaults.
 */
export function parseGemma4VisionConfig(configJson: unknown): Gemma4VisionConfig {
  if (!isObject(configJson)) throw new Gemma4VisionConfigError('config.json must be a JSON object');
  const v = configJson.vision_config;
  if (!isObject(v))
    throw new Gemma4VisionConfigError('config.json has no vision_config object: this checkpoint has no vision encoder');
  const t = configJson.text_config;
  if (!isObject(t) || typeof t.hidden_size !== 'number') {
    throw new Gemma4VisionConfigError(
      'config.json has no text_config.hidden_size (needed for the vision embedder projection)',
    );
  }
  const w = 'vision_config';
  const act = v.hidden_activation ?? 'gelu_pytorch_tanh';
  if (act !== 'gelu_pytorch_tanh')
    throw new Gemma4VisionConfigError(
      `${w}.hidden_activation ${JSON.stringify(act)} is not supported (only gelu_pytorch_tanh)`,
    );
  const rope = v.rope_parameters ?? { rope_type: 'default', rope_theta: 100 };
  if (!isObject(rope)) throw new Gemma4VisionConfigError(`${w}.rope_parameters must be an object`);
  // transformers >= 5 names the vision RoPE "axial" (and writes that into config.json); it reads an older
  // config's "default" as "axial" too. Both mean the same 2-D RoPE.
  const ropeType = rope.rope_type ?? 'axial';
  if (ropeType !== 'axial' && ropeType !== 'default') {
    throw new Gemma4VisionConfigError(
      `${w}.rope_parameters.rope_type ${JSON.stringify(rope.rope_type)} is not supported (only axial, or its older name default)`,
    );
  }
  const hidden = num(v, 'hidden_size', 768, w);
  const heads = num(v, 'num_attention_heads', 12, w);
  const cfg: Gemma4VisionConfig = {
    hiddenSize: hidden,
    intermediateSize: num(v, 'intermediate_size', 3072, w),
    numHiddenLayers: num(v, 'num_hidden_layers', 16, w),
    numAttentionHeads: heads,
    numKeyValueHeads: num(v, 'num_key_value_heads', 12, w),
    headDim: num(v, 'head_dim', Math.floor(hidden / heads), w),
    hiddenActivation: 'gelu_pytorch_tanh',
    rmsNormEps: num(v, 'rms_norm_eps', 1e-6, w),
    ropeTheta: num(rope, 'rope_theta', 100, `${w}.rope_parameters`),
    poolingKernelSize: num(v, 'pooling_kernel_size', 3, w),
    patchSize: num(v, 'patch_size', 16, w),
    positionEmbeddingSize: num(v, 'position_embedding_size', 10240, w),
    useClippedLinears: bool(v, 'use_clipped_linears', false, w),
    standardize: bool(v, 'standardize', false, w),
    textHiddenSize: t.hidden_size,
  };
  validateGemma4VisionConfig(cfg);
  return cfg;
}

export function validateGemma4VisionConfig(c: Gemma4VisionConfig): void {
  const positive: (keyof Gemma4VisionConfig)[] = [
    'hiddenSize',
    'intermediateSize',
    'numHiddenLayers',
    'numAttentionHeads',
    'numKeyValueHeads',
    'headDim',
    'poolingKernelSize',
    'patchSize',
    'positionEmbeddingSize',
    'textHiddenSize',
  ];
  for (const k of positive) {
    const val = c[k] as number;
    if (!Number.isInteger(val) || val <= 0)
      throw new Gemma4VisionConfigError(`vision config ${k} must be a positive integer, got ${val}`);
  }
  if (c.numAttentionHeads % c.numKeyValueHeads !== 0) {
    throw new Gemma4VisionConfigError(
      `num_attention_heads ${c.numAttentionHeads} is not a multiple of num_key_value_heads ${c.numKeyValueHeads}`,
    );
  }
  // 2-D RoPE: the head splits into an x half and a y half, each rotated as pairs (rotate_half).
  if (c.headDim % 4 !== 0)
    throw new Gemma4VisionConfigError(`head_dim ${c.headDim} must be a multiple of 4 for 2-D RoPE`);
  if (!(c.rmsNormEps > 0)) throw new Gemma4VisionConfigError(`rms_norm_eps must be > 0, got ${c.rmsNormEps}`);
  if (!(c.ropeTheta > 0)) throw new Gemma4VisionConfigError(`rope_theta must be > 0, got ${c.ropeTheta}`);
}

/** Patch vector length: 3 channels x patch_size^2. */
export function patchDim(c: Gemma4VisionConfig): number {
  return 3 * c.patchSize * c.patchSize;
}

/**
 * Inverse RoPE frequencies of ONE spatial axis (Gemma4VisionRotaryEmbedding): the head is split into an
 * x half and a y half of headDim/2 channels; each half rotates with theta^-(2i / (headDim/2)), i < headDim/4.
 */
export function visionInvFreq(c: Gemma4VisionConfig): Float64Array {
  const spatial = c.headDim / 2;
  const out = new Float64Array(spatial / 2);
  // torch computes base ** (arange / dim) in float32; the difference is far below the parity bound.
  for (let i = 0; i < out.length; i++) out[i] = 1 / c.ropeTheta ** ((2 * i) / spatial);
  return out;
}

/** A few-KB encoder with the real structure (clipped linears, 2-D RoPE, pooling) for tests; patch 16 like preprocess.ts. */
export function tinyVisionConfig(): Gemma4VisionConfig {
  return {
    hiddenSize: 64,
    intermediateSize: 128,
    numHiddenLayers: 2,
    numAttentionHeads: 4,
    numKeyValueHeads: 4,
    headDim: 16,
    hiddenActivation: 'gelu_pytorch_tanh',
    rmsNormEps: 1e-6,
    ropeTheta: 100,
    poolingKernelSize: 3,
    patchSize: 16,
    positionEmbeddingSize: 256,
    useClippedLinears: true,
    standardize: false,
    textHiddenSize: 48,
  };
}

/** Gemma 4 E2B (convert_gemma4_weights.py _ON_DEVICE_VISION_CONFIG, text hidden 1536). */
export function e2bVisionConfig(): Gemma4VisionConfig {
  return {
    hiddenSize: 768,
    intermediateSize: 3072,
    numHiddenLayers: 16,
    numAttentionHeads: 12,
    numKeyValueHeads: 12,
    headDim: 64,
    hiddenActivation: 'gelu_pytorch_tanh',
    rmsNormEps: 1e-6,
    ropeTheta: 100,
    poolingKernelSize: 3,
    patchSize: 16,
    positionEmbeddingSize: 10240,
    useClippedLinears: true,
    standardize: false,
    textHiddenSize: 1536,
  };
}

/** The vision_config object as config.json carries it (synth packages, tests). */
export function toVisionConfigJson(c: Gemma4VisionConfig): Record<string, unknown> {
  return {
    model_type: 'gemma4_vision',
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numHiddenLayers,
    num_attention_heads: c.numAttentionHeads,
    num_key_value_heads: c.numKeyValueHeads,
    head_dim: c.headDim,
    hidden_activation: c.hiddenActivation,
    rms_norm_eps: c.rmsNormEps,
    rope_parameters: { rope_type: 'default', rope_theta: c.ropeTheta },
    pooling_kernel_size: c.poolingKernelSize,
    patch_size: c.patchSize,
    position_embedding_size: c.positionEmbeddingSize,
    use_clipped_linears: c.useClippedLinears,
    standardize: c.standardize,
  };
}
