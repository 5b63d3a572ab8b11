/**
 * The package contract: what the graph builders write and the runtime reads, in one place, so that the engine
 * never imports builder code. File names live with the manifest (PACKAGE_FILES); here are the graphs' input and
 * output names, the decoder's cache layout and the vision encoder's token budgets.
 */
import { type Gemma4TextConfig, type LayerType, layerInfos } from './config.js';

/** The decoder's inputs and output (per_layer_rows only with per-layer embeddings; media_* when the graph takes media). */
export const DECODER_IO = {
  inputIds: 'input_ids',
  positionIds: 'position_ids',
  perLayerRows: 'per_layer_rows',
  mediaEmbeds: 'media_embeds',
  mediaMask: 'media_mask',
  logits: 'logits',
} as const;

/** The audio encoder's inputs (log-mel features, frame mask) and outputs (soft tokens, their mask). */
export const AUDIO_GRAPH_IO = {
  features: 'input_features',
  mask: 'input_mask',
  embeds: 'audio_embeds',
  outMask: 'audio_mask',
} as const;

/**
 * The streaming audio encoder (batch 1): AUDIO_GRAPH_IO's features and mask for a chunk of 4n frames (n soft
 * tokens), plus the state the previous chunk left, given back as `next_*` for the next one. All zeros start a
 * stream. Shapes, with L layers, W = attention_context_left - 2 past keys, K the conv kernel, F mel bins:
 *   keys, values [L, W, hidden]    the last W scaled keys and values of each layer's attention
 *   conv         [L, K - 1, hidden] the last K - 1 inputs of each layer's depthwise convolution
 *   valid        [W]                1 where those past keys are real tokens
 *   frame        [1, F]             the last (masked) mel frame, for the first subsampling convolution
 *   sub          [C0, ceil(F / 2)]  the last output row of the first subsampling stage, for the second
 */
export const AUDIO_STREAM_STATE = ['keys', 'values', 'conv', 'valid', 'frame', 'sub'] as const;
export type AudioStreamState = (typeof AUDIO_STREAM_STATE)[number];
export const audioStateInput = (s: AudioStreamState): string => `state_${s}`;
export const audioStateOutput = (s: AudioStreamState): string => `next_${s}`;

/**
 * One KV cache slot of the decoder: layers that share another layer's KV own none. The graph takes
 * past_key_values.<slot>.key/value and returns either new.<slot>.key/value, only this call's entries, which the
 * engine appends to the cache it keeps (packages written now: a step's output does not grow with the context),
 * or present.<slot>.key/value, past + this call's entries (older packages).
 */
export interface CacheSlot {
  slot: number;
  layer: number;
  type: LayerType;
  kvHeads: number;
  headDim: number;
  /** Most entries present.<slot> ever holds: window - 1 for sliding layers, null (unbounded) for full ones. */
  maxLength: number | null;
  pastKey: string;
  pastValue: string;
  presentKey: string;
  presentValue: string;
  newKey: string;
  newValue: string;
}

export function cacheSlots(cfg: Gemma4TextConfig): CacheSlot[] {
  return layerInfos(cfg)
    .filter((l) => l.ownsKv)
    .map((l) => ({
      slot: l.cacheSlot,
      layer: l.index,
      type: l.type,
      kvHeads: cfg.numKeyValueHeads,
      headDim: l.headDim,
      maxLength: l.window === null ? null : l.window - 1,
      pastKey: `past_key_values.${l.cacheSlot}.key`,
      pastValue: `past_key_values.${l.cacheSlot}.value`,
      presentKey: `present.${l.cacheSlot}.key`,
      presentValue: `present.${l.cacheSlot}.value`,
      newKey: `new.${l.cacheSlot}.key`,
      newValue: `new.${l.cacheSlot}.value`,
    }));
}

/** The vision encoder's image token budgets: Gemma 4's allowed max_soft_tokens. */
export const SOFT_TOKEN_BUDGETS = [70, 140, 280, 560, 1120] as const;
export type TokenBudget = (typeof SOFT_TOKEN_BUDGETS)[number];
/** The processor's default max_soft_tokens, and Perch's image budget unless a camera or request sets one. */
export const DEFAULT_IMAGE_TOKENS = 280;
/** Perch's budget for the early caption of a motion event: the smallest, about a quarter of the encoder's work. */
export const EARLY_IMAGE_TOKENS = 70;
