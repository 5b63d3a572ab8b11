import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../src/common/log.js';
import type { CameraSourceSettings } from '../src/config/schema.js';
import { createFrameSource } from '../src/sources/index.js';
import type { Frame, FrameSource, SourceState } from '../src/sources/types.js';
import { alive, installFakeBin, waitFor, type FakeBin, type FakeConfig } from './fixtures/fake-bin.js';
import { image } from './fixtures/media.js';

let mediaDir: string;
let jpegs: string[] = [];
let originals: Buffer[] = [];
let fake: FakeBin | undefined;
let source: FrameSource | undefined;

beforeAll(async () => {
  mediaDir = mkdtempSync(join(tmpdir(), 'perch-cam-media-'));
  originals = await Promise.all([image(20, 'jpeg', 120, 80), image(140, 'jpeg', 120, 80), image(230, 'jpeg', 120, 80)]);
  jpegs = originals.map((buf, i) => {
    const f = join(mediaDir, `f${i}.jpg`);
    writeFileSync(f, buf);
    return f;
  });
  return () => rmSync(mediaDir, { recursive: true, force: true });
});

afterEach(async () => {
  await source?.stop();
  source = undefined;
  fake?.cleanup();
  fake = undefined;
});

const backoff = { restart_min_ms: 50, restart_max_ms: 200 };

function start(
  program: string,
  config: Partial<FakeConfig>,
  settings: CameraSourceSettings,
): { frames: Frame[]; states: SourceState[]; src: FrameSource } {
  fake = installFakeBin([program], { mode: 'jpeg', jpegs, chunkBytes: 777, ...config });
  const src = createFrameSource('garden', settings, silentLogger);
  source = src;
  const frames: Frame[] = [];
  const states: SourceState[] = [];
  src.on('frame', (f) => frames.push(f));
  src.on('state', (s) => states.push(s));
  return { frames, states, src };
}

function isOriginal(f: Frame): boolean {
  return originals.some((o) => o.equals(f.jpeg));
}

describe('ffmpeg camera source', () => {
  it('emits the JPEG frames ffmpeg writes and passes the URL verbatim', async () => {
    const input = 'rtsp://cam.local:554/live?a=1&b=$(reboot); rm -rf / `id`';
    const { frames, src } = start(
      'ffmpeg',
      { prefix: 'garbage' },
      { type: 'ffmpeg', input, fps: 2, width: 320, rtsp_transport: 'udp', ...backoff },
    );
    await src.start();
    await waitFor(() => frames.length >= 3, 'three frames');
    expect(frames.map((f) => [f.camera, f.seq])).toEqual([
      ['garden', 0],
      ['garden', 1],
      ['garden', 2],
    ]);
    frames.forEach((f, i) => expect(f.jpeg.equals(originals[i]!)).toBe(true));
    expect(frames[0]!.at).toBeInstanceOf(Date);
    expect(fake!.calls()[0]!.argv).toEqual([
      '-hide_banner',
      '-nostdin',
      '-loglevel',
      'error',
      '-rtsp_transport',
      'udp',
      '-i',
      input,
      '-an',
      '-vf',
      'fps=2,scale=320:-2',
      '-c:v',
      'mjpeg',
      '-q:v',
      '5',
      '-f',
      'image2pipe',
      '-',
    ]);
    expect(src.state().status).toBe('running');
    expect(src.state().lastDataAt).toBeDefined();
  });

  it('reads a V4L2 device with -f v4l2, name verbatim', async () => {
    const { frames, src } = start(
      'ffmpeg',
      {},
      { type: 'ffmpeg', input: '/dev/video0; rm -rf /', fps: 1, rtsp_transport: 'tcp', ...backoff },
    );
    await src.start();
    await waitFor(() => frames.length >= 1, 'a frame');
    const argv = fake!.calls()[0]!.argv;
    expect(argv.slice(4, 8)).toEqual(['-f', 'v4l2', '-i', '/dev/video0; rm -rf /']);
    expect(argv).toContain('fps=1');
  });

  it('restarts ffmpeg when it dies mid-frame, reports the error, and never emits the torn frame', async () => {
    const { frames, states, src } = start(
      'ffmpeg',
      // The first run writes one and a half frames, then dies.
      {
        chunkBytes: Math.floor(originals[0]!.length * 0.75),
        dieRuns: 1,
        dieAfterWrites: 2,
        stderr: 'rtsp://admin:secret@cam.local/live: Connection refused',
        exitCode: 1,
      },
      { type: 'ffmpeg', input: 'rtsp://admin:secret@cam.local/live', fps: 1, rtsp_transport: 'tcp', ...backoff },
    );
    await src.start();
    await waitFor(() => frames.length >= 4, 'frames after the restart');
    const restarting = states.find((s) => s.status === 'restarting');
    expect(restarting?.lastError).toContain('ffmpeg exited with code 1');
    expect(restarting?.lastError).toContain('rtsp://***@cam.local/live: Connection refused');
    expect(restarting?.lastError).not.toContain('secret');
    expect(src.state()).toMatchObject({ status: 'running', restarts: 1 });
    expect(frames.every(isOriginal)).toBe(true);
    expect(frames.slice(0, 4).map((f) => originals.findIndex((o) => o.equals(f.jpeg)))).toEqual([0, 0, 1, 2]);
    expect(alive(fake!.calls()[0]!.pid)).toBe(false);
  });

  it('refuses an input that ffmpeg would read as an option', () => {
    expect(() =>
      createFrameSource(
        'x',
        { type: 'ffmpeg', input: '-i /etc/passwd', fps: 1, rtsp_transport: 'tcp', ...backoff },
        silentLogger,
      ),
    ).toThrow(/must not start with "-"/);
  });
});

describe('rpicam camera source', () => {
  it('runs rpicam-vid with the configured size, rate and camera and emits its frames', async () => {
    const { frames, src } = start(
      'rpicam-vid',
      {},
      { type: 'rpicam', camera: 1, width: 640, height: 480, fps: 30, ...backoff },
    );
    await src.start();
    await waitFor(() => frames.length >= 3, 'three frames');
    frames.forEach((f, i) => expect(f.jpeg.equals(originals[i]!)).toBe(true));
    expect(fake!.calls()[0]!.argv).toEqual([
      '-t',
      '0',
      '--codec',
      'mjpeg',
      '--nopreview',
      '--camera',
      '1',
      '--width',
      '640',
      '--height',
      '480',
      '--framerate',
      '30',
      '-o',
      '-',
    ]);
  });

  it('restarts rpicam-vid after it dies and stops it cleanly', async () => {
    const { frames, states, src } = start(
      'rpicam-vid',
      {
        chunkBytes: 100,
        dieRuns: 2,
        dieAfterWrites: 1,
        stderr: 'ERROR: *** no cameras available ***',
        repeat: true,
        intervalMs: 1,
      },
      { type: 'rpicam', camera: 0, width: 1280, height: 720, fps: 30, ...backoff },
    );
    await src.start();
    await waitFor(() => frames.length >= 2, 'frames from the third run');
    expect(states.filter((s) => s.status === 'restarting').length).toBe(2);
    expect(states.find((s) => s.status === 'restarting')?.lastError).toMatch(
      /rpicam-vid exited with code 1: ERROR: \*\*\* no cameras available \*\*\*/,
    );
    expect(src.state().restarts).toBe(2);
    const pid = fake!.calls()[2]!.pid;
    await src.stop();
    expect(alive(pid)).toBe(false);
    expect(src.state().status).toBe('stopped');
  });

  it('runs the sensor at 1 fps and drops frames for rates below that', async () => {
    const many = Array.from({ length: 30 }, (_, i) => jpegs[i % 3]!);
    const { frames, src } = start(
      'rpicam-vid',
      { jpegs: many, chunkBytes: 4096 },
      { type: 'rpicam', camera: 0, width: 640, height: 360, fps: 0.5, ...backoff },
    );
    await src.start();
    await waitFor(() => frames.length >= 1, 'a frame');
    await new Promise((r) => setTimeout(r, 300));
    expect(fake!.calls()[0]!.argv).toContain('--framerate');
    expect(fake!.calls()[0]!.argv[fake!.calls()[0]!.argv.indexOf('--framerate') + 1]).toBe('1');
    expect(frames.length).toBe(1);
  });
});
