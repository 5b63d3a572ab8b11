/**
 * sd_notify(3) without a native module.
 *
 * Node cannot send AF_UNIX datagrams, so every notification runs `systemd-notify` (shipped with systemd
 * itself, so present wherever NOTIFY_SOCKET can be set) with an argument array. Facts that shape this,
 * checked against systemd 252 (Debian bookworm, Raspberry Pi OS):
 * - systemd-notify first sends pretending to be its parent (us); without privileges (our unit has an empty
 *   capability set) the kernel refuses the fake credentials and it resends as itself. Messages from a
 *   process other than the main PID are only accepted with NotifyAccess=all, which perch.service sets.
 * - A message from a process that has already exited cannot be attributed to the unit. systemd-notify
 *   waits (BARRIER=1, up to 5 s) until the manager has read the message, unless --no-block is given; we
 *   never pass --no-block, so that race cannot drop a notification.
 * - We never pass --pid: it would add MAINPID=, which we do not want to change.
 *
 * With NOTIFY_SOCKET unset (not under systemd) everything is a no-op.
 */
import { spawn } from 'node:child_process';
import type { Logger } from '../common/log.js';
import { silentLogger } from '../common/log.js';

export interface SystemdNotifierOptions {
  /** Environment to read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Our PID, compared with WATCHDOG_PID (default process.pid). */
  pid?: number;
  logger?: Logger;
  /** The systemd-notify executable (default: found on PATH). */
  command?: string;
  /** Kill a systemd-notify that has not finished after this long (its own barrier gives up after 5 s). */
  timeoutMs?: number;
}

/** Longest STATUS= text we send; systemctl status shows one line anyway. */
export const MAX_STATUS_CHARS = 200;

/**
 * The watchdog ping interval (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or null when the
 * watchdog is off or meant for another process (WATCHDOG_PID set to a different PID).
 */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv, pid: number): number | null {
  const usecText = env.WATCHDOG_USEC;
  if (!usecText || !/^\d+$/.test(usecText)) return null;
  const usec = Number(usecText);
  if (!Number.isSafeInteger(usec) || usec <= 0) return null;
  const pidText = env.WATCHDOG_PID;
  if (pidText !== undefined && pidText !== '' && Number(pidText) !== pid) return null;
  return Math.max(1, Math.floor(usec / 2000));
}

/** One line, bounded: a newline inside a value would start another KEY=VALUE field. */
function cleanValue(value: string): string {
  return value.replace(/[\r\n\0]+/g, ' ').slice(0, MAX_STATUS_CHARS);
}

export class SystemdNotifier {
  /** True when NOTIFY_SOCKET is set, i.e. a service manager listens. */
  readonly enabled: boolean;
  /** Ping interval in ms, or null when no watchdog is asked of us. */
  readonly watchdogIntervalMs: number | null;

  private readonly env: NodeJS.ProcessEnv;
  private readonly log: Logger;
  private readonly command: string;
  private readonly timeoutMs: number;
  /** Notifications go out one at a time, in call order. */
  private chain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private pingInFlight = false;
  private missingCommand = false;

  constructor(opts: SystemdNotifierOptions = {}) {
    this.env = opts.env ?? process.env;
    this.log = (opts.logger ?? silentLogger).child({ module: 'systemd' });
    this.command = opts.command ?? 'systemd-notify';
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.enabled = Boolean(this.env.NOTIFY_SOCKET);
    this.watchdogIntervalMs = this.enabled ? watchdogIntervalMs(this.env, opts.pid ?? process.pid) : null;
  }

  /** READY=1 (start-up finished), optionally with a status line. */
  ready(status?: string): Promise<void> {
    return this.notify(status === undefined ? { READY: '1' } : { READY: '1', STATUS: status });
  }

  /** STATUS=…: the line `systemctl status perch` shows. */
  status(text: string): Promise<void> {
    return this.notify({ STATUS: text });
  }

  /** STOPPING=1: shutdown has begun. */
  stopping(status?: string): Promise<void> {
    return this.notify(status === undefined ? { STOPPING: '1' } : { STOPPING: '1', STATUS: status });
  }

  /** One WATCHDOG=1 keep-alive. */
  watchdogPing(): Promise<void> {
    return this.notify({ WATCHDOG: '1' });
  }

  /**
   * Start pinging the watchdog every watchdogIntervalMs. The timer runs on the event loop on purpose:
   * if the loop stalls, pings stop and systemd restarts us. A ping still in flight is not doubled.
   */
  startWatchdog(): void {
    if (this.watchdogIntervalMs === null || this.timer) return;
    const tick = (): void => {
      if (this.pingInFlight) return;
      this.pingInFlight = true;
      void this.watchdogPing().finally(() => {
        this.pingInFlight = false;
      });
    };
    tick();
    this.timer = setInterval(tick, this.watchdogIntervalMs);
    this.timer.unref();
    this.log.debug({ interval_ms: this.watchdogIntervalMs }, 'watchdog pings started');
  }

  stopWatchdog(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Stop the watchdog and wait for notifications already queued. */
  async close(): Promise<void> {
    this.stopWatchdog();
    await this.chain;
  }

  /**
   * Send KEY=VALUE fields in one message. Never rejects: a failed notification is logged, since the
   * daemon must keep running either way (systemd's own timeouts handle a manager that hears nothing).
   */
  notify(fields: Record<string, string>): Promise<void> {
    if (!this.enabled || this.missingCommand) return Promise.resolve();
    const args: string[] = [];
    for (const [key, value] of Object.entries(fields)) {
      if (!/^[A-Z][A-Z0-9_]*$/.test(key)) throw new Error(`invalid sd_notify field name: ${key}`);
      args.push(`${key}=${cleanValue(value)}`);
    }
    if (args.length === 0) return Promise.resolve();
    const next = this.chain.then(() => this.run(args));
    this.chain = next;
    return next;
  }

  private run(args: string[]): Promise<void> {
    if (this.missingCommand) return Promise.resolve();
    return new Promise<void>((resolve) => {
      let stderr = '';
      let settled = false;
      // Only what systemd-notify needs: our environment may hold secrets (PERCH_MQTT_PASSWORD).
      const env = { NOTIFY_SOCKET: this.env.NOTIFY_SOCKET, PATH: this.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };
      const child = spawn(this.command, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
      const timer = setTimeout(() => child.kill('SIGKILL'), this.timeoutMs);
      const done = (): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve();
      };
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        if (stderr.length < 2000) stderr += chunk;
      });
      child.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') {
          this.missingCommand = true;
          this.log.warn({ command: this.command }, 'systemd-notify not found: service manager notifications are off');
        } else {
          this.log.warn({ err }, 'systemd-notify could not run');
        }
        done();
      });
      child.on('close', (code, signal) => {
        if (code !== 0) this.log.warn({ code, signal, stderr: stderr.trim(), args }, 'systemd-notify failed');
        done();
      });
    });
  }
}
