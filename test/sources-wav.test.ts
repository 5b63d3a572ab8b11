import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { createAudioSource } from '../src/sources/index.js';
import type { AudioChunk, AudioSource } from '../src/sources/types.js';
import { decodeWav, resample, wavTo16kMono, WavFormatError } from '../src/sources/wav-decode.js';
import { encodeWav, rampWav, sine, type WavLayout } from './fixtures/media.js';

function rms(x: Float32Array | Int16Array, scale = 1): number {
  let s = 0;
  for (const v of x) s += (v / scale) ** 2;
  return Math.sqrt(s / x.length);
}

/** Amplitude of one frequency in x (single-bin DFT), ignoring the edges. */
function toneAmplitude(x: Float32Array, freq: number, rate: number): number {
  let re = 0;
  let im = 0;
  const from = 200;
  const to = x.length - 200;
  for (let i = from; i < to; i++) {
    re += x[i]! * Math.cos((2 * Math.PI * freq * i) / rate);
    im += x[i]! * Math.sin((2 * Math.PI * freq * i) / rate);
  }
  return (2 * Math.hypot(re, im)) / (to - from);
}

describe('decodeWav', () => {
  const layouts: Array<[string, WavLayout, number]> = [
    ['8-bit unsigned', { sampleRate: 16000, channels: 1, format: 'int', bits: 8 }, 1 / 100],
    ['16-bit', { sampleRate: 16000, channels: 1, format: 'int', bits: 16 }, 1e-4],
    ['24-bit', { sampleRate: 16000, channels: 1, format: 'int', bits: 24 }, 1e-6],
    ['32-bit int', { sampleRate: 16000, channels: 1, format: 'int', bits: 32 }, 1e-6],
    ['float32', { sampleRate: 16000, channels: 1, format: 'float', bits: 32 }, 1e-6],
    ['float64', { sampleRate: 16000, channels: 1, format: 'float', bits: 64 }, 1e-6],
    [
      'extensible 24-bit with an odd extra chunk',
      { sampleRate: 16000, channels: 1, format: 'int', bits: 24, extensible: true, extraChunkBytes: 7 },
      1e-6,
    ],
    ['extensible float32', { sampleRate: 16000, channels: 1, format: 'float', bits: 32, extensible: true }, 1e-6],
  ];
  for (const [label, layout, tolerance] of layouts) {
    it(`reads ${label}`, () => {
      const src = sine(440, 16000, 0.1, 0.6);
      const { info, mono } = decodeWav(encodeWav(layout, [src]));
      expect(info).toMatchObject({ sampleRate: 16000, channels: 1, bitsPerSample: layout.bits, frames: src.length });
      let worst = 0;
      for (let i = 0; i < src.length; i++) worst = Math.max(worst, Math.abs(mono[i]! - src[i]!));
      expect(worst).toBeLessThan(tolerance);
    });
  }

  it('downmixes channels by averaging', () => {
    const left = sine(300, 16000, 0.05, 0.8);
    const right = new Float32Array(left.length);
    const { info, mono } = decodeWav(
      encodeWav({ sampleRate: 16000, channels: 2, format: 'float', bits: 32 }, [left, right]),
    );
    expect(info.channels).toBe(2);
    for (let i = 0; i < left.length; i += 37) expect(mono[i]).toBeCloseTo(left[i]! / 2, 6);
  });

  it('gives clear errors for files that are not usable WAVs', () => {
    expect(() => decodeWav(Buffer.from('hello, I am a text file'))).toThrow(/not a WAV file/);
    const good = encodeWav({ sampleRate: 16000, channels: 1, format: 'int', bits: 16 }, [sine(100, 16000, 0.01)]);
    expect(() => decodeWav(good.subarray(0, 30))).toThrow(WavFormatError);
    expect(() => decodeWav(good.subarray(0, 30))).toThrow(/corrupt WAV file/);
    const adpcm = Buffer.from(good);
    adpcm.writeUInt16LE(2, 20); // format tag 2: MS ADPCM
    expect(() => decodeWav(adpcm)).toThrow(/unsupported WAV encoding/);
    const noData = good.subarray(0, 36);
    expect(() => decodeWav(noData)).toThrow(/no data chunk/);
  });

  it('takes what the file holds when a streamed WAV leaves the data size unset', () => {
    const good = Buffer.from(
      encodeWav({ sampleRate: 16000, channels: 1, format: 'int', bits: 16 }, [sine(100, 16000, 0.01)]),
    );
    good.writeUInt32LE(0xffffffff, 40);
    expect(decodeWav(good).info.frames).toBe(160);
  });
});

describe('resample', () => {
  it('keeps a 1 kHz tone when going from 48 kHz to 16 kHz', () => {
    const out = resample(sine(1000, 48000, 1, 0.5), 48000, 16000);
    expect(out.length).toBe(16000);
    expect(toneAmplitude(out, 1000, 16000)).toBeCloseTo(0.5, 2);
  });

  it('removes content above the new Nyquist frequency instead of aliasing it', () => {
    // 10 kHz at 44.1 kHz would fold to 6 kHz at 16 kHz without a low-pass.
    const out = resample(sine(10000, 44100, 0.5, 0.5), 44100, 16000);
    expect(toneAmplitude(out, 6000, 16000)).toBeLessThan(0.01);
    expect(rms(out.subarray(200, -200))).toBeLessThan(0.01);
  });

  it('upsamples 8 kHz to 16 kHz without losing the tone', () => {
    const out = resample(sine(700, 8000, 0.5, 0.4), 8000, 16000);
    expect(out.length).toBe(8000);
    expect(toneAmplitude(out, 700, 16000)).toBeCloseTo(0.4, 2);
  });

  it('converts a 44.1 kHz stereo 24-bit file to 16 kHz mono S16', () => {
    const tone = sine(500, 44100, 0.5, 0.5);
    const { samples } = wavTo16kMono(
      encodeWav({ sampleRate: 44100, channels: 2, format: 'int', bits: 24 }, [tone, tone]),
    );
    expect(samples.length).toBe(8000);
    expect(rms(samples.subarray(200, -200), 32768)).toBeCloseTo(0.5 / Math.SQRT2, 2);
  });
});

describe('WavSource', () => {
  let dir: string;
  let source: AudioSource | undefined;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'perch-wav-'));
  });
  afterEach(async () => {
    await source?.stop();
    source = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  function wavSource(file: string, realtime: boolean, loop: boolean): AudioSource {
    source = createAudioSource(
      { type: 'wav', path: file, realtime, loop, restart_min_ms: 100, restart_max_ms: 1000 },
      silentLogger,
    );
    return source;
  }

  it('delivers every sample in 50 ms chunks with stream-time offsets, then ends', async () => {
    const file = join(dir, 'ramp.wav');
    writeFileSync(file, rampWav(16500));
    const src = wavSource(file, false, false);
    const chunks: AudioChunk[] = [];
    src.on('chunk', (c) => chunks.push(c));
    const ended = new Promise<void>((r) => src.on('end', r));
    await src.start();
    await ended;
    expect(chunks.length).toBe(21);
    chunks.forEach((c, i) => {
      expect(c.startMs).toBe(i * 50);
      expect(c.sampleRate).toBe(16000);
    });
    const all = Int16Array.from(chunks.flatMap((c) => Array.from(c.samples)));
    expect(all.length).toBe(16500);
    for (let i = 0; i < all.length; i += 101) expect(all[i]).toBe((i % 1000) - 500);
    expect(src.state().status).toBe('ended');
    expect(src.state().lastDataAt).toBeDefined();
  });

  it('loops with stream time running on', async () => {
    const file = join(dir, 'short.wav');
    writeFileSync(file, rampWav(1000));
    const src = wavSource(file, false, true);
    const chunks: AudioChunk[] = [];
    src.on('chunk', (c) => chunks.push(c));
    let ended = false;
    src.on('end', () => (ended = true));
    await src.start();
    await new Promise<void>((r) => src.on('chunk', () => chunks.length >= 8 && r()));
    await src.stop();
    expect(ended).toBe(false);
    // 1000 samples per pass: chunks of 800 and 200, then again.
    expect(chunks.slice(0, 4).map((c) => [c.startMs, c.samples.length])).toEqual([
      [0, 800],
      [50, 200],
      [62.5, 800],
      [112.5, 200],
    ]);
    expect(chunks[2]!.samples[0]).toBe(-500);
    expect(src.state().status).toBe('stopped');
  });

  it('paces delivery in real time', async () => {
    const file = join(dir, 'third.wav');
    writeFileSync(file, rampWav(4800)); // 300 ms
    const src = wavSource(file, true, false);
    const began = Date.now();
    const ended = new Promise<void>((r) => src.on('end', r));
    await src.start();
    await ended;
    // Six chunks, the last due 250 ms after the first; ending needs one more tick.
    expect(Date.now() - began).toBeGreaterThanOrEqual(280);
  });

  it('rejects start() with a clear error and reports failed for a non-WAV file', async () => {
    const file = join(dir, 'fake.wav');
    writeFileSync(file, '<html>not audio</html>');
    const src = wavSource(file, false, false);
    await expect(src.start()).rejects.toThrow(/fake\.wav: not a WAV file/);
    expect(src.state()).toMatchObject({ status: 'failed' });
    expect(src.state().lastError).toMatch(/not a WAV file/);
    const missing = wavSource(join(dir, 'missing.wav'), false, false);
    await expect(missing.start()).rejects.toThrow(/missing\.wav: ENOENT/);
  });
});
