/**
 * The Gemma 4 text decoder's checkpoint tensors: ONE table, driven by the config.
 *
 * Names and shapes (modeling_gemma4.py module tree + convert_gemma4_weights.py, which writes the text
 * model under "model.language_model." for Gemma4ForConditionalGeneration and under "model." for the
 * text-only Gemma4ForCausalLM). All Linear weights are torch layout [out, in], no biases.
 *   embed_tokens.weight                      [vocab, hidden]      scaled by sqrt(hidden) on lookup; tied LM head
 *   embed_tokens_per_layer.weight            [vocab, L * ple]     PLE table, scaled by sqrt(ple) on lookup
 *   per_layer_model_projection.weight        [L * ple, hidden]    Linear, output scaled by hidden^-0.5
 *   per_layer_projection_norm.weight         [ple]                RMSNorm
 *   norm.weight                              [hidden]             final RMSNorm
 *   layers.N.input_layernorm.weight          [hidden]
 *   layers.N.self_attn.q_proj.weight         [heads * hd, hidden]  hd = head_dim (sliding) / global_head_dim (full)
 *   layers.N.self_attn.q_norm.weight         [hd]
 *   layers.N.self_attn.k_proj.weight         [kv_heads * hd, hidden]  \
 *   layers.N.self_attn.v_proj.weight         [kv_heads * hd, hidden]   } only used on KV-owning layers; the model
 *   layers.N.self_attn.k_norm.weight         [hd]                     /  ignores them on KV-shared layers
 *   (v_norm has no weight: RMSNorm with_scale=False)
 *   layers.N.self_attn.o_proj.weight         [hidden, heads * hd]
 *   layers.N.post_attention_layernorm.weight [hidden]
 *   layers.N.pre_feedforward_layernorm.weight [hidden]
 *   layers.N.mlp.gate_proj.weight / up_proj  [width, hidden]      width doubles on KV-shared layers (double-wide MLP)
 *   layers.N.mlp.down_proj.weight            [hidden, width]
 *   layers.N.post_feedforward_layernorm.weight [hidden]
 *   layers.N.per_layer_input_gate.weight     [ple, hidden]
 *   layers.N.per_layer_projection.weight     [hidden, ple]
 *   layers.N.post_per_layer_input_norm.weight [hidden]
 *   layers.N.layer_scalar                    [1]                  multiplies the layer's whole output
 * RMSNorm (Gemma4RMSNorm) is x * (mean(x^2) + eps)^-0.5 * w: the weight is used as is, NOT (1 + w) as in
 * Gemma 2/3; the converter copies the norm scales unchanged.
 */
import { type Gemma4TextConfig, type LayerInfo, hasPle, layerInfos } from './config.js';

/** Weights keyed by OFFICIAL checkpoint names; the converter backs it with safetensors, synth with random values. */
export interface WeightSource {
  get(name: string): Promise<Float32Array>;
  shape(name: string): number[];
  /**
   * Rows [start, start+count) along the first axis, when the source can read part of a tensor: lets the
   * writer quantise the 262144-row embedding table in chunks instead of holding 1.6 GB of float32.
   */
  getRows?(name: string, start: number, count: number): Promise<Float32Array>;
}

/** linear: a torch Linear [out, in] (quantisable as MatMulNBits); embedding: a lookup table; norm/scalar: small f32. */
export type TensorKind = 'linear' | 'embedding' | 'norm' | 'scalar';

export type GlobalRole = 'embed' | 'ple_table' | 'ple_model_proj' | 'ple_proj_norm' | 'final_norm';
export type LayerRole =
  | 'input_norm'
  | 'q_proj'
  | 'q_norm'
  | 'k_proj'
  | 'v_proj'
  | 'k_norm'
  | 'o_proj'
  | 'post_attn_norm'
  | 'pre_ff_norm'
  | 'gate_proj'
  | 'up_proj'
  | 'down_proj'
  | 'post_ff_norm'
  | 'ple_gate'
  | 'ple_proj'
  | 'ple_post_norm'
  | 'layer_scalar';

export interface TensorSpec {
  name: string;
  role: GlobalRole | LayerRole;
  /** Layer index, or null for model-level tensors. */
  layer: number | null;
  shape: number[];
  kind: TensorKind;
  /** False for tensors a checkpoint may carry but the decoder never reads (K/V weights of KV-shared layers). */
  used: boolean;
}

export const MULTIMODAL_TEXT_PREFIX = 'model.language_model.';
export const TEXT_ONLY_PREFIX = 'model.';

interface GlobalRow {
  role: GlobalRole;
  suffix: string;
  kind: TensorKind;
  shape: (c: Gemma4TextConfig) => number[];
  /** Only in models with this feature (Gemma 3 has no per-layer embeddings and no layer scalars). */
  when?: (c: Gemma4TextConfig) => boolean;
}

interface LayerRow {
  role: LayerRole;
  suffix: string;
  kind: TensorKind;
  shape: (c: Gemma4TextConfig, l: LayerInfo) => number[];
  /** Only read on layers that compute their own K/V. */
  kvOwnerOnly?: boolean;
  when?: (c: Gemma4TextConfig) => boolean;
}

const withPle = (c: Gemma4TextConfig): boolean => hasPle(c);
const withLayerScalar = (c: Gemma4TextConfig): boolean => c.layerScalar;

const GLOBAL_ROWS: GlobalRow[] = [
  { role: 'embed', suffix: 'embed_tokens.weight', kind: 'embedding', shape: (c) => [c.vocabSize, c.hiddenSize] },
  {
    role: 'ple_table',
    suffix: 'embed_tokens_per_layer.weight',
    kind: 'embedding',
    shape: (c) => [c.vocabSizePerLayerInput, c.numHiddenLayers * c.hiddenSizePerLayerInput],
    when: withPle,
  },
  {
    role: 'ple_model_proj',
    suffix: 'per_layer_model_projection.weight',
    kind: 'linear',
    shape: (c) => [c.numHiddenLayers * c.hiddenSizePerLayerInput, c.hiddenSize],
    when: withPle,
  },
  {
    role: 'ple_proj_norm',
    suffix: 'per_layer_projection_norm.weight',
    kind: 'norm',
    shape: (c) => [c.hiddenSizePerLayerInput],
    when: withPle,
  },
  { role: 'final_norm', suffix: 'norm.weight', kind: 'norm', shape: (c) => [c.hiddenSize] },
];

const q = (c: Gemma4TextConfig, l: LayerInfo): number => c.numAttentionHeads * l.headDim;
const kv = (c: Gemma4TextConfig, l: LayerInfo): number => c.numKeyValueHeads * l.headDim;

const LAYER_ROWS: LayerRow[] = [
  { role: 'input_norm', suffix: 'input_layernorm.weight', kind: 'norm', shape: (c) => [c.hiddenSize] },
  { role: 'q_proj', suffix: 'self_attn.q_proj.weight', kind: 'linear', shape: (c, l) => [q(c, l), c.hiddenSize] },
  { role: 'q_norm', suffix: 'self_attn.q_norm.weight', kind: 'norm', shape: (_c, l) => [l.headDim] },
  {
    role: 'k_proj',
    suffix: 'self_attn.k_proj.weight',
    kind: 'linear',
    shape: (c, l) => [kv(c, l), c.hiddenSize],
    kvOwnerOnly: true,
  },
  {
    role: 'v_proj',
    suffix: 'self_attn.v_proj.weight',
    kind: 'linear',
    shape: (c, l) => [kv(c, l), c.hiddenSize],
    kvOwnerOnly: true,
  },
  { role: 'k_norm', suffix: 'self_attn.k_norm.weight', kind: 'norm', shape: (_c, l) => [l.headDim], kvOwnerOnly: true },
  { role: 'o_proj', suffix: 'self_attn.o_proj.weight', kind: 'linear', shape: (c, l) => [c.hiddenSize, q(c, l)] },
  { role: 'post_attn_norm', suffix: 'post_attention_layernorm.weight', kind: 'norm', shape: (c) => [c.hiddenSize] },
  { role: 'pre_ff_norm', suffix: 'pre_feedforward_layernorm.weight', kind: 'norm', shape: (c) => [c.hiddenSize] },
  { role: 'gate_proj', suffix: 'mlp.gate_proj.weight', kind: 'linear', shape: (c, l) => [l.mlpWidth, c.hiddenSize] },
  { role: 'up_proj', suffix: 'mlp.up_proj.weight', kind: 'linear', shape: (c, l) => [l.mlpWidth, c.hiddenSize] },
  { role: 'down_proj', suffix: 'mlp.down_proj.weight', kind: 'linear', shape: (c, l) => [c.hiddenSize, l.mlpWidth] },
  { role: 'post_ff_norm', suffix: 'post_feedforward_layernorm.weight', kind: 'norm', shape: (c) => [c.hiddenSize] },
  {
    role: 'ple_gate',
    suffix: 'per_layer_input_gate.weight',
    kind: 'linear',
    shape: (c) => [c.hiddenSizePerLayerInput, c.hiddenSize],
    when: withPle,
  },
  {
    role: 'ple_proj',
    suffix: 'per_layer_projection.weight',
    kind: 'linear',
    shape: (c) => [c.hiddenSize, c.hiddenSizePerLayerInput],
    when: withPle,
  },
  {
    role: 'ple_post_norm',
    suffix: 'post_per_layer_input_norm.weight',
    kind: 'norm',
    shape: (c) => [c.hiddenSize],
    when: withPle,
  },
  { role: 'layer_scalar', suffix: 'layer_scalar', kind: 'scalar', shape: () => [1], when: withLayerScalar },
];

/**
 * Every text-decoder tensor with its shape and kind. `includeUnused` adds the K/V weights of KV-shared
 * layers (present in official checkpoints, ignored by the model); synth can leave them out.
 */
export function textTensorTable(
  c: Gemma4TextConfig,
  prefix = MULTIMODAL_TEXT_PREFIX,
  includeUnused = false,
): TensorSpec[] {
  const present = (r: { when?: (c: Gemma4TextConfig) => boolean }): boolean => !r.when || r.when(c);
  const out: TensorSpec[] = GLOBAL_ROWS.filter(present).map((r) => ({
    name: prefix + r.suffix,
    role: r.role,
    layer: null,
    shape: r.shape(c),
    kind: r.kind,
    used: true,
  }));
  for (const l of layerInfos(c)) {
    for (const r of LAYER_ROWS.filter(present)) {
      const used = !r.kvOwnerOnly || l.ownsKv;
      if (!used && !includeUnused) continue;
      out.push({
        name: `${prefix}layers.${l.index}.${r.suffix}`,
        role: r.role,
        layer: l.index,
        shape: r.shape(c, l),
        kind: r.kind,
        used,
      });
    }
  }
  return out;
}

/** Official name of a model-level tensor. */
export function globalName(role: GlobalRole, prefix = MULTIMODAL_TEXT_PREFIX): string {
  const row = GLOBAL_ROWS.find((r) => r.role === role);
  if (!row) throw new Error(`unknown role ${role}`);
  return prefix + row.suffix;
}

/** Official name of a per-layer tensor. */
export function layerName(layer: number, role: LayerRole, prefix = MULTIMODAL_TEXT_PREFIX): string {
  const row = LAYER_ROWS.find((r) => r.role === role);
  if (!row) throw new Error(`unknown role ${role}`);
  return `${prefix}layers.${layer}.${row.suffix}`;
}

/** True for tensors a graph stores as MatMulNBits (Linear layers); the tied embedding is handled separately. */
export function isQuantisableLinear(spec: TensorSpec): boolean {
  return spec.kind === 'linear';
}

/** Picks the text prefix a checkpoint uses, from its tensor names. */
export function detectTextPrefix(names: Iterable<string>): string {
  for (const n of names) {
    if (n === MULTIMODAL_TEXT_PREFIX + 'embed_tokens.weight') return MULTIMODAL_TEXT_PREFIX;
  }
  for (const n of names) {
    if (n === TEXT_ONLY_PREFIX + 'embed_tokens.weight') return TEXT_ONLY_PREFIX;
  }
  throw new Error(
    `no Gemma 4 text embedding (${MULTIMODAL_TEXT_PREFIX}embed_tokens.weight or ${TEXT_ONLY_PREFIX}embed_tokens.weight) in the checkpoint`,
  );
}

/** Checks that a source has every used tensor with the expected shape; returns readable problems. */
export function checkWeightShapes(
  c: Gemma4TextConfig,
  src: Pick<WeightSource, 'shape'>,
  prefix = MULTIMODAL_TEXT_PREFIX,
): string[] {
  return shapeProblems(textTensorTable(c, prefix), src);
}

/**
 * Readable problems of a source against a tensor table: missing tensors and wrong shapes. A scalar
 * ([] or [1] in the table) may be stored with any shape of one element: checkpoints write both.
 */
export function shapeProblems(
  table: readonly { name: string; shape: readonly number[] }[],
  src: Pick<WeightSource, 'shape'>,
): string[] {
  const elements = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);
  const problems: string[] = [];
  for (const t of table) {
    let got: number[];
    try {
      got = src.shape(t.name);
    } catch {
      problems.push(`missing ${t.name}`);
      continue;
    }
    const scalar = t.shape.length <= 1 && elements(t.shape) === 1;
    if (scalar ? elements(got) !== 1 : got.length !== t.shape.length || got.some((d, i) => d !== t.shape[i])) {
      problems.push(
        `${t.name}: shape [${got.join(', ')}], expected ${scalar ? 'a scalar' : `[${t.shape.join(', ')}]`}`,
      );
    }
  }
  return problems;
}

/**
 * Deterministic PRNG (mulberry32) so random weights are reproducible from a seed. Its state advances by a
 * constant per draw, so `skip` jumps straight to the stream after that many draws (row ranges of a tensor).
 */
export function seededRandom(seed: number, skip = 0): () => number {
  let a = (seed + Math.imul(skip, 0x6d2b79f5)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomTensor(spec: TensorSpec, rand: () => number): Float32Array {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const u = (): number => rand() * 2 - 1;
  if (spec.kind === 'norm') for (let i = 0; i < n; i++) out[i] = 1 + 0.2 * u();
  else if (spec.kind === 'scalar') for (let i = 0; i < n; i++) out[i] = 0.6 + 0.4 * rand();
  else if (spec.kind === 'embedding')
    for (let i = 0; i < n; i++) out[i] = u(); // logits of tens: the soft-cap matters
  else {
    // Uniform with variance 1/fan_in keeps activations O(1) through the stack.
    const bound = Math.sqrt(3 / spec.shape[1]!);
    for (let i = 0; i < n; i++) out[i] = bound * u();
  }
  return out;
}

/**
 * An in-memory WeightSource of random weights for every tensor of the table (for tests and `perch model
 * synth` on small configs). Each tensor has its own seed (from its table position), so values do not depend on get() order.
 */
export function randomWeightSource(
  c: Gemma4TextConfig,
  seed = 1,
  prefix = MULTIMODAL_TEXT_PREFIX,
): WeightSource & { names(): string[] } {
  const specs = new Map(textTensorTable(c, prefix).map((s) => [s.name, s]));
  const cache = new Map<string, Float32Array>();
  let i = 0;
  const seeds = new Map<string, number>();
  for (const name of specs.keys()) seeds.set(name, (seed * 1_000_003 + ++i * 7919) >>> 0);
  return {
    names: () => [...specs.keys()],
    shape(name: string): number[] {
      const s = specs.get(name);
      if (!s) throw new Error(`no tensor ${name}`);
      return [...s.shape];
    },
    async get(name: string): Promise<Float32Array> {
      const s = specs.get(name);
      if (!s) throw new Error(`no tensor ${name}`);
      let t = cache.get(name);
      if (!t) {
        t = randomTensor(s, seededRandom(seeds.get(name)!));
        cache.set(name, t);
      }
      return t;
    },
  };
}

/** A WeightSource over a plain map of tensors (e.g. dequantised weights). */
export function mapWeightSource(tensors: Map<string, { shape: number[]; data: Float32Array }>): WeightSource {
  return {
    shape(name) {
      const t = tensors.get(name);
      if (!t) throw new Error(`no tensor ${name}`);
      return [...t.shape];
    },
    async get(name) {
      const t = tensors.get(name);
      if (!t) throw new Error(`no tensor ${name}`);
      return t.data;
    },
  };
}

/** FNV-1a of the name mixed with the seed: each tensor's values depend on (seed, name) only, not on order. */
export function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * Seeded random tensors of a table, made when asked for and not kept (an E2B synth stays within memory):
 * for synthetic packages and tests. `fill` gives each kind of tensor sensible values.
 */
export function seededTensorSource<S extends { name: string; shape: readonly number[] }>(
  table: readonly S[],
  seed: number,
  fill: (spec: S, out: Float32Array, rand: () => number) => void,
  what: string,
): WeightSource & { names(): string[] } {
  const specs = new Map(table.map((s) => [s.name, s]));
  const spec = (name: string): S => {
    const s = specs.get(name);
    if (!s) throw new Error(`synthetic ${what} has no tensor ${name}`);
    return s;
  };
  return {
    names: () => [...specs.keys()],
    shape: (name) => [...spec(name).shape],
    async get(name) {
      const s = spec(name);
      const out = new Float32Array(s.shape.reduce((a, b) => a * b, 1));
      fill(s, out, seededRandom(tensorSeed(seed, name)));
      return out;
    },
  };
}
