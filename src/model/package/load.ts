/**
 * What the engine calls at start-up: quick-verify the package (every problem in one error), parse its config,
 * and open the PLE pager with the configured cache budget. Paths come from the manifest, not from guesses.
 */
import { join } from 'node:path';
import { parseGemma4TextConfig, type Gemma4TextConfig } from '../gemma4/config.js';
import { PlePager, type PlePagerStats } from '../ple/pager.js';
import type { FileRole, Manifest } from './manifest.js';
import { assertPackageLoadable } from './verify.js';

export interface OpenedPackage {
  dir: string;
  manifest: Manifest;
  config: Gemma4TextConfig;
  /** Absolute path of the file with `role`, or null when the package has none (chat template, tokenizer config). */
  path(role: FileRole): string | null;
  /** Per-layer embedding rows; a package without them (Gemma 3) serves empty rows. */
  pager: PleRowSource;
  close(): Promise<void>;
}

/** What the engine needs of the PLE pager. */
export type PleRowSource = Pick<PlePager, 'rowsFor' | 'stats' | 'close'>;

/** The row source of a model without per-layer embeddings: no rows, no reads. */
export const NO_PLE: PleRowSource = {
  rowsFor: async () => new Float32Array(0),
  stats: (): PlePagerStats => ({
    hits: 0,
    misses: 0,
    reads: 0,
    residentBytes: 0,
    cachedRows: 0,
    budgetBytes: 0,
    readLatencyMs: { p50: 0, p95: 0, mean: 0, samples: 0 },
  }),
  close: async () => {},
};

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
  const plePath = path('ple');
  if (!plePath) return { dir, manifest, config, path, pager: NO_PLE, close: async () => {} };
  const pager = await PlePager.open(plePath, {
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
