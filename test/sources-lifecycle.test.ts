/**
 * The state machine every source shares (src/sources/base.ts): start, pause and stop requests that overlap
 * are applied in order, the last one wins, data flows only when it should, and stream time never goes back.
 */
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { AudioSourceBase } from '../src/sources/base.js';
import { MIN_GAP_MS, StreamClock } from '../src/sources/stream-clock.js';
import type { AudioChunk } from '../src/sources/types.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An audio source whose open and close take a while, and that sends a chunk every 5 ms while open. */
class SlowSource extends AudioSourceBase {
  opens = 0;
  closes = 0;
  /** Opens that have not been closed: never more than one. */
  openNow = 0;
  maxOpen = 0;
  failNextOpen = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly delayMs: number) {
    super('slow', 'test', silentLogger);
  }

  protected async open(): Promise<void> {
    this.opens++;
    this.openNow++;
    this.maxOpen = Math.max(this.maxOpen, this.openNow);
    // Data may start before open() resolves (a child process writing at once).
    this.timer = setInterval(() => this.emitAudio(new Int16Array(80)), 5);
    await sleep(this.delayMs);
    if (this.failNextOpen) {
      this.failNextOpen = false;
      clearInterval(this.timer);
      this.openNow--;
      this.setState({ status: 'failed', lastError: 'cannot open' });
      throw new Error('cannot open');
    }
    this.setState({ status: 'running' });
  }

  protected async close(): Promise<void> {
    this.closes++;
    await sleep(this.delayMs);
    clearInterval(this.timer);
    this.openNow--;
  }
}

type Op = 'start' | 'pause' | 'stop';
const OPS: Op[] = ['start', 'pause', 'stop'];

function sequences(n: number): Op[][] {
  let out: Op[][] = [[]];
  const all: Op[][] = [];
  for (let len = 1; len <= n; len++) {
    out = out.flatMap((s) => OPS.map((op) => [...s, op]));
    all.push(...out);
  }
  return all;
}

const expected: Record<Op, string> = { start: 'running', pause: 'paused', stop: 'stopped' };

describe('source state machine', () => {
  it('applies every sequence of up to 4 overlapping requests in order: the last one wins, and data flows only then', async () => {
    for (const first of ['stopped', 'running', 'paused'] as const) {
      for (const seq of sequences(4)) {
        const src = new SlowSource(3);
        const chunks: AudioChunk[] = [];
        src.on('chunk', (c) => chunks.push(c));
        if (first !== 'stopped') await src.start();
        if (first === 'paused') await src.pause();
        // Back to back: each request arrives while the previous one is still starting or stopping.
        const results = await Promise.allSettled(seq.map((op) => src[op]()));
        const label = `${first} then ${seq.join(',')}`;
        expect(
          results.every((r) => r.status === 'fulfilled'),
          label,
        ).toBe(true);
        const last = seq.at(-1)!;
        expect(src.state().status, label).toBe(expected[last]);
        expect(src.lifecycle, label).toEqual({
          wish: last === 'start' ? 'running' : last === 'pause' ? 'paused' : 'stopped',
          phase: last === 'start' ? 'open' : 'idle',
        });
        expect(src.maxOpen, `${label}: never opened twice`).toBeLessThanOrEqual(1);
        const n = chunks.length;
        await sleep(30);
        if (last === 'start') expect(chunks.length, `${label}: flows`).toBeGreaterThan(n);
        else expect(chunks.length, `${label}: nothing flows`).toBe(n);
        for (let i = 1; i < chunks.length; i++)
          expect(chunks[i]!.startMs, `${label}: time runs forward`).toBeGreaterThan(chunks[i - 1]!.startMs);
        await src.stop();
      }
    }
  });

  it('sends nothing from a start that a pause overtook, and says paused', async () => {
    const src = new SlowSource(40);
    const chunks: AudioChunk[] = [];
    src.on('chunk', (c) => chunks.push(c));
    const started = src.start();
    await sleep(5);
    const paused = src.pause();
    await Promise.all([started, paused]);
    const n = chunks.length;
    await sleep(40);
    expect(chunks.length).toBe(n);
    expect(src.state().status).toBe('paused');
    expect(src.lifecycle.phase).toBe('idle');
  });

  it('keeps one timeline: after a pause, stream time goes on after a gap as long as the pause, at least MIN_GAP_MS', async () => {
    const src = new SlowSource(1);
    const chunks: AudioChunk[] = [];
    src.on('chunk', (c) => chunks.push(c));
    await src.start();
    await sleep(30);
    await src.pause();
    const before = chunks.at(-1)!;
    await sleep(20);
    await src.start();
    await sleep(30);
    await src.stop();
    const after = chunks.find((c) => c.startMs > before.startMs)!;
    expect(after.startMs - (before.startMs + 5)).toBeGreaterThanOrEqual(MIN_GAP_MS);
    for (let i = 1; i < chunks.length; i++) expect(chunks[i]!.startMs).toBeGreaterThan(chunks[i - 1]!.startMs);
  });

  it('rejects a start that fails (status failed), and a later start tries again', async () => {
    const src = new SlowSource(1);
    src.failNextOpen = true;
    await expect(src.start()).rejects.toThrow('cannot open');
    expect(src.state()).toMatchObject({ status: 'failed', lastError: 'cannot open' });
    await src.start();
    expect(src.state().status).toBe('running');
    await src.stop();
    expect(src.state().status).toBe('stopped');
  });
});

describe('StreamClock', () => {
  it('counts samples within a run and leaves a gap of the quiet time (at least MIN_GAP_MS) when reopened', () => {
    const clock = new StreamClock();
    clock.reopen(); // the first open: no gap
    expect(clock.take(800, 1000)).toBe(0);
    expect(clock.take(800, 1050)).toBe(50);
    clock.reopen();
    expect(clock.take(800, 1100)).toBe(100 + MIN_GAP_MS); // a short pause: the minimum gap
    clock.reopen();
    expect(clock.take(800, 1100 + 5000)).toBe(100 + MIN_GAP_MS + 50 + 5000); // a long pause: its length
  });
});
