import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { createFrameSource } from '../src/sources/index.js';
import type { Frame, FrameSource, SourceState } from '../src/sources/types.js';
import { waitFor } from './fixtures/fake-bin.js';
import { image } from './fixtures/media.js';

let dir: string;
let source: FrameSource | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'perch-dir-'));
});
afterEach(async () => {
  await source?.stop();
  source = undefined;
  rmSync(dir, { recursive: true, force: true });
});

function open(
  path: string,
  interval_ms: number,
  loop: boolean,
): { frames: Frame[]; states: SourceState[]; src: FrameSource } {
  const src = createFrameSource(
    'desk',
    { type: 'directory', path, interval_ms, loop, restart_min_ms: 50, restart_max_ms: 200 },
    silentLogger,
  );
  source = src;
  const frames: Frame[] = [];
  const states: SourceState[] = [];
  src.on('frame', (f) => frames.push(f));
  src.on('state', (s) => states.push(s));
  return { frames, states, src };
}

describe('directory source', () => {
  it('emits images in name order, converting PNG to JPEG, then ends', async () => {
    const a = await image(10, 'jpeg');
    const b = await image(200, 'png', 80, 30);
    const c = await image(120, 'jpeg');
    writeFileSync(join(dir, '02-b.png'), b);
    writeFileSync(join(dir, '01-a.jpg'), a);
    writeFileSync(join(dir, '03-c.JPEG'), c);
    writeFileSync(join(dir, 'notes.txt'), 'not an image');
    writeFileSync(join(dir, '.00-hidden.jpg'), a);
    const { frames, src } = open(dir, 0, false);
    const ended = new Promise<void>((r) => src.on('end', r));
    await src.start();
    await ended;
    expect(frames.length).toBe(3);
    expect(frames[0]!.jpeg.equals(a)).toBe(true);
    expect(frames[2]!.jpeg.equals(c)).toBe(true);
    const converted = await sharp(frames[1]!.jpeg).metadata();
    expect([converted.format, converted.width, converted.height]).toEqual(['jpeg', 80, 30]);
    const { dominant } = await sharp(frames[1]!.jpeg).stats();
    expect(dominant.r).toBeGreaterThan(150); // the PNG's colour survived
    expect(frames.map((f) => [f.camera, f.seq])).toEqual([
      ['desk', 0],
      ['desk', 1],
      ['desk', 2],
    ]);
    expect(src.state().status).toBe('ended');
  });

  it('loops through the directory at the interval', async () => {
    const imgs = [await image(1, 'jpeg'), await image(2, 'jpeg')];
    imgs.forEach((img, i) => writeFileSync(join(dir, `${i}.jpg`), img));
    const { frames, src } = open(dir, 30, true);
    let ended = false;
    src.on('end', () => (ended = true));
    await src.start();
    await waitFor(() => frames.length >= 5, 'five frames');
    expect(frames.slice(0, 5).map((f) => imgs.findIndex((i) => i.equals(f.jpeg)))).toEqual([0, 1, 0, 1, 0]);
    for (let i = 1; i < 5; i++)
      expect(frames[i]!.at.getTime() - frames[i - 1]!.at.getTime()).toBeGreaterThanOrEqual(25);
    expect(ended).toBe(false);
  });

  it('reports a corrupt file in state and carries on with the others', async () => {
    const good = await image(50, 'jpeg');
    writeFileSync(join(dir, 'a.jpg'), good);
    writeFileSync(join(dir, 'b.jpg'), Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(100, 0x5a)]));
    writeFileSync(join(dir, 'c.png'), 'this is no png');
    writeFileSync(join(dir, 'd.jpg'), good);
    const { frames, states, src } = open(dir, 0, false);
    const ended = new Promise<void>((r) => src.on('end', r));
    await src.start();
    await ended;
    expect(frames.length).toBe(2);
    const errors = states.map((s) => s.lastError).filter(Boolean);
    expect(errors.some((e) => e!.startsWith('b.jpg: not a readable image'))).toBe(true);
    expect(errors.some((e) => e!.startsWith('c.png: not a readable image'))).toBe(true);
  });

  it('waits for a missing directory to appear', async () => {
    const later = join(dir, 'later');
    const { frames, states, src } = open(later, 0, true);
    await src.start();
    await waitFor(() => states.some((s) => s.status === 'restarting'), 'restarting');
    expect(src.state().lastError).toMatch(/later: ENOENT/);
    mkdirSync(later);
    await waitFor(() => src.state().lastError?.includes('no images'), 'empty directory reported');
    writeFileSync(join(later, 'x.jpg'), await image(9, 'jpeg'));
    await waitFor(() => frames.length >= 1, 'a frame');
    expect(src.state().status).toBe('running');
  });
});
