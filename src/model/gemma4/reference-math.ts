/**
 * The formulas the three references (text, audio tower, vision tower) share, in float64: one RMSNorm and one
 * tanh GELU, so each tower's reference reads its own blocks and nothing else.
 */

export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

/**
 * In-place RMSNorm of v[off .. off+n): x * (mean(x^2) + eps)^-0.5 * (offset + w) (w null: no scale). The offset
 * is the config's normScaleOffset: 0 for Gemma 4, 1 for Gemma 3.
 */
export function rmsNormAt(
  v: Float64Array,
  off: number,
  n: number,
  w: Float32Array | null,
  eps: number,
  offset = 0,
): void {
  let ms = 0;
  for (let i = 0; i < n; i++) ms += v[off + i]! ** 2;
  const inv = (ms / n + eps) ** -0.5;
  for (let i = 0; i < n; i++) v[off + i] = v[off + i]! * inv * (w ? offset + w[i]! : 1);
}

/** RMSNorm over consecutive groups of `n` values, into a new array. */
export function rmsNormRows(x: Float64Array, n: number, w: Float32Array | null, eps: number): Float64Array {
  const out = Float64Array.from(x);
  for (let off = 0; off < x.length; off += n) rmsNormAt(out, off, n, w, eps);
  return out;
}
