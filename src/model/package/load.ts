/**
 * What the engine calls at start-up: quick-verify the package (every problem in one error), parse its config,
 * and open the PLE pager with the configured cache budget. Paths come from the manifest, not from guesses.
 */
import { join } from 'node:path';
import { parseGemma4TextConfig, type Gemma4TextConfig } from '../gemma4/config.js';
import { PlePager } from '../ple/pager.js';
import type { FileRole, Manifest } from './manifest.js';
import { assertPackageLoadable } from './verify.js';

export interface OpenedPackage {
  dir: string;
  manifest: Manifest;
  config: Gemma4TextConfig;
  /** Absolute path of the file with `role`, or null when the package has none (chat template, tokenizer config). */
  path(role: FileRole): string | null;
  pager: PlePager;
  close(): Promise<void>;
}

export interface OpenPackageOptions {
  /** model.ple_cache_mb from the config. */
  pleCacheMb: number;
}

export async function openPackage(dir: string, opts: OpenPackageOptions): Promise<OpenedPackage> {
  const manifest = await assertPackageLoadable(dir);
  const config = parseGemma4TextConfig(manifest.config);
  const path = (role: FileRole): string | null => {
    const f = manifest.files.find((x) => x.role === role);
    return f ? join(dir, f.path) : null;
  };
  const pager = await PlePager.open(path('ple')!, {
    cacheBytes: opts.pleCacheMb * 1024 * 1024,
    expect: {
      rows: config.vocabSizePerLayerInput,
      cols: config.numHiddenLayers * config.hiddenSizePerLayerInput,
      numLayers: config.numHiddenLayers,
      layerDim: config.hiddenSizePerLayerInput,
    },
  });
  return { dir, manifest, config, path, pager, close: () => pager.close() };
}
