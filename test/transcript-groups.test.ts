import { describe, expect, it } from 'vitest';
import type { UtteranceSplit } from '../src/audio/segmenter.js';
import { messageSchemas, type TranscriptMessage } from '../src/mqtt/messages.js';
import { TranscriptGroups } from '../src/pipelines/transcript-groups.js';

const split = (group: string, part: number, last = false): UtteranceSplit => ({
  group,
  part,
  last,
  overlapMs: part > 1 ? 1000 : 0,
  ...(last ? { of: part } : {}),
});

function part(id: string, text: string, startS: number): TranscriptMessage {
  return {
    v: 1,
    id,
    ts: new Date(0).toISOString(),
    text,
    started_at: new Date(startS * 1000).toISOString(),
    ended_at: new Date((startS + 30) * 1000).toISOString(),
    audio_ms: 30_000,
    source: 'microphone',
    latency_ms: { total: 500 },
  };
}

describe('TranscriptGroups', () => {
  it('stitches the parts of a group once its last part is in: overlap words once, ids in order, audio without overlaps', () => {
    const g = new TranscriptGroups(100_000);
    expect(g.add(split('u1', 1), part('u1.1', 'the quick brown fox jumps', 0), 0)).toBeNull();
    expect(g.add(split('u1', 2), part('u1.2', 'fox jumps over the lazy', 29), 0)).toBeNull();
    const done = g.add(split('u1', 3, true), part('u1.3', 'the lazy dog', 58), 10_000, 12_500);
    if (done === null || !('stitched' in done))
      throw new Error(`expected a stitched transcript, got ${JSON.stringify(done)}`);
    const msg = done.stitched;
    expect(msg).toMatchObject({
      id: 'u1',
      text: 'the quick brown fox jumps over the lazy dog',
      stitched_from: ['u1.1', 'u1.2', 'u1.3'],
      audio_ms: 88_000,
    });
    expect(msg.started_at).toBe(new Date(0).toISOString());
    expect(msg.ended_at).toBe(new Date(88_000).toISOString());
    expect(msg.latency_ms).toEqual({ total: 2500 });
    expect(messageSchemas.transcript.safeParse(msg).success).toBe(true);
    expect(g.open).toBe(0);
  });

  it('gives no stitched transcript when a middle part failed, and says the group is missing a part', () => {
    const g = new TranscriptGroups(100_000);
    g.add(split('u2', 1), part('u2.1', 'one two', 0), 0);
    g.fail(split('u2', 2));
    expect(g.add(split('u2', 3, true), part('u2.3', 'five six', 58), 0)).toEqual({ missing: true, group: 'u2' });
    expect(g.open).toBe(0);
  });

  it('a failed last part closes its group without output; a group whose first part was never seen is incomplete', () => {
    const g = new TranscriptGroups(100_000);
    g.add(split('u3', 1), part('u3.1', 'a b', 0), 0);
    g.fail(split('u3', 2, true));
    expect(g.open).toBe(0);
    expect(g.add(split('u4', 2), part('u4.2', 'c d', 29), 0)).toBeNull();
    expect(g.add(split('u4', 3, true), part('u4.3', 'e f', 58), 0)).toEqual({ missing: true, group: 'u4' });
  });

  it('keeps at most 8 groups open (a lost last part) and clips the stitched text', () => {
    const g = new TranscriptGroups(10);
    for (let i = 0; i < 9; i++) g.add(split(`w${i}`, 1), part(`w${i}.1`, 'x', 0), 0);
    expect(g.open).toBe(8);
    // w0 was dropped as the oldest: its last part now finds a group without its first part.
    expect(g.add(split('w0', 2, true), part('w0.2', 'y', 29), 0)).toEqual({ missing: true, group: 'w0' });
    const long = g.add(split('w8', 2, true), part('w8.2', 'a long tail of words here', 29), 0);
    if (long === null || !('stitched' in long)) throw new Error('expected a stitched transcript');
    expect(long.stitched.text.length).toBeLessThanOrEqual(10);
  });
});
