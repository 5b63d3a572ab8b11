/**
 * Block-wise asymmetric weight quantisation in ONNX Runtime's MatMulNBits / GatherBlockQuantized layouts.
 *
 * A row-major matrix [N, K] is cut into blocks of `blockSize` along K; each block stores `bits`-bit codes q,
 * a float scale s and an integer zero point z, and decodes as w = (q - z) * s (ORT's formula for both ops).
 * Bytes: codes packed low bits first, each block padded to whole bytes ([N, ceil(K/bs), bs*bits/8]); scales
 * [N * ceil(K/bs)]; zero points packed the same way, per row ([N, ceil(ceil(K/bs)*bits/8)]).
 * When K is a multiple of bs, GatherBlockQuantized (uint8 data, gather_axis 0, quantize_axis last) reads the
 * very same bytes as [N, K*bits/8] / [N, K/bs] / [N, ceil(K/bs*bits/8)]: one quantisation serves a tied
 * embedding table and LM head.
 */

export type QuantBits = 2 | 4 | 8;
export type QuantMethod = 'search' | 'rtn';

export interface QuantOptions {
  bits: QuantBits;
  /** Power of two >= 16 (ORT's rule); 32, 64 and 128 are the usual choices. */
  blockSize: number;
  method: QuantMethod;
}

export interface QuantizedMatrix {
  bits: QuantBits;
  blockSize: number;
  /** Rows (MatMulNBits N: output features; for a table: vocabulary). */
  n: number;
  /** Columns (MatMulNBits K: input features; for a table: embedding width). */
  k: number;
  /** [N, ceil(K/bs), bs*bits/8] */
  data: Uint8Array;
  /** [N * ceil(K/bs)] */
  scales: Float32Array;
  /** [N * ceil(ceil(K/bs)*bits/8)] */
  zeroPoints: Uint8Array;
}

/** Tensor dims of the three inputs, per op. */
export interface QuantDims {
  data: number[];
  scales: number[];
  zeroPoints: number[];
}

export function blocksPerRow(k: number, blockSize: number): number {
  return Math.ceil(k / blockSize);
}

function zpBytesPerRow(nb: number, bits: number): number {
  return Math.ceil((nb * bits) / 8);
}

export function checkQuantOptions(o: QuantOptions): void {
  if (o.bits !== 2 && o.bits !== 4 && o.bits !== 8)
    throw new Error(`quantisation bits must be 2, 4 or 8, got ${String(o.bits)}`);
  const bs = o.blockSize;
  if (!Number.isInteger(bs) || bs < 16 || (bs & (bs - 1)) !== 0)
    throw new Error(`block size must be a power of two >= 16, got ${bs}`);
  if (o.method !== 'search' && o.method !== 'rtn') throw new Error(`unknown quantisation method ${String(o.method)}`);
}

/** MatMulNBits input dims: B, scales, zero_points. */
export function matMulNBitsDims(q: QuantizedMatrix): QuantDims {
  const nb = blocksPerRow(q.k, q.blockSize);
  return {
    data: [q.n, nb, (q.blockSize * q.bits) / 8],
    scales: [q.n * nb],
    zeroPoints: [q.n * zpBytesPerRow(nb, q.bits)],
  };
}

/** GatherBlockQuantized input dims (requires K % blockSize == 0, so rows carry no block padding). */
export function gatherBlockQuantizedDims(q: QuantizedMatrix): QuantDims {
  if (q.k % q.blockSize !== 0)
    throw new Error(`GatherBlockQuantized layout needs width ${q.k} to be a multiple of block size ${q.blockSize}`);
  const nb = q.k / q.blockSize;
  return { data: [q.n, (q.k * q.bits) / 8], scales: [q.n, nb], zeroPoints: [q.n, zpBytesPerRow(nb, q.bits)] };
}

/** Scale multipliers tried by 'search', relative to the min/max scale: clipping pays off more at low bits. */
const SHRINK: Record<QuantBits, number[]> = {
  2: [0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05],
  4: [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05],
  8: [0.9, 0.95, 1.0],
};

/** Adding then subtracting 1.5 * 2^52 rounds a double to the nearest integer (ties to even); ~2x faster than Math.round here. */
const RINT = 6755399441055744;

interface BlockFit {
  s: number;
  z: number;
  err: number;
}

/** Squared error of block x[off, off+len) under (s, z); stops early once above `bound`. */
function blockError(x: Float32Array, off: number, len: number, s: number, z: number, L: number, bound: number): number {
  if (s === 0) {
    let e = 0;
    for (let i = off; i < off + len; i++) e += x[i]! * x[i]!;
    return e;
  }
  const inv = 1 / s;
  const lo = -z,
    hi = L - z;
  let e = 0;
  for (let i = off; i < off + len; i++) {
    const v = x[i]!;
    let r = v * inv + RINT - RINT;
    if (r < lo) r = lo;
    else if (r > hi) r = hi;
    const d = v - s * r;
    e += d * d;
    if (e > bound) return e;
  }
  return e;
}

/** Min/max ("round to nearest") parameters; the range always includes 0 since z is an integer code. */
function rtnFit(lo: number, hi: number, L: number): { s: number; z: number } {
  const s = (hi - lo) / L;
  if (s === 0) return { s: 0, z: 0 };
  return { s, z: clampInt(Math.round(-lo / s), 0, L) };
}

function clampInt(v: number, a: number, b: number): number {
  return v < a ? a : v > b ? b : v;
}

/** Least-squares scale for a fixed zero point and the codes that (s, z) assign. */
function refitScale(x: Float32Array, off: number, len: number, s: number, z: number, L: number): number {
  if (s === 0) return 0;
  const inv = 1 / s;
  let num = 0,
    den = 0;
  for (let i = off; i < off + len; i++) {
    const r = clampInt(x[i]! * inv + RINT - RINT, -z, L - z);
    num += x[i]! * r;
    den += r * r;
  }
  return den > 0 ? num / den : s;
}

/**
 * 'search': try scale multipliers of the min/max scale; for each, the zero points worth trying are those
 * between "covers the minimum" and "covers the maximum" (only clipping differs between them); then refine
 * the best by least-squares scale refits. The min/max fit is always a candidate, so search never loses.
 */
function searchFit(
  x: Float32Array,
  off: number,
  len: number,
  lo: number,
  hi: number,
  L: number,
  bits: QuantBits,
): BlockFit {
  const base = rtnFit(lo, hi, L);
  let best: BlockFit = { ...base, err: blockError(x, off, len, base.s, base.z, L, Infinity) };
  if (base.s === 0 || best.err === 0) return best;
  const s0 = (hi - lo) / L;
  const tryFit = (s: number, z: number) => {
    const err = blockError(x, off, len, s, z, L, best.err);
    if (err < best.err) best = { s, z, err };
  };
  const tryScale = (s: number) => {
    const zMin = clampInt(-Math.round(lo / s), 0, L);
    const zMax = clampInt(L - Math.round(hi / s), 0, L);
    const a = Math.min(zMin, zMax),
      b = Math.max(zMin, zMax);
    tryFit(s, a);
    if (b !== a) tryFit(s, b);
    if (b - a > 1) tryFit(s, (a + b) >> 1);
  };
  for (const f of SHRINK[bits]) tryScale(s0 * f);
  for (let it = 0; it < 3; it++) {
    const prev = best.err;
    const s = refitScale(x, off, len, best.s, best.z, L);
    if (s > 0 && s !== best.s) {
      tryFit(s, best.z);
      tryScale(s);
    }
    if (best.err >= prev) break;
  }
  return best;
}

/** Quantises a row-major [n, k] matrix (a torch Linear weight [out, in], or an embedding table [vocab, dim]). */
export function quantizeMatMulNBits(w: Float32Array, n: number, k: number, opts: QuantOptions): QuantizedMatrix {
  checkQuantOptions(opts);
  if (w.length !== n * k) throw new Error(`matrix has ${w.length} values, expected ${n}x${k}`);
  const { bits, blockSize: bs } = opts;
  const L = (1 << bits) - 1;
  const nb = blocksPerRow(k, bs);
  const bytesPerBlock = (bs * bits) / 8;
  const zpRow = zpBytesPerRow(nb, bits);
  const perByte = 8 / bits;
  const data = new Uint8Array(n * nb * bytesPerBlock);
  const scales = new Float32Array(n * nb);
  const zeroPoints = new Uint8Array(n * zpRow);
  for (let row = 0; row < n; row++) {
    for (let b = 0; b < nb; b++) {
      const off = row * k + b * bs;
      const len = Math.min(bs, k - b * bs);
      let lo = 0,
        hi = 0;
      for (let i = off; i < off + len; i++) {
        const v = w[i]!;
        if (!Number.isFinite(v)) throw new Error(`non-finite weight at row ${row}, column ${i - row * k}`);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const fit = opts.method === 'rtn' ? rtnFit(lo, hi, L) : searchFit(w, off, len, lo, hi, L, bits);
      const blk = row * nb + b;
      scales[blk] = fit.s;
      zeroPoints[row * zpRow + Math.floor(b / perByte)]! |= fit.z << ((b % perByte) * bits);
      const inv = fit.s === 0 ? 0 : 1 / fit.s;
      const base = blk * bytesPerBlock;
      // Padding codes (past K) equal z so they decode to exactly 0.
      for (let j = 0; j < bs; j++) {
        const q = j < len ? clampInt(w[off + j]! * inv + RINT - RINT + fit.z, 0, L) : fit.z;
        data[base + Math.floor(j / perByte)]! |= q << ((j % perByte) * bits);
      }
    }
  }
  return { bits, blockSize: bs, n, k, data, scales, zeroPoints };
}

/** The GatherBlockQuantized table for an embedding [rows, width]: the same bytes as quantizeMatMulNBits. */
export function quantizeGatherBlockQuantized(
  table: Float32Array,
  rows: number,
  width: number,
  opts: QuantOptions,
): QuantizedMatrix {
  checkQuantOptions(opts);
  if (width % opts.blockSize !== 0)
    throw new Error(`table width ${width} must be a multiple of block size ${opts.blockSize}`);
  return quantizeMatMulNBits(table, rows, width, opts);
}

/**
 * Joins row chunks quantised separately (same bits, block size and K) into one matrix: the layout is
 * row-major throughout, so a converter can read, quantise and free a big table a few thousand rows at a time.
 */
export function concatQuantized(parts: readonly QuantizedMatrix[]): QuantizedMatrix {
  if (parts.length === 0) throw new Error('concatQuantized: no parts');
  const { bits, blockSize, k } = parts[0]!;
  for (const p of parts) {
    if (p.bits !== bits || p.blockSize !== blockSize || p.k !== k)
      throw new Error('concatQuantized: parts differ in bits, block size or K');
  }
  const cat = <T extends Uint8Array | Float32Array>(arrays: T[], make: (n: number) => T): T => {
    const out = make(arrays.reduce((a, x) => a + x.length, 0));
    let at = 0;
    for (const a of arrays) {
      out.set(a, at);
      at += a.length;
    }
    return out;
  };
  return {
    bits,
    blockSize,
    k,
    n: parts.reduce((a, p) => a + p.n, 0),
    data: cat(
      parts.map((p) => p.data),
      (n) => new Uint8Array(n),
    ),
    scales: cat(
      parts.map((p) => p.scales),
      (n) => new Float32Array(n),
    ),
    zeroPoints: cat(
      parts.map((p) => p.zeroPoints),
      (n) => new Uint8Array(n),
    ),
  };
}

/** Decodes rows [start, start+count) into `out` (length count*k). Works for both layouts. */
export function dequantizeRows(
  q: QuantizedMatrix,
  start: number,
  count: number,
  out = new Float32Array(count * q.k),
): Float32Array {
  if (start < 0 || count < 0 || start + count > q.n)
    throw new Error(`rows [${start}, ${start + count}) out of range 0..${q.n}`);
  const { bits, blockSize: bs, k } = q;
  const nb = blocksPerRow(k, bs);
  const bytesPerBlock = (bs * bits) / 8;
  const zpRow = zpBytesPerRow(nb, bits);
  const perByte = 8 / bits;
  const mask = (1 << bits) - 1;
  for (let r = 0; r < count; r++) {
    const row = start + r;
    for (let b = 0; b < nb; b++) {
      const blk = row * nb + b;
      const s = q.scales[blk]!;
      const z = (q.zeroPoints[row * zpRow + Math.floor(b / perByte)]! >> ((b % perByte) * bits)) & mask;
      const len = Math.min(bs, k - b * bs);
      const base = blk * bytesPerBlock;
      const o = r * k + b * bs;
      for (let j = 0; j < len; j++) {
        const c = (q.data[base + Math.floor(j / perByte)]! >> ((j % perByte) * bits)) & mask;
        out[o + j] = (c - z) * s;
      }
    }
  }
  return out;
}

/** Decodes the whole matrix, row-major [N, K]. */
export function dequantizeMatMulNBits(q: QuantizedMatrix): Float32Array {
  return dequantizeRows(q, 0, q.n);
}

/** Same decoding: the GatherBlockQuantized layout is byte-identical. */
export const dequantizeGatherBlockQuantized = dequantizeMatMulNBits;

export interface ReconstructionError {
  /** Root mean squared error. */
  rmse: number;
  maxAbs: number;
  /** RMSE relative to the weights' RMS. */
  relative: number;
}

export function reconstructionError(w: Float32Array, q: QuantizedMatrix): ReconstructionError {
  const d = dequantizeMatMulNBits(q);
  let se = 0,
    ss = 0,
    maxAbs = 0;
  for (let i = 0; i < w.length; i++) {
    const e = w[i]! - d[i]!;
    se += e * e;
    ss += w[i]! * w[i]!;
    if (Math.abs(e) > maxAbs) maxAbs = Math.abs(e);
  }
  const rmse = Math.sqrt(se / w.length);
  return { rmse, maxAbs, relative: ss > 0 ? rmse / Math.sqrt(ss / w.length) : 0 };
}

/**
 * Per-output-channel symmetric int8, in the layout of ORT's MatMulInteger / DynamicQuantizeMatMul B input:
 * W [N, K] is stored transposed, codes [K, N] (int8), one float scale per output channel n, zero point 0;
 * w[n, k] = codes[k, n] * scales[n]. The graph rounds activations to int8 per row (Ops.int8Linear), so the
 * integer kernel needs no dot-product instructions: the Pi 4's Cortex-A72 runs it at about 0.4 instructions per weight,
 * against 2.7 for MatMulNBits' 4-bit float path (models/README.md has the measurements).
 * Codes use 7 bits' range (-63..63): x86-64's AVX2 uint8 x int8 kernel (VPMADDUBSW) saturates a pair's int16
 * sum beyond 2 x 255 x 64, and gave wrong products with full-range codes; ARM has no such limit, but one
 * package must compute the same everywhere.
 */
export interface Int8ChannelMatrix {
  n: number;
  k: number;
  /** [K, N] */
  codes: Int8Array;
  /** [N] */
  scales: Float32Array;
}

/** Round to nearest with scale max|w_n| / 63 (a clipping search gains little at this precision). */
export function quantizeInt8Channels(w: Float32Array, n: number, k: number): Int8ChannelMatrix {
  if (w.length !== n * k) throw new Error(`weight has ${w.length} values, expected ${n} x ${k}`);
  const codes = new Int8Array(k * n);
  const scales = new Float32Array(n);
  for (let r = 0; r < n; r++) {
    let amax = 0;
    for (let c = 0; c < k; c++) amax = Math.max(amax, Math.abs(w[r * k + c]!));
    const s = amax > 0 ? Math.fround(amax / 63) : 1;
    scales[r] = s;
    for (let c = 0; c < k; c++) codes[c * n + r] = clampInt(w[r * k + c]! / s + RINT - RINT, -63, 63);
  }
  return { n, k, codes, scales };
}

/** Back to W [N, K] float32: what the graph multiplies with (before its activation rounding). */
export function dequantizeInt8Channels(q: Int8ChannelMatrix): Float32Array {
  const out = new Float32Array(q.n * q.k);
  for (let r = 0; r < q.n; r++) {
    const s = q.scales[r]!;
    for (let c = 0; c < q.k; c++) out[r * q.k + c] = q.codes[c * q.n + r]! * s;
  }
  return out;
}
