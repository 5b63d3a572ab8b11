/** Shared helpers for the gemma4 tests: run the decoder graph with real ORT sessions and compare to the reference. */
import * as ort from 'onnxruntime-node';
import type { CacheSlot } from '../src/model/gemma4/decoder-graph.js';

export type Feeds = Record<string, ort.Tensor>;

/** Empty caches (past length 0) for every slot. */
export function emptyCache(slots: CacheSlot[]): Feeds {
  const feeds: Feeds = {};
  for (const s of slots) {
    feeds[s.pastKey] = new ort.Tensor('float32', new Float32Array(0), [1, s.kvHeads, 0, s.headDim]);
    feeds[s.pastValue] = new ort.Tensor('float32', new Float32Array(0), [1, s.kvHeads, 0, s.headDim]);
  }
  return feeds;
}

/** Runs ids at positions start.. with the given cache; returns logits and the next cache (presents fed back). */
export async function runChunk(
  session: ort.InferenceSession,
  slots: CacheSlot[],
  cache: Feeds,
  ids: number[],
  start: number,
  rows: Float32Array,
): Promise<{ logits: Float32Array; dims: readonly number[]; cache: Feeds }> {
  const n = ids.length;
  const feeds: Feeds = {
    ...cache,
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map((i) => BigInt(i))), [1, n]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map((_, i) => BigInt(start + i))), [1, n]),
    per_layer_rows: new ort.Tensor('float32', rows, [1, n, rows.length / n]),
  };
  const out = await session.run(feeds);
  const next: Feeds = {};
  for (const s of slots) {
    if (out[s.newKey]) {
      // Graphs that return only this run's rows: past + new, the last window - 1 on sliding layers, done here
      // independently of the engine's cache.
      next[s.pastKey] = appendRows(cache[s.pastKey]!, out[s.newKey]!, s.maxLength);
      next[s.pastValue] = appendRows(cache[s.pastValue]!, out[s.newValue]!, s.maxLength);
    } else {
      next[s.pastKey] = out[s.presentKey]!;
      next[s.pastValue] = out[s.presentValue]!;
    }
  }
  const logits = out.logits!;
  return { logits: logits.data as Float32Array, dims: logits.dims, cache: next };
}

/** [1, heads, T, d] + [1, heads, n, d] along T, keeping the last `keep` rows (null: all). */
function appendRows(past: ort.Tensor, add: ort.Tensor, keep: number | null): ort.Tensor {
  const [, heads, t, d] = past.dims as number[];
  const n = add.dims[2]!;
  const total = t! + n;
  const from = keep === null ? 0 : Math.max(0, total - keep);
  const rows = total - from;
  const out = new Float32Array(heads! * rows * d!);
  const a = past.data as Float32Array;
  const b = add.data as Float32Array;
  for (let h = 0; h < heads!; h++) {
    for (let r = from; r < total; r++) {
      const src =
        r < t!
          ? a.subarray((h * t! + r) * d!, (h * t! + r + 1) * d!)
          : b.subarray((h * n + r - t!) * d!, (h * n + r - t! + 1) * d!);
      out.set(src, (h * rows + r - from) * d!);
    }
  }
  return new ort.Tensor('float32', out, [1, heads!, rows, d!]);
}

/** max |a - b| / max |b|: error relative to the reference's scale (element-wise ratios explode near 0). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

export function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}
