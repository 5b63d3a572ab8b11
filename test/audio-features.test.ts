import { describe, expect, it } from 'vitest';
import { naiveRealDft, RealFft } from '../src/audio/fft.js';
import {
  GEMMA4_LOG_MEL_DEFAULTS,
  LogMelExtractor,
  logMelFeatures,
  optionsFromProcessorConfig,
  softTokenCount,
} from '../src/audio/features.js';
import { denseFilterbank, hzToMelHtk, melFilterbank, melToHzHtk } from '../src/audio/mel.js';
import { rng } from './audio-helpers.js';

const random = (n: number, seed: number): Float64Array => {
  const r = rng(seed);
  return Float64Array.from({ length: n }, () => r() * 2 - 1);
};

describe('RealFft', () => {
  it('matches a naive DFT for several sizes, including zero-padded input', () => {
    for (const [size, len] of [
      [4, 4],
      [8, 8],
      [64, 64],
      [512, 512],
      [512, 320],
      [1024, 700],
    ] as const) {
      const x = random(len, size + len);
      const fft = new RealFft(size);
      const re = new Float64Array(fft.bins);
      const im = new Float64Array(fft.bins);
      fft.forward(x, re, im);
      const ref = naiveRealDft(x, size);
      let worst = 0;
      for (let k = 0; k < fft.bins; k++)
        worst = Math.max(worst, Math.abs(re[k]! - ref.re[k]!), Math.abs(im[k]! - ref.im[k]!));
      expect(worst, `size ${size}, ${len} samples`).toBeLessThan(1e-9 * size);
    }
  });

  it('puts a cosine of bin k in bin k with amplitude N/2', () => {
    const n = 512;
    const x = Float64Array.from({ length: n }, (_, t) => Math.cos((2 * Math.PI * 37 * t) / n));
    const fft = new RealFft(n);
    const re = new Float64Array(fft.bins);
    const im = new Float64Array(fft.bins);
    fft.forward(x, re, im);
    expect(re[37]).toBeCloseTo(n / 2, 9);
    expect(Math.abs(re[36]!) + Math.abs(im[38]!)).toBeLessThan(1e-9);
  });

  it('refuses sizes that are not a power of two and input longer than the size', () => {
    expect(() => new RealFft(320)).toThrow(/power of two/);
    expect(() => new RealFft(8).forward(new Float64Array(9), new Float64Array(5), new Float64Array(5))).toThrow(
      /exceeds/,
    );
  });
});

describe('mel filterbank (HTK, no normalisation)', () => {
  const fb = melFilterbank({ filters: 128, fftSize: 512, sampleRate: 16000, minHz: 0, maxHz: 8000 });
  const dense = denseFilterbank(fb);

  it('has shape [257 bins][128 filters] and bins at 31.25 Hz steps', () => {
    expect(dense.length).toBe(257);
    expect(dense[0]!.length).toBe(128);
    expect(fb.binHz[1]).toBe(31.25);
    expect(fb.binHz[256]).toBe(8000);
  });

  it('spaces the triangle edges equally on the HTK mel scale from 0 to 8000 Hz', () => {
    expect(hzToMelHtk(1000)).toBeCloseTo(2595 * Math.log10(1 + 1000 / 700), 12);
    expect(melToHzHtk(hzToMelHtk(3210))).toBeCloseTo(3210, 9);
    expect(fb.edgesHz[0]).toBe(0);
    expect(fb.edgesHz[129]).toBeCloseTo(8000, 9);
    const step = hzToMelHtk(8000) / 129;
    for (let i = 1; i < 130; i++)
      expect(hzToMelHtk(fb.edgesHz[i]!) - hzToMelHtk(fb.edgesHz[i - 1]!)).toBeCloseTo(step, 9);
  });

  it('has triangles: weights in [0, 1], zero outside their edges, and adjacent filters summing to 1 between centres', () => {
    for (let j = 0; j < 257; j++) {
      const f = fb.binHz[j]!;
      let sum = 0;
      for (let m = 0; m < 128; m++) {
        const w = dense[j]![m]!;
        expect(w).toBeGreaterThanOrEqual(0);
        expect(w).toBeLessThanOrEqual(1);
        if (f <= fb.edgesHz[m]! || f >= fb.edgesHz[m + 2]!) expect(w).toBe(0);
        sum += w;
      }
      // Unnormalised HTK triangles overlap by half: between the first and last centre they partition unity.
      if (f >= fb.edgesHz[1]! && f <= fb.edgesHz[128]!) expect(sum).toBeCloseTo(1, 9);
    }
  });
});

describe('logMelFeatures', () => {
  const x = new LogMelExtractor();

  it('uses the documented geometry: 320-sample frames, 160 hop, FFT 512, periodic Hann', () => {
    expect([x.frameLength, x.hop, x.fftSize]).toEqual([320, 160, 512]);
    expect(x.window[0]).toBe(0);
    expect(x.window[160]).toBe(1);
    expect(x.window[80]).toBeCloseTo(0.5, 6);
  });

  it('counts frames as (160 + N rounded up to 128 - 321) // 160 + 1, capped at 30 s', () => {
    const rule = (n: number): number => {
      const padded = Math.ceil(Math.min(n, 480000) / 128) * 128;
      return padded + 160 < 321 ? 0 : Math.floor((padded + 160 - 321) / 160) + 1;
    };
    for (const n of [0, 1, 100, 128, 161, 256, 320, 1000, 16000, 16001, 160000, 480000, 500000]) {
      expect(x.frameCount(n), `N=${n}`).toBe(rule(n));
    }
    expect(x.frameCount(16000)).toBe(99); // ~100 frames a second
    const { frames, features, mask } = logMelFeatures(new Int16Array(16000 + 50));
    expect(frames).toBe(rule(16050));
    expect(features.length).toBe(frames * 128);
    expect(mask.length).toBe(frames);
  });

  it('marks a frame valid only when its window ends on real audio, and zeroes the others', () => {
    const n = 16150; // padded to 16256: frame 100 ends on padding
    const r = logMelFeatures(new Int16Array(n).fill(1000));
    for (let f = 0; f < r.frames; f++) {
      const valid = f * 160 + 160 <= n - 1;
      expect(r.mask[f], `frame ${f}`).toBe(valid ? 1 : 0);
      if (!valid) expect(Array.from(r.features.subarray(f * 128, f * 128 + 128)).every((v) => v === 0)).toBe(true);
    }
    expect(r.frames).toBe(101);
    expect(r.mask[99]).toBe(1);
    expect(r.mask[100]).toBe(0);
  });

  it('gives ln(1e-3) for digital silence', () => {
    const r = logMelFeatures(new Float32Array(8000));
    for (let f = 0; f < r.frames; f++) {
      if (!r.mask[f]) continue;
      for (let m = 0; m < 128; m++) expect(r.features[f * 128 + m]).toBeCloseTo(Math.log(1e-3), 5);
    }
  });

  it('puts a pure tone in the mel bin that contains its frequency', () => {
    // From ~1 kHz up a filter is wider than the Hann window's main lobe (4 bins of 31.25 Hz); below that the
    // filters are narrower than the FFT resolution and a tone spreads over several of them.
    for (const hz of [1000, 2000, 3000, 6500]) {
      const tone = Float32Array.from({ length: 16000 }, (_, i) => 0.5 * Math.sin((2 * Math.PI * hz * i) / 16000));
      const r = logMelFeatures(tone);
      const f = 50;
      const row = r.features.subarray(f * 128, f * 128 + 128);
      let best = 0;
      for (let m = 1; m < 128; m++) if (row[m]! > row[best]!) best = m;
      const fb = x.filterbank;
      // Filter m spans (edge m, edge m+2) with its peak at edge m+1: the peak filter's span holds the tone.
      expect(fb.edgesHz[best]!, `${hz} Hz`).toBeLessThan(hz);
      expect(fb.edgesHz[best + 2]!, `${hz} Hz`).toBeGreaterThan(hz);
      const nearest = Array.from(fb.edgesHz.subarray(1, 129)).reduce(
        (b, c, i, a) => (Math.abs(c - hz) < Math.abs(a[b]! - hz) ? i : b),
        0,
      );
      expect(Math.abs(best - nearest)).toBeLessThanOrEqual(1);
    }
  });

  it('matches a direct evaluation of the documented formula (naive DFT, dense filterbank)', () => {
    const n = 4000;
    const r0 = rng(3);
    const pcm = Int16Array.from({ length: n }, () => Math.round((r0() * 2 - 1) * 8000));
    const got = logMelFeatures(pcm);
    const dense = denseFilterbank(x.filterbank);
    for (const f of [0, 1, 7, got.frames - 3]) {
      if (!got.mask[f]) continue;
      const frame = new Float64Array(320);
      for (let i = 0; i < 320; i++) {
        const src = f * 160 + i - 160; // 160 zeros prepended
        const v = src >= 0 && src < n ? pcm[src]! / 32768 : 0;
        frame[i] = v * (0.5 - 0.5 * Math.cos((2 * Math.PI * i) / 320));
      }
      const spec = naiveRealDft(frame, 512);
      for (let m = 0; m < 128; m += 9) {
        let acc = 0;
        for (let k = 0; k < 257; k++) acc += dense[k]![m]! * Math.hypot(spec.re[k]!, spec.im[k]!);
        expect(got.features[f * 128 + m], `frame ${f} bin ${m}`).toBeCloseTo(Math.log(acc + 1e-3), 4);
      }
    }
  });

  it('counts soft tokens as the processor does: two stride-2 halvings of the mask, 25 a second, at most 750', () => {
    expect(softTokenCount(logMelFeatures(new Int16Array(16000)).mask)).toBe(25);
    const thirty = logMelFeatures(new Int16Array(480000));
    expect(thirty.frames).toBe(2999);
    expect(x.softTokens(thirty.mask)).toBe(750);
    const m = new Uint8Array(10).fill(1);
    m[8] = 0;
    expect(softTokenCount(m)).toBe(2); // frames 0 and 4 survive; 8 is masked
  });

  it('reads overrides from a processor_config.json and applies normalisation', () => {
    const opts = optionsFromProcessorConfig({
      audio_seq_length: 500,
      feature_extractor: {
        mel_floor: 1e-5,
        per_bin_mean: new Array(128).fill(1),
        per_bin_stddev: new Array(128).fill(2),
        bogus: 'x',
      },
    });
    expect(opts).toMatchObject({ melFloor: 1e-5, maxSoftTokens: 500 });
    const r = new LogMelExtractor(opts).extract(new Float32Array(4000));
    expect(r.features[5 * 128]).toBeCloseTo((Math.log(1e-5) - 1) / 2, 5);
    expect(GEMMA4_LOG_MEL_DEFAULTS.melFloor).toBe(1e-3);
    expect(() => new LogMelExtractor({ perBinMean: [1, 2] })).toThrow(/128 values/);
  });
});

describe('log-mel features as audio arrives', () => {
  it('a frame valid on a prefix of the clip has the values the whole clip gives it; validFrames counts the mask', () => {
    const ex = new LogMelExtractor();
    const r = rng(5);
    const clip = Int16Array.from({ length: 16000 * 2 + 77 }, () => Math.round((r() - 0.5) * 20000));
    const whole = ex.extract(clip);
    for (const n of [0, 160, 161, 320, 321, 4000, 16001, 16000 * 2, clip.length]) {
      const prefix = clip.subarray(0, n);
      const v = ex.validFrames(n);
      const own = ex.extract(prefix);
      expect(v).toBe(own.mask.reduce((a, b) => a + b, 0));
      expect(Array.from(own.mask.subarray(0, v)).every((m) => m === 1)).toBe(true);
      // Valid frames of the prefix equal the same frames of the whole clip, bit for bit; in two pieces too.
      const head = ex.extractRange(prefix, 0, Math.floor(v / 2));
      const tail = ex.extractRange(prefix, Math.floor(v / 2), v);
      const got = new Float32Array(v * 128);
      got.set(head.features);
      got.set(tail.features, head.features.length);
      expect(got).toEqual(whole.features.subarray(0, v * 128));
    }
    // The end of a clip: the frames after the valid ones are masked zeros, as extract gives them.
    const end = ex.extractRange(clip, whole.frames - 6, whole.frames);
    expect(end.mask).toEqual(whole.mask.subarray(whole.frames - 6));
    expect(end.features).toEqual(whole.features.subarray((whole.frames - 6) * 128));
    expect(() => ex.extractRange(clip, 0, whole.frames + 1)).toThrow(/outside/);
  });
});
