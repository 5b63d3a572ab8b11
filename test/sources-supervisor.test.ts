import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { ProcessSupervisor, type SupervisorOptions, type SupervisorState } from '../src/sources/supervisor.js';
import { alive, waitFor } from './fixtures/fake-bin.js';

const node = process.execPath;
const running: ProcessSupervisor[] = [];

function supervise(
  script: string,
  extra: Partial<SupervisorOptions> = {},
  scriptArgs: string[] = [],
): ProcessSupervisor {
  const sup = new ProcessSupervisor({
    command: node,
    args: ['-e', script, ...scriptArgs],
    restartMinMs: 50,
    restartMaxMs: 400,
    logger: silentLogger,
    ...extra,
  });
  running.push(sup);
  return sup;
}

afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop()));
});

describe('ProcessSupervisor', () => {
  it('passes arguments verbatim, without a shell', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'perch-sup-'));
    const marker = join(dir, 'pwned');
    const nasty = ['x; rm -rf /', `$(touch ${marker})`, `\`touch ${marker}\``, 'a b', `'"\\`, '| cat', '&&', '>out'];
    const sup = supervise(
      'process.stdout.write(JSON.stringify(process.argv.slice(1))); setInterval(() => {}, 1e6)',
      {},
      nasty,
    );
    let out = '';
    sup.on('stdout', (d: Buffer) => (out += d.toString()));
    sup.start();
    await waitFor(() => out.endsWith(']'), 'argv echo');
    expect(JSON.parse(out)).toEqual(nasty);
    expect(existsSync(marker)).toBe(false);
    expect(sup.state().status).toBe('running');
    rmSync(dir, { recursive: true, force: true });
  });

  it('restarts a dying child with exponential backoff and reports its stderr', async () => {
    const sup = supervise("console.error('first line'); console.error('device busy'); process.exit(3)");
    const delays: number[] = [];
    const states: SupervisorState[] = [];
    const spawnTimes: number[] = [];
    sup.on('restart-scheduled', (e: { delayMs: number }) => delays.push(e.delayMs));
    sup.on('state', (s: SupervisorState) => states.push(s));
    sup.on('spawn', () => spawnTimes.push(Date.now()));
    sup.start();
    await waitFor(() => delays.length >= 5, 'five restarts scheduled');
    expect(delays.slice(0, 5)).toEqual([50, 100, 200, 400, 400]);
    // Each restart waited at least its delay (timers never fire meaningfully early).
    for (let i = 1; i < Math.min(spawnTimes.length, 4); i++)
      expect(spawnTimes[i]! - spawnTimes[i - 1]!).toBeGreaterThanOrEqual(delays[i - 1]! - 2);
    const restarting = states.find((s) => s.status === 'restarting')!;
    expect(restarting.lastError).toContain('exited with code 3');
    expect(restarting.lastError).toContain('first line | device busy');
    expect(sup.state().restarts).toBeGreaterThanOrEqual(4);
    expect(states.map((s) => s.status)).toContain('starting');
  });

  it('starts again at the minimum delay after a healthy period', async () => {
    const sup = supervise("process.stdout.write('data'); setTimeout(() => process.exit(1), 300)", {
      healthyAfterMs: 100,
    });
    const delays: number[] = [];
    sup.on('restart-scheduled', (e: { delayMs: number }) => delays.push(e.delayMs));
    sup.start();
    await waitFor(() => delays.length >= 3, 'three restarts');
    expect(delays.slice(0, 3)).toEqual([50, 50, 50]);
  });

  it('gives up with failed after maxRestarts restarts in a row', async () => {
    const sup = supervise("console.error('no such device'); process.exit(1)", { maxRestarts: 2 });
    sup.start();
    const st = await waitFor(() => sup.state().status === 'failed' && sup.state(), 'failed');
    expect(st.lastError).toContain('no such device');
    expect(st.restarts).toBe(2);
  });

  it('reports a missing program as failed without retrying', async () => {
    const sup = new ProcessSupervisor({
      command: 'perch-no-such-program',
      args: [],
      restartMinMs: 50,
      restartMaxMs: 100,
      logger: silentLogger,
    });
    running.push(sup);
    sup.start();
    const st = await waitFor(() => sup.state().status === 'failed' && sup.state(), 'failed');
    expect(st.lastError).toMatch(/perch-no-such-program: program not found/);
    await new Promise((r) => setTimeout(r, 200));
    expect(sup.state().restarts).toBe(0);
  });

  it('kills a child that ignores SIGTERM with SIGKILL and leaves nothing behind', async () => {
    const sup = supervise("process.on('SIGTERM', () => {}); process.stdout.write('up'); setInterval(() => {}, 1e6)", {
      stopTimeoutMs: 300,
    });
    let pid = 0;
    sup.on('spawn', (p: number) => (pid = p));
    sup.start();
    await waitFor(() => sup.state().status === 'running', 'running');
    const began = Date.now();
    await sup.stop();
    expect(Date.now() - began).toBeGreaterThanOrEqual(290);
    expect(alive(pid)).toBe(false);
    expect(sup.state().status).toBe('stopped');
  });

  it('restarts a child whose output stalls', async () => {
    const sup = supervise("process.stdout.write('once'); setInterval(() => {}, 1e6)", { stallTimeoutMs: 200 });
    const pids: number[] = [];
    sup.on('spawn', (p: number) => pids.push(p));
    sup.start();
    await waitFor(() => pids.length >= 2, 'a restart after the stall');
    expect(sup.state().lastError).toMatch(/no output for 200 ms/);
    await waitFor(() => !alive(pids[0]!), 'the stalled child gone');
  });

  it('restarts a child that never writes anything', async () => {
    const sup = supervise('setInterval(() => {}, 1e6)', { stallTimeoutMs: 200 });
    const pids: number[] = [];
    sup.on('spawn', (p: number) => pids.push(p));
    sup.start();
    await waitFor(() => pids.length >= 2, 'a restart of the silent child');
    expect(sup.state().lastError).toMatch(/killed by SIGKILL: \(no output for 200 ms/);
  });

  it('does not restart after stop() during the backoff wait', async () => {
    const sup = supervise('process.exit(2)', { restartMinMs: 300 });
    let spawns = 0;
    sup.on('spawn', () => spawns++);
    sup.start();
    await waitFor(() => sup.state().status === 'restarting', 'restarting');
    await sup.stop();
    await new Promise((r) => setTimeout(r, 500));
    expect(spawns).toBe(1);
    expect(sup.state().status).toBe('stopped');
  });
});
