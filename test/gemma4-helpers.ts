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
    next[s.pastKey] = out[s.presentKey]!;
    next[s.pastValue] = out[s.presentValue]!;
  }
  const logits = out.logits!;
  return { logits: logits.data as Float32Array, dims: logits.dims, cache: next };
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
