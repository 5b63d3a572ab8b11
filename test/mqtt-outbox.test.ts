import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  Outbox,
  PermanentSendError,
  type OutboxEntry,
  type OutboxInput,
  type OutboxPriority,
} from '../src/mqtt/outbox.js';
import { tempDir } from './mqtt-helpers.js';

const cleanups: Array<() => void> = [];
afterEach(() => {
  while (cleanups.length) cleanups.pop()!();
});

function dir(): string {
  const t = tempDir('perch-outbox-');
  cleanups.push(t.cleanup);
  return path.join(t.dir, 'outbox');
}

function msg(name: string, priority: OutboxPriority = 'other', extra: Partial<OutboxInput> = {}): OutboxInput {
  return { topic: `t/${name}`, payload: Buffer.from(name), retain: false, priority, ...extra };
}

const names = (box: Outbox) => box.list().map((e) => e.payload.toString());

describe('outbox caps and drop order', () => {
  it('drops the oldest message of the lowest priority first', async () => {
    const box = await Outbox.open({ maxMessages: 10, maxBytes: 1 << 20 });
    const order: Array<[string, OutboxPriority]> = [
      ['a1', 'answer'],
      ['o1', 'other'],
      ['t1', 'transcript'],
      ['c1', 'caption'],
      ['e1', 'event'],
      ['o2', 'other'],
      ['a2', 'answer'],
      ['t2', 'transcript'],
      ['c2', 'caption'],
      ['e2', 'event'],
    ];
    for (const [n, p] of order) expect(await box.enqueue(msg(n, p))).toBe('queued');
    // Full. Each newcomer (an answer) pushes out the oldest of the lowest priority still queued.
    const victims: string[] = [];
    for (let i = 0; i < 9; i++) {
      const before = new Set(names(box));
      await box.enqueue(msg(`A${i}`, 'answer'));
      victims.push(...[...before].filter((n) => !names(box).includes(n)));
    }
    expect(victims).toEqual(['o1', 'o2', 'c1', 'e1', 'c2', 'e2', 't1', 't2', 'a1']);
    expect(names(box)).toEqual(['a2', ...Array.from({ length: 9 }, (_, i) => `A${i}`)]);
    const s = box.stats();
    expect(s.dropped).toBe(9);
    expect(s.droppedByPriority).toEqual({ answer: 1, transcript: 2, caption: 2, event: 2, other: 2 });
  });

  it('refuses a newcomer whose priority is below everything queued', async () => {
    const box = await Outbox.open({ maxMessages: 10, maxBytes: 1 << 20 });
    for (let i = 0; i < 10; i++) await box.enqueue(msg(`t${i}`, 'transcript'));
    expect(await box.enqueue(msg('cap', 'caption'))).toBe('dropped');
    expect(names(box)).toEqual(Array.from({ length: 10 }, (_, i) => `t${i}`));
    expect(box.stats().droppedByPriority.caption).toBe(1);
    // Same priority: the oldest goes.
    expect(await box.enqueue(msg('t10', 'transcript'))).toBe('queued');
    expect(names(box)[0]).toBe('t1');
  });

  it('caps bytes: big messages push out old ones; one bigger than the cap is refused', async () => {
    const maxBytes = 64 * 1024;
    const box = await Outbox.open({ maxMessages: 1000, maxBytes });
    const blob = (n: string) => msg(n, 'caption', { payload: Buffer.alloc(20 * 1024, n) });
    for (const n of ['x', 'y', 'z']) await box.enqueue(blob(n));
    expect(box.stats().bytes).toBeGreaterThan(60 * 1024);
    await box.enqueue(blob('w'));
    expect(box.list().map((e) => e.payload[0])).toEqual(['y', 'z', 'w'].map((c) => c.charCodeAt(0)));
    expect(box.stats().bytes).toBeLessThanOrEqual(maxBytes);
    expect(await box.enqueue(msg('huge', 'answer', { payload: Buffer.alloc(maxBytes + 1) }))).toBe('dropped');
    expect(box.stats().depth).toBe(3);
  });

  it('a retained message supersedes a queued one on the same topic', async () => {
    const box = await Outbox.open({ maxMessages: 10, maxBytes: 1 << 20 });
    await box.enqueue(msg('s1', 'other', { topic: 'snap', retain: true }));
    await box.enqueue(msg('n1', 'other', { topic: 'snap', retain: false }));
    await box.enqueue(msg('s2', 'other', { topic: 'snap', retain: true }));
    expect(names(box)).toEqual(['n1', 's2']);
    expect(box.stats().superseded).toBe(1);
  });
});

describe('outbox delivery', () => {
  it('delivers in order, removes only acknowledged messages, resends after detach', async () => {
    const box = await Outbox.open({ maxMessages: 100, maxBytes: 1 << 20, window: 4 });
    for (let i = 0; i < 6; i++) await box.enqueue(msg(`m${i}`));
    const sent: string[] = [];
    const pending: Array<{ e: OutboxEntry; ack: () => void }> = [];
    box.attach(
      (e) =>
        new Promise<void>((resolve) => {
          sent.push(e.payload.toString());
          pending.push({ e, ack: resolve });
        }),
    );
    expect(sent).toEqual(['m0', 'm1', 'm2', 'm3']); // window of 4
    pending[0].ack();
    pending[1].ack();
    await new Promise((r) => setImmediate(r));
    expect(names(box)).toEqual(['m2', 'm3', 'm4', 'm5']);
    expect(sent).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'm5']);
    // The connection drops: nothing more is acknowledged; a new attach starts at the oldest again.
    box.detach();
    pending[2].ack(); // a late ack from the old connection is ignored
    await new Promise((r) => setImmediate(r));
    expect(names(box)).toEqual(['m2', 'm3', 'm4', 'm5']);
    const resent: string[] = [];
    box.attach(async (e) => {
      resent.push(e.payload.toString());
    });
    expect(await box.whenEmpty(1000)).toBe(true);
    expect(resent).toEqual(['m2', 'm3', 'm4', 'm5']);
    expect(box.stats().delivered).toBe(6);
  });

  it('stalls on a transient failure, drops on a permanent one', async () => {
    const box = await Outbox.open({ maxMessages: 100, maxBytes: 1 << 20, window: 1 });
    await box.enqueue(msg('bad'));
    await box.enqueue(msg('good'));
    let calls = 0;
    box.attach(async () => {
      calls++;
      throw new Error('Connection closed');
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(calls).toBe(1); // no retry loop
    expect(names(box)).toEqual(['bad', 'good']);
    const seen: string[] = [];
    box.attach(async (e) => {
      seen.push(e.payload.toString());
      if (e.payload.toString() === 'bad') throw new PermanentSendError('Publish error: Not authorized');
    });
    expect(await box.whenEmpty(1000)).toBe(true);
    expect(seen).toEqual(['bad', 'good']);
    expect(box.stats().rejected).toBe(1);
  });

  it('drops messages whose expiry passed before they could be sent', async () => {
    let now = 1_000_000;
    const box = await Outbox.open({ maxMessages: 100, maxBytes: 1 << 20, now: () => now });
    await box.enqueue(msg('old', 'answer', { expiryS: 10 }));
    await box.enqueue(msg('forever', 'answer'));
    now += 11_000;
    const seen: string[] = [];
    box.attach(async (e) => {
      seen.push(e.payload.toString());
    });
    expect(await box.whenEmpty(1000)).toBe(true);
    expect(seen).toEqual(['forever']);
    expect(box.stats().expired).toBe(1);
  });
});

describe('outbox persistence', () => {
  it('survives a restart with order, properties and age intact; removes files once delivered', async () => {
    const d = dir();
    const first = await Outbox.open({ dir: d, maxMessages: 100, maxBytes: 1 << 20, now: () => 5000 });
    for (let i = 0; i < 5; i++) {
      await first.enqueue(
        msg(`m${i}`, i % 2 ? 'answer' : 'transcript', {
          expiryS: 60,
          contentType: 'application/json',
          correlationData: Buffer.from([i, 0xff]),
        }),
      );
    }
    await first.close();
    expect(readdirSync(d).filter((f) => f.endsWith('.msg'))).toHaveLength(5);

    // Debris of a crash mid-write, and a damaged file, are cleaned up on open.
    writeFileSync(path.join(d, '0000000000000099.tmp'), 'partial');
    writeFileSync(path.join(d, '0000000000000098.msg'), 'garbage without header');
    const second = await Outbox.open({ dir: d, maxMessages: 100, maxBytes: 1 << 20 });
    expect(names(second)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
    const e = second.list()[3];
    expect(e).toMatchObject({
      priority: 'answer',
      expiryS: 60,
      contentType: 'application/json',
      createdAt: 5000,
      topic: 't/m3',
    });
    expect(e.correlationData).toEqual(Buffer.from([3, 0xff]));
    expect(existsSync(path.join(d, '0000000000000099.tmp'))).toBe(false);
    expect(existsSync(path.join(d, '0000000000000098.msg'))).toBe(false);

    // New messages continue the sequence after the loaded ones.
    await second.enqueue(msg('m5'));
    expect(second.list().map((x) => x.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    second.attach(async () => undefined);
    expect(await second.whenEmpty(2000)).toBe(true);
    await second.close();
    expect(readdirSync(d)).toEqual([]);
  });

  it('applies smaller caps to what an earlier run left', async () => {
    const d = dir();
    const first = await Outbox.open({ dir: d, maxMessages: 100, maxBytes: 1 << 20 });
    for (let i = 0; i < 12; i++) await first.enqueue(msg(`m${i}`, i < 2 ? 'other' : 'answer'));
    await first.close();
    const second = await Outbox.open({ dir: d, maxMessages: 10, maxBytes: 1 << 20 });
    expect(names(second)).toEqual(Array.from({ length: 10 }, (_, i) => `m${i + 2}`));
    await second.close();
    expect(readdirSync(d)).toHaveLength(10);
  });
});
