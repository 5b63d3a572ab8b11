/**
 * Gemma 4 audio encoder (USM-style Conformer) configuration: parse, validate, derive.
 *
 * Facts (huggingface/transformers src/transformers/models/gemma4/configuration_gemma4.py, Gemma4AudioConfig,
 * defaults = the E2B values; convert_gemma4_weights.py uses Gemma4AudioConfig() unchanged for gemma-4-e2b):
 *   hidden_size 1024, num_hidden_layers 12, num_attention_heads 8, hidden_act "silu",
 *   subsampling_conv_channels [128, 32], conv_kernel_size 5, residual_weight 0.5, attention_chunk_size 12,
 *   attention_context_left 13, attention_context_right 0, attention_logit_cap 50, attention_invalid_logits_value
 *   -1e9, use_clipped_linears true, rms_norm_eps 1e-6, gradient_clipping 1e10, output_proj_dims 1536.
 * The multimodal embedder (embed_audio) projects output_proj_dims to text_config.hidden_size.
 * The input feature count is not in the model config (the processor's feature_size, 128): modeling_gemma4.py
 * sizes input_proj_linear as (subsampling_conv_channels[0] // 4) * subsampling_conv_channels[1], which only
 * matches the flattened conv output when ceil(ceil(features / 2) / 2) == channels[0] // 4; validated here.
 */
import { Gemma4ConfigError } from './config.js';

export interface Gemma4AudioConfig {
  hiddenSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  /** Mel bins per input frame (processor feature_size). */
  inputFeatureSize: number;
  subsamplingConvChannels: [number, number];
  convKernelSize: number;
  residualWeight: number;
  attentionChunkSize: number;
  attentionContextLeft: number;
  attentionContextRight: number;
  attentionLogitCap: number;
  attentionInvalidLogitsValue: number;
  useClippedLinears: boolean;
  rmsNormEps: number;
  gradientClipping: number;
  outputProjDims: number;
  /** text_config.hidden_size: width of the soft tokens the decoder receives. */
  textHiddenSize: number;
}

/** Quantities the forward pass derives from the config (shared by the reference and the graph). */
export interface AudioDerived {
  headDim: number;
  /** Keys per block context: chunk + (left - 1) + right (modeling: context_size). */
  contextSize: number;
  /** left - 1: how far back a block's context starts. */
  maxPastHorizon: number;
  maxFutureHorizon: number;
  /**
   * Relative positions P - 1 .. 0 with P = contextSize // 2 + 1 (Gemma4AudioRelPositionalEncoding:
   * torch.arange(context_size // 2, -1, -1)). That is maxPast + 1 only when chunk == left - 1 (E2B: 12, 13).
   */
  numRelPositions: number;
  /** Mel bins after the two stride-2 convolutions. */
  subsampledFeatures: number;
  /** Width of input_proj_linear's input (subsampled features x channels[1]). */
  projInputDim: number;
  /** (head_dim^-0.5) / ln 2 */
  qScale: number;
  /** ln(1 + e) / ln 2 */
  kScale: number;
}

/**
 * The eps of the RMSNorms transformers builds without passing config.rms_norm_eps (Gemma4RMSNorm's default):
 * feed_forward{1,2}.{pre,post}_layer_norm and norm_{pre_attn,post_attn,out}. rms_norm_eps itself feeds only the
 * subsampling LayerNorms, lconv1d.{pre_layer_norm,conv_norm} and the embedder's norm. E2B's rms_norm_eps is
 * 1e-6 too, so the split shows only in other configs.
 */
export const AUDIO_BLOCK_NORM_EPS = 1e-6;

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

function int(o: Json, key: string, fallback: number): number {
  const v = o[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
    throw new Gemma4ConfigError(`audio config: "${key}" must be a non-negative integer, got ${JSON.stringify(v)}`);
  return v;
}

function num(o: Json, key: string, fallback: number): number {
  const v = o[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new Gemma4ConfigError(`audio config: "${key}" must be a finite number, got ${JSON.stringify(v)}`);
  return v;
}

/** Output length of a kernel-3, stride-2, padding-1 convolution (and of mask[::2]). */
export function halve(n: number): number {
  return n === 0 ? 0 : Math.floor((n - 1) / 2) + 1;
}

/** Encoder output frames for `frames` input frames (before masking; padded tokens included). */
export function audioTokenFrames(frames: number): number {
  return halve(halve(frames));
}

export function audioDerived(c: Gemma4AudioConfig): AudioDerived {
  const headDim = c.hiddenSize / c.numAttentionHeads;
  const maxPast = c.attentionContextLeft - 1;
  const sub = halve(halve(c.inputFeatureSize));
  return {
    headDim,
    contextSize: c.attentionChunkSize + maxPast + c.attentionContextRight,
    maxPastHorizon: maxPast,
    maxFutureHorizon: c.attentionContextRight,
    numRelPositions: Math.floor((c.attentionChunkSize + maxPast + c.attentionContextRight) / 2) + 1,
    subsampledFeatures: sub,
    projInputDim: sub * c.subsamplingConvChannels[1],
    qScale: headDim ** -0.5 / Math.log(2),
    kScale: Math.log(1 + Math.E) / Math.log(2),
  };
}

export function validateGemma4AudioConfig(c: Gemma4AudioConfig): void {
  const fail = (m: string): never => {
    throw new Gemma4ConfigError(`audio config: ${m}`);
  };
  for (const [k, v] of Object.entries({
    hiddenSize: c.hiddenSize,
    numHiddenLayers: c.numHiddenLayers,
    numAttentionHeads: c.numAttentionHeads,
    inputFeatureSize: c.inputFeatureSize,
    convKernelSize: c.convKernelSize,
    attentionChunkSize: c.attentionChunkSize,
    attentionContextLeft: c.attentionContextLeft,
    outputProjDims: c.outputProjDims,
    textHiddenSize: c.textHiddenSize,
  })) {
    if (!Number.isInteger(v) || v < 1) fail(`${k} must be a positive integer, got ${v}`);
  }
  if (c.hiddenSize % c.numAttentionHeads !== 0)
    fail(`hidden_size ${c.hiddenSize} is not divisible by num_attention_heads ${c.numAttentionHeads}`);
  if (c.subsamplingConvChannels.some((x) => !Number.isInteger(x) || x < 1))
    fail('subsampling_conv_channels must be two positive integers');
  // modeling_gemma4.py's input_proj_linear width; anything else cannot load into transformers either.
  const hfProj = Math.floor(c.subsamplingConvChannels[0] / 4) * c.subsamplingConvChannels[1];
  if (hfProj !== audioDerived(c).projInputDim) {
    fail(
      `input_proj_linear expects (channels[0] // 4) * channels[1] = ${hfProj} inputs but ${c.inputFeatureSize} mel bins give ${audioDerived(c).projInputDim}`,
    );
  }
  // The relative positions are hard-coded to maxPast..0 in transformers (no future positions).
  if (c.attentionContextRight !== 0)
    fail(`attention_context_right ${c.attentionContextRight} is not supported (Gemma 4 uses 0)`);
  if (c.attentionContextLeft < 2) fail('attention_context_left must be >= 2');
  if (c.attentionLogitCap <= 0) fail('attention_logit_cap must be > 0');
  if (c.gradientClipping <= 0) fail('gradient_clipping must be > 0');
}

/**
 * Parses the audio part of a Gemma 4 config.json (the multimodal Gemma4Config: audio_config + text_config).
 * `inputFeatureSize` comes from the processor config (feature_size); default 128.
 */
export function parseGemma4AudioConfig(json: unknown, inputFeatureSize = 128): Gemma4AudioConfig {
  if (!isObject(json)) throw new Gemma4ConfigError('config.json must hold a JSON object');
  const a = json.audio_config;
  if (a === undefined || a === null)
    throw new Gemma4ConfigError('config.json has no "audio_config": this checkpoint has no audio encoder');
  if (!isObject(a)) throw new Gemma4ConfigError('config.json: "audio_config" must be an object');
  const t = json.text_config;
  if (!isObject(t) || typeof t.hidden_size !== 'number')
    throw new Gemma4ConfigError('config.json: text_config.hidden_size is needed for the audio embedder projection');
  const act = a.hidden_act ?? 'silu';
  if (act !== 'silu' && act !== 'swish')
    throw new Gemma4ConfigError(`audio config: hidden_act "${String(act)}" is not supported (silu)`);
  const ch = a.subsampling_conv_channels ?? [128, 32];
  if (!Array.isArray(ch) || ch.length !== 2 || !ch.every((x) => typeof x === 'number')) {
    throw new Gemma4ConfigError('audio config: "subsampling_conv_channels" must be a list of two integers');
  }
  const clipped = a.use_clipped_linears ?? true;
  if (typeof clipped !== 'boolean')
    throw new Gemma4ConfigError('audio config: "use_clipped_linears" must be a boolean');
  const c: Gemma4AudioConfig = {
    hiddenSize: int(a, 'hidden_size', 1024),
    numHiddenLayers: int(a, 'num_hidden_layers', 12),
    numAttentionHeads: int(a, 'num_attention_heads', 8),
    inputFeatureSize,
    subsamplingConvChannels: [ch[0] as number, ch[1] as number],
    convKernelSize: int(a, 'conv_kernel_size', 5),
    residualWeight: num(a, 'residual_weight', 0.5),
    attentionChunkSize: int(a, 'attention_chunk_size', 12),
    attentionContextLeft: int(a, 'attention_context_left', 13),
    attentionContextRight: int(a, 'attention_context_right', 0),
    attentionLogitCap: num(a, 'attention_logit_cap', 50),
    attentionInvalidLogitsValue: num(a, 'attention_invalid_logits_value', -1e9),
    useClippedLinears: clipped,
    rmsNormEps: num(a, 'rms_norm_eps', 1e-6),
    gradientClipping: num(a, 'gradient_clipping', 1e10),
    outputProjDims: int(a, 'output_proj_dims', 1536),
    textHiddenSize: int(t, 'hidden_size', 0),
  };
  validateGemma4AudioConfig(c);
  return c;
}

/** The real E2B audio encoder. */
export function e2bAudioConfig(): Gemma4AudioConfig {
  const c: Gemma4AudioConfig = {
    hiddenSize: 1024,
    numHiddenLayers: 12,
    numAttentionHeads: 8,
    inputFeatureSize: 128,
    subsamplingConvChannels: [128, 32],
    convKernelSize: 5,
    residualWeight: 0.5,
    attentionChunkSize: 12,
    attentionContextLeft: 13,
    attentionContextRight: 0,
    attentionLogitCap: 50,
    attentionInvalidLogitsValue: -1e9,
    useClippedLinears: true,
    rmsNormEps: 1e-6,
    gradientClipping: 1e10,
    outputProjDims: 1536,
    textHiddenSize: 1536,
  };
  validateGemma4AudioConfig(c);
  return c;
}

/**
 * Small widths, the real structure: 128 mel bins and channels[0] = 128 (the HF projection-width rule),
 * the real chunk/context/cap, clipped linears, 2 layers, output dims differing from the text width.
 */
export function tinyAudioConfig(): Gemma4AudioConfig {
  const c: Gemma4AudioConfig = {
    ...e2bAudioConfig(),
    hiddenSize: 32,
    numHiddenLayers: 2,
    numAttentionHeads: 2,
    subsamplingConvChannels: [128, 4],
    outputProjDims: 48,
    textHiddenSize: 64,
  };
  validateGemma4AudioConfig(c);
  return c;
}

/** The audio_config JSON object (snake_case), e.g. for synth's config.json. */
export function toAudioConfigJson(c: Gemma4AudioConfig): Record<string, unknown> {
  return {
    model_type: 'gemma4_audio',
    hidden_size: c.hiddenSize,
    num_hidden_layers: c.numHiddenLayers,
    num_attention_heads: c.numAttentionHeads,
    hidden_act: 'silu',
    subsampling_conv_channels: [...c.subsamplingConvChannels],
    conv_kernel_size: c.convKernelSize,
    residual_weight: c.residualWeight,
    attention_chunk_size: c.attentionChunkSize,
    attention_context_left: c.attentionContextLeft,
    attention_context_right: c.attentionContextRight,
    attention_logit_cap: c.attentionLogitCap,
    attention_invalid_logits_value: c.attentionInvalidLogitsValue,
    use_clipped_linears: c.useClippedLinears,
    rms_norm_eps: c.rmsNormEps,
    gradient_clipping: c.gradientClipping,
    output_proj_dims: c.outputProjDims,
  };
}
