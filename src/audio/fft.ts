/**
 * Real-input FFT of a power-of-two size, written for the log-mel front end (512 points, ~100 frames a second).
 *
 * A real signal of N samples is packed into N/2 complex values (even samples real, odd samples imaginary),
 * transformed with an iterative radix-2 decimation-in-time FFT of size N/2, and split back into the N/2+1
 * non-redundant bins of the real transform. That halves the work of a complex FFT of size N. Tables (bit
 * reversal, twiddles) are built once per size; the work buffers are reused, so one instance is not re-entrant
 * (JavaScript runs it to completion anyway).
 */
export class RealFft {
  readonly size: number;
  /** Bins returned by forward(): size / 2 + 1 (DC to Nyquist). */
  readonly bins: number;
  private readonly half: number;
  private readonly rev: Uint32Array;
  private readonly twRe: Float64Array; // cos(2πk/half), k < half/2
  private readonly twIm: Float64Array; // -sin(2πk/half)
  private readonly splitRe: Float64Array; // cos(2πk/size), k <= half
  private readonly splitIm: Float64Array; // -sin(2πk/size)
  private readonly re: Float64Array;
  private readonly im: Float64Array;

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 4 || (size & (size - 1)) !== 0)
      throw new Error(`FFT size must be a power of two >= 4, got ${size}`);
    this.size = size;
    this.half = size >> 1;
    this.bins = this.half + 1;
    const m = this.half;
    const bits = Math.log2(m);
    this.rev = new Uint32Array(m);
    for (let i = 0; i < m; i++) {
      let r = 0;
      for (let b = 0, x = i; b < bits; b++, x >>= 1) r = (r << 1) | (x & 1);
      this.rev[i] = r;
    }
    this.twRe = new Float64Array(Math.max(1, m >> 1));
    this.twIm = new Float64Array(Math.max(1, m >> 1));
    for (let k = 0; k < m >> 1; k++) {
      this.twRe[k] = Math.cos((2 * Math.PI * k) / m);
      this.twIm[k] = -Math.sin((2 * Math.PI * k) / m);
    }
    this.splitRe = new Float64Array(m + 1);
    this.splitIm = new Float64Array(m + 1);
    for (let k = 0; k <= m; k++) {
      this.splitRe[k] = Math.cos((2 * Math.PI * k) / size);
      this.splitIm[k] = -Math.sin((2 * Math.PI * k) / size);
    }
    this.re = new Float64Array(m);
    this.im = new Float64Array(m);
  }

  /**
   * X[k] = sum_n x[n] e^{-2πikn/N} for k = 0..N/2. `input` shorter than N is zero-padded (as numpy's
   * rfft(frame, n=N) does); longer input is an error. outRe/outIm need at least `bins` entries.
   */
  forward(input: ArrayLike<number>, outRe: Float64Array, outIm: Float64Array): void {
    const n = input.length;
    if (n > this.size) throw new Error(`FFT input of ${n} samples exceeds size ${this.size}`);
    if (outRe.length < this.bins || outIm.length < this.bins) throw new Error(`FFT output needs ${this.bins} bins`);
    const { re, im, rev, half: m } = this;
    // Pack and bit-reverse in one pass: z[j] = x[2j] + i x[2j+1].
    for (let j = 0; j < m; j++) {
      const r = rev[j]!;
      const a = 2 * j;
      re[r] = a < n ? input[a]! : 0;
      im[r] = a + 1 < n ? input[a + 1]! : 0;
    }
    this.complexInPlace();
    // Split: E = (Z[k] + conj Z[m-k]) / 2 (spectrum of the even samples), O = (Z[k] - conj Z[m-k]) / 2i.
    for (let k = 0; k <= m; k++) {
      const k1 = k === m ? 0 : k;
      const k2 = k === 0 ? 0 : m - k;
      const ar = re[k1]!;
      const ai = im[k1]!;
      const br = re[k2]!;
      const bi = -im[k2]!;
      const er = 0.5 * (ar + br);
      const ei = 0.5 * (ai + bi);
      const or = 0.5 * (ai - bi);
      const oi = -0.5 * (ar - br);
      const wr = this.splitRe[k]!;
      const wi = this.splitIm[k]!;
      outRe[k] = er + wr * or - wi * oi;
      outIm[k] = ei + wr * oi + wi * or;
    }
  }

  /** Iterative radix-2 butterflies over the bit-reversed work buffers. */
  private complexInPlace(): void {
    const { re, im, twRe, twIm, half: m } = this;
    for (let len = 2; len <= m; len <<= 1) {
      const h = len >> 1;
      const step = m / len;
      for (let start = 0; start < m; start += len) {
        for (let j = 0, t = 0; j < h; j++, t += step) {
          const wr = twRe[t]!;
          const wi = twIm[t]!;
          const a = start + j;
          const b = a + h;
          const xr = re[b]! * wr - im[b]! * wi;
          const xi = re[b]! * wi + im[b]! * wr;
          re[b] = re[a]! - xr;
          im[b] = im[a]! - xi;
          re[a] = re[a]! + xr;
          im[a] = im[a]! + xi;
        }
      }
    }
  }
}

/** O(N^2) DFT of a real signal, bins 0..N/2: the reference the tests hold RealFft to. */
export function naiveRealDft(input: ArrayLike<number>, size: number): { re: Float64Array; im: Float64Array } {
  const bins = (size >> 1) + 1;
  const re = new Float64Array(bins);
  const im = new Float64Array(bins);
  for (let k = 0; k < bins; k++) {
    let sr = 0;
    let si = 0;
    for (let t = 0; t < input.length; t++) {
      const phase = (2 * Math.PI * ((k * t) % size)) / size;
      sr += input[t]! * Math.cos(phase);
      si -= input[t]! * Math.sin(phase);
    }
    re[k] = sr;
    im[k] = si;
  }
  return { re, im };
}
