import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { SystemdNotifier, watchdogIntervalMs } from '../src/daemon/systemd.js';

const fixture = join(import.meta.dirname, 'fixtures', 'notify-listener.py');
// python3 (the listener) and systemd-notify (Debian: systemd) are required, not optional: .ci/run installs both.

interface Datagram {
  text: string;
  fds: number;
}

/** A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET. */
class Listener {
  readonly messages: Datagram[] = [];
  private constructor(
    readonly path: string,
    private readonly child: ChildProcess,
  ) {}

  static async start(dir: string): Promise<Listener> {
    const path = join(dir, 'notify.sock');
    const child = spawn('python3', [fixture, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines = createInterface({ input: child.stdout! });
    let listener: Listener | undefined;
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`listener exited with ${code}`)));
      lines.on('line', (line) => {
        const msg = JSON.parse(line) as Partial<Datagram> & { listening?: string };
        if (msg.listening) {
          listener = new Listener(path, child);
          resolve();
        } else listener?.messages.push({ text: msg.text ?? '', fds: msg.fds ?? 0 });
      });
    });
    return listener!;
  }

  /** Messages other than systemd-notify's BARRIER=1 synchronisation. */
  texts(): string[] {
    return this.messages.map((m) => m.text).filter((t) => t !== 'BARRIER=1');
  }

  async waitFor(pred: (texts: string[]) => boolean, timeoutMs = 10_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!pred(this.texts())) {
      if (Date.now() > end) throw new Error(`timed out; got ${JSON.stringify(this.texts())}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  stop(): void {
    this.child.kill('SIGKILL');
  }
}

let dir: string;
let listener: Listener | undefined;
let notifier: SystemdNotifier | undefined;

afterEach(async () => {
  await notifier?.close();
  notifier = undefined;
  listener?.stop();
  listener = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('watchdogIntervalMs', () => {
  it('is half of WATCHDOG_USEC, only when the watchdog is meant for us', () => {
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '60000000' }, 42)).toBe(30_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '60000000', WATCHDOG_PID: '42' }, 42)).toBe(30_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '60000000', WATCHDOG_PID: '43' }, 42)).toBeNull();
    expect(watchdogIntervalMs({}, 42)).toBeNull();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '0' }, 42)).toBeNull();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: 'soon' }, 42)).toBeNull();
  });
});

describe('SystemdNotifier', () => {
  it('does nothing without NOTIFY_SOCKET', async () => {
    dir = mkdtempSync(join(tmpdir(), 'perch-notify-'));
    // A fake systemd-notify that leaves a mark if it is ever run.
    const fake = join(dir, 'fake-notify');
    const mark = join(dir, 'ran');
    writeFileSync(fake, `#!/bin/sh\ntouch '${mark}'\n`);
    chmodSync(fake, 0o755);
    notifier = new SystemdNotifier({ env: { PATH: process.env.PATH, WATCHDOG_USEC: '100000' }, command: fake });
    expect(notifier.enabled).toBe(false);
    expect(notifier.watchdogIntervalMs).toBeNull();
    notifier.startWatchdog();
    await notifier.ready('up');
    await notifier.stopping();
    await notifier.close();
    expect(existsSync(mark)).toBe(false);
  });

  it('sends READY, STATUS and STOPPING as exact datagrams, in order', async () => {
    dir = mkdtempSync(join(tmpdir(), 'perch-notify-'));
    listener = await Listener.start(dir);
    notifier = new SystemdNotifier({ env: { ...process.env, NOTIFY_SOCKET: listener.path, WATCHDOG_USEC: undefined } });
    expect(notifier.enabled).toBe(true);
    await notifier.ready('loading model');
    await notifier.status('serving\nINJECTED=1');
    await notifier.stopping('draining');
    await listener.waitFor((t) => t.length >= 3);
    expect(listener.texts()).toEqual([
      'READY=1\nSTATUS=loading model',
      'STATUS=serving INJECTED=1',
      'STOPPING=1\nSTATUS=draining',
    ]);
    // systemd-notify synchronised with the "manager" (BARRIER=1 carrying a file descriptor) each time. The
    // listener may record the last barrier a moment after the last message (once failed in CI under load).
    await listener.waitFor(() => listener!.messages.filter((m) => m.text === 'BARRIER=1').length >= 3);
    const barriers = listener.messages.filter((m) => m.text === 'BARRIER=1');
    expect(barriers).toHaveLength(3);
    expect(barriers.every((b) => b.fds === 1)).toBe(true);
  });

  it('pings WATCHDOG=1 while started and stops when closed', async () => {
    dir = mkdtempSync(join(tmpdir(), 'perch-notify-'));
    listener = await Listener.start(dir);
    notifier = new SystemdNotifier({
      env: { ...process.env, NOTIFY_SOCKET: listener.path, WATCHDOG_USEC: '200000', WATCHDOG_PID: String(process.pid) },
    });
    expect(notifier.watchdogIntervalMs).toBe(100);
    notifier.startWatchdog();
    await listener.waitFor((t) => t.filter((x) => x === 'WATCHDOG=1').length >= 3);
    await notifier.close();
    const count = listener.texts().length;
    await new Promise((r) => setTimeout(r, 400));
    expect(listener.texts().length).toBe(count);
    expect(new Set(listener.texts())).toEqual(new Set(['WATCHDOG=1']));
  });

  it('does not ping a watchdog meant for another process', async () => {
    dir = mkdtempSync(join(tmpdir(), 'perch-notify-'));
    listener = await Listener.start(dir);
    notifier = new SystemdNotifier({
      env: {
        ...process.env,
        NOTIFY_SOCKET: listener.path,
        WATCHDOG_USEC: '200000',
        WATCHDOG_PID: String(process.pid + 1),
      },
    });
    notifier.startWatchdog();
    await notifier.status('sentinel');
    await listener.waitFor((t) => t.includes('STATUS=sentinel'));
    await new Promise((r) => setTimeout(r, 300));
    expect(listener.texts()).toEqual(['STATUS=sentinel']);
  });

  it('keeps running when systemd-notify is missing', async () => {
    notifier = new SystemdNotifier({
      env: { NOTIFY_SOCKET: '/nonexistent/sock' },
      command: '/nonexistent/systemd-notify',
    });
    await expect(notifier.ready()).resolves.toBeUndefined();
    await expect(notifier.status('x')).resolves.toBeUndefined();
  });

  it('refuses field names that are not KEY= names', () => {
    notifier = new SystemdNotifier({ env: { NOTIFY_SOCKET: '/nonexistent/sock' } });
    expect(() => notifier!.notify({ 'READY=1\nX': '1' })).toThrow(/invalid sd_notify field/);
  });
});
