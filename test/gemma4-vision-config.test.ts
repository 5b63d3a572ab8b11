import { describe, expect, it } from 'vitest';
import {
  Gemma4VisionConfigError,
  e2bVisionConfig,
  parseGemma4VisionConfig,
  tinyVisionConfig,
  toVisionConfigJson,
  visionInvFreq,
} from '../src/model/gemma4/vision-config.js';
import {
  checkVisionWeightShapes,
  syntheticVisionWeightSource,
  visionNames,
  visionTensorTable,
} from '../src/model/gemma4/vision-weights.js';

/** vision_config as the E2B checkpoint's config.json spells it (transformers' to_dict of the on-device config). */
const e2bJson = {
  architectures: ['Gemma4ForConditionalGeneration'],
  model_type: 'gemma4',
  text_config: { model_type: 'gemma4_text', hidden_size: 1536 },
  vision_config: {
    model_type: 'gemma4_vision',
    hidden_size: 768,
    intermediate_size: 3072,
    num_hidden_layers: 16,
    num_attention_heads: 12,
    num_key_value_heads: 12,
    head_dim: 64,
    global_head_dim: 64,
    hidden_activation: 'gelu_pytorch_tanh',
    rms_norm_eps: 1e-6,
    rope_parameters: { rope_type: 'default', rope_theta: 100.0 },
    pooling_kernel_size: 3,
    patch_size: 16,
    position_embedding_size: 10240,
    default_output_length: 280,
    use_clipped_linears: true,
    standardize: false,
  },
};

describe('gemma4 vision config', () => {
  it('parses the E2B config.json into e2bVisionConfig()', () => {
    expect(parseGemma4VisionConfig(e2bJson)).toEqual(e2bVisionConfig());
  });

  it('round-trips tiny and E2B through toVisionConfigJson', () => {
    for (const c of [tinyVisionConfig(), e2bVisionConfig()]) {
      expect(
        parseGemma4VisionConfig({
          vision_config: toVisionConfigJson(c),
          text_config: { hidden_size: c.textHiddenSize },
        }),
      ).toEqual(c);
    }
  });

  it('fills transformers defaults for missing keys', () => {
    const c = parseGemma4VisionConfig({ vision_config: {}, text_config: { hidden_size: 1536 } });
    expect(c).toEqual({ ...e2bVisionConfig(), useClippedLinears: false });
  });

  it.each([
    [{ text_config: { hidden_size: 1536 } }, /no vision_config/],
    [{ vision_config: {} }, /text_config.hidden_size/],
    [
      { vision_config: { hidden_size: '768' }, text_config: { hidden_size: 8 } },
      /vision_config.hidden_size must be a number/,
    ],
    [
      { vision_config: { use_clipped_linears: 1 }, text_config: { hidden_size: 8 } },
      /use_clipped_linears must be a boolean/,
    ],
    [{ vision_config: { head_dim: 66 }, text_config: { hidden_size: 8 } }, /multiple of 4/],
    [{ vision_config: { hidden_activation: 'silu' }, text_config: { hidden_size: 8 } }, /not supported/],
    [{ vision_config: { rope_parameters: { rope_type: 'yarn' } }, text_config: { hidden_size: 8 } }, /rope_type/],
    [{ vision_config: { num_key_value_heads: 5 }, text_config: { hidden_size: 8 } }, /multiple of num_key_value_heads/],
    [[1, 2], /JSON object/],
  ])('rejects %j with a clear error', (json, msg) => {
    expect(() => parseGemma4VisionConfig(json)).toThrow(Gemma4VisionConfigError);
    expect(() => parseGemma4VisionConfig(json)).toThrow(msg);
  });

  it('RoPE frequencies: head_dim/4 per axis, theta^(-2i/(head_dim/2))', () => {
    const f = visionInvFreq(e2bVisionConfig());
    expect(f).toHaveLength(16);
    expect(f[0]).toBe(1);
    expect(f[1]).toBeCloseTo(100 ** (-2 / 32), 12);
  });

  it('the E2B tensor table has the official names, shapes and ~150 M linear parameters', () => {
    const c = e2bVisionConfig();
    const table = visionTensorTable(c);
    const byName = new Map(table.map((t) => [t.name, t]));
    expect(byName.get('model.vision_tower.patch_embedder.input_proj.weight')!.shape).toEqual([768, 768]);
    expect(byName.get('model.vision_tower.patch_embedder.position_embedding_table')!.shape).toEqual([2, 10240, 768]);
    expect(byName.get('model.vision_tower.encoder.layers.15.mlp.down_proj.linear.weight')!.shape).toEqual([768, 3072]);
    expect(byName.get('model.vision_tower.encoder.layers.3.self_attn.k_proj.output_max')!.kind).toBe('clip');
    expect(byName.get('model.vision_tower.encoder.layers.0.self_attn.q_norm.weight')!.shape).toEqual([64]);
    expect(byName.get('model.embed_vision.embedding_projection.weight')!.shape).toEqual([1536, 768]);
    const linear = table.filter((t) => t.kind === 'linear').reduce((a, t) => a + t.shape[0]! * t.shape[1]!, 0);
    expect(linear).toBe(16 * (4 * 768 * 768 + 3 * 768 * 3072) + 768 * 768 + 1536 * 768);
    expect(table.filter((t) => t.kind === 'clip')).toHaveLength(16 * 7 * 4);
    expect(checkVisionWeightShapes(c, syntheticVisionWeightSource(c))).toEqual([]);
    const missing = {
      shape: (n: string) => {
        if (n === visionNames.embedProjection) throw new Error('no');
        return byName.get(n)!.shape;
      },
    };
    expect(checkVisionWeightShapes(c, missing)).toEqual([`missing ${visionNames.embedProjection}`]);
  });
});
