/** Writes a text-decoder config back in the form transformers reads (synthetic packages' config.json). */
import type { Gemma4TextConfig, RopeParams } from './config.js';

/** Back to the snake_case JSON form (a text_config object), e.g. for synth's config.json. */
export function toTextConfigJson(c: Gemma4TextConfig): Record<string, unknown> {
  const rope = (p: RopeParams): Record<string, unknown> =>
    p.ropeType === 'linear'
      ? { rope_type: p.ropeType, rope_theta: p.theta, factor: p.factor }
      : p.ropeType === 'proportional'
        ? {
            rope_type: p.ropeType,
            rope_theta: p.theta,
            partial_rotary_factor: p.partialRotaryFactor,
            ...(p.factor !== 1 ? { factor: p.factor } : {}),
          }
        : { rope_type: p.ropeType, rope_theta: p.theta };
  // What both Gemmas' configs say alike; each adds its own keys.
  const common = {
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numHiddenLayers,
    num_attention_heads: c.numAttentionHeads,
    num_key_value_heads: c.numKeyValueHeads,
    head_dim: c.headDim,
    layer_types: [...c.layerTypes],
    sliding_window: c.slidingWindow,
    rope_parameters: { sliding_attention: rope(c.rope.sliding_attention), full_attention: rope(c.rope.full_attention) },
    final_logit_softcapping: c.finalLogitSoftcapping,
    rms_norm_eps: c.rmsNormEps,
    hidden_activation: 'gelu_pytorch_tanh',
    tie_word_embeddings: c.tieWordEmbeddings,
  };
  if (c.family === 'gemma3') {
    return { model_type: 'gemma3_text', ...common, query_pre_attn_scalar: Math.round(c.attentionScale ** -2) };
  }
  return {
    model_type: 'gemma4_text',
    ...common,
    global_head_dim: c.globalHeadDim,
    num_kv_shared_layers: c.numKvSharedLayers,
    use_double_wide_mlp: c.useDoubleWideMlp,
    hidden_size_per_layer_input: c.hiddenSizePerLayerInput,
    vocab_size_per_layer_input: c.vocabSizePerLayerInput,
  };
}
