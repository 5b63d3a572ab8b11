/**
 * Triangular mel filterbank, built the way transformers' audio_utils.mel_filter_bank builds it with
 * mel_scale="htk", norm=None, triangularize_in_mel_space=False (what Gemma4AudioFeatureExtractor asks for):
 *   - HTK mel scale: mel(f) = 2595 log10(1 + f / 700)
 *   - num_filters + 2 edge points equally spaced in mel between mel(fmin) and mel(fmax), mapped back to Hz
 *   - FFT bin j sits at j * (sampleRate // 2) / (bins - 1) Hz (numpy linspace(0, sr // 2, bins))
 *   - filter m: rises linearly from edge m to a peak of 1 at edge m+1, falls to 0 at edge m+2; no area normalisation
 * Stored sparse (each filter touches only a few bins), so applying it costs about two multiply-adds per FFT bin.
 */

export function hzToMelHtk(hz: number): number {
  return 2595 * Math.log10(1 + hz / 700);
}

export function melToHzHtk(mel: number): number {
  return 700 * (10 ** (mel / 2595) - 1);
}

export interface MelFilterbank {
  filters: number;
  bins: number;
  /** Hz of the num_filters + 2 triangle edges. */
  edgesHz: Float64Array;
  /** Hz of each FFT bin. */
  binHz: Float64Array;
  /** Filter m has weights weights[m][i] on FFT bins first[m] + i. */
  first: Int32Array;
  weights: Float64Array[];
}

export function melFilterbank(opts: {
  filters: number;
  fftSize: number;
  sampleRate: number;
  minHz: number;
  maxHz: number;
}): MelFilterbank {
  const { filters, fftSize, sampleRate, minHz, maxHz } = opts;
  if (minHz > maxHz) throw new Error(`mel filterbank: minHz ${minHz} > maxHz ${maxHz}`);
  const bins = (fftSize >> 1) + 1;
  const binHz = new Float64Array(bins);
  const nyquist = Math.floor(sampleRate / 2);
  for (let j = 0; j < bins; j++) binHz[j] = (nyquist * j) / (bins - 1);
  const lo = hzToMelHtk(minHz);
  const hi = hzToMelHtk(maxHz);
  const edgesHz = new Float64Array(filters + 2);
  for (let i = 0; i < filters + 2; i++) edgesHz[i] = melToHzHtk(lo + ((hi - lo) * i) / (filters + 1));
  const first = new Int32Array(filters);
  const weights: Float64Array[] = [];
  for (let m = 0; m < filters; m++) {
    const left = edgesHz[m]!;
    const centre = edgesHz[m + 1]!;
    const right = edgesHz[m + 2]!;
    const row: number[] = [];
    let start = -1;
    for (let j = 0; j < bins; j++) {
      const f = binHz[j]!;
      const w = Math.max(0, Math.min((f - left) / (centre - left), (right - f) / (right - centre)));
      if (w > 0) {
        if (start < 0) start = j;
        // Bins between two non-zero ones stay in the row (zeros), keeping it contiguous.
        while (start + row.length < j) row.push(0);
        row.push(w);
      }
    }
    first[m] = start < 0 ? 0 : start;
    weights.push(Float64Array.from(row));
  }
  return { filters, bins, edgesHz, binHz, first, weights };
}

/** Dense [bins][filters] copy, laid out as transformers returns it (for tests and inspection). */
export function denseFilterbank(fb: MelFilterbank): Float64Array[] {
  const rows = Array.from({ length: fb.bins }, () => new Float64Array(fb.filters));
  for (let m = 0; m < fb.filters; m++) {
    const w = fb.weights[m]!;
    for (let i = 0; i < w.length; i++) rows[fb.first[m]! + i]![m] = w[i]!;
  }
  return rows;
}
