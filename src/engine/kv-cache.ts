/**
 * KV cache state for the decoder graph, and the prefix store that lets a new prompt resume from the cache of
 * an earlier one.
 *
 * The graph returns fresh present.* tensors every run and never mutates its inputs, so a cache state is just
 * the set of tensors from one run: keeping a reference IS a snapshot, at no copying cost. Snapshots are only
 * valid at the exact token count they were taken at, because sliding-window caches are truncated in the graph
 * to the last window-1 entries: a state taken later cannot be rewound. The engine therefore ends a prefill
 * chunk exactly at the boundary it wants to keep, and stores the state from that run.
 */
import * as ort from 'onnxruntime-node';
import type { CacheSlot } from '../model/gemma4/contract.js';

export type Feeds = Record<string, ort.Tensor>;

export class KvState {
  private constructor(
    /** Tensors by past_key_values.* input name. */
    readonly tensors: Feeds,
    /** Tokens processed (= position of the next token). */
    readonly length: number,
  ) {}

  /** Past length 0 on every slot: tensors with a 0-sized axis 2. */
  static empty(slots: readonly CacheSlot[]): KvState {
    const t: Feeds = {};
    for (const s of slots) {
      t[s.pastKey] = new ort.Tensor('float32', new Float32Array(0), [1, s.kvHeads, 0, s.headDim]);
      t[s.pastValue] = new ort.Tensor('float32', new Float32Array(0), [1, s.kvHeads, 0, s.headDim]);
    }
    return new KvState(t, 0);
  }

  /** The state after a run that processed `added` tokens on top of `prev`. */
  static fromOutputs(
    slots: readonly CacheSlot[],
    out: ort.InferenceSession.OnnxValueMapType,
    prev: KvState,
    added: number,
  ): KvState {
    const t: Feeds = {};
    for (const s of slots) {
      const k = out[s.presentKey];
      const v = out[s.presentValue];
      if (!k || !v) throw new Error(`decoder returned no ${s.presentKey}/${s.presentValue}`);
      t[s.pastKey] = k;
      t[s.pastValue] = v;
    }
    return new KvState(t, prev.length + added);
  }

  /** Bytes held by the cache tensors. */
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
    // Snapshots may share tensors with each other; count each tensor once.
    const seen = new Set<ort.Tensor>();
    let n = 0;
    for (const s of this.all()) {
      for (const t of Object.values(s.state.tensors)) {
        if (seen.has(t)) continue;
        seen.add(t);
        n += t.size * 4;
      }
    }
    return n;
  }
}

function sameIds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && commonPrefix(a, b) === a.length;
}
