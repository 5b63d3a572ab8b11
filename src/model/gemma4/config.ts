/**
 * Gemma 4 text-decoder configuration: parse, validate, derive per-layer facts.
 *
 * Facts (from huggingface/transformers src/transformers/models/gemma4/):
 * - configuration_gemma4.py (Gemma4TextConfig): keys vocab_size, hidden_size, intermediate_size,
 *   num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, global_head_dim (popped from
 *   kwargs, default 512: head dim of full-attention layers), layer_types ("sliding_attention" |
 *   "full_attention"; default pattern 5 sliding : 1 full, last layer forced to full), sliding_window (512),
 *   rope_parameters keyed by layer type (defaults: sliding {default, theta 1e4}; full {proportional,
 *   partial_rotary_factor 0.25, theta 1e6}), num_kv_shared_layers, use_double_wide_mlp,
 *   hidden_size_per_layer_input (PLE dim), vocab_size_per_layer_input, final_logit_softcapping,
 *   rms_norm_eps (1e-6), hidden_activation gelu_pytorch_tanh, tie_word_embeddings, attention_k_eq_v,
 *   enable_moe_block. The multimodal Gemma4Config nests all of this under "text_config".
 * - modeling_gemma4.py: attention scaling is 1.0 (q/k are RMS-normed instead); KV-shared layers are the
 *   last num_kv_shared_layers layers and reuse the K/V of the last non-shared layer of the same type;
 *   the MLP is twice as wide (intermediate_size * 2) on KV-shared layers when use_double_wide_mlp.
 * - convert_gemma4_weights.py, variant gemma-4-e2b: hidden 1536, ple 256, intermediate 4*1536,
 *   35 layers = [4 sliding, 1 full] x 7, heads 8, kv heads 1, kv shared 20, double-wide MLP,
 *   final_logit_softcapping 30, global_head_dim left at its default 512.
 */

export type LayerType = 'sliding_attention' | 'full_attention';

export interface RopeParams {
  /**
   * 'default': all head dims rotate; 'proportional': only the first partialRotaryFactor share of frequencies;
   * 'linear' (Gemma 3's long-context layers): default frequencies divided by `factor`.
   */
  ropeType: 'default' | 'proportional' | 'linear';
  theta: number;
  partialRotaryFactor: number;
  /** Linear scaling of the inverse frequencies (proportional only; 1 = none). */
  factor: number;
}

export interface Gemma4TextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  globalHeadDim: number;
  layerTypes: LayerType[];
  slidingWindow: number;
  rope: Record<LayerType, RopeParams>;
  numKvSharedLayers: number;
  useDoubleWideMlp: boolean;
  hiddenSizePerLayerInput: number;
  vocabSizePerLayerInput: number;
  finalLogitSoftcapping: number | null;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  /**
   * Which Gemma the config describes. Gemma 3's text decoder is Gemma 4's without per-layer embeddings (width
   * 0), KV sharing or layer scalars, and with the four switches below; one builder and one reference serve both.
   */
  family: 'gemma4' | 'gemma3';
  /** RMSNorm scales by (offset + w): 0 in Gemma 4 (w as stored), 1 in Gemma 3 ((1 + w), weights stored around 0). */
  normScaleOffset: 0 | 1;
  /** Multiplies q.k: 1.0 in Gemma 4 (q and k are RMS-normed instead), query_pre_attn_scalar^-0.5 in Gemma 3. */
  attentionScale: number;
  /** v is RMS-normed without a scale (Gemma 4 only). */
  valueNorm: boolean;
  /** Each layer's output is multiplied by its stored layer_scalar (Gemma 4 only). */
  layerScalar: boolean;
}

/** Gemma 4's switches; Gemma 3's come from parseGemma3TextConfig. */
const GEMMA4_SWITCHES = {
  family: 'gemma4',
  normScaleOffset: 0,
  attentionScale: 1,
  valueNorm: true,
  layerScalar: true,
} as const;

/** True when the model has per-layer embeddings (the PLE table, file and graph input). */
export function hasPle(c: Gemma4TextConfig): boolean {
  return c.hiddenSizePerLayerInput > 0;
}

/** Everything the forward pass needs to know about one layer, derived from the config. */
export interface LayerInfo {
  index: number;
  type: LayerType;
  sliding: boolean;
  /** Attention window (keys with q_pos - k_pos < window are visible); null on full layers. */
  window: number | null;
  headDim: number;
  /** Inverse RoPE frequencies, headDim/2 of them; zeros where a dim pair is not rotated (proportional). */
  invFreq: Float64Array;
  /** Number of dim pairs that actually rotate (non-zero invFreq). */
  rotaryPairs: number;
  /** True when this layer computes (and caches) its own K/V. */
  ownsKv: boolean;
  /** Layer whose K/V this layer attends with (itself when ownsKv). */
  kvSource: number;
  /** Index among cache-owning layers (past_key.<slot>), of kvSource. */
  cacheSlot: number;
  mlpWidth: number;
}

export class Gemma4ConfigError extends Error {}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function int(obj: Json, key: string, fallback?: number): number {
  const v = obj[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new Gemma4ConfigError(`text config: "${key}" must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function num(obj: Json, key: string, fallback?: number): number {
  const v = obj[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new Gemma4ConfigError(`text config: "${key}" must be a number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function bool(obj: Json, key: string, fallback: boolean): boolean {
  const v = obj[key] ?? fallback;
  if (typeof v !== 'boolean') throw new Gemma4ConfigError(`text config: "${key}" must be a boolean`);
  return v;
}

const DEFAULT_ROPE: Record<LayerType, RopeParams> = {
  sliding_attention: { ropeType: 'default', theta: 10_000, partialRotaryFactor: 1, factor: 1 },
  full_attention: { ropeType: 'proportional', theta: 1_000_000, partialRotaryFactor: 0.25, factor: 1 },
};

function parseRope(raw: unknown, type: LayerType): RopeParams {
  if (raw === undefined || raw === null) return { ...DEFAULT_ROPE[type] };
  if (!isObject(raw)) throw new Gemma4ConfigError(`text config: rope_parameters.${type} must be an object`);
  const ropeType = raw.rope_type ?? 'default';
  if (ropeType !== 'default' && ropeType !== 'proportional' && ropeType !== 'linear') {
    throw new Gemma4ConfigError(
      `text config: rope_parameters.${type}.rope_type "${String(ropeType)}" is not supported (default, proportional, linear)`,
    );
  }
  const p: RopeParams = {
    ropeType,
    theta: num(raw, 'rope_theta'),
    partialRotaryFactor: num(raw, 'partial_rotary_factor', 1),
    factor: num(raw, 'factor', 1),
  };
  if (p.partialRotaryFactor <= 0 || p.partialRotaryFactor > 1) {
    throw new Gemma4ConfigError(`text config: rope_parameters.${type}.partial_rotary_factor must be in (0, 1]`);
  }
  if (p.theta <= 0 || p.factor <= 0)
    throw new Gemma4ConfigError(`text config: rope_parameters.${type} theta/factor must be > 0`);
  return p;
}

/**
 * Head dim of the full-attention layers. transformers (5.x) reads `global_head_dim` (default 512) when it builds
 * a config, but save_pretrained writes it back as per-layer overrides: `per_layer_config: {"<layer>": {head_dim}}`
 * on every full layer, and no `global_head_dim`. Both forms are read; overrides of anything else, or full
 * layers that disagree, are refused rather than silently flattened.
 */
function globalHeadDim(t: Json, layerTypes: LayerType[]): number {
  const perLayer = t.per_layer_config;
  if (perLayer === undefined || perLayer === null) return int(t, 'global_head_dim', 512);
  if (!isObject(perLayer))
    throw new Gemma4ConfigError('text config: per_layer_config must be an object keyed by layer index');
  const dims = new Set<number>();
  const overridden = new Set<number>();
  for (const [key, raw] of Object.entries(perLayer)) {
    const layer = Number(key);
    if (!Number.isInteger(layer) || layer < 0 || layer >= layerTypes.length) {
      throw new Gemma4ConfigError(
        `text config: per_layer_config key "${key}" is not a layer index below ${layerTypes.length}`,
      );
    }
    if (!isObject(raw)) throw new Gemma4ConfigError(`text config: per_layer_config.${key} must be an object`);
    const keys = Object.keys(raw).filter((k) => raw[k] !== null && raw[k] !== undefined);
    const other = keys.filter((k) => k !== 'head_dim');
    if (other.length)
      throw new Gemma4ConfigError(
        `text config: per_layer_config.${key} overrides ${other.join(', ')}; only head_dim is supported`,
      );
    if (!keys.length) continue;
    const dim = int(raw, 'head_dim');
    if (layerTypes[layer] === 'full_attention') {
      dims.add(dim);
      overridden.add(layer);
    } else if (dim !== int(t, 'head_dim', 256)) {
      throw new Gemma4ConfigError(
        `text config: per_layer_config.${key} gives sliding layer ${layer} head_dim ${dim}; only full layers may differ`,
      );
    }
  }
  const full = layerTypes.flatMap((type, i) => (type === 'full_attention' ? [i] : []));
  if (overridden.size && overridden.size !== full.length) {
    throw new Gemma4ConfigError(
      `text config: per_layer_config sets head_dim on some full layers only (${[...overridden].join(', ')} of ${full.join(', ')})`,
    );
  }
  if (dims.size > 1)
    throw new Gemma4ConfigError(
      `text config: per_layer_config gives full layers different head dims (${[...dims].join(', ')})`,
    );
  return dims.size ? [...dims][0]! : int(t, 'head_dim', 256);
}

/** The one activation both Gemmas use; anything else is refused by name. */
function checkActivation(t: Json): void {
  const act = t.hidden_activation ?? 'gelu_pytorch_tanh';
  if (act !== 'gelu_pytorch_tanh')
    throw new Gemma4ConfigError(`text config: hidden_activation "${String(act)}" is not supported`);
}

/** layer_types as given, or the default pattern: every `pattern`-th layer full, the rest sliding. */
function parseLayerTypes(t: Json, count: number, pattern: number): LayerType[] {
  if (t.layer_types === undefined || t.layer_types === null) {
    return Array.from({ length: count }, (_, i) => ((i + 1) % pattern ? 'sliding_attention' : 'full_attention'));
  }
  if (!Array.isArray(t.layer_types)) throw new Gemma4ConfigError('text config: layer_types must be an array');
  return t.layer_types.map((x, i) => {
    if (x !== 'sliding_attention' && x !== 'full_attention') {
      throw new Gemma4ConfigError(
        `text config: layer_types[${i}] "${String(x)}" is not sliding_attention/full_attention`,
      );
    }
    return x;
  });
}

/** A number that may be absent or null (e.g. final_logit_softcapping): null then. */
function numOrNull(obj: Json, key: string): number | null {
  return obj[key] === undefined || obj[key] === null ? null : num(obj, key);
}

/**
 * Parses the text part of a Gemma 4 config.json: either a Gemma4TextConfig object or the multimodal
 * Gemma4Config holding it under "text_config". Throws Gemma4ConfigError with the offending key.
 */
export function parseGemma4TextConfig(json: unknown): Gemma4TextConfig {
  if (!isObject(json)) throw new Gemma4ConfigError('config.json must hold a JSON object');
  const t = isObject(json.text_config) ? json.text_config : json;
  if (t.model_type === 'gemma3_text' || (t.model_type === undefined && json.model_type === 'gemma3'))
    return parseGemma3TextConfig(json, t);
  if (t.model_type !== undefined && t.model_type !== 'gemma4_text') {
    throw new Gemma4ConfigError(`text config: model_type "${String(t.model_type)}" is not gemma4_text`);
  }
  if (t.enable_moe_block === true)
    throw new Gemma4ConfigError('text config: MoE blocks (enable_moe_block) are not supported');
  if (t.attention_k_eq_v === true) throw new Gemma4ConfigError('text config: attention_k_eq_v is not supported');
  const bidi = t.use_bidirectional_attention;
  if (bidi === 'all') throw new Gemma4ConfigError('text config: use_bidirectional_attention "all" is not supported');
  checkActivation(t);

  const numHiddenLayers = int(t, 'num_hidden_layers');
  const layerTypes = parseLayerTypes(t, numHiddenLayers, 6);
  // transformers forces the last layer to full attention; do the same so both agree.
  if (layerTypes.length > 0) layerTypes[layerTypes.length - 1] = 'full_attention';

  const ropeRaw = t.rope_parameters;
  if (ropeRaw !== undefined && ropeRaw !== null && !isObject(ropeRaw)) {
    throw new Gemma4ConfigError('text config: rope_parameters must be an object keyed by layer type');
  }
  const cfg: Gemma4TextConfig = {
    vocabSize: int(t, 'vocab_size', 262_144),
    hiddenSize: int(t, 'hidden_size'),
    intermediateSize: int(t, 'intermediate_size'),
    numHiddenLayers,
    numAttentionHeads: int(t, 'num_attention_heads'),
    numKeyValueHeads: int(t, 'num_key_value_heads'),
    headDim: int(t, 'head_dim', 256),
    globalHeadDim: globalHeadDim(t, layerTypes),
    layerTypes,
    slidingWindow: int(t, 'sliding_window', 512),
    rope: {
      sliding_attention: parseRope(ropeRaw?.sliding_attention, 'sliding_attention'),
      full_attention: parseRope(ropeRaw?.full_attention, 'full_attention'),
    },
    numKvSharedLayers: int(t, 'num_kv_shared_layers', 0),
    useDoubleWideMlp: bool(t, 'use_double_wide_mlp', false),
    hiddenSizePerLayerInput: int(t, 'hidden_size_per_layer_input', 256),
    vocabSizePerLayerInput: int(t, 'vocab_size_per_layer_input', 262_144),
    finalLogitSoftcapping: numOrNull(t, 'final_logit_softcapping'),
    rmsNormEps: num(t, 'rms_norm_eps', 1e-6),
    tieWordEmbeddings: bool(isObject(json.text_config) ? json : t, 'tie_word_embeddings', true),
    ...GEMMA4_SWITCHES,
  };
  validateGemma4TextConfig(cfg);
  return cfg;
}

/**
 * A Gemma 3 text config (Gemma3TextConfig, or Gemma3Config's text_config; transformers' configuration_gemma3.py):
 * layer_types (default 5 sliding : 1 full), RoPE per layer type (rope_parameters, or the older rope_theta for
 * full layers and rope_local_base_freq for sliding ones), attention scaled by query_pre_attn_scalar^-0.5, RMSNorm
 * as (1 + w), no per-layer embeddings, no KV sharing, no layer scalars.
 */
function parseGemma3TextConfig(json: Json, t: Json): Gemma4TextConfig {
  checkActivation(t);
  if (t.attn_logit_softcapping !== undefined && t.attn_logit_softcapping !== null) {
    throw new Gemma4ConfigError('text config: attn_logit_softcapping is not supported');
  }
  if (t.use_bidirectional_attention === true)
    throw new Gemma4ConfigError('text config: use_bidirectional_attention is not supported');
  const numHiddenLayers = int(t, 'num_hidden_layers');
  const layerTypes = parseLayerTypes(
    t,
    numHiddenLayers,
    int(t, 'sliding_window_pattern', int(t, '_sliding_window_pattern', 6)),
  );
  const ropeRaw = isObject(t.rope_parameters) ? t.rope_parameters : {};
  const legacy: Record<LayerType, Json> = {
    sliding_attention: { rope_type: 'default', rope_theta: t.rope_local_base_freq ?? 10_000 },
    full_attention: { rope_type: 'default', rope_theta: t.rope_theta ?? 1_000_000 },
  };
  const rope = (type: LayerType): RopeParams => parseRope(ropeRaw[type] ?? legacy[type], type);
  const headDim = int(t, 'head_dim', 256);
  const cfg: Gemma4TextConfig = {
    vocabSize: int(t, 'vocab_size', 262_208),
    hiddenSize: int(t, 'hidden_size'),
    intermediateSize: int(t, 'intermediate_size'),
    numHiddenLayers,
    numAttentionHeads: int(t, 'num_attention_heads'),
    numKeyValueHeads: int(t, 'num_key_value_heads'),
    headDim,
    globalHeadDim: headDim,
    layerTypes,
    slidingWindow: int(t, 'sliding_window', 4096),
    rope: { sliding_attention: rope('sliding_attention'), full_attention: rope('full_attention') },
    numKvSharedLayers: 0,
    useDoubleWideMlp: false,
    hiddenSizePerLayerInput: 0,
    vocabSizePerLayerInput: 0,
    finalLogitSoftcapping: numOrNull(t, 'final_logit_softcapping'),
    rmsNormEps: num(t, 'rms_norm_eps', 1e-6),
    tieWordEmbeddings: bool(isObject(json.text_config) ? json : t, 'tie_word_embeddings', true),
    family: 'gemma3',
    normScaleOffset: 1,
    attentionScale: num(t, 'query_pre_attn_scalar', 256) ** -0.5,
    valueNorm: false,
    layerScalar: false,
  };
  validateGemma4TextConfig(cfg);
  return cfg;
}

/** Checks the invariants the graph and reference rely on; throws Gemma4ConfigError naming the key. */
export function validateGemma4TextConfig(c: Gemma4TextConfig): void {
  const fail = (msg: string): never => {
    throw new Gemma4ConfigError(`text config: ${msg}`);
  };
  for (const k of [
    'vocabSize',
    'hiddenSize',
    'intermediateSize',
    'numHiddenLayers',
    'numAttentionHeads',
    'numKeyValueHeads',
    'headDim',
    'globalHeadDim',
  ] as const) {
    if (!(c[k] > 0)) fail(`${k} must be > 0`);
  }
  if (c.layerTypes.length !== c.numHiddenLayers)
    fail(`layer_types has ${c.layerTypes.length} entries, num_hidden_layers is ${c.numHiddenLayers}`);
  if (c.numAttentionHeads % c.numKeyValueHeads !== 0)
    fail('num_attention_heads must be a multiple of num_key_value_heads');
  if (c.headDim % 2 || c.globalHeadDim % 2) fail('head dims must be even (RoPE rotates pairs)');
  if (c.slidingWindow < 2) fail('sliding_window must be >= 2');
  if (c.numKvSharedLayers >= c.numHiddenLayers) fail('num_kv_shared_layers must be below num_hidden_layers');
  if (c.family === 'gemma4' && !(c.hiddenSizePerLayerInput > 0))
    fail('hidden_size_per_layer_input must be > 0 (Gemma 4 without per-layer embeddings is not supported)');
  if (!c.tieWordEmbeddings) fail('untied LM heads are not supported (tie_word_embeddings must be true)');
  if (c.hiddenSizePerLayerInput > 0 && c.vocabSizePerLayerInput !== c.vocabSize) {
    fail('vocab_size_per_layer_input must equal vocab_size (the PLE rows are looked up by token id)');
  }
  if (c.finalLogitSoftcapping !== null && !(c.finalLogitSoftcapping > 0)) fail('final_logit_softcapping must be > 0');
  const first = c.numHiddenLayers - c.numKvSharedLayers;
  for (let i = first; i < c.numHiddenLayers; i++) {
    if (!c.layerTypes.slice(0, first).includes(c.layerTypes[i]!)) {
      fail(`KV-shared layer ${i} (${c.layerTypes[i]}) has no earlier non-shared layer of its type to read K/V from`);
    }
  }
}

/** Inverse RoPE frequencies for one layer type, as transformers computes them (see comments). */
export function ropeInvFreq(p: RopeParams, headDim: number): { invFreq: Float64Array; rotaryPairs: number } {
  const half = headDim / 2;
  const invFreq = new Float64Array(half);
  if (p.ropeType === 'default' || p.ropeType === 'linear') {
    // default: 1 / theta^(2i / head_dim) over all pairs (partial_rotary_factor is not used by this type);
    // linear: the same divided by factor.
    const factor = p.ropeType === 'linear' ? p.factor : 1;
    for (let i = 0; i < half; i++) invFreq[i] = 1 / p.theta ** ((2 * i) / headDim) / factor;
    return { invFreq, rotaryPairs: half };
  }
  // proportional (modeling_rope_utils._compute_proportional_rope_parameters): the first
  // floor(factor*head_dim/2) pairs get 1 / theta^(2i / head_dim) (exponent over the FULL head dim),
  // the rest get frequency 0 (cos 1, sin 0: not rotated); everything divided by `factor`.
  const pairs = Math.floor((p.partialRotaryFactor * headDim) / 2);
  for (let i = 0; i < pairs; i++) invFreq[i] = 1 / p.theta ** ((2 * i) / headDim) / p.factor;
  return { invFreq, rotaryPairs: pairs };
}

/** Per-layer facts: type, head dim, RoPE, KV ownership/source, cache slot, MLP width. */
export function layerInfos(c: Gemma4TextConfig): LayerInfo[] {
  const firstShared = c.numHiddenLayers - c.numKvSharedLayers;
  const owners: number[] = [];
  for (let i = 0; i < firstShared; i++) owners.push(i);
  return c.layerTypes.map((type, index) => {
    const sliding = type === 'sliding_attention';
    const headDim = sliding ? c.headDim : c.globalHeadDim;
    const ownsKv = index < firstShared;
    // Shared layers read the last non-shared layer of the same type (modeling_gemma4.py store_full_length_kv).
    const kvSource = ownsKv ? index : c.layerTypes.slice(0, firstShared).lastIndexOf(type);
    const { invFreq, rotaryPairs } = ropeInvFreq(c.rope[type], headDim);
    const doubleWide = c.useDoubleWideMlp && !ownsKv && firstShared > 0;
    return {
      index,
      type,
      sliding,
      window: sliding ? c.slidingWindow : null,
      headDim,
      invFreq,
      rotaryPairs,
      ownsKv,
      kvSource,
      cacheSlot: owners.indexOf(kvSource),
      mlpWidth: c.intermediateSize * (doubleWide ? 2 : 1),
    };
  });
}

/** Number of layers that keep a KV cache (past_key.<slot> for slot in 0..n-1; slot == layer index). */
export function cacheLayerCount(c: Gemma4TextConfig): number {
  return c.numHiddenLayers - c.numKvSharedLayers;
}

/**
 * A small config with every feature of E2B: both layer types, different head dims, proportional RoPE,
 * two KV-shared layers (one of each type) with double-wide MLPs, PLE, soft-capped logits, window 8.
 */
export function tinyConfig(): Gemma4TextConfig {
  const cfg: Gemma4TextConfig = {
    vocabSize: 512,
    hiddenSize: 64,
    intermediateSize: 96,
    numHiddenLayers: 6,
    numAttentionHeads: 2,
    numKeyValueHeads: 1,
    headDim: 16,
    globalHeadDim: 32,
    layerTypes: [
      'sliding_attention',
      'sliding_attention',
      'full_attention',
      'sliding_attention',
      'sliding_attention',
      'full_attention',
    ],
    slidingWindow: 8,
    rope: {
      sliding_attention: { ropeType: 'default', theta: 10_000, partialRotaryFactor: 1, factor: 1 },
      full_attention: { ropeType: 'proportional', theta: 1_000_000, partialRotaryFactor: 0.25, factor: 1 },
    },
    numKvSharedLayers: 2,
    useDoubleWideMlp: true,
    hiddenSizePerLayerInput: 8,
    vocabSizePerLayerInput: 512,
    finalLogitSoftcapping: 30,
    rmsNormEps: 1e-6,
    tieWordEmbeddings: true,
    ...GEMMA4_SWITCHES,
  };
  validateGemma4TextConfig(cfg);
  return cfg;
}

/** The real Gemma 4 E2B text decoder (convert_gemma4_weights.py, variant gemma-4-e2b). */
export function e2bConfig(): Gemma4TextConfig {
  const pattern: LayerType[] = [
    'sliding_attention',
    'sliding_attention',
    'sliding_attention',
    'sliding_attention',
    'full_attention',
  ];
  const cfg: Gemma4TextConfig = {
    vocabSize: 262_144,
    hiddenSize: 1536,
    intermediateSize: 6144,
    numHiddenLayers: 35,
    numAttentionHeads: 8,
    numKeyValueHeads: 1,
    headDim: 256,
    globalHeadDim: 512,
    layerTypes: Array.from({ length: 7 }, () => pattern).flat(),
    slidingWindow: 512,
    rope: {
      sliding_attention: { ropeType: 'default', theta: 10_000, partialRotaryFactor: 1, factor: 1 },
      full_attention: { ropeType: 'proportional', theta: 1_000_000, partialRotaryFactor: 0.25, factor: 1 },
    },
    numKvSharedLayers: 20,
    useDoubleWideMlp: true,
    hiddenSizePerLayerInput: 256,
    vocabSizePerLayerInput: 262_144,
    finalLogitSoftcapping: 30,
    rmsNormEps: 1e-6,
    tieWordEmbeddings: true,
    ...GEMMA4_SWITCHES,
  };
  validateGemma4TextConfig(cfg);
  return cfg;
}
