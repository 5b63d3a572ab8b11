/**
 * Antialiased bicubic resize of interleaved 8-bit images, as transformers' Gemma 4 image processor does it
 * on a CPU: `tvF.resize(uint8, BICUBIC, antialias=True)` (torchvision backend) runs PyTorch's native uint8
 * kernel (UpSampleKernel.cpp, ported from Pillow-SIMD), and the PIL backend runs Pillow's ImagingResample.
 * Both: Keys cubic with a = -0.5, support widened by the downscale factor, weights normalised per output
 * pixel and turned into fixed point, width first into an 8-bit intermediate, then height. They differ
 * only in the fixed-point precision: PyTorch picks the largest that keeps the biggest weight in int16,
 * Pillow uses 22 bits; results can differ by one level on some pixels.
 */

export type ResizeFlavour = 'torch' | 'pillow';

/** Keys cubic convolution kernel, a = -0.5 (Pillow's and PyTorch's antialias bicubic). */
function cubic(x: number): number {
  const a = -0.5;
  const t = Math.abs(x);
  if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
  return 0;
}

export interface AxisWeights {
  /** First input index each output index reads. */
  start: Int32Array;
  /** How many input indices each output index reads. */
  count: Int32Array;
  /** `maxTaps` normalised weights per output index (double, as both compute them). */
  weights: Float64Array;
  maxTaps: number;
}

/** Per-output-pixel taps along one axis (Pillow `precompute_coeffs`, PyTorch `_compute_indices_weights_aa`). */
export function axisWeights(inSize: number, outSize: number): AxisWeights {
  const scale = inSize / outSize;
  const support = scale >= 1 ? 2 * scale : 2; // interp_size / 2 = 2 for bicubic
  const invScale = scale >= 1 ? 1 / scale : 1;
  const maxTaps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * maxTaps);
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xsize = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    const w = new Float64Array(xsize);
    for (let j = 0; j < xsize; j++) {
      w[j] = cubic((j + xmin - center + 0.5) * invScale);
      total += w[j];
    }
    start[i] = xmin;
    count[i] = xsize;
    for (let j = 0; j < xsize; j++) weights[i * maxTaps + j] = total !== 0 ? w[j] / total : 0;
  }
  return { start, count, weights, maxTaps };
}

/** Fixed-point bits for one axis (PyTorch `_compute_index_ranges_int16_weights`, or Pillow's 22). */
function precisionBits(weights: Float64Array, flavour: ResizeFlavour): number {
  if (flavour === 'pillow') return 22;
  let wMax = weights[0];
  for (let i = 1; i < weights.length; i++) if (weights[i] > wMax) wMax = weights[i];
  let p = 0;
  for (; p < 22; p++) {
    if (Math.trunc(0.5 + wMax * 2 ** (p + 1)) >= 1 << 15) break;
  }
  return p;
}

/** Integer weights, rounded half away from zero. */
function fixedWeights(aw: AxisWeights, p: number): Int32Array {
  const out = new Int32Array(aw.weights.length);
  const scale = 2 ** p;
  for (let i = 0; i < out.length; i++) {
    const v = aw.weights[i] * scale;
    out[i] = v < 0 ? Math.trunc(v - 0.5) : Math.trunc(v + 0.5);
  }
  return out;
}

/** Resamples along one axis (width when `horizontal`) from inW x inH to outW x outH. */
function resampleAxis(
  src: Uint8Array,
  inW: number,
  inH: number,
  channels: number,
  outW: number,
  outH: number,
  horizontal: boolean,
  flavour: ResizeFlavour,
): Uint8Array {
  const aw = horizontal ? axisWeights(inW, outW) : axisWeights(inH, outH);
  const p = precisionBits(aw.weights, flavour);
  const k = fixedWeights(aw, p);
  const half = 2 ** (p - 1);
  const div = 2 ** p;
  const out = new Uint8Array(outW * outH * channels);
  const rowIn = inW * channels;
  // Sums are exact integers in doubles; floor(sum / 2^p) is the C arithmetic shift.
  if (horizontal) {
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        const n = aw.count[x];
        const wo = x * aw.maxTaps;
        const s0 = y * rowIn + aw.start[x] * channels;
        for (let c = 0; c < channels; c++) {
          let acc = half;
          for (let j = 0, s = s0 + c; j < n; j++, s += channels) acc += src[s] * k[wo + j];
          out[(y * outW + x) * channels + c] = clip8(Math.floor(acc / div));
        }
      }
    }
  } else {
    const rowLen = outW * channels;
    const acc = new Float64Array(rowLen);
    for (let y = 0; y < outH; y++) {
      const n = aw.count[y];
      const wo = y * aw.maxTaps;
      acc.fill(half);
      for (let j = 0; j < n; j++) {
        const w = k[wo + j];
        const base = (aw.start[y] + j) * rowIn;
        for (let i = 0; i < rowLen; i++) acc[i] += w * src[base + i];
      }
      const o = y * rowLen;
      for (let i = 0; i < rowLen; i++) out[o + i] = clip8(Math.floor(acc[i] / div));
    }
  }
  return out;
}

function clip8(v: number): number {
  return v <= 0 ? 0 : v >= 255 ? 255 : v;
}

/**
 * Resizes an interleaved uint8 image (`channels` per pixel) to outW x outH. An axis whose size does not
 * change is not resampled; the same size returns the input (transformers skips the resize then too).
 */
export function resizeBicubicAA(
  src: Uint8Array,
  width: number,
  height: number,
  channels: number,
  outW: number,
  outH: number,
  flavour: ResizeFlavour = 'torch',
): Uint8Array {
  let img = src;
  if (outW !== width) img = resampleAxis(img, width, height, channels, outW, height, true, flavour);
  if (outH !== height) img = resampleAxis(img, outW, height, channels, outW, outH, false, flavour);
  return img;
}
