import { describe, expect, it } from 'vitest';
import {
  Gemma4ConfigError,
  e2bConfig,
  layerInfos,
  parseGemma4TextConfig,
  tinyConfig,
} from '../src/model/gemma4/config.js';
import { toTextConfigJson } from '../src/model/gemma4/config-json.js';
import { cacheSlots } from '../src/model/gemma4/decoder-graph.js';
import {
  MULTIMODAL_TEXT_PREFIX,
  TEXT_ONLY_PREFIX,
  checkWeightShapes,
  detectTextPrefix,
  layerName,
  randomWeightSource,
  textTensorTable,
} from '../src/model/gemma4/weights.js';

describe('gemma4 config', () => {
  it('parses the multimodal config (text_config nested) and a bare text config to the same values', () => {
    const text = toTextConfigJson(e2bConfig());
    expect(
      parseGemma4TextConfig({ model_type: 'gemma4', text_config: text, vision_config: {}, tie_word_embeddings: true }),
    ).toEqual(e2bConfig());
    expect(parseGemma4TextConfig(text)).toEqual(e2bConfig());
    expect(parseGemma4TextConfig(toTextConfigJson(tinyConfig()))).toEqual(tinyConfig());
  });

  it('fills transformers defaults: 5:1 layer pattern with the last layer full, default RoPE per type', () => {
    const c = parseGemma4TextConfig({
      hidden_size: 64,
      intermediate_size: 128,
      num_hidden_layers: 8,
      num_attention_heads: 2,
      num_key_value_heads: 1,
    });
    expect(c.layerTypes).toEqual([
      'sliding_attention',
      'sliding_attention',
      'sliding_attention',
      'sliding_attention',
      'sliding_attention',
      'full_attention',
      'sliding_attention',
      'full_attention',
    ]);
    expect(c.rope.full_attention).toEqual({
      ropeType: 'proportional',
      theta: 1e6,
      partialRotaryFactor: 0.25,
      factor: 1,
    });
    expect(c.rope.sliding_attention.theta).toBe(1e4);
    expect([c.headDim, c.globalHeadDim, c.slidingWindow, c.rmsNormEps, c.finalLogitSoftcapping]).toEqual([
      256,
      512,
      512,
      1e-6,
      null,
    ]);
  });

  it('rejects bad or unsupported configs with errors that name the key', () => {
    const base = toTextConfigJson(tinyConfig());
    const bad =
      (patch: Record<string, unknown>): (() => unknown) =>
      () =>
        parseGemma4TextConfig({ ...base, ...patch });
    expect(bad({ hidden_size: undefined })).toThrow(/hidden_size/);
    expect(bad({ hidden_size: 64.5 })).toThrow(/hidden_size/);
    expect(bad({ num_attention_heads: 3, num_key_value_heads: 2 })).toThrow(/multiple of num_key_value_heads/);
    expect(bad({ enable_moe_block: true })).toThrow(/MoE/);
    expect(bad({ attention_k_eq_v: true })).toThrow(/attention_k_eq_v/);
    expect(
      bad({
        layer_types: [
          'sliding_attention',
          'chunked',
          'full_attention',
          'sliding_attention',
          'sliding_attention',
          'full_attention',
        ],
      }),
    ).toThrow(/layer_types\[1\]/);
    expect(bad({ rope_parameters: { sliding_attention: { rope_type: 'yarn', rope_theta: 1 } } })).toThrow(/yarn/);
    expect(
      bad({
        layer_types: [
          'sliding_attention',
          'sliding_attention',
          'sliding_attention',
          'sliding_attention',
          'full_attention',
          'full_attention',
        ],
      }),
    ).toThrow(/no earlier non-shared layer/);
    expect(bad({ hidden_size_per_layer_input: 0 })).toThrow(/per-layer/);
    expect(() => parseGemma4TextConfig([])).toThrow(Gemma4ConfigError);
  });

  it('derives E2B per-layer facts: KV sources, cache slots, head dims, MLP widths, proportional RoPE', () => {
    const layers = layerInfos(e2bConfig());
    expect(layers.filter((l) => l.ownsKv).map((l) => l.index)).toEqual(Array.from({ length: 15 }, (_, i) => i));
    for (const l of layers.slice(15)) expect(l.kvSource).toBe(l.sliding ? 13 : 14);
    expect(layers.filter((l) => !l.sliding).map((l) => l.index)).toEqual([4, 9, 14, 19, 24, 29, 34]);
    expect(layers.map((l) => l.mlpWidth)).toEqual([...Array(15).fill(6144), ...Array(20).fill(12288)]);
    const full = layers[4]!;
    expect([full.headDim, full.rotaryPairs, full.invFreq.length]).toEqual([512, 64, 256]);
    expect(full.invFreq[1]).toBeCloseTo(1e6 ** (-2 / 512), 12);
    expect(full.invFreq[63]).toBeGreaterThan(0);
    expect(full.invFreq[64]).toBe(0);
    const sliding = layers[0]!;
    expect([sliding.headDim, sliding.rotaryPairs, sliding.window]).toEqual([256, 128, 512]);
    expect(sliding.invFreq[127]).toBeCloseTo(1e4 ** (-254 / 256), 12);
    const slots = cacheSlots(e2bConfig());
    expect(slots).toHaveLength(15);
    expect(slots[0]!.maxLength).toBe(511);
    expect(slots[4]!.maxLength).toBeNull();
    expect(slots[14]!.pastKey).toBe('past_key_values.14.key');
  });
});

describe('gemma4 weights table', () => {
  it('names and shapes the official E2B text tensors', () => {
    const c = e2bConfig();
    const t = new Map(textTensorTable(c).map((s) => [s.name, s]));
    const shape = (n: string): number[] | undefined => t.get(n)?.shape;
    expect(shape('model.language_model.embed_tokens.weight')).toEqual([262144, 1536]);
    expect(shape('model.language_model.embed_tokens_per_layer.weight')).toEqual([262144, 35 * 256]);
    expect(shape('model.language_model.per_layer_model_projection.weight')).toEqual([35 * 256, 1536]);
    expect(shape('model.language_model.per_layer_projection_norm.weight')).toEqual([256]);
    expect(shape(layerName(0, 'q_proj'))).toEqual([8 * 256, 1536]);
    expect(shape(layerName(4, 'q_proj'))).toEqual([8 * 512, 1536]);
    expect(shape(layerName(4, 'k_proj'))).toEqual([512, 1536]);
    expect(shape(layerName(4, 'o_proj'))).toEqual([1536, 8 * 512]);
    expect(shape(layerName(4, 'q_norm'))).toEqual([512]);
    expect(shape(layerName(15, 'gate_proj'))).toEqual([12288, 1536]);
    expect(shape(layerName(15, 'down_proj'))).toEqual([1536, 12288]);
    expect(shape('model.language_model.layers.20.per_layer_input_gate.weight')).toEqual([256, 1536]);
    expect(shape('model.language_model.layers.20.per_layer_projection.weight')).toEqual([1536, 256]);
    expect(shape('model.language_model.layers.34.layer_scalar')).toEqual([1]);
    // KV-shared layers read no K/V weights; a checkpoint may still carry them (listed as unused).
    expect(t.has(layerName(15, 'k_proj'))).toBe(false);
    const all = textTensorTable(c, MULTIMODAL_TEXT_PREFIX, true).filter((s) => !s.used);
    expect(all).toHaveLength(20 * 3);
    // Decoder matrices: ~1.9 B parameters (linears only, tied head not counted).
    const linear = textTensorTable(c)
      .filter((s) => s.kind === 'linear')
      .reduce((a, s) => a + s.shape[0]! * s.shape[1]!, 0);
    expect(linear).toBeGreaterThan(1.7e9);
    expect(linear).toBeLessThan(2.1e9);
  });

  it('checks a source against the table and detects the text prefix', () => {
    const c = tinyConfig();
    expect(checkWeightShapes(c, randomWeightSource(c))).toEqual([]);
    const other = tinyConfig();
    other.intermediateSize = 80;
    const problems = checkWeightShapes(other, randomWeightSource(c));
    expect(problems.some((p) => p.includes('mlp.gate_proj.weight') && p.includes('expected [80, 64]'))).toBe(true);
    expect(detectTextPrefix(['x', 'model.language_model.embed_tokens.weight'])).toBe(MULTIMODAL_TEXT_PREFIX);
    expect(detectTextPrefix(['model.embed_tokens.weight'])).toBe(TEXT_ONLY_PREFIX);
    expect(() => detectTextPrefix(['lm_head.weight'])).toThrow(/no Gemma 4 text embedding/);
  });
});

describe("per_layer_config (how transformers 5.x save_pretrained writes full layers' head dim)", () => {
  const base = (): Record<string, unknown> => {
    const t = toTextConfigJson(tinyConfig());
    delete t.global_head_dim;
    return t;
  };
  it('reads the head dim of the full layers from it', () => {
    const t = { ...base(), per_layer_config: { '2': { head_dim: 48 }, '5': { head_dim: 48 } } };
    expect(parseGemma4TextConfig(t).globalHeadDim).toBe(48);
    expect(
      layerInfos(parseGemma4TextConfig(t))
        .filter((l) => !l.sliding)
        .map((l) => l.headDim),
    ).toEqual([48, 48]);
  });
  it('refuses what it cannot build rather than flattening it', () => {
    const bad = (plc: unknown): string => {
      try {
        parseGemma4TextConfig({ ...base(), per_layer_config: plc });
        return 'accepted';
      } catch (e) {
        return (e as Error).message;
      }
    };
    expect(bad({ '2': { head_dim: 48 } })).toMatch(/some full layers only/);
    expect(bad({ '2': { head_dim: 48 }, '5': { head_dim: 64 } })).toMatch(/different head dims/);
    expect(bad({ '0': { head_dim: 48 } })).toMatch(/sliding layer 0/);
    expect(bad({ '2': { num_key_value_heads: 2 }, '5': { head_dim: 48 } })).toMatch(/only head_dim is supported/);
    expect(bad({ '9': { head_dim: 48 } })).toMatch(/not a layer index/);
  });
});
