/**
 * Process lifecycle: turn SIGTERM/SIGINT into one bounded, orderly stop, and make programming errors
 * (unhandled rejections, uncaught exceptions) fatal with exit code 1 so systemd (Restart=on-failure)
 * brings up a fresh process instead of one in an unknown state.
 *
 * Exit codes: 0 clean stop; 1 stop() failed, did not finish in time, or a fatal error; 128+N when a
 * second signal N cut the stop short (the shell convention for death by signal).
 */
import { constants } from 'node:os';
import type { Logger } from '../common/log.js';
import { silentLogger } from '../common/log.js';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;

export interface ShutdownOptions {
  /** Orderly stop: drain in-flight work within drainTimeoutMs, publish offline, close. Called at most once. */
  stop: (reason: string) => Promise<void>;
  /** daemon.drain_timeout_ms: how long stop() may drain. */
  drainTimeoutMs: number;
  /** Extra time after the drain for stop() to wrap up (offline message, disconnect) before exit is forced. */
  graceMs?: number;
  logger?: Logger;
  /** Signals that start the stop (default SIGTERM and SIGINT). */
  signals?: NodeJS.Signals[];
  /** How to leave the process (default process.exit); tests of the wiring may pass their own. */
  exit?: (code: number) => void;
}

export interface ShutdownHandle {
  /** Start the same stop a signal would (e.g. on a fatal condition found elsewhere). Idempotent. */
  shutdown(reason: string, exitCode?: number): Promise<void>;
  /** True once a stop has begun. */
  readonly stopping: boolean;
  /** Remove every handler this installed. */
  dispose(): void;
}

export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (constants.signals[signal] ?? 0);
}

function describeError(reason: unknown): { err: unknown; message: string } {
  if (reason instanceof Error) return { err: reason, message: reason.message };
  return { err: reason, message: String(reason) };
}

export function installShutdown(opts: ShutdownOptions): ShutdownHandle {
  const log = (opts.logger ?? silentLogger).child({ module: 'shutdown' });
  const signals = opts.signals ?? ['SIGTERM', 'SIGINT'];
  const graceMs = opts.graceMs ?? 2000;
  const exitFn = opts.exit ?? ((code: number) => process.exit(code));
  let stopping: Promise<void> | null = null;
  let exited = false;
  let forceTimer: NodeJS.Timeout | null = null;

  const exit = (code: number): void => {
    if (exited) return;
    exited = true;
    if (forceTimer) clearTimeout(forceTimer);
    exitFn(code);
  };

  const shutdown = (reason: string, exitCode: number = EXIT_OK): Promise<void> => {
    if (stopping) return stopping;
    const boundMs = opts.drainTimeoutMs + graceMs;
    log.info({ reason, bound_ms: boundMs }, 'shutting down');
    // Referenced on purpose: a stop() stuck on a promise with no pending I/O must not let the event loop
    // run dry and exit 0 as if all went well.
    forceTimer = setTimeout(() => {
      log.error({ reason, bound_ms: boundMs }, 'stop did not finish in time; forcing exit');
      exit(EXIT_FAILURE);
    }, boundMs);
    stopping = (async () => {
      let code = exitCode;
      try {
        await opts.stop(reason);
        log.info({ reason, exit_code: code }, 'stopped');
      } catch (err) {
        log.error({ err, reason }, 'stop failed');
        code = EXIT_FAILURE;
      }
      exit(code);
    })();
    return stopping;
  };

  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal during stop; exiting now');
      exit(signalExitCode(signal));
      return;
    }
    void shutdown(signal);
  };

  const fatal = (kind: string, reason: unknown): void => {
    const { err, message } = describeError(reason);
    log.fatal({ err }, `${kind}: ${message}`);
    if (stopping) {
      exit(EXIT_FAILURE);
      return;
    }
    void shutdown(`fatal ${kind}`, EXIT_FAILURE);
  };

  const onRejection = (reason: unknown): void => fatal('unhandled rejection', reason);
  const onException = (error: Error): void => fatal('uncaught exception', error);

  for (const s of signals) process.on(s, onSignal);
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);

  return {
    shutdown,
    get stopping() {
      return stopping !== null;
    },
    dispose() {
      for (const s of signals) process.off(s, onSignal);
      process.off('unhandledRejection', onRejection);
      process.off('uncaughtException', onException);
      if (forceTimer) clearTimeout(forceTimer);
    },
  };
}
