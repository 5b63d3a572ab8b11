import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { signalExitCode } from '../src/daemon/shutdown.js';

const fixture = join(import.meta.dirname, 'fixtures', 'shutdown-child.ts');

interface Run {
  child: ChildProcess;
  lines: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  waitLine(pred: (line: string) => boolean): Promise<void>;
}

const children: ChildProcess[] = [];

/** Start the fixture daemon and wait until its handlers are installed. */
async function start(env: Record<string, string>): Promise<Run> {
  const child = spawn(process.execPath, ['--import', 'tsx', fixture], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line);
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const waitLine = async (pred: (line: string) => boolean): Promise<void> => {
    while (!lines.some(pred)) {
      const more = new Promise<void>((r) => waiters.push(r));
      const gone = exited.then(() => {
        throw new Error(`exited; output: ${lines.join('\n')}`);
      });
      await Promise.race([more, gone]);
    }
  };
  await waitLine((l) => l === 'READY');
  return { child, lines, exited, waitLine };
}

function logs(lines: string[]): Array<{ msg?: string; level?: number; reason?: string }> {
  return lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg?: string });
}

afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

describe('installShutdown in a real child process', () => {
  it('stops once on SIGTERM and exits 0', async () => {
    const run = await start({ STOP_MS: '50' });
    run.child.kill('SIGTERM');
    expect(await run.exited).toEqual({ code: 0, signal: null });
    expect(run.lines.filter((l) => l.startsWith('STOP '))).toEqual(['STOP SIGTERM']);
    expect(run.lines).toContain('STOPPED');
    expect(logs(run.lines).map((l) => l.msg)).toEqual(expect.arrayContaining(['shutting down', 'stopped']));
  });

  it('treats SIGINT the same way', async () => {
    const run = await start({});
    run.child.kill('SIGINT');
    expect(await run.exited).toEqual({ code: 0, signal: null });
    expect(run.lines.filter((l) => l.startsWith('STOP '))).toEqual(['STOP SIGINT']);
  });

  it('forces exit 1 when stop outlives the drain bound', async () => {
    const run = await start({ STOP_MS: '60000', DRAIN_MS: '200', GRACE_MS: '100' });
    run.child.kill('SIGTERM');
    expect(await run.exited).toEqual({ code: 1, signal: null });
    expect(run.lines).not.toContain('STOPPED');
    expect(logs(run.lines).map((l) => l.msg)).toContain('stop did not finish in time; forcing exit');
  });

  it('exits at once with 128+signal on a second signal, without a second stop', async () => {
    const run = await start({ STOP_MS: '60000', DRAIN_MS: '60000' });
    run.child.kill('SIGTERM');
    await run.waitLine((l) => l === 'STOP SIGTERM');
    run.child.kill('SIGINT');
    expect(await run.exited).toEqual({ code: signalExitCode('SIGINT'), signal: null });
    expect(signalExitCode('SIGINT')).toBe(130);
    expect(run.lines.filter((l) => l.startsWith('STOP '))).toEqual(['STOP SIGTERM']);
  });

  it('exits 1 when stop fails', async () => {
    const run = await start({ STOP_FAIL: '1' });
    run.child.kill('SIGTERM');
    expect(await run.exited).toEqual({ code: 1, signal: null });
    expect(logs(run.lines).map((l) => l.msg)).toContain('stop failed');
  });

  it('makes an unhandled rejection fatal: logged, stopped, exit 1', async () => {
    const run = await start({ REJECT: '1' });
    expect(await run.exited).toEqual({ code: 1, signal: null });
    const fatal = logs(run.lines).find((l) => l.level === 60);
    expect(fatal?.msg).toBe('unhandled rejection: nobody caught me');
    expect(run.lines).toContain('STOP fatal unhandled rejection');
  });
});
