/**
 * What a newcomer sees with `npm start` (the real npm, the shipped config/perch.dev.yaml, its own embedded
 * broker): a whole motion event (new, update, end with a final caption) within one loop of the sample frames,
 * answers short enough to read, and a daemon that goes away when npm is stopped.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO } from './daemon-helpers.js';
import { Collector, freePort, tempDir } from './mqtt-helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

interface NpmStart {
  npm: ChildProcess;
  port: number;
  output: string[];
}

/** `npm start` with the dev config's ports and state moved into a temporary directory. */
async function npmStart(): Promise<NpmStart> {
  const tmp = tempDir('perch-demo-');
  const port = await freePort();
  const output: string[] = [];
  const npm = spawn('npm', ['start'], {
    cwd: REPO,
    env: {
      ...process.env,
      PERCH_EMBEDDED_BROKER_PORT: String(port),
      PERCH_MQTT_URL: `mqtt://127.0.0.1:${port}`,
      PERCH_DAEMON_STATE_DIR: tmp.dir,
      PERCH_MODEL_DIR: path.join(tmp.dir, 'tiny'),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // its own process group: the cleanup can end whatever is left of it
  });
  npm.stdout!.on('data', (b: Buffer) => output.push(b.toString()));
  npm.stderr!.on('data', (b: Buffer) => output.push(b.toString()));
  cleanups.push(() => {
    try {
      process.kill(-npm.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
    tmp.cleanup();
  });
  return { npm, port, output };
}

async function connectWhenUp(port: number, topics: string[]): Promise<Collector> {
  for (let i = 0; i < 300; i++) {
    const c = await Collector.connect(`mqtt://127.0.0.1:${port}`, topics, {
      reconnectPeriod: 0,
      connectTimeout: 500,
    }).catch(() => undefined);
    if (c) {
      cleanups.push(() => c.close());
      return c;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error('the embedded broker never came up');
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

const json = (b: Buffer): Record<string, unknown> => JSON.parse(b.toString()) as Record<string, unknown>;

describe('npm start, as a newcomer runs it', () => {
  it('shows a whole motion event with a final caption, and keeps answers short', async () => {
    const { port, output } = await npmStart();
    const watcher = await connectWhenUp(port, [
      'perch/perch-dev/camera/demo/event',
      'perch/perch-dev/audio/transcript/partial',
    ]);
    // One loop of the sample frames is 22 s; the first may start while the model is still being built.
    await watcher
      .waitFor((m) => m.some((x) => x.topic.endsWith('/event') && json(x.payload).type === 'end'), 90_000)
      .catch(() => {
        throw new Error(`no event ended; output:\n${output.join('')}`);
      });
    const events = watcher.on('perch/perch-dev/camera/demo/event').map((x) => json(x.payload));
    const end = events.find((e) => e.type === 'end')!;
    expect(events.some((e) => e.type === 'new' && e.id === end.id)).toBe(true);
    expect(typeof end.caption === 'string' || typeof end.caption_error === 'string').toBe(true);
    expect(end.caption, JSON.stringify(end)).toEqual(expect.any(String));
    // Transcripts are capped by the dev config at 16 tokens (not 256): at most one partial per token.
    const partials = new Map<string, number>();
    for (const p of watcher.on('perch/perch-dev/audio/transcript/partial').map((x) => json(x.payload)))
      partials.set(String(p.id), (partials.get(String(p.id)) ?? 0) + 1);
    expect(partials.size).toBeGreaterThan(0);
    for (const n of partials.values()) expect(n).toBeLessThanOrEqual(16);
  }, 150_000);

  it('stopping npm (SIGTERM) stops the daemon and frees its port', async () => {
    const { npm, port } = await npmStart();
    await connectWhenUp(port, ['perch/perch-dev/status']);
    expect(await listening(port)).toBe(true);
    npm.kill('SIGTERM');
    let free = false;
    for (let i = 0; i < 75 && !free; i++) {
      await new Promise((r) => setTimeout(r, 200));
      free = !(await listening(port));
    }
    expect(free).toBe(true);
  }, 120_000);
});
