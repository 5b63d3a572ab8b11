/**
 * Keeps one capture process (arecord, ffmpeg, rpicam-vid) alive: spawns it with an argument array (never a
 * shell), restarts it with exponential backoff when it dies or stalls, keeps its last stderr lines for the
 * error report, and stops it with SIGTERM then SIGKILL. Children still alive when Node exits are killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import type { Logger } from '../common/log.js';
import { Backoff, redactCredentials } from './backoff.js';

export type SupervisorStatus = 'stopped' | 'starting' | 'running' | 'restarting' | 'failed';

export interface SupervisorState {
  status: SupervisorStatus;
  restarts: number;
  lastError?: string;
  pid?: number;
}

export interface SupervisorOptions {
  command: string;
  args: readonly string[];
  /** Environment of the child (default: this process's). */
  env?: NodeJS.ProcessEnv;
  restartMinMs: number;
  restartMaxMs: number;
  /** Output flowing this long makes the next failure start again at restartMinMs. */
  healthyAfterMs?: number;
  /** How long SIGTERM may take before SIGKILL. */
  stopTimeoutMs?: number;
  /** No stdout for this long (from spawn or the last output) counts as a hang: the child is killed and restarted. */
  stallTimeoutMs?: number;
  /** Restarts in a row (without a healthy period) before the next failure gives up with 'failed'; default never. */
  maxRestarts?: number;
  /** stderr lines kept for lastError. */
  stderrLines?: number;
  logger: Logger;
}

const MAX_STDERR_LINE = 300;

/** Every live child of every supervisor, so a crashing daemon does not leave capture processes behind. */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;
function trackChild(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const c of liveChildren) c.kill('SIGKILL');
    });
  }
  liveChildren.add(child);
}

export class ProcessSupervisor extends EventEmitter {
  private readonly opts: Required<Omit<SupervisorOptions, 'env' | 'maxRestarts' | 'stallTimeoutMs'>> &
    Pick<SupervisorOptions, 'env' | 'maxRestarts' | 'stallTimeoutMs'>;
  private readonly backoff: Backoff;
  private child?: ChildProcess;
  private childDone?: Promise<void>;
  private restartTimer?: NodeJS.Timeout;
  private stallTimer?: NodeJS.Timeout;
  private wanted = false;
  private st: SupervisorState = { status: 'stopped', restarts: 0 };
  private stderrTail: string[] = [];
  private firstDataAt?: number;

  constructor(options: SupervisorOptions) {
    super();
    this.opts = { healthyAfterMs: 10_000, stopTimeoutMs: 3_000, stderrLines: 8, ...options };
    this.backoff = new Backoff(options.restartMinMs, Math.max(options.restartMinMs, options.restartMaxMs));
  }

  state(): SupervisorState {
    return { ...this.st };
  }

  /** Starts the child; failures are reported through state, never thrown. */
  start(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.backoff.reset();
    this.st = { status: 'stopped', restarts: 0 };
    this.spawnChild();
  }

  /** Stops the child (SIGTERM, SIGKILL after stopTimeoutMs) and resolves when it has exited. */
  async stop(): Promise<void> {
    this.wanted = false;
    clearTimeout(this.restartTimer);
    clearTimeout(this.stallTimer);
    const child = this.child;
    if (child && this.childDone) {
      const done = this.childDone;
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), this.opts.stopTimeoutMs);
      // A grandchild holding the pipes open must not keep stop() waiting forever.
      const giveUp = new Promise<void>((r) => setTimeout(r, this.opts.stopTimeoutMs * 2 + 1000).unref());
      await Promise.race([done, giveUp]);
      clearTimeout(killer);
      child.stdout?.destroy();
      child.stderr?.destroy();
    }
    this.setStatus('stopped');
  }

  private setStatus(status: SupervisorStatus, lastError?: string): void {
    const next: SupervisorState = { ...this.st, status, pid: this.child?.pid };
    if (lastError !== undefined) next.lastError = lastError;
    const changed =
      next.status !== this.st.status || next.lastError !== this.st.lastError || next.restarts !== this.st.restarts;
    this.st = next;
    if (changed) this.emit('state', this.state());
  }

  private spawnChild(): void {
    const { command, args, env, logger } = this.opts;
    this.stderrTail = [];
    this.firstDataAt = undefined;
    this.setStatus('starting');
    logger.debug({ command, args: args.map(redactCredentials) }, 'spawning');
    let child: ChildProcess;
    try {
      child = spawn(command, [...args], { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env, shell: false });
    } catch (err) {
      // Synchronous spawn errors (bad arguments) will not fix themselves.
      this.setStatus('failed', `cannot start ${command}: ${(err as Error).message}`);
      this.wanted = false;
      return;
    }
    this.child = child;
    trackChild(child);
    let spawnError: NodeJS.ErrnoException | undefined;
    let exitCode: number | null = null;
    let exitSignal: NodeJS.Signals | null = null;
    let resolveDone!: () => void;
    this.childDone = new Promise<void>((r) => (resolveDone = r));

    child.on('spawn', () => {
      this.st.pid = child.pid;
      this.armStallTimer(child); // a child that never writes (an RTSP connect hanging) counts as stalled too
      this.emit('spawn', child.pid);
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      spawnError = err;
    });
    child.on('exit', (code, signal) => {
      exitCode = code;
      exitSignal = signal;
    });
    child.stdout?.on('data', (data: Buffer) => {
      if (this.child !== child) return;
      if (this.firstDataAt === undefined) {
        this.firstDataAt = Date.now();
        this.setStatus('running');
      }
      this.armStallTimer(child);
      this.emit('stdout', data);
    });
    let partial = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      const lines = (partial + text).split(/\r?\n|\r/);
      partial = (lines.pop() ?? '').slice(-MAX_STDERR_LINE);
      for (const line of lines) this.addStderrLine(line);
    });
    child.on('close', () => {
      if (partial) this.addStderrLine(partial);
      liveChildren.delete(child);
      clearTimeout(this.stallTimer);
      if (this.child === child) this.child = undefined;
      resolveDone();
      if (!this.wanted) return;
      this.onUnexpectedExit(describeExit(command, spawnError, exitCode, exitSignal, this.stderrTail), spawnError);
    });
  }

  private addStderrLine(line: string): void {
    const clean = redactCredentials(line.trim()).slice(0, MAX_STDERR_LINE);
    if (!clean) return;
    this.stderrTail.push(clean);
    if (this.stderrTail.length > this.opts.stderrLines) this.stderrTail.shift();
    this.emit('stderr', clean);
  }

  private armStallTimer(child: ChildProcess): void {
    const ms = this.opts.stallTimeoutMs;
    if (!ms) return;
    clearTimeout(this.stallTimer);
    this.stallTimer = setTimeout(() => {
      if (this.child !== child || !this.wanted) return;
      this.addStderrLine(`(no output for ${ms} ms; killing the stalled process)`);
      child.kill('SIGKILL');
    }, ms);
  }

  private onUnexpectedExit(message: string, spawnError?: NodeJS.ErrnoException): void {
    const { logger, healthyAfterMs, maxRestarts, command } = this.opts;
    if (this.firstDataAt !== undefined && Date.now() - this.firstDataAt >= healthyAfterMs) this.backoff.reset();
    // A missing or non-executable program will not appear by retrying.
    if (spawnError && (spawnError.code === 'ENOENT' || spawnError.code === 'EACCES')) {
      logger.error({ command }, message);
      this.wanted = false;
      this.setStatus('failed', message);
      return;
    }
    if (maxRestarts !== undefined && this.backoff.consecutiveFailures >= maxRestarts) {
      logger.error({ command }, `${message}; giving up after ${maxRestarts} restarts in a row`);
      this.wanted = false;
      this.setStatus('failed', message);
      return;
    }
    const delayMs = this.backoff.next();
    logger.warn({ command, delayMs }, message);
    this.setStatus('restarting', message);
    this.emit('restart-scheduled', { delayMs, failures: this.backoff.consecutiveFailures });
    this.restartTimer = setTimeout(() => {
      if (!this.wanted) return;
      this.st.restarts++;
      this.spawnChild();
    }, delayMs);
  }
}

function describeExit(
  command: string,
  spawnError: NodeJS.ErrnoException | undefined,
  code: number | null,
  signal: NodeJS.Signals | null,
  stderrTail: readonly string[],
): string {
  let what: string;
  if (spawnError?.code === 'ENOENT') what = `cannot start ${command}: program not found (is it installed and on PATH?)`;
  else if (spawnError) what = `cannot start ${command}: ${spawnError.message}`;
  else if (signal) what = `${command} was killed by ${signal}`;
  else what = `${command} exited with code ${code}`;
  return stderrTail.length ? `${what}: ${stderrTail.join(' | ')}` : what;
}
