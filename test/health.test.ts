/** The stage health tracker: failing after errors in a row, rate-limited reports, restarts with backoff, recovery. */
import { describe, expect, it } from 'vitest';
import { HealthTracker } from '../src/daemon/health.js';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('HealthTracker', () => {
  it('fails after errors in a row, reports once per interval, restarts with growing delays and recovers', async () => {
    const reports: string[] = [];
    const restartsAt: number[] = [];
    const t0 = Date.now();
    const h = new HealthTracker({
      failAfter: 3,
      restartMinMs: 40,
      restartMaxMs: 1000,
      reportIntervalMs: 60_000,
      report: (_s, _t, m) => reports.push(m),
    });
    h.register('s', 'root/s', async () => void restartsAt.push(Date.now() - t0));
    h.error('s', new Error('one'));
    h.ok('s'); // a success breaks the run
    h.error('s', new Error('a'));
    h.error('s', new Error('b'));
    expect(h.stats().s).toMatchObject({ state: 'ok', error_count: 3 });
    h.error('s', new Error('c'));
    expect(h.stats().s).toMatchObject({ state: 'failing', error_count: 4, last_error: 'c' });
    for (let i = 0; i < 10; i++) h.error('s', 'again');
    expect(reports).toHaveLength(1);
    expect(reports[0]).toContain('stage s is failing');
    await wait(80);
    expect(h.stats().s).toMatchObject({ state: 'restarting', restarts: 1 });
    // Still broken after the restart: three more errors, the next restart waits twice as long.
    for (let i = 0; i < 3; i++) h.error('s', 'still');
    const second = Date.now();
    await wait(150);
    expect(h.stats().s!.restarts).toBe(2);
    expect(restartsAt[1]! - (second - t0)).toBeGreaterThanOrEqual(70);
    h.ok('s');
    expect(h.stats().s!.state).toBe('ok');
    h.close();
  });
});
