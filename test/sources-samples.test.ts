/** The committed sample media that `npm start` (config/perch.dev.yaml) plays; remade by test/fixtures/make-samples.ts. */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { createAudioSource, createFrameSource } from '../src/sources/index.js';
import type { AudioChunk, Frame } from '../src/sources/types.js';
import { decodeWav } from '../src/sources/wav-decode.js';

const samples = join(dirname(fileURLToPath(import.meta.url)), '..', 'config', 'samples');
const framesDir = join(samples, 'frames');
const speech = join(samples, 'speech.wav');

function rms(x: Float32Array): number {
  let s = 0;
  for (const v of x) s += v * v;
  return Math.sqrt(s / Math.max(1, x.length));
}

describe('sample media', () => {
  it('speech.wav is 16 kHz mono 16-bit speech with a second of silence around it', () => {
    const { info, mono } = decodeWav(readFileSync(speech));
    expect(info).toMatchObject({ sampleRate: 16000, channels: 1, bitsPerSample: 16, format: 'int' });
    const seconds = info.frames / 16000;
    expect(seconds).toBeGreaterThan(3);
    expect(seconds).toBeLessThan(10);
    expect(rms(mono.subarray(0, 15000))).toBeLessThan(0.001);
    expect(rms(mono.subarray(mono.length - 15000))).toBeLessThan(0.001);
    expect(rms(mono.subarray(16000, mono.length - 16000))).toBeGreaterThan(0.03);
  });

  it('frames are a handful of 640x360 JPEGs in which something moves, then holds still, all media small', async () => {
    const names = readdirSync(framesDir)
      .filter((n) => n.endsWith('.jpg'))
      .sort();
    expect(names.length).toBeGreaterThanOrEqual(4);
    let total = statSync(speech).size;
    const pixels: Buffer[] = [];
    for (const n of names) {
      const file = join(framesDir, n);
      total += statSync(file).size;
      const meta = await sharp(file).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 640, 360]);
      pixels.push(await sharp(file).greyscale().resize(64, 36).raw().toBuffer());
    }
    expect(total).toBeLessThan(600 * 1024);
    // The flight: every frame differs from the one before; then the last one held still, so an event ends.
    const moving = pixels.findIndex((p, i) => i > 0 && p.equals(pixels[i - 1]!));
    expect(moving).toBeGreaterThanOrEqual(4);
    for (let i = 1; i < moving; i++) expect(pixels[i]!.equals(pixels[i - 1]!)).toBe(false);
    for (let i = moving; i < pixels.length; i++) expect(pixels[i]!.equals(pixels[moving - 1]!)).toBe(true);
    expect(pixels.length - moving).toBeGreaterThanOrEqual(3);
  });

  it('play through the sources the dev config uses', async () => {
    const audio = createAudioSource(
      { type: 'wav', path: speech, realtime: false, loop: false, restart_min_ms: 1000, restart_max_ms: 60000 },
      silentLogger,
    );
    const chunks: AudioChunk[] = [];
    audio.on('chunk', (c) => chunks.push(c));
    const audioEnded = new Promise<void>((r) => audio.on('end', r));
    await audio.start();
    await audioEnded;
    expect(chunks.reduce((n, c) => n + c.samples.length, 0)).toBe(decodeWav(readFileSync(speech)).info.frames);

    const camera = createFrameSource(
      'demo',
      { type: 'directory', path: framesDir, interval_ms: 0, loop: false, restart_min_ms: 1000, restart_max_ms: 60000 },
      silentLogger,
    );
    const frames: Frame[] = [];
    camera.on('frame', (f) => frames.push(f));
    const cameraEnded = new Promise<void>((r) => camera.on('end', r));
    await camera.start();
    await cameraEnded;
    expect(frames.length).toBe(readdirSync(framesDir).filter((n) => n.endsWith('.jpg')).length);
  });
});
