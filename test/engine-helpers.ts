/** Shared helpers for the engine tests: a tiny synthetic package and a reference on the same (dequantised) weights. */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Gemma4TextConfig } from '../src/model/gemma4/config.js';
import { dequantisedWeightSource } from '../src/model/gemma4/quantize.js';
import { Gemma4Reference } from '../src/model/gemma4/reference.js';
import { MULTIMODAL_TEXT_PREFIX, type WeightSource, globalName, textTensorTable } from '../src/model/gemma4/weights.js';
import { graphPolicy } from '../src/model/build/build.js';
import { MANIFEST_FILE, PACKAGE_FILES, type Manifest } from '../src/model/package/manifest.js';
import { hashFile } from '../src/model/package/verify.js';
import { ortRunsInt8Activations } from '../src/engine/int8-activations.js';
import type { AnswerEngine, GenerationRequest, GenerationResult } from '../src/engine/types.js';
import { perchConfigSchema } from '../src/config/schema.js';
import { GemmaAnswerEngine } from '../src/engine/gemma-engine.js';
import type { TokenBudget } from '../src/model/gemma4/contract.js';
import type { AskRequest } from '../src/mqtt/messages.js';
import { generationRequest, questionImage } from '../src/pipelines/ask.js';
import { type DecoderGraphOptions, writeDecoderModel } from '../src/model/gemma4/decoder-graph.js';
import { PlePager } from '../src/model/ple/pager.js';
import { dequantizeInt8Channels, quantizeInt8Channels } from '../src/model/quant.js';
import { synthTokenizerFiles } from '../src/model/build/synth-tokenizer.js';
import { type TensorToWrite, writeShardedCheckpoint } from '../src/model/safetensors.js';
import { presetConfig, synthConfigJson, synthPackage, syntheticWeightSource } from '../src/model/build/synth.js';

export const SEED = 5;

/**
 * The answer engine the daemon runs, started on a package with small-test model settings (one thread, context
 * 1024, PLE cache 1 MiB) and `model` on top (e.g. max_answer_tokens). The caller closes it.
 */
export async function startAnswerEngine(dir: string, model: Record<string, unknown> = {}): Promise<GemmaAnswerEngine> {
  const settings = perchConfigSchema.parse({
    model: { dir, threads: 1, context_tokens: 1024, ple_cache_mb: 1, ...model },
  }).model;
  const engine = new GemmaAnswerEngine(settings);
  await engine.start();
  return engine;
}

/** The engine as it is, except that each generation request is kept in `requests` on its way to it. */
export function recordingEngine(engine: AnswerEngine, requests: GenerationRequest[]): AnswerEngine {
  return Object.assign(Object.create(engine) as AnswerEngine, {
    generate: (req: GenerationRequest) => {
      requests.push(req);
      return engine.generate(req);
    },
  });
}

export async function makeTinyPackage(
  root: string,
  name = 'tiny',
): Promise<{ dir: string; manifest: Manifest; cfg: Gemma4TextConfig }> {
  const dir = join(root, name);
  // Text-only (no encoders): the tests of packages that cannot see or hear use it; seeing/transcribe helpers add them.
  const manifest = await synthPackage({ preset: 'tiny', outDir: dir, profile: 'pi5', seed: SEED, encoders: false });
  return { dir, manifest, cfg: presetConfig('tiny') };
}

export function tempRoot(tag: string): string {
  return mkdtempSync(join(tmpdir(), `perch-${tag}-`));
}

export function copyPackage(src: string, dst: string): string {
  cpSync(src, dst, { recursive: true });
  return dst;
}

/**
 * The reference on exactly what the package computes with: dequantised linears and embedding, the PLE table
 * as the pager dequantises it, int8 activation blocks when the linears run at accuracy_level 4 and this CPU's
 * ORT really runs them so (int8Activations, default: ask ORT), float activations otherwise.
 */
export async function referenceFor(
  dir: string,
  manifest: Manifest,
  cfg: Gemma4TextConfig,
  opts: { int8Activations?: boolean } = {},
): Promise<Gemma4Reference> {
  const policy = graphPolicy(manifest.quantisation);
  const base = syntheticWeightSource(cfg, SEED);
  const deq = policy ? dequantisedWeightSource(base, cfg, policy) : base;
  const pager = await PlePager.open(join(dir, 'ple.bin'), { cacheBytes: 0 });
  const ple = await pager.rowsFor(Array.from({ length: cfg.vocabSize }, (_, i) => i));
  await pager.close();
  const pleName = globalName('ple_table', MULTIMODAL_TEXT_PREFIX);
  const src: WeightSource = { shape: (n) => deq.shape(n), get: async (n) => (n === pleName ? ple : deq.get(n)) };
  const lin = manifest.quantisation.linear;
  if (lin?.kernel === 'int8-channels') {
    // pi4: per-row int8 activations in every Linear, and the LM head its own int8 matrix when the manifest says so.
    const untied = manifest.quantisation.embedding?.lm_head === 'int8-channels';
    const embed = untied ? await base.get(globalName('embed', MULTIMODAL_TEXT_PREFIX)) : null;
    const lmHead = embed
      ? dequantizeInt8Channels(quantizeInt8Channels(embed, cfg.vocabSize, cfg.hiddenSize))
      : undefined;
    return Gemma4Reference.load(cfg, src, { int8RowActivations: true, lmHead });
  }
  const int8 =
    lin &&
    lin.accuracy_level === 4 &&
    (opts.int8Activations ?? (await ortRunsInt8Activations(lin.bits, lin.block_size)));
  const int8ActivationBlock = int8 ? lin.block_size : undefined;
  return Gemma4Reference.load(cfg, src, { int8ActivationBlock });
}

export { argmax, relErr } from './gemma4-helpers.js';

/**
 * A copy of a tiny synth package whose decoder is rebuilt with other graph options (media inputs, fused ops),
 * same weights and quantisation; the manifest's sizes and hashes are updated so it still verifies.
 */
export async function rebuildDecoder(
  base: string,
  manifest: Manifest,
  cfg: Gemma4TextConfig,
  dst: string,
  opts: DecoderGraphOptions,
): Promise<string> {
  const dir = copyPackage(base, dst);
  await writeDecoderModel(dir, cfg, syntheticWeightSource(cfg, SEED), {
    quant: graphPolicy(manifest.quantisation),
    logits: 'last',
    ...opts,
    onnxFile: PACKAGE_FILES.decoderGraph,
    dataFile: PACKAGE_FILES.decoderWeights,
  });
  const m = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), 'utf8')) as Manifest;
  for (const f of m.files)
    if (f.role === 'decoder-graph' || f.role === 'decoder-weights') Object.assign(f, await hashFile(join(dir, f.path)));
  writeFileSync(join(dir, MANIFEST_FILE), JSON.stringify(m, null, 2));
  return dir;
}

/** An official-layout checkpoint of the tiny text model (synthetic weights, bf16, no encoders) for `perch model convert`. */
export async function writeTinyCheckpoint(dir: string): Promise<void> {
  const cfg = presetConfig('tiny');
  const src = syntheticWeightSource(cfg, SEED);
  const tensors: TensorToWrite[] = [];
  for (const t of textTensorTable(cfg, MULTIMODAL_TEXT_PREFIX))
    tensors.push({ name: t.name, dtype: 'BF16', shape: t.shape, data: await src.get(t.name) });
  mkdirSync(dir, { recursive: true });
  writeShardedCheckpoint(dir, tensors, 1 << 20);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(synthConfigJson(cfg, false), null, 2));
  writeFileSync(join(dir, 'tokenizer.json'), synthTokenizerFiles(cfg.vocabSize).tokenizerJson);
}

/**
 * An MQTT-style question to an engine through the ask pipeline's own translation (image choice, then the
 * engine's request), as `<root>/ask` sends it.
 */
export async function askEngine(
  engine: AnswerEngine,
  request: AskRequest,
  opts: { signal?: AbortSignal; onToken?: (delta: string) => void; image?: Buffer; imageTokens?: TokenBudget } = {},
): Promise<GenerationResult> {
  const image = questionImage(request, opts.image ? { frame: opts.image } : {});
  return engine.generate(
    generationRequest(request, {
      ...(image ? { image } : {}),
      ...(opts.imageTokens !== undefined ? { tokens: opts.imageTokens } : {}),
      signal: opts.signal ?? new AbortController().signal,
      ...(opts.onToken ? { onToken: opts.onToken } : {}),
    }),
  );
}
