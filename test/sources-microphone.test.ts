import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { createAudioSource } from '../src/sources/index.js';
import type { AudioChunk, AudioSource, SourceState } from '../src/sources/types.js';
import { alive, installFakeBin, waitFor, type FakeBin } from './fixtures/fake-bin.js';
import { rampWav } from './fixtures/media.js';

const DEVICE = 'x; rm -rf /';
let dir: string;
let wav: string;
let fake: FakeBin | undefined;
let source: AudioSource | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'perch-mic-'));
  wav = join(dir, 'ramp.wav');
  writeFileSync(wav, rampWav(8000));
});

afterEach(async () => {
  await source?.stop();
  source = undefined;
  fake?.cleanup();
  fake = undefined;
  rmSync(dir, { recursive: true, force: true });
});

function mic(recorder: 'arecord' | 'sox' | 'rec'): AudioSource {
  source = createAudioSource(
    { type: 'microphone', device: DEVICE, recorder, restart_min_ms: 50, restart_max_ms: 200 },
    silentLogger,
  );
  return source;
}

function collect(src: AudioSource): AudioChunk[] {
  const chunks: AudioChunk[] = [];
  src.on('chunk', (c) => chunks.push(c));
  return chunks;
}

describe('MicrophoneSource', () => {
  it('streams arecord PCM as 16 kHz chunks and passes the device verbatim', async () => {
    // 333-byte writes: samples straddle writes, so the source must carry odd bytes over.
    fake = installFakeBin(['arecord'], { mode: 'pcm', wav, chunkBytes: 333 });
    const src = mic('arecord');
    const chunks = collect(src);
    await src.start();
    await waitFor(() => chunks.length >= 10, 'ten chunks');
    expect(fake.calls()[0]!.argv).toEqual([
      '-D',
      DEVICE,
      '-q',
      '-r',
      '16000',
      '-c',
      '1',
      '-t',
      'raw',
      '-f',
      'S16_LE',
      '-',
    ]);
    const all = chunks.slice(0, 10).flatMap((c) => Array.from(c.samples));
    all.forEach((v, i) => expect(v).toBe((i % 1000) - 500));
    expect(chunks.map((c) => c.startMs).slice(0, 3)).toEqual([0, 50, 100]);
    expect(src.state().status).toBe('running');
  });

  it('restarts a recorder that dies mid-stream and reports why', async () => {
    fake = installFakeBin(['arecord'], {
      mode: 'pcm',
      wav,
      chunkBytes: 1600,
      dieRuns: 1,
      dieAfterWrites: 3,
      stderr: 'arecord: main:830: audio open error: Device or resource busy',
    });
    const src = mic('arecord');
    const chunks = collect(src);
    const states: SourceState[] = [];
    src.on('state', (s) => states.push(s));
    await src.start();
    await waitFor(
      () => fake!.calls().length >= 2 && src.state().status === 'running' && chunks.length >= 8 && true,
      'running again',
    );
    const restarting = states.find((s) => s.status === 'restarting');
    expect(restarting?.lastError).toContain('arecord exited with code 1');
    expect(restarting?.lastError).toContain('Device or resource busy');
    expect(src.state().restarts).toBe(1);
    expect(alive(fake.calls()[0]!.pid)).toBe(false);
    // Stream time runs on across the restart: offsets stay consecutive.
    chunks.forEach((c, i) => expect(c.startMs).toBe(i * 50));
  });

  it('keeps one timeline across a stop and start (the switch OFF then ON): stream time goes on after a gap, never back to 0', async () => {
    fake = installFakeBin(['arecord'], { mode: 'pcm', wav, chunkBytes: 1600 });
    const src = mic('arecord');
    const chunks = collect(src);
    await src.start();
    await waitFor(() => chunks.length >= 4, 'four chunks');
    await src.stop();
    const before = chunks.length;
    const lastMs = chunks.at(-1)!.startMs;
    await src.start();
    await waitFor(() => chunks.length >= before + 4, 'four chunks after resume');
    expect(chunks[before]!.startMs).toBeGreaterThanOrEqual(lastMs + 50 + 1000);
    for (let i = 1; i < chunks.length; i++) expect(chunks[i]!.startMs).toBeGreaterThan(chunks[i - 1]!.startMs);
  });

  it('hands sox the device through AUDIODEV and asks for raw output', async () => {
    fake = installFakeBin(['sox'], { mode: 'pcm', wav });
    const src = mic('sox');
    const chunks = collect(src);
    await src.start();
    await waitFor(() => chunks.length >= 1, 'a chunk');
    const call = fake.calls()[0]!;
    expect(call.audiodev).toBe(DEVICE);
    expect(call.argv).toEqual([
      '--default-device',
      '--no-show-progress',
      '--rate',
      '16000',
      '--channels',
      '1',
      '--encoding',
      'signed-integer',
      '--bits',
      '16',
      '--type',
      'raw',
      '-',
    ]);
  });

  it('reports a missing recorder as failed', async () => {
    fake = installFakeBin(['not-rec'], { mode: 'pcm', wav });
    process.env.PATH = fake.dir; // rec is found nowhere
    const src = mic('rec');
    await src.start();
    await waitFor(() => src.state().status === 'failed', 'failed');
    expect(src.state().lastError).toMatch(/cannot start rec: program not found/);
  });

  it('stops the recorder process', async () => {
    fake = installFakeBin(['arecord'], { mode: 'pcm', wav, ignoreTerm: false, afterContent: 'hang' });
    const src = mic('arecord');
    await src.start();
    await waitFor(() => src.state().status === 'running', 'running');
    const pid = fake.calls()[0]!.pid;
    expect(alive(pid)).toBe(true);
    await src.stop();
    expect(alive(pid)).toBe(false);
    expect(src.state().status).toBe('stopped');
  });
});
