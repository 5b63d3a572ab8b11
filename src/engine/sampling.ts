/**
 * Next-token choice from one row of logits. Order as in Hugging Face generation: repetition penalty,
 * temperature, top-k, top-p (over the top-k set, renormalised), min-p (relative to the best token).
 * On a 262144-entry vocabulary nothing is fully sorted: top-k picks its candidates with a bounded heap;
 * without top-k, the nucleus is found by bucketing weights on a log scale and sorting only the boundary bucket.
 */

export interface SamplerOptions {
  /** 0 (or less) means greedy. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 disables. */
  topK?: number;
  /** Keep the smallest most-likely set whose probability reaches p; 1 disables. */
  topP?: number;
  /** Drop tokens less likely than minP x the most likely one; 0 disables. */
  minP?: number;
  /** > 1 discourages tokens already in the history; 1 disables. */
  repetitionPenalty?: number;
  /** Same seed, same logits, same choices. Random when absent. */
  seed?: number;
}

export interface Sampler {
  /** The seed in use (reported so a run can be reproduced). */
  readonly seed: number;
  sample(logits: Float32Array, history?: ArrayLike<number>): number;
}

/** xoshiro128** (Blackman & Vigna), seeded through splitmix32: small, fast, good enough for sampling. */
export class Xoshiro128 {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    let x = seed >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Index of the largest finite-or-infinite value; NaN never wins; ties go to the lowest id. */
export function argmax(values: ArrayLike<number>): number {
  // One comparison a value in the pass every decode step makes over the vocabulary; the rare all -Infinity
  // or NaN case is settled after it.
  let best = -1;
  let bestVal = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (v > bestVal) {
      bestVal = v;
      best = i;
    }
  }
  if (best >= 0) return best;
  for (let i = 0; i < values.length; i++) if (values[i] === -Infinity) return i;
  return 0;
}

/**
 * The `count` largest values, best first (ties: lower id first). A min-heap of size `count` over one pass:
 * O(n log count), no copy of the vocabulary.
 */
export function topIndices(values: ArrayLike<number>, count: number): Int32Array {
  const n = values.length;
  const k = Math.max(0, Math.min(count, n));
  const heapIdx = new Int32Array(k);
  const heapVal = new Float64Array(k);
  let size = 0;
  // "a below b" in heap order: smaller value, or equal value and higher id (so lower ids survive).
  const below = (va: number, ia: number, vb: number, ib: number): boolean => va < vb || (va === vb && ia > ib);
  const siftDown = (pos: number): void => {
    for (;;) {
      const l = 2 * pos + 1;
      if (l >= size) return;
      const r = l + 1;
      let m = l;
      if (r < size && below(heapVal[r]!, heapIdx[r]!, heapVal[l]!, heapIdx[l]!)) m = r;
      if (!below(heapVal[m]!, heapIdx[m]!, heapVal[pos]!, heapIdx[pos]!)) return;
      swap(heapIdx, heapVal, m, pos);
      pos = m;
    }
  };
  let i = 0;
  for (; i < n && size < k; i++) {
    let v = values[i]!;
    if (Number.isNaN(v)) v = -Infinity; // NaN ranks last
    let pos = size++;
    heapIdx[pos] = i;
    heapVal[pos] = v;
    while (pos > 0) {
      const parent = (pos - 1) >> 1;
      if (!below(heapVal[pos]!, heapIdx[pos]!, heapVal[parent]!, heapIdx[parent]!)) break;
      swap(heapIdx, heapVal, pos, parent);
      pos = parent;
    }
  }
  // Full heap: a later value enters only above the smallest kept one (an equal one has a higher id, and NaN
  // compares false), so nearly every logit costs one comparison.
  let floor = k > 0 ? heapVal[0]! : Infinity;
  for (; i < n; i++) {
    const v = values[i]!;
    if (!(v > floor)) continue;
    heapIdx[0] = i;
    heapVal[0] = v;
    siftDown(0);
    floor = heapVal[0]!;
  }
  // Pop the minimum repeatedly into the tail: the result is in descending order.
  const out = new Int32Array(k);
  for (let end = k - 1; end >= 0; end--) {
    out[end] = heapIdx[0]!;
    size--;
    heapIdx[0] = heapIdx[size]!;
    heapVal[0] = heapVal[size]!;
    siftDown(0);
  }
  return out;
}

function swap(idx: Int32Array, val: Float64Array, a: number, b: number): void {
  const ti = idx[a]!;
  idx[a] = idx[b]!;
  idx[b] = ti;
  const tv = val[a]!;
  val[a] = val[b]!;
  val[b] = tv;
}

/** Log-scale buckets for the nucleus search: BUCKETS_PER_E per factor e of weight, down to e^-MAX_NEG_LOG. */
const BUCKETS_PER_E = 64;
const MAX_NEG_LOG = 48;
const BUCKETS = BUCKETS_PER_E * MAX_NEG_LOG + 1;

export function createSampler(opts: SamplerOptions = {}): Sampler {
  const temperature = opts.temperature ?? 1;
  const topK = Math.max(0, Math.floor(opts.topK ?? 0));
  const topP = opts.topP ?? 1;
  const minP = opts.minP ?? 0;
  const penalty = opts.repetitionPenalty ?? 1;
  if (!(temperature >= 0) || !Number.isFinite(temperature))
    throw new Error(`temperature must be a finite number >= 0, got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new Error(`topP must be in (0, 1], got ${topP}`);
  if (!(minP >= 0 && minP < 1)) throw new Error(`minP must be in [0, 1), got ${minP}`);
  if (!(penalty > 0) || !Number.isFinite(penalty)) throw new Error(`repetitionPenalty must be > 0, got ${penalty}`);
  const seed = opts.seed !== undefined ? opts.seed >>> 0 : Math.floor(Math.random() * 0x100000000) >>> 0;
  const rng = new Xoshiro128(seed);
  let scratch: Float32Array | undefined;
  let weights: Float64Array | undefined;
  let buckets: Uint16Array | undefined;

  const penalise = (logits: Float32Array, history: ArrayLike<number> | undefined): Float32Array => {
    if (penalty === 1 || !history || history.length === 0) return logits;
    if (!scratch || scratch.length !== logits.length) scratch = new Float32Array(logits.length);
    scratch.set(logits); // the caller's logits stay untouched
    const done = new Set<number>();
    for (let i = 0; i < history.length; i++) {
      const id = history[i]!;
      if (id < 0 || id >= scratch.length || done.has(id)) continue;
      done.add(id);
      const v = scratch[id]!;
      scratch[id] = v > 0 ? v / penalty : v * penalty;
    }
    return scratch;
  };

  const sample = (raw: Float32Array, history?: ArrayLike<number>): number => {
    if (raw.length === 0) throw new Error('cannot sample from empty logits');
    const logits = penalise(raw, history);
    if (temperature === 0 || topK === 1) return argmax(logits);
    const invT = 1 / temperature;
    const n = logits.length;
    const minWeight = minP; // the best token weighs 1, so min-p compares weights with minP directly

    if (topK > 0 && topK < n) {
      // The top-k set, best first, holds the argmax: no pass of its own. Top-p is measured against the set,
      // renormalised.
      const candidates = topIndices(logits, topK);
      const maxLogit = logits[candidates[0]!]!;
      if (!Number.isFinite(maxLogit)) return argmax(logits);
      const w = new Float64Array(candidates.length);
      let mass = 0;
      for (let j = 0; j < candidates.length; j++) {
        const l = logits[candidates[j]!]!;
        mass += w[j] = !Number.isNaN(l) ? Math.exp((l - maxLogit) * invT) : 0;
      }
      let cum = 0;
      let end = 0;
      for (; end < candidates.length; end++) {
        if (end > 0 && (cum >= topP * mass || w[end]! < minWeight || w[end] === 0)) break;
        cum += w[end]!;
      }
      return pick(w, cum, end, candidates);
    }

    const best = argmax(logits);
    const maxLogit = logits[best]!;
    if (!Number.isFinite(maxLogit)) return best;
    // Whole vocabulary, one exp pass. d = -ln(weight); beyond MAX_NEG_LOG a token weighs 0 (e^-48 of the
    // best, below double precision of the total), which also spares most exps on peaked real logits.
    if (!weights || weights.length !== n) {
      weights = new Float64Array(n);
      buckets = new Uint16Array(n);
    }
    const w = weights;
    const bucket = buckets!;
    const dMax = minP > 0 ? Math.min(MAX_NEG_LOG, -Math.log(minP)) : MAX_NEG_LOG;
    const wantBuckets = topP < 1;
    let mass = 0;
    for (let i = 0; i < n; i++) {
      const d = (maxLogit - logits[i]!) * invT;
      if (!(d <= dMax)) {
        w[i] = 0; // also NaN
        continue;
      }
      const x = Math.exp(-d);
      w[i] = x;
      mass += x;
      if (wantBuckets) bucket[i] = (d * BUCKETS_PER_E) | 0;
    }
    const total = wantBuckets ? nucleusCut(w, mass, topP, bucket) : mass;
    return pick(w, total, n, undefined);
  };

  /** Draws index j < end with probability w[j] / total; returns ids[j] (or j). */
  const pick = (w: Float64Array, total: number, end: number, ids: Int32Array | undefined): number => {
    let u = rng.nextFloat() * total;
    let last = -1;
    for (let j = 0; j < end; j++) {
      const x = w[j]!;
      if (x === 0) continue;
      last = j;
      u -= x;
      if (u < 0) break;
    }
    if (last < 0) throw new Error('no token left to sample'); // unreachable: the best token weighs 1
    return ids ? ids[last]! : last;
  };

  return { seed, sample };
}

/**
 * Zeroes every weight outside the nucleus: the best-first prefix kept while the mass before a token is below
 * topP x mass (ties by lower id). Buckets on -ln(w) find the boundary bucket in O(n); only it is sorted.
 * `bucket[i]` may be given as floor(-ln(w[i]) * BUCKETS_PER_E) (the sampler derives it from the logits,
 * sparing a log per token). Returns the kept mass.
 */
export function nucleusCut(w: Float64Array, mass: number, topP: number, bucket?: Uint16Array): number {
  const n = w.length;
  const bucketMass = new Float64Array(BUCKETS);
  let b = bucket;
  if (!b) {
    b = new Uint16Array(n);
    for (let i = 0; i < n; i++)
      if (w[i]! > 0) b[i] = Math.min(BUCKETS - 1, Math.floor(-Math.log(w[i]!) * BUCKETS_PER_E));
  }
  for (let i = 0; i < n; i++) if (w[i]! > 0) bucketMass[b[i]!] += w[i]!;
  const target = topP * mass;
  let cum = 0;
  let edge = 0;
  while (edge < BUCKETS - 1 && cum + bucketMass[edge]! < target) cum += bucketMass[edge++]!;
  // Buckets before `edge` are kept whole; inside `edge`, best-first while the mass before is below target.
  // The first kept token always has cum 0 < target, so the best token is never dropped.
  const inEdge: number[] = [];
  for (let i = 0; i < n; i++) if (w[i]! > 0 && b[i] === edge) inEdge.push(i);
  inEdge.sort((x, y) => w[y]! - w[x]! || x - y);
  let keptInEdge = 0;
  while (keptInEdge < inEdge.length && cum < target) cum += w[inEdge[keptInEdge++]!]!;
  for (let j = keptInEdge; j < inEdge.length; j++) w[inEdge[j]!] = 0;
  for (let i = 0; i < n; i++) if (w[i]! > 0 && b[i]! > edge) w[i] = 0;
  return cum;
}
