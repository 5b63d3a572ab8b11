import { describe, expect, it } from 'vitest';
import {
  Scheduler,
  SchedulerError,
  isSchedulerError,
  type JobKind,
  type SchedulerSettings,
} from '../src/scheduler/scheduler.js';

const settings = (over: Partial<SchedulerSettings> = {}): SchedulerSettings => ({
  max_queued: 32,
  answer_deadline_ms: 10_000,
  transcript_deadline_ms: 10_000,
  http_deadline_ms: 10_000,
  caption_deadline_ms: 10_000,
  ...over,
});

/** A job that runs until release() is called or its signal aborts; records when it started. */
function gate() {
  let release!: (v: string) => void;
  const released = new Promise<string>((r) => {
    release = r;
  });
  let started = false;
  let signal: AbortSignal | undefined;
  const run = (s: AbortSignal) => {
    started = true;
    signal = s;
    return new Promise<string>((resolve, reject) => {
      s.addEventListener('abort', () => reject(s.reason), { once: true });
      void released.then(resolve);
    });
  };
  return {
    run,
    release,
    get started() {
      return started;
    },
    get signal() {
      return signal;
    },
  };
}

const tick = () => new Promise<void>((r) => setTimeout(r, 5));

async function rejection(p: Promise<unknown>): Promise<SchedulerError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof SchedulerError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

describe('Scheduler', () => {
  it('runs one job at a time and returns each result', async () => {
    const s = new Scheduler(settings());
    let active = 0;
    let maxActive = 0;
    const job = (i: number) => async () => {
      active++;
      maxActive = Math.max(maxActive, active);
      await new Promise((r) => setTimeout(r, 3));
      active--;
      return i * 2;
    };
    const results = await Promise.all(
      [0, 1, 2, 3, 4].map((i) => s.submit({ kind: 'caption', id: `j${i}`, run: job(i) })),
    );
    expect(results).toEqual([0, 2, 4, 6, 8]);
    expect(maxActive).toBe(1);
    expect(s.stats().counts.completed).toBe(5);
  });

  it('starts answers before transcripts before HTTP requests before captions, first come first served within a kind', async () => {
    const s = new Scheduler(settings());
    const order: string[] = [];
    const blocker = gate();
    const first = s.submit({ kind: 'caption', id: 'blocker', run: blocker.run });
    const submit = (kind: JobKind, id: string) =>
      s.submit({
        kind,
        id,
        run: async () => {
          order.push(id);
          return id;
        },
      });
    const all = [
      submit('caption', 'c1'),
      submit('http', 'h1'),
      submit('transcript', 't1'),
      submit('caption', 'c2'),
      submit('answer', 'a1'),
      submit('http', 'h2'),
      submit('transcript', 't2'),
      submit('answer', 'a2'),
    ];
    await tick();
    expect(order).toEqual([]);
    blocker.release('done');
    await first;
    await Promise.all(all);
    expect(order).toEqual(['a1', 'a2', 't1', 't2', 'h1', 'h2', 'c1', 'c2']);
  });

  it('coalesces waiting jobs by key: only the newest waits, in the old place in line, and the old one is superseded', async () => {
    const s = new Scheduler(settings());
    const order: string[] = [];
    const blocker = gate();
    void s.submit({ kind: 'answer', id: 'blocker', run: blocker.run });
    const cap = (id: string, key: string) =>
      s.submit({
        kind: 'caption',
        id,
        key,
        run: async () => {
          order.push(id);
          return id;
        },
      });
    const a1 = cap('a1', 'caption:a');
    const b1 = cap('b1', 'caption:b');
    const a2 = cap('a2', 'caption:a');
    const err = await rejection(a1);
    expect(err.code).toBe('superseded');
    expect(err.message).toContain('a2');
    expect(s.stats().depth_by_kind.caption).toBe(2);
    blocker.release('x');
    await Promise.all([b1, a2]);
    expect(order).toEqual(['a2', 'b1']);
    expect(s.stats().counts.superseded).toBe(1);
  });

  it('does not coalesce with a running job of the same key', async () => {
    const s = new Scheduler(settings());
    const running = gate();
    const p1 = s.submit({ kind: 'caption', id: 'f1', key: 'caption:a', run: running.run });
    await tick();
    expect(running.started).toBe(true);
    const p2 = s.submit({ kind: 'caption', id: 'f2', key: 'caption:a', run: async () => 'second' });
    running.release('first');
    await expect(p1).resolves.toBe('first');
    await expect(p2).resolves.toBe('second');
    expect(running.signal?.aborted).toBe(false);
  });

  it('cancels a waiting job: it never runs and rejects with cancelled', async () => {
    const s = new Scheduler(settings());
    const blocker = gate();
    void s.submit({ kind: 'answer', id: 'blocker', run: blocker.run });
    let ran = false;
    const p = s.submit({
      kind: 'answer',
      id: 'q1',
      run: async () => {
        ran = true;
      },
    });
    expect(s.cancel('q1')).toBe('waiting');
    expect((await rejection(p)).code).toBe('cancelled');
    expect(s.has('q1')).toBe(false);
    expect(s.cancel('nope')).toBe(false);
    blocker.release('x');
    await s.onIdle();
    expect(ran).toBe(false);
    expect(s.stats().counts.cancelled).toBe(1);
  });

  it('cancels a running job through its AbortSignal and keeps the model to one job until run() returns', async () => {
    const s = new Scheduler(settings());
    let finishRun!: () => void;
    let sawAbort = false;
    const p = s.submit({
      kind: 'answer',
      id: 'long',
      // Slow to honour the abort: the next job must still wait for it.
      run: (signal) =>
        new Promise<string>((_, reject) => {
          signal.addEventListener('abort', () => {
            sawAbort = true;
            finishRun = () => reject(signal.reason);
          });
        }),
    });
    let nextStarted = false;
    const next = s.submit({
      kind: 'answer',
      id: 'next',
      run: async () => {
        nextStarted = true;
        return 'ok';
      },
    });
    await tick();
    expect(s.cancel('long')).toBe('running');
    expect(sawAbort).toBe(true);
    await tick();
    expect(nextStarted).toBe(false);
    expect(s.stats().running?.id).toBe('long');
    finishRun();
    const err = await rejection(p);
    expect(err.code).toBe('cancelled');
    await expect(next).resolves.toBe('ok');
  });

  it('a cancelled running job rejects with cancelled even if run() resolves anyway', async () => {
    const s = new Scheduler(settings());
    let release!: () => void;
    const p = s.submit({
      kind: 'transcript',
      id: 't',
      run: () =>
        new Promise<string>((r) => {
          release = () => r('result nobody wants');
        }),
    });
    await tick();
    expect(s.cancel('t')).toBe('running');
    release();
    expect((await rejection(p)).code).toBe('cancelled');
    expect(s.stats().counts).toMatchObject({ cancelled: 1, completed: 0 });
  });

  it('expires a job not started before its deadline and says what held the model', async () => {
    const s = new Scheduler(settings({ caption_deadline_ms: 100 }));
    const blocker = gate();
    void s.submit({ kind: 'answer', id: 'ask-1', run: blocker.run });
    let ran = false;
    const p = s.submit({
      kind: 'caption',
      id: 'frame-9',
      key: 'caption:porch',
      run: async () => {
        ran = true;
      },
    });
    const err = await rejection(p);
    expect(err.code).toBe('deadline');
    expect(err.message).toContain('caption job frame-9 (caption:porch) not started within 100 ms');
    expect(err.message).toContain('busy with answer job ask-1');
    expect(err.detail.runningJob).toEqual({ id: 'ask-1', kind: 'answer' });
    expect(err.detail.waitedMs).toBeGreaterThanOrEqual(90);
    expect(s.stats().depth).toBe(0);
    expect(s.stats().counts.expired).toBe(1);
    blocker.release('x');
    await s.onIdle();
    expect(ran).toBe(false);
  });

  it('a per-job deadline overrides the default, and a started job may run past its deadline', async () => {
    const s = new Scheduler(settings({ answer_deadline_ms: 60_000 }));
    const blocker = gate();
    void s.submit({ kind: 'answer', id: 'b', run: blocker.run });
    const short = s.submit({ kind: 'answer', id: 'short', deadlineMs: 30, run: async () => 'x' });
    expect((await rejection(short)).code).toBe('deadline');
    blocker.release('x');
    const slow = s.submit({
      kind: 'answer',
      id: 'slow',
      deadlineMs: 20,
      run: () => new Promise((r) => setTimeout(() => r('finished'), 80)),
    });
    await expect(slow).resolves.toBe('finished');
  });

  it('refuses jobs beyond max_queued with a busy error naming the limit', async () => {
    const s = new Scheduler(settings({ max_queued: 2 }));
    const blocker = gate();
    void s.submit({ kind: 'caption', id: 'running', run: blocker.run });
    await tick();
    const c1 = s.submit({ kind: 'caption', id: 'c1', key: 'k1', run: async () => 'c1' });
    const c2 = s.submit({ kind: 'caption', id: 'c2', key: 'k2', run: async () => 'c2' });
    const err = await rejection(s.submit({ kind: 'caption', id: 'c3', key: 'k3', run: async () => 'c3' }));
    expect(err.code).toBe('busy');
    expect(err.message).toContain('scheduler.max_queued = 2');
    // Coalescing does not grow the queue, so it is still allowed when full.
    const c1b = s.submit({ kind: 'caption', id: 'c1b', key: 'k1', run: async () => 'c1b' });
    expect((await rejection(c1)).code).toBe('superseded');
    expect(s.stats().counts.refused).toBe(1);
    blocker.release('x');
    await expect(Promise.all([c1b, c2])).resolves.toEqual(['c1b', 'c2']);
  });

  it('when full, a higher-priority job takes the place of the newest lower-priority one', async () => {
    const s = new Scheduler(settings({ max_queued: 2 }));
    const blocker = gate();
    void s.submit({ kind: 'caption', id: 'running', run: blocker.run });
    const c1 = s.submit({ kind: 'caption', id: 'c1', run: async () => 'c1' });
    const c2 = s.submit({ kind: 'caption', id: 'c2', run: async () => 'c2' });
    const a1 = s.submit({ kind: 'answer', id: 'a1', run: async () => 'a1' });
    const dropped = await rejection(c2);
    expect(dropped.code).toBe('busy');
    expect(dropped.message).toContain('higher-priority answer job');
    const a2 = s.submit({ kind: 'answer', id: 'a2', run: async () => 'a2' });
    expect((await rejection(c1)).code).toBe('busy');
    // Now full of answers: another answer has nothing below it to displace.
    expect((await rejection(s.submit({ kind: 'answer', id: 'a3', run: async () => 'a3' }))).code).toBe('busy');
    blocker.release('x');
    await expect(Promise.all([a1, a2])).resolves.toEqual(['a1', 'a2']);
  });

  it('refuses a second job with an id that is waiting or running', async () => {
    const s = new Scheduler(settings());
    const blocker = gate();
    void s.submit({ kind: 'answer', id: 'same', run: blocker.run });
    const err = await rejection(s.submit({ kind: 'answer', id: 'same', run: async () => 1 }));
    expect(err.code).toBe('duplicate');
    blocker.release('x');
    await s.onIdle();
    await expect(s.submit({ kind: 'answer', id: 'same', run: async () => 2 })).resolves.toBe(2);
  });

  it('passes a job failure through and goes on with the next job', async () => {
    const s = new Scheduler(settings());
    const boom = new Error('engine failed');
    const p1 = s.submit({
      kind: 'answer',
      id: 'f',
      run: async () => {
        throw boom;
      },
    });
    const p2 = s.submit({
      kind: 'answer',
      id: 'g',
      run: () => {
        throw new Error('sync throw');
      },
    });
    const p3 = s.submit({ kind: 'answer', id: 'h', run: async () => 'fine' });
    await expect(p1).rejects.toBe(boom);
    await expect(p2).rejects.toThrow('sync throw');
    await expect(p3).resolves.toBe('fine');
    expect(s.stats().counts).toMatchObject({ failed: 2, completed: 1 });
  });

  it('reports depth per kind, the running job and counts', async () => {
    const s = new Scheduler(settings({ max_queued: 7 }));
    const blocker = gate();
    void s.submit({ kind: 'transcript', id: 'utt-1', key: 'audio', run: blocker.run });
    const waiting = [
      s.submit({ kind: 'answer', id: 'a', run: async () => 0 }),
      s.submit({ kind: 'caption', id: 'c1', run: async () => 0 }),
      s.submit({ kind: 'caption', id: 'c2', run: async () => 0 }),
    ];
    await tick();
    const st = s.stats();
    expect(st.depth).toBe(3);
    expect(st.depth_by_kind).toEqual({ answer: 1, transcript: 0, http: 0, caption: 2 });
    expect(st.running).toMatchObject({ id: 'utt-1', kind: 'transcript', key: 'audio' });
    expect(st.running!.running_ms).toBeGreaterThanOrEqual(0);
    expect(new Date(st.running!.started_at).toString()).not.toBe('Invalid Date');
    expect(st.max_queued).toBe(7);
    expect(st.accepting).toBe(true);
    expect(st.counts.submitted).toBe(4);
    blocker.release('x');
    await Promise.all(waiting);
    expect(s.stats()).toMatchObject({ depth: 0, running: null, counts: { completed: 4 } });
  });

  it('drain lets queued work finish, then refuses new jobs', async () => {
    const s = new Scheduler(settings());
    const done: string[] = [];
    const jobs = ['x', 'y', 'z'].map((id) =>
      s.submit({
        kind: 'caption',
        id,
        run: async () => {
          await tick();
          done.push(id);
        },
      }),
    );
    const result = await s.drain(5_000);
    expect(result).toEqual({ drained: true, dropped: 0, abortedRunning: false });
    await Promise.all(jobs);
    expect(done).toEqual(['x', 'y', 'z']);
    const err = await rejection(s.submit({ kind: 'answer', id: 'late', run: async () => 0 }));
    expect(err.code).toBe('shutting_down');
    expect(s.stats().accepting).toBe(false);
  });

  it('drain aborts the running job and drops waiting ones at the timeout', async () => {
    const s = new Scheduler(settings());
    const stuck = gate();
    const running = s.submit({ kind: 'answer', id: 'stuck', run: stuck.run });
    const waiting = s.submit({ kind: 'caption', id: 'w', run: async () => 0 });
    const result = await s.drain(50);
    expect(result).toEqual({ drained: false, dropped: 1, abortedRunning: true });
    expect(stuck.signal?.aborted).toBe(true);
    expect((await rejection(waiting)).code).toBe('shutting_down');
    const err = await rejection(running);
    expect(err.code).toBe('shutting_down');
    expect(isSchedulerError(err, 'shutting_down')).toBe(true);
    expect(s.stats().counts.aborted).toBe(2);
  });
});
