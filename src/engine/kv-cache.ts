/**
 * KV cache state for the decoder graph, and the prefix store that lets a new prompt resume from the cache of
 * an earlier one.
 *
 * A state is immutable once made: keeping a reference IS a snapshot (a prefix, a stream's mark), at no copying
 * cost. Two kinds, by what the package's graph returns (contract.ts, CacheSlot):
 *   - AppendKvState (graphs returning new.<slot>.*, packages written now): the engine keeps each slot's rows in
 *     buffers it owns and appends each run's new rows in place. A run is fed views of those buffers (the last
 *     window - 1 rows on sliding layers) and returns only its own rows, so a decode step's work outside the
 *     matmuls does not grow with the context. A buffer is appended in place only by the newest state on it;
 *     a state that is not (a prefix resumed by a second prompt) first copies its rows into a new buffer, so
 *     older states keep seeing exactly their rows.
 *   - PresentKvState (graphs returning present.<slot>.*, older packages): the graph returns past + new as fresh
 *     tensors every run and the state is the set of them. Sliding-window caches are truncated in the graph to the
 *     last window-1 entries, so such a state is only valid at the exact token count it was taken at.
 * Either way the engine ends a prefill chunk exactly at a boundary it wants to keep, and stores that run's state.
 */
import * as ort from 'onnxruntime-node';
import type { CacheSlot } from '../model/gemma4/contract.js';

export type Feeds = Record<string, ort.Tensor>;

export interface KvState {
  /** Tokens processed (= position of the next token). */
  readonly length: number;
  /** The past_key_values.* inputs of the next run. */
  feeds(): Feeds;
  /** Output names a run must fetch for after(). */
  fetches(): string[];
  /** The state after a run that processed `added` tokens on top of this one. */
  after(out: ort.InferenceSession.OnnxValueMapType, added: number): KvState;
  /** Bytes of cache this state sees (buffers shared between states are counted by each). */
  bytes(): number;
}

/** How a decoder graph returns its cache: only the new rows, or past + new. */
export type CacheOutputs = 'new' | 'present';

/** The state before any token. `maxTokens` bounds a slot's rows (the engine's context). */
export function emptyKvState(slots: readonly CacheSlot[], mode: CacheOutputs, maxTokens: number): KvState {
  return mode === 'new' ? AppendKvState.empty(slots, maxTokens) : PresentKvState.empty(slots);
}

/** One slot's key or value rows for logical positions [base, tip), per head: data[h][row - base][d]. */
class Rows {
  tip: number;

  constructor(
    readonly data: Float32Array,
    readonly heads: number,
    readonly dim: number,
    readonly capacity: number,
    readonly base: number,
  ) {
    this.tip = base;
  }

  static alloc(heads: number, dim: number, capacity: number, base: number): Rows {
    return new Rows(new Float32Array(heads * capacity * dim), heads, dim, capacity, base);
  }

  /** Rows [from, to) as [1, heads, to - from, dim]: a view with one head, a copy with more. */
  tensor(from: number, to: number): ort.Tensor {
    const n = to - from;
    const { heads, dim, capacity, base } = this;
    if (heads === 1)
      return new ort.Tensor('float32', this.data.subarray((from - base) * dim, (to - base) * dim), [1, 1, n, dim]);
    const out = new Float32Array(heads * n * dim);
    for (let h = 0; h < heads; h++)
      out.set(this.data.subarray((h * capacity + from - base) * dim, (h * capacity + to - base) * dim), h * n * dim);
    return new ort.Tensor('float32', out, [1, heads, n, dim]);
  }

  /** Copies rows [from, to) of `src` to the same positions here. */
  copyFrom(src: Rows, from: number, to: number): void {
    const { dim } = this;
    for (let h = 0; h < this.heads; h++)
      this.data.set(
        src.data.subarray((h * src.capacity + from - src.base) * dim, (h * src.capacity + to - src.base) * dim),
        (h * this.capacity + from - this.base) * dim,
      );
  }

  /** Writes a run's rows ([1, heads, n, dim]) at positions [at, at + n); those before base are not kept. */
  write(rows: Float32Array, at: number, n: number): void {
    const { dim } = this;
    const skip = Math.max(0, this.base - at);
    for (let h = 0; h < this.heads; h++)
      this.data.set(
        rows.subarray((h * n + skip) * dim, (h + 1) * n * dim),
        (h * this.capacity + at + skip - this.base) * dim,
      );
    this.tip = at + n;
  }
}

interface SlotRows {
  k: Rows;
  v: Rows;
}

export class AppendKvState implements KvState {
  private constructor(
    private readonly slots: readonly CacheSlot[],
    private readonly rows: readonly SlotRows[],
    readonly length: number,
    private readonly maxTokens: number,
  ) {}

  static empty(slots: readonly CacheSlot[], maxTokens: number): AppendKvState {
    const rows = slots.map((s) => ({
      k: Rows.alloc(s.kvHeads, s.headDim, 0, 0),
      v: Rows.alloc(s.kvHeads, s.headDim, 0, 0),
    }));
    return new AppendKvState(slots, rows, 0, maxTokens);
  }

  /** Rows a run sees of slot i: all of them, or the last window - 1 on a sliding layer. */
  private visibleFrom(i: number): number {
    const max = this.slots[i]!.maxLength;
    return max === null ? 0 : Math.max(0, this.length - max);
  }

  feeds(): Feeds {
    const f: Feeds = {};
    this.slots.forEach((s, i) => {
      const r = this.rows[i]!;
      const from = this.visibleFrom(i);
      f[s.pastKey] = r.k.tensor(from, this.length);
      f[s.pastValue] = r.v.tensor(from, this.length);
    });
    return f;
  }

  fetches(): string[] {
    return this.slots.flatMap((s) => [s.newKey, s.newValue]);
  }

  after(out: ort.InferenceSession.OnnxValueMapType, added: number): AppendKvState {
    const end = this.length + added;
    const rows = this.slots.map((s, i) => {
      const newK = out[s.newKey];
      const newV = out[s.newValue];
      if (!newK || !newV) throw new Error(`decoder returned no ${s.newKey}/${s.newValue}`);
      let { k, v } = this.rows[i]!;
      // In place only as the newest state on these buffers, and while they have room; else into new buffers
      // holding what the next runs can see (sliding layers: the last window - 1 rows).
      if (k.tip !== this.length || end - k.base > k.capacity) {
        const max = s.maxLength;
        const from = max === null ? 0 : Math.max(0, end - max);
        const capacity =
          max === null ? Math.min(this.maxTokens, Math.max(256, 2 * end)) : Math.min(this.maxTokens, 2 * max + added);
        const keepFrom = Math.max(from, this.visibleFrom(i));
        const nk = Rows.alloc(k.heads, k.dim, Math.max(capacity, end - from), from);
        const nv = Rows.alloc(v.heads, v.dim, Math.max(capacity, end - from), from);
        if (keepFrom < this.length) {
          nk.copyFrom(k, keepFrom, this.length);
          nv.copyFrom(v, keepFrom, this.length);
        }
        k = nk;
        v = nv;
      }
      k.write(newK.data as Float32Array, this.length, added);
      v.write(newV.data as Float32Array, this.length, added);
      return { k, v };
    });
    return new AppendKvState(this.slots, rows, end, this.maxTokens);
  }

  bytes(): number {
    let n = 0;
    this.slots.forEach((s, i) => {
      n += 2 * (this.length - this.visibleFrom(i)) * s.kvHeads * s.headDim * 4;
    });
    return n;
  }
}

export class PresentKvState implements KvState {
  private constructor(
    private readonly slots: readonly CacheSlot[],
    /** Tensors by past_key_values.* input name. */
    private readonly tensors: Feeds,
    readonly length: number,
  ) {}

  /** Past length 0 on every slot: tensors with a 0-sized axis 2. */
  static empty(slots: readonly CacheSlot[]): PresentKvState {
    const t: Feeds = {};
    for (const s of slots) {
      t[s.pastKey] = new ort.Tensor('float32', new Float32Array(0), [1, s.kvHeads, 0, s.headDim]);
      t[s.pastValue] = new ort.Tensor('float32', new Float32Array(0), [1, s.kvHeads, 0, s.headDim]);
    }
    return new PresentKvState(slots, t, 0);
  }

  feeds(): Feeds {
    return this.tensors;
  }

  fetches(): string[] {
    return this.slots.flatMap((s) => [s.presentKey, s.presentValue]);
  }

  after(out: ort.InferenceSession.OnnxValueMapType, added: number): PresentKvState {
    const t: Feeds = {};
    for (const s of this.slots) {
      const k = out[s.presentKey];
      const v = out[s.presentValue];
      if (!k || !v) throw new Error(`decoder returned no ${s.presentKey}/${s.presentValue}`);
      t[s.pastKey] = k;
      t[s.pastValue] = v;
    }
    return new PresentKvState(this.slots, t, this.length + added);
  }

  bytes(): number {
    let n = 0;
    for (const t of Object.values(this.tensors)) n += t.size * 4;
    return n;
  }
}

export interface Snapshot {
  /** The token ids the state covers, in order. */
  ids: readonly number[];
  state: KvState;
}

/** Length of the common prefix of two id sequences. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * A few snapshots, newest first, plus pinned ones that newer ones never evict: one per kind of fixed prefix
 * (the system turn of questions, the instruction before a transcript's audio), each replaced only by the
 * next prefix of its kind.
 * `match` returns the longest one that is a strict prefix of the prompt (strict: the prompt's last token must
 * still run to produce logits).
 */
export class PrefixStore {
  private items: Snapshot[] = [];
  private readonly pinned = new Map<string, Snapshot>();

  /** capacity 0 disables the store. */
  constructor(
    private readonly capacity = 2,
    /** Most pinned kinds kept; a new kind beyond it replaces the oldest. */
    private readonly pinnedKinds = 4,
  ) {}

  /** orEqual: a snapshot of the whole prompt matches too (for a prefill that needs no logits). */
  match(prompt: readonly number[], opts: { orEqual?: boolean } = {}): Snapshot | null {
    let best: Snapshot | null = null;
    const limit = opts.orEqual ? prompt.length + 1 : prompt.length;
    for (const s of this.all()) {
      if (s.ids.length >= limit || (best && best.ids.length >= s.ids.length)) continue;
      if (commonPrefix(s.ids, prompt) === s.ids.length) best = s;
    }
    return best;
  }

  /** `pin` names the kind of fixed prefix this snapshot is (kept until the next one of that kind). */
  add(s: Snapshot, opts: { pin?: string } = {}): void {
    if (s.ids.length === 0 || this.capacity === 0) return;
    if (opts.pin !== undefined) {
      this.pinned.delete(opts.pin);
      if (this.pinned.size >= this.pinnedKinds) this.pinned.delete(this.pinned.keys().next().value!);
      this.pinned.set(opts.pin, s);
      this.items = this.items.filter((x) => !sameIds(x.ids, s.ids));
      return;
    }
    if ([...this.pinned.values()].some((p) => sameIds(p.ids, s.ids))) return;
    this.items = [s, ...this.items.filter((x) => !sameIds(x.ids, s.ids))].slice(0, this.capacity);
  }

  clear(): void {
    this.items = [];
    this.pinned.clear();
  }

  /** False with capacity 0: the engine then never splits a prefill chunk for a snapshot. */
  get enabled(): boolean {
    return this.capacity > 0;
  }

  get size(): number {
    return this.all().length;
  }

  private all(): Snapshot[] {
    return [...this.pinned.values(), ...this.items];
  }

  bytes(): number {
    let n = 0;
    for (const s of this.all()) n += s.state.bytes();
    return n;
  }
}

function sameIds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && commonPrefix(a, b) === a.length;
}
