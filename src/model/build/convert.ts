/**
 * `perch model convert`: an official Gemma 4 checkpoint directory (config.json, safetensors shards,
 * tokenizer files) -> a Perch model package, through the same writer as synth. Tensors are read one at a
 * time and the PLE table in row chunks, so conversion fits an 8 GB board.
 */
import { access, readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { AUDIO_TOWER_PREFIX } from '../gemma4/audio-weights.js';
import { VISION_TOWER_PREFIX } from '../gemma4/vision-weights.js';
import { detectTextPrefix, globalName, type WeightSource } from '../gemma4/weights.js';
import { SafetensorsCheckpoint } from '../safetensors.js';
import { buildPackage, type BuildProgress, type PackageExtraFile } from './build.js';
import { PACKAGE_FILES, quantPolicyFor, type Manifest, type Profile, type QuantPolicy } from '../package/manifest.js';

export interface ConvertOptions {
  from: string;
  outDir: string;
  profile?: Profile;
  /** Overrides the profile's policy (experiments, tests); the manifest records what was used. */
  policy?: QuantPolicy;
  logits?: 'all' | 'last';
  /** Recorded in the manifest (pull knows them; a local directory usually does not). */
  model?: string;
  revision?: string;
  /** 'pull' when pullModel downloaded the checkpoint. */
  sourceKind?: 'convert' | 'pull';
  onProgress?: (p: BuildProgress) => void;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** WeightSource over a checkpoint: each get() reads (and converts to float32) one tensor, getRows() a row range. */
export function checkpointWeightSource(ckpt: SafetensorsCheckpoint): WeightSource {
  return {
    shape: (name) => [...ckpt.info(name).shape],
    get: (name) => ckpt.read(name),
    getRows: (name, start, count) => ckpt.readRows(name, start, count),
  };
}

export async function convertCheckpoint(opts: ConvertOptions): Promise<Manifest> {
  const from = resolve(opts.from);
  const configPath = join(from, 'config.json');
  if (!(await exists(configPath))) throw new Error(`${configPath}: missing (not a Hugging Face checkpoint directory?)`);
  const configText = await readFile(configPath, 'utf8');
  let configJson: Record<string, unknown>;
  try {
    configJson = JSON.parse(configText) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${configPath}: not valid JSON (${(e as Error).message})`);
  }
  const tokenizerPath = join(from, 'tokenizer.json');
  if (!(await exists(tokenizerPath)))
    throw new Error(`${tokenizerPath}: missing (the package needs the model's tokenizer)`);
  const files: PackageExtraFile[] = [{ name: PACKAGE_FILES.tokenizer, role: 'tokenizer', copyFrom: tokenizerPath }];
  // Ship the chat template as the model ships it: in tokenizer_config.json and/or chat_template.jinja.
  for (const [name, role] of [
    [PACKAGE_FILES.tokenizerConfig, 'tokenizer-config'],
    [PACKAGE_FILES.chatTemplate, 'chat-template'],
  ] as const) {
    if (await exists(join(from, name))) files.push({ name, role, copyFrom: join(from, name) });
  }

  const ckpt = await SafetensorsCheckpoint.open(from);
  try {
    const prefix = detectTextPrefix(ckpt.names());
    const pleName = globalName('ple_table', prefix);
    // An encoder is converted when the config describes it and its tower's tensors are in the checkpoint
    // (a text-only export may keep the multimodal config); missing single tensors still fail loudly.
    const names = ckpt.names();
    const encoders = {
      vision: names.some((n) => n.startsWith(VISION_TOWER_PREFIX)),
      audio: names.some((n) => n.startsWith(AUDIO_TOWER_PREFIX)),
    };
    return await buildPackage({
      outDir: opts.outDir,
      configJson,
      configText,
      weights: checkpointWeightSource(ckpt),
      prefix,
      // A model without per-layer embeddings (Gemma 3) has no table: the builder never asks for rows.
      pleRows: (start, count) => ckpt.readRows(pleName, start, count),
      files,
      encoders,
      policy: opts.policy ?? quantPolicyFor(opts.profile ?? 'pi5'),
      source: {
        kind: opts.sourceKind ?? 'convert',
        model: opts.model ?? (typeof configJson._name_or_path === 'string' ? configJson._name_or_path : basename(from)),
        ...(opts.revision ? { revision: opts.revision } : {}),
      },
      logits: opts.logits,
      onProgress: opts.onProgress,
    });
  } finally {
    await ckpt.close();
  }
}
