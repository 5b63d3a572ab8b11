/**
 * `--profile-ort`: one prefill + a few decode steps on a session with ONNX Runtime's profiler on, then the
 * decode runs' kernel time grouped by op type and by node. The engine's session cannot switch profiling on
 * (it is a creation-time option), so this drives a second session built with the engine's own
 * sessionOptions() and its KV-state helper, over the same package and PLE pager.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { cacheSlots } from '../model/gemma4/contract.js';
import type { OpenedPackage } from '../model/package/load.js';
import { emptyKvState } from '../engine/kv-cache.js';
import { createCachedSession, packageChecksum } from '../engine/prepacked-cache.js';
import type { SessionTuning } from '../engine/session.js';
import { nodeWeightNames } from './weight-bytes.js';

/** One event of ORT's Chrome-trace profile (the fields we use). */
export interface OrtProfileEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string; [k: string]: unknown };
}

export interface OpTime {
  name: string;
  /** Microseconds summed over the profiled decode runs. */
  totalUs: number;
  calls: number;
  /** Share of the decode runs' wall time (model_run). */
  share: number;
}

export interface OrtProfileSummary {
  decodeRuns: number;
  /** Mean wall time of one decode run (model_run), ms. */
  runMs: number;
  /** Share of run time spent inside kernels (the rest: executor overhead, fences, allocation). */
  kernelShare: number;
  byOp: OpTime[];
  topNodes: OpTime[];
}

/** Sums kernel time of the node events inside the last `decodeRuns` model_run events. */
export function summariseProfile(
  events: OrtProfileEvent[],
  decodeRuns: number,
  top = 12,
  labels: ReadonlyMap<string, string> = new Map(),
): OrtProfileSummary {
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const windows = runs.slice(Math.max(0, runs.length - decodeRuns));
  const inDecode = (e: OrtProfileEvent): boolean => windows.some((w) => e.ts >= w.ts && e.ts + e.dur <= w.ts + w.dur);
  const runUs = windows.reduce((a, w) => a + w.dur, 0);
  const byOp = new Map<string, { us: number; calls: number }>();
  const byNode = new Map<string, { us: number; calls: number }>();
  let kernelUs = 0;
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || !inDecode(e)) continue;
    kernelUs += e.dur;
    const op = e.args?.op_name ?? '?';
    const node = e.name.slice(0, -'_kernel_time'.length);
    const label = labels.get(node);
    for (const [map, key] of [
      [byOp, op],
      [byNode, label ? `${node} ${label} (${op})` : `${node} (${op})`],
    ] as const) {
      const t = map.get(key) ?? { us: 0, calls: 0 };
      t.us += e.dur;
      t.calls++;
      map.set(key, t);
    }
  }
  const list = (m: Map<string, { us: number; calls: number }>): OpTime[] =>
    [...m]
      .map(([name, t]) => ({ name, totalUs: t.us, calls: t.calls, share: runUs > 0 ? t.us / runUs : 0 }))
      .sort((a, b) => b.totalUs - a.totalUs)
      .slice(0, top);
  return {
    decodeRuns: windows.length,
    runMs: windows.length ? runUs / windows.length / 1000 : 0,
    kernelShare: runUs > 0 ? kernelUs / runUs : 0,
    byOp: list(byOp),
    topNodes: list(byNode),
  };
}

export interface ProfileOptions {
  tuning: SessionTuning;
  promptIds: readonly number[];
  decodeTokens: number;
  prefillChunk: number;
  /** The prepacked weight cache the engine used (null: none): the profiled session loads the same way. */
  prepackedCacheDir: string | null;
}

/** Runs prefill + greedy decode on a profiling session; returns the decode runs' summary. */
export async function profileDecode(pkg: OpenedPackage, opts: ProfileOptions): Promise<OrtProfileSummary> {
  const dir = await mkdtemp(join(tmpdir(), 'perch-ort-profile-'));
  const source = { modelPath: pkg.path('decoder-graph')!, checksum: packageChecksum(pkg.manifest, 'decoder') };
  const cache = opts.prepackedCacheDir === null ? undefined : { dir: opts.prepackedCacheDir };
  const { session } = await createCachedSession(source, opts.tuning, cache, {
    enableProfiling: true,
    profileFilePrefix: join(dir, 'decoder'),
  });
  try {
    const cfg = pkg.config;
    const slots = cacheSlots(cfg);
    const width = cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput;
    // A decoder built with media inputs takes them on every run: all-zero mask and rows, as the engine feeds text.
    const media = session.inputNames.includes('media_embeds') && session.inputNames.includes('media_mask');
    let state = emptyKvState(
      slots,
      slots.length > 0 && session.outputNames.includes(slots[0]!.newKey) ? 'new' : 'present',
      1 << 20,
    );
    const run = async (ids: number[]): Promise<Float32Array> => {
      const n = ids.length;
      const start = state.length;
      const feeds: Record<string, ort.Tensor> = {
        ...state.feeds(),
        input_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from(ids, (i) => BigInt(i)),
          [1, n],
        ),
        position_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from(ids, (_, i) => BigInt(start + i)),
          [1, n],
        ),
        per_layer_rows: new ort.Tensor('float32', await pkg.pager.rowsFor(ids), [1, n, width]),
      };
      if (media) {
        feeds.media_mask = new ort.Tensor('bool', new Uint8Array(n), [1, n]);
        feeds.media_embeds = new ort.Tensor('float32', new Float32Array(n * cfg.hiddenSize), [1, n, cfg.hiddenSize]);
      }
      const out = await session.run(feeds);
      state = state.after(out, n);
      return out.logits!.data as Float32Array;
    };
    let logits: Float32Array = new Float32Array(0);
    for (let p = 0; p < opts.promptIds.length; p += opts.prefillChunk)
      logits = await run(opts.promptIds.slice(p, p + opts.prefillChunk));
    for (let i = 0; i < opts.decodeTokens; i++) logits = await run([argmaxLast(logits, cfg.vocabSize)]);
    session.endProfiling();
    const file = (await readdir(dir)).find((f) => f.endsWith('.json'));
    if (!file) throw new Error('ONNX Runtime wrote no profile file');
    const events = JSON.parse(await readFile(join(dir, file), 'utf8')) as OrtProfileEvent[];
    return summariseProfile(events, opts.decodeTokens, 12, await nodeWeightNames(pkg.path('decoder-graph')!));
  } finally {
    await session.release();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Greedy pick from the last row of logits (a 'last' graph has one row, an 'all' graph one per token). */
function argmaxLast(logits: Float32Array, vocab: number): number {
  const base = logits.length - vocab;
  let best = 0;
  for (let i = 1; i < vocab; i++) if (logits[base + i]! > logits[base + best]!) best = i;
  return best;
}
