/**
 * THE package writer that both `perch model synth` and `perch model convert` go through: a WeightSource
 * (official tensor names) -> decoder graph + external data (H7's writer), a PLE row producer -> the PLE file,
 * tokenizer/template files -> the package, then the manifest. Memory stays bounded tensor by tensor (the
 * graph writer streams weights to disk; the PLE table goes through in chunks).
 */
import { copyFile, rm } from 'node:fs/promises';
import { hasPle, parseGemma4TextConfig, type Gemma4TextConfig } from '../gemma4/config.js';
import { FAST_VARIANT, writeDecoderModel } from '../gemma4/decoder-graph.js';
import { writeEncoders } from './encoders.js';
import { uniformPolicy, type LinearQuant, type QuantPolicy as GraphQuantPolicy } from '../gemma4/quantize.js';
import { textTensorTable, type WeightSource } from '../gemma4/weights.js';
import type { RowProducer } from '../ple/writer.js';
import { PACKAGE_FILES, type FileRole, type Manifest, type QuantPolicy } from '../package/manifest.js';
import { planMixedPolicy } from './mixed.js';
import { PackageWriter } from './writer.js';

export type BuildPhase = 'decoder' | 'ple' | 'files';

export interface BuildProgress {
  phase: BuildPhase;
  done: number;
  total: number;
}

export type PackageExtraFile = { name: string; role: FileRole } & (
  | { content: string | Uint8Array }
  | { copyFrom: string }
);

export interface PackageSpec {
  outDir: string;
  /** The model's config.json content (a Gemma 4 config, text part nested or not). */
  configJson: Record<string, unknown>;
  /** config.json exactly as shipped (convert); default: configJson pretty-printed. */
  configText?: string;
  weights: WeightSource;
  /** Checkpoint name prefix of the text decoder (model.language_model. or model.). */
  prefix: string;
  /** Rows of embed_tokens_per_layer, float32. */
  pleRows: RowProducer;
  /** tokenizer.json, tokenizer_config.json, chat template. */
  files: PackageExtraFile[];
  policy: QuantPolicy;
  source: Manifest['source'];
  /**
   * Which encoders the weights hold (convert: what the checkpoint has). Default: every encoder the config
   * describes (vision_config, audio_config) is written.
   */
  encoders?: { vision?: boolean; audio?: boolean };
  /** Graph logits: 'last' (engine default: prefill never materialises [seq, vocab]) or 'all'. */
  logits?: 'all' | 'last';
  onProgress?: (p: BuildProgress) => void;
}

/** Maps the manifest's policy (with a mixed policy's per-tensor bits) to the decoder-graph writer's. */
export function graphPolicy(p: QuantPolicy): GraphQuantPolicy | null {
  if (!p.linear && !p.embedding) return null;
  const lin = p.linear;
  const linearAt = (bits: 2 | 4 | 8): LinearQuant => ({
    bits,
    blockSize: lin!.block_size,
    accuracyLevel: lin!.accuracy_level as 0 | 1 | 2 | 3 | 4,
    method: lin!.method,
    kernel: lin!.kernel ?? 'matmul-nbits',
  });
  const embedding = p.embedding
    ? {
        bits: p.embedding.bits,
        blockSize: p.embedding.block_size,
        accuracyLevel: (lin?.accuracy_level ?? 0) as 0 | 1 | 2 | 3 | 4,
        method: lin?.method ?? 'rtn',
        lmHead: p.embedding.lm_head ?? 'tied',
      }
    : null;
  if (!lin || !p.tensors) return uniformPolicy(lin ? linearAt(lin.bits) : null, embedding);
  const bits = new Map(p.tensors.map((t) => [t.name, t.bits]));
  return { linear: (spec) => linearAt(bits.get(spec.name) ?? lin.bits), embedding };
}

/**
 * The policy as applied to one config: GatherBlockQuantized needs the embedding block to divide the hidden
 * size, so a small model (tiny: 64) gets the largest power-of-two block that does. The manifest records it.
 */
export function fitPolicy(p: QuantPolicy, cfg: Gemma4TextConfig): QuantPolicy {
  if (!p.embedding) return p;
  let bs = p.embedding.block_size;
  while (bs > 16 && cfg.hiddenSize % bs !== 0) bs /= 2;
  if (cfg.hiddenSize % bs !== 0)
    throw new Error(`hidden size ${cfg.hiddenSize} has no embedding block size (power of two >= 16) dividing it`);
  return bs === p.embedding.block_size ? p : { ...p, embedding: { ...p.embedding, block_size: bs } };
}

export function pleLayoutFor(cfg: Gemma4TextConfig, p: QuantPolicy) {
  return {
    rows: cfg.vocabSizePerLayerInput,
    cols: cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput,
    bits: p.ple.bits,
    blockSize: p.ple.block_size,
    numLayers: cfg.numHiddenLayers,
    layerDim: cfg.hiddenSizePerLayerInput,
  };
}

export async function buildPackage(spec: PackageSpec): Promise<Manifest> {
  const cfg = parseGemma4TextConfig(spec.configJson);
  const w = await PackageWriter.create(spec.outDir);
  try {
    await w.addFile(PACKAGE_FILES.config, 'config', spec.configText ?? JSON.stringify(spec.configJson, null, 2) + '\n');

    // A mixed policy measures every linear first (a row-sample pass) and records its decisions.
    const policy = await planMixedPolicy(cfg, spec.weights, spec.prefix, fitPolicy(spec.policy, cfg));

    // Decoder: count tensors as the graph writer pulls them, for progress.
    const total = textTensorTable(cfg, spec.prefix).filter((t) => t.role !== 'ple_table').length;
    let done = 0;
    const tick = (): void => spec.onProgress?.({ phase: 'decoder', done: Math.min(total, ++done), total });
    const src = spec.weights;
    const counted: WeightSource = {
      shape: (name) => src.shape(name),
      get: async (name) => {
        const t = await src.get(name);
        tick();
        return t;
      },
      // A tensor read in row chunks counts once, at its last chunk.
      ...(src.getRows
        ? {
            getRows: async (name: string, start: number, count: number) => {
              const t = await src.getRows!(name, start, count);
              if (start + count === src.shape(name)[0]) tick();
              return t;
            },
          }
        : {}),
    };
    await writeDecoderModel(spec.outDir, cfg, counted, {
      quant: graphPolicy(policy),
      prefix: spec.prefix,
      logits: spec.logits ?? 'last',
      // Always the fused ops (verified against the reference at E2B head dims) and media inputs, so one
      // decoder serves text, image and audio prompts.
      ...FAST_VARIANT,
      media: true,
      onnxFile: PACKAGE_FILES.decoderGraph,
      dataFile: PACKAGE_FILES.decoderWeights,
    });
    await w.addExisting(PACKAGE_FILES.decoderGraph, 'decoder-graph');
    await w.addExisting(PACKAGE_FILES.decoderWeights, 'decoder-weights');

    // Encoders are small next to the decoder (E2B: ~0.3 B + ~0.3 B weights, 8-bit): no progress bar of their own.
    for (const f of await writeEncoders(spec.outDir, spec.configJson, spec.weights, policy, spec.encoders)) {
      await w.addExisting(f.name, f.role);
    }

    if (hasPle(cfg)) {
      const layout = pleLayoutFor(cfg, policy);
      await w.addPle(layout, spec.pleRows, {
        onProgress: (d, t) => spec.onProgress?.({ phase: 'ple', done: d, total: t }),
      });
    }

    for (const [i, f] of spec.files.entries()) {
      if ('content' in f) await w.addFile(f.name, f.role, f.content);
      else {
        await copyFile(f.copyFrom, w.path(f.name));
        await w.addExisting(f.name, f.role);
      }
      spec.onProgress?.({ phase: 'files', done: i + 1, total: spec.files.length });
    }
    return await w.finish({ source: spec.source, config: spec.configJson, quantisation: policy });
  } catch (e) {
    // The directory was empty when we started (PackageWriter.create insists), so nothing else is lost.
    await rm(spec.outDir, { recursive: true, force: true });
    throw e;
  }
}
