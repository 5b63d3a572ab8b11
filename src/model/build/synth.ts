/**
 * `perch model synth`: a package with the exact shapes of a preset (tiny for tests, e2b for benchmarks and
 * memory checks) and seeded random weights, built by the same writer as a real conversion. Weights are
 * generated per tensor on demand (nothing cached), and PLE rows per row, so an E2B synth needs about as
 * much memory as an E2B conversion.
 */
import { e2bAudioConfig, parseGemma4AudioConfig, tinyAudioConfig, toAudioConfigJson } from '../gemma4/audio-config.js';
import { AUDIO_TOWER_PREFIX, EMBED_AUDIO_PREFIX, syntheticAudioWeightSource } from '../gemma4/audio-weights.js';
import { e2bConfig, tinyConfig, type Gemma4TextConfig } from '../gemma4/config.js';
import { toTextConfigJson } from '../gemma4/config-json.js';
import {
  e2bVisionConfig,
  parseGemma4VisionConfig,
  tinyVisionConfig,
  toVisionConfigJson,
} from '../gemma4/vision-config.js';
import { EMBED_VISION_PREFIX, VISION_TOWER_PREFIX, syntheticVisionWeightSource } from '../gemma4/vision-weights.js';
import {
  MULTIMODAL_TEXT_PREFIX,
  seededRandom,
  tensorSeed,
  textTensorTable,
  type TensorSpec,
  type WeightSource,
} from '../gemma4/weights.js';
import { buildPackage, type BuildProgress } from './build.js';
import { PACKAGE_FILES, quantPolicyFor, type Manifest, type Profile, type QuantPolicy } from '../package/manifest.js';
import { synthTokenizerFiles } from './synth-tokenizer.js';
import type { RowProducer } from '../ple/writer.js';

export type SynthPreset = 'tiny' | 'e2b';

export interface SynthOptions {
  preset: SynthPreset;
  outDir: string;
  profile?: Profile;
  seed?: number;
  logits?: 'all' | 'last';
  /** Write the vision and audio encoders (default true); false: a text-only package (tests of "cannot see"). */
  encoders?: boolean;
  /** Overrides the profile's policy (tests of other quantisations); the manifest records what was used. */
  policy?: QuantPolicy;
  onProgress?: (p: BuildProgress) => void;
}

export function presetConfig(preset: SynthPreset): Gemma4TextConfig {
  return preset === 'tiny' ? tinyConfig() : e2bConfig();
}

/**
 * config.json as a multimodal Gemma 4 checkpoint ships it: text part under text_config, the encoders under
 * vision_config / audio_config (E2B's for an E2B-sized text config, else the tiny ones; their projection
 * to the text width is read from text_config.hidden_size). `encoders: false` leaves them out.
 */
export function synthConfigJson(cfg: Gemma4TextConfig, encoders = true): Record<string, unknown> {
  const json: Record<string, unknown> = {
    architectures: ['Gemma4ForConditionalGeneration'],
    model_type: 'gemma4',
    tie_word_embeddings: true,
    text_config: toTextConfigJson(cfg),
  };
  if (!encoders) return json;
  const e2b = cfg.hiddenSize === e2bConfig().hiddenSize;
  json.vision_config = toVisionConfigJson(e2b ? e2bVisionConfig() : tinyVisionConfig());
  json.audio_config = toAudioConfigJson(e2b ? e2bAudioConfig() : tinyAudioConfig());
  return json;
}

function fillRandom(spec: TensorSpec, out: Float32Array, rand: () => number): void {
  const n = out.length;
  if (spec.kind === 'norm') for (let i = 0; i < n; i++) out[i] = 1 + 0.2 * (rand() * 2 - 1);
  else if (spec.kind === 'scalar') for (let i = 0; i < n; i++) out[i] = 0.6 + 0.4 * rand();
  else if (spec.kind === 'embedding') for (let i = 0; i < n; i++) out[i] = 0.06 * (rand() * 2 - 1);
  else {
    // Uniform with variance 1/fan_in keeps activations O(1) through the stack.
    const bound = Math.sqrt(3 / spec.shape[1]!);
    for (let i = 0; i < n; i++) out[i] = bound * (rand() * 2 - 1);
  }
}

/**
 * Random weights, generated when asked for and not kept. With `configJson` (a synthConfigJson), the
 * vision and audio tower names are served too, routed by name prefix to their own synthetic sources.
 */
export function syntheticWeightSource(
  cfg: Gemma4TextConfig,
  seed: number,
  prefix = MULTIMODAL_TEXT_PREFIX,
  configJson?: Record<string, unknown>,
): WeightSource {
  const text = syntheticTextWeightSource(cfg, seed, prefix);
  const routes: Array<[string[], WeightSource]> = [];
  if (configJson?.vision_config)
    routes.push([
      [VISION_TOWER_PREFIX, EMBED_VISION_PREFIX],
      syntheticVisionWeightSource(parseGemma4VisionConfig(configJson), seed),
    ]);
  if (configJson?.audio_config)
    routes.push([
      [AUDIO_TOWER_PREFIX, EMBED_AUDIO_PREFIX],
      syntheticAudioWeightSource(parseGemma4AudioConfig(configJson), seed),
    ]);
  if (!routes.length) return text;
  const pick = (name: string): WeightSource => routes.find(([ps]) => ps.some((p) => name.startsWith(p)))?.[1] ?? text;
  return {
    shape: (name) => pick(name).shape(name),
    get: (name) => pick(name).get(name),
    getRows: (name, start, count) => {
      const src = pick(name);
      if (!src.getRows) throw new Error(`synthetic ${name}: row reads are for text tensors only`);
      return src.getRows(name, start, count);
    },
  };
}

function syntheticTextWeightSource(cfg: Gemma4TextConfig, seed: number, prefix: string): WeightSource {
  const specs = new Map(textTensorTable(cfg, prefix).map((s) => [s.name, s]));
  const spec = (name: string): TensorSpec => {
    const s = specs.get(name);
    if (!s) throw new Error(`synthetic model has no tensor ${name}`);
    return s;
  };
  return {
    shape: (name) => [...spec(name).shape],
    async get(name) {
      const s = spec(name);
      const out = new Float32Array(s.shape.reduce((a, b) => a * b, 1));
      fillRandom(s, out, seededRandom(tensorSeed(seed, name)));
      return out;
    },
    // The same values as get(), row range only: the generator jumps to the range's first draw.
    async getRows(name, start, count) {
      const s = spec(name);
      const rows = s.shape[0]!;
      if (
        !Number.isSafeInteger(start) ||
        !Number.isSafeInteger(count) ||
        start < 0 ||
        count < 0 ||
        start + count > rows
      ) {
        throw new Error(`rows [${start}, ${start + count}) out of range for ${name} with ${rows} rows`);
      }
      const rowElems = s.shape.slice(1).reduce((a, b) => a * b, 1);
      const out = new Float32Array(count * rowElems);
      fillRandom(s, out, seededRandom(tensorSeed(seed, name), start * rowElems));
      return out;
    },
  };
}

/** PLE rows seeded per row, so any chunking gives the same table. */
export function syntheticPleRows(cols: number, seed: number): RowProducer {
  return async (start, count) => {
    const out = new Float32Array(count * cols);
    for (let r = 0; r < count; r++) {
      const rand = seededRandom(tensorSeed(seed, `ple-row-${start + r}`));
      const base = r * cols;
      for (let c = 0; c < cols; c++) out[base + c] = 0.06 * (rand() * 2 - 1);
    }
    return out;
  };
}

/** Synth skips the slow error-searching quantiser: random weights have nothing for it to find. */
export function synthPolicy(profile: Profile): QuantPolicy {
  const p = quantPolicyFor(profile);
  return p.linear ? { ...p, linear: { ...p.linear, method: 'rtn' } } : p;
}

export async function synthPackage(opts: SynthOptions): Promise<Manifest> {
  const cfg = presetConfig(opts.preset);
  const seed = opts.seed ?? 1;
  const tok = synthTokenizerFiles(cfg.vocabSize);
  const configJson = synthConfigJson(cfg, opts.encoders ?? true);
  return buildPackage({
    outDir: opts.outDir,
    configJson,
    weights: syntheticWeightSource(cfg, seed, MULTIMODAL_TEXT_PREFIX, configJson),
    prefix: MULTIMODAL_TEXT_PREFIX,
    pleRows: syntheticPleRows(cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput, seed),
    files: [
      { name: PACKAGE_FILES.tokenizer, role: 'tokenizer', content: tok.tokenizerJson },
      { name: PACKAGE_FILES.tokenizerConfig, role: 'tokenizer-config', content: tok.tokenizerConfigJson },
      { name: PACKAGE_FILES.chatTemplate, role: 'chat-template', content: tok.chatTemplate },
    ],
    policy: opts.policy ?? synthPolicy(opts.profile ?? 'pi5'),
    source: { kind: 'synth', model: `synthetic-gemma4-${opts.preset}`, preset: opts.preset, seed },
    logits: opts.logits,
    onProgress: opts.onProgress,
  });
}
