/**
 * A per-machine cache of ONNX Runtime's prepacked weights.
 *
 * At load ORT repacks every MatMulNBits weight into a layout for this CPU, on the heap: for the E2B package
 * that is about 830 MiB of anonymous memory beside the memory-mapped originals. ORT can instead write the
 * optimised graph with those blobs in its external-data file (session.save_external_prepacked_constant_initializers);
 * a session opened from that file maps the blobs, so they are file-backed pages (the kernel may drop and
 * re-read them under pressure) and nothing is packed again.
 *
 * The packed layout depends on the CPU's instruction set and on the ORT version, so an entry is keyed by both,
 * by the source model's checksum and by the session settings. It is built once, in a child process (the
 * packing's heap peak ends with it), written under a temporary name, synced and renamed into place: a power
 * cut leaves either a whole entry or none.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { type Logger, silentLogger } from '../common/log.js';
import type { FileRole, Manifest } from '../model/package/manifest.js';
import { type SessionTuning, sessionOptions } from './session.js';

/** Bumped when the entry layout changes. */
const FORMAT = 1;
export const PREPACKED_MODEL_FILE = 'model.onnx';
export const PREPACKED_DATA_FILE = 'model.onnx.data';
const READY_FILE = 'ready.json';

export interface PrepackedCacheOptions {
  /** Directory holding the entries (created if missing). */
  dir: string;
  logger?: Logger;
}

export interface PrepackedSource {
  /** The package's .onnx file (its external data next to it). */
  modelPath: string;
  /** Identity of the model and its data, e.g. the manifest's sha256 of both files. */
  checksum: string;
}

export interface PrepackedModel {
  /** Optimised model whose MatMulNBits weights are stored prepacked: load it with optimisation off. */
  path: string;
  /** True when this call built the entry (first load on this machine). */
  built: boolean;
  key: string;
}

interface ReadyRecord {
  format: number;
  key: string;
  source: string;
  checksum: string;
  ort: string;
  builtAt: string;
  /** Sizes of the entry's files: a file cut short (a full disk, a copy interrupted) makes the entry stale. */
  bytes: { model: number; data: number };
}

/** Where CLI commands keep the cache: $PERCH_CACHE_DIR, else $XDG_CACHE_HOME/perch, else ~/.cache/perch. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PERCH_CACHE_DIR) return env.PERCH_CACHE_DIR;
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'perch');
}

/** The lines of /proc/cpuinfo that decide which MLAS kernels (and so which packed layouts) ORT picks. */
export function cpuSignature(cpuinfo?: string): string {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      text = '';
    }
  }
  const wanted = /^(model name|flags|Features|CPU implementer|CPU architecture|CPU variant|CPU part)\s*:/;
  const lines = new Set(
    text
      .split('\n')
      .filter((l) => wanted.test(l))
      .map((l) => l.replace(/\s+/g, ' ').trim()),
  );
  return [...lines].sort().join('\n');
}

function ortVersion(): string {
  return (ort.env as { versions?: { common?: string } }).versions?.common ?? 'unknown';
}

/** Everything that changes the packed bytes or the saved graph goes into the key. */
export function cacheKey(source: PrepackedSource, tuning: SessionTuning, cpu = cpuSignature()): string {
  const entries = Object.entries(tuning.configEntries ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const material = JSON.stringify({
    format: FORMAT,
    ort: ortVersion(),
    arch: process.arch,
    cpu,
    checksum: source.checksum,
    level: tuning.graphOptimizationLevel,
    entries,
  });
  return createHash('sha256').update(material).digest('hex').slice(0, 20);
}

function entryPrefix(modelPath: string): string {
  return `${basename(modelPath, extname(modelPath))}-`;
}

/**
 * The prepacked copy of `source` for this machine, built on first use. Returns null (after a warning) when it
 * cannot be had (no room on disk, the build failed): the caller then loads the original and ORT packs on the heap.
 */
export async function prepackedModel(
  source: PrepackedSource,
  tuning: SessionTuning,
  opts: PrepackedCacheOptions,
): Promise<PrepackedModel | null> {
  const log = opts.logger ?? silentLogger;
  if (tuning.disablePrepacking) return null;
  const key = cacheKey(source, tuning);
  const name = `${entryPrefix(source.modelPath)}${key}`;
  const entry = join(opts.dir, name);
  const path = join(entry, PREPACKED_MODEL_FILE);
  if (await isReady(entry, key)) return { path, built: false, key };

  try {
    await mkdir(opts.dir, { recursive: true });
    const need = await estimateEntryBytes(source.modelPath);
    const fs = await statfs(opts.dir);
    const free = fs.bavail * fs.bsize;
    if (free < need) {
      log.warn(
        { dir: opts.dir, freeMb: Math.round(free / 2 ** 20), needMb: Math.round(need / 2 ** 20) },
        'not enough disk for the prepacked weight cache: ONNX Runtime packs the weights in memory instead',
      );
      return null;
    }
    const partial = join(opts.dir, `${name}.partial-${process.pid}`);
    await rm(partial, { recursive: true, force: true });
    await mkdir(partial, { recursive: true });
    log.info({ model: source.modelPath, dir: entry }, 'packing the weights for this CPU (once per machine and model)');
    const t0 = performance.now();
    try {
      await buildInChild(source.modelPath, partial, tuning);
      await syncFiles(partial, [PREPACKED_MODEL_FILE, PREPACKED_DATA_FILE]);
      const bytes = {
        model: (await stat(join(partial, PREPACKED_MODEL_FILE))).size,
        data: (await stat(join(partial, PREPACKED_DATA_FILE))).size,
      };
      const ready: ReadyRecord = {
        format: FORMAT,
        key,
        source: source.modelPath,
        checksum: source.checksum,
        ort: ortVersion(),
        builtAt: new Date().toISOString(),
        bytes,
      };
      await writeFile(join(partial, READY_FILE), JSON.stringify(ready, null, 2) + '\n');
      await syncFiles(partial, [READY_FILE]);
      await rm(entry, { recursive: true, force: true });
      await rename(partial, entry);
      await syncDir(opts.dir);
    } catch (e) {
      await rm(partial, { recursive: true, force: true });
      throw e;
    }
    log.info({ dir: entry, ms: Math.round(performance.now() - t0) }, 'prepacked weights cached');
    await removeStale(opts.dir, source, name, log);
    return { path, built: true, key };
  } catch (e) {
    log.warn(
      { model: source.modelPath, dir: opts.dir, err: (e as Error).message },
      'prepacked weight cache unavailable: ONNX Runtime packs the weights in memory instead',
    );
    return null;
  }
}

export type WeightsPacking = 'cached' | 'built' | 'heap';

/** The package files each cached model is built from. */
const SOURCE_ROLES: Record<'decoder' | 'vision' | 'audio', readonly FileRole[]> = {
  decoder: ['decoder-graph', 'decoder-weights'],
  vision: ['vision-graph', 'vision-weights'],
  audio: ['audio-graph', 'audio-weights'],
};

/** Identity of a package model's files (their manifest sha256s), for PrepackedSource.checksum. */
export function packageChecksum(manifest: Manifest, model: keyof typeof SOURCE_ROLES): string {
  const roles = SOURCE_ROLES[model];
  return manifest.files
    .filter((f) => roles.includes(f.role))
    .map((f) => `${f.role}:${f.sha256}`)
    .join('+');
}

/** The cache of the commands that load a package (`--no-prepacked-cache` gives enabled false). */
export function commandCache(enabled: boolean): PrepackedCacheOptions | undefined {
  return enabled ? { dir: defaultCacheDir() } : undefined;
}

/**
 * An ORT session for `source`: from the prepacked cache when `cache` is given (its graph is already optimised
 * for this CPU, so the optimisers do not run again), else the model itself packed on the heap. An entry that ORT
 * cannot open (damaged on disk) is dropped and the model itself loaded: the next load builds it again.
 */
export async function createCachedSession(
  source: PrepackedSource,
  tuning: SessionTuning,
  cache?: PrepackedCacheOptions,
  /** More session options (the benchmark's profiler). */
  extra: ort.InferenceSession.SessionOptions = {},
): Promise<{ session: ort.InferenceSession; prepacked: WeightsPacking }> {
  if (cache) {
    const entry = await prepackedModel(source, tuning, cache);
    if (entry) {
      try {
        const session = await ort.InferenceSession.create(entry.path, {
          ...sessionOptions({ ...tuning, graphOptimizationLevel: 'disabled' }),
          ...extra,
        });
        return { session, prepacked: entry.built ? 'built' : 'cached' };
      } catch (e) {
        (cache.logger ?? silentLogger).warn(
          { path: entry.path, err: (e as Error).message },
          'the prepacked weight cache entry did not load: dropped, loading the model itself',
        );
        await discardPrepacked(entry);
      }
    }
  }
  return {
    session: await ort.InferenceSession.create(source.modelPath, { ...sessionOptions(tuning), ...extra }),
    prepacked: 'heap',
  };
}

/** Drops an entry that failed to load (e.g. damaged on disk): the next load builds it again. */
async function discardPrepacked(model: PrepackedModel): Promise<void> {
  await rm(join(model.path, '..'), { recursive: true, force: true });
}

async function isReady(entry: string, key: string): Promise<boolean> {
  try {
    const rec = JSON.parse(await readFile(join(entry, READY_FILE), 'utf8')) as ReadyRecord;
    if (rec.format !== FORMAT || rec.key !== key) return false;
    const model = await stat(join(entry, PREPACKED_MODEL_FILE));
    const data = await stat(join(entry, PREPACKED_DATA_FILE));
    return model.size === rec.bytes?.model && data.size === rec.bytes?.data;
  } catch {
    return false;
  }
}

/** The entry holds the original weights again plus their packed copy (slightly larger): 2.5x the source, plus slack. */
async function estimateEntryBytes(modelPath: string): Promise<number> {
  let bytes = (await stat(modelPath)).size;
  try {
    bytes += (await stat(`${modelPath}.data`)).size;
  } catch {
    // all weights inside the .onnx file
  }
  return Math.ceil(bytes * 2.5) + 64 * 2 ** 20;
}

/** Older entries of the same source (another key: ORT upgraded, package replaced) and abandoned partial builds. */
async function removeStale(dir: string, source: PrepackedSource, keep: string, log: Logger): Promise<void> {
  const prefix = entryPrefix(source.modelPath);
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name === keep || !name.startsWith(prefix)) continue;
    const full = join(dir, name);
    const partial = /\.partial-(\d+)$/.exec(name);
    if (partial) {
      if (processAlive(Number(partial[1]))) continue;
    } else {
      try {
        const rec = JSON.parse(await readFile(join(full, READY_FILE), 'utf8')) as ReadyRecord;
        if (rec.source !== source.modelPath) continue;
      } catch {
        // no record: an unfinished entry from an older format; remove it
      }
    }
    await rm(full, { recursive: true, force: true });
    log.info({ dir: full }, 'removed a stale prepacked weight cache entry');
  }
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function syncFiles(dir: string, names: string[]): Promise<void> {
  for (const n of names) {
    const fh = await open(join(dir, n), 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Runs prepacked-cache-child in a separate Node process; rejects with its stderr on failure. */
function buildInChild(modelPath: string, outDir: string, tuning: SessionTuning): Promise<void> {
  const here = fileURLToPath(import.meta.url);
  const child = join(here, '..', `prepacked-cache-child${extname(here)}`);
  // From source (tests, tsx) the child is TypeScript too.
  const loader = extname(here) === '.ts' ? ['--import', 'tsx'] : [];
  const args = [...loader, child, JSON.stringify({ modelPath, outDir, tuning })];
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4096)));
    p.on('error', reject);
    p.on('close', (code, signal) => {
      if (code === 0) resolve();
      else
        reject(
          new Error(
            `packing the weights failed (${signal ?? `exit ${code}`}): ${err.trim().split('\n').slice(-3).join(' ')}`,
          ),
        );
    });
  });
}
