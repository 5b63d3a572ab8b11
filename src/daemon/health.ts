/**
 * Health of the daemon's stages (voice activity detection, the model's encoders, each camera's decoder).
 * Before this, a stage that kept failing logged a line per failure and went on failing forever, while stats
 * and Home Assistant said all was well. Now each stage reports its errors and successes here:
 *
 * - `failAfter` errors in a row make it `failing`: logged, and said once on `<root>/errors`, then at most
 *   once per `reportIntervalMs` while it stays failing (a camera decoding garbage at 10 fps must not flood
 *   the outbox);
 * - a failing stage with a restart function is restarted after a backoff that doubles on every restart that
 *   did not help (state `restarting` until the next success or error);
 * - the first success after that makes it `ok` again and resets the backoff.
 *
 * stats() is the `health` object of the stats message; the Home Assistant Problem entity reads it.
 */
import { type Logger, silentLogger } from '../common/log.js';
import { Backoff } from '../sources/backoff.js';

export type StageState = 'ok' | 'failing' | 'restarting';

export interface StageHealth {
  state: StageState;
  /** Errors since start. */
  error_count: number;
  /** Restarts since start. */
  restarts: number;
  last_error?: string;
  last_error_at?: string;
}

export interface HealthOptions {
  /** Errors in a row that make a stage failing (default 3). */
  failAfter?: number;
  /** First restart delay, doubled per restart that did not help, up to restartMaxMs (defaults 1 s and 60 s). */
  restartMinMs?: number;
  restartMaxMs?: number;
  /** Least time between two reports of one stage on the errors topic (default 60 s). */
  reportIntervalMs?: number;
  /** Says a failing stage on the errors topic: `topic` is the one the stage's failure concerns. */
  report?: (stage: string, topic: string, message: string) => void;
  /** A stage changed state (publish stats now rather than at the next interval). */
  onChange?: () => void;
  logger?: Logger;
}

interface Stage {
  health: StageHealth;
  topic: string;
  restart: (() => Promise<void>) | undefined;
  streak: number;
  backoff: Backoff;
  timer: NodeJS.Timeout | undefined;
  lastReportAt: number;
  suppressed: number;
}

const MAX_ERROR = 500;

export class HealthTracker {
  private readonly stages = new Map<string, Stage>();
  private readonly log: Logger;
  private closed = false;

  constructor(private readonly o: HealthOptions = {}) {
    this.log = (o.logger ?? silentLogger).child({ module: 'health' });
  }

  /** Adds a stage (shown as ok from now on). `restart` rebuilds it; without one it is only reported. */
  register(stage: string, topic: string, restart?: () => Promise<void>): void {
    if (this.stages.has(stage)) return;
    this.stages.set(stage, {
      health: { state: 'ok', error_count: 0, restarts: 0 },
      topic,
      restart,
      streak: 0,
      backoff: new Backoff(this.o.restartMinMs ?? 1000, this.o.restartMaxMs ?? 60_000),
      timer: undefined,
      lastReportAt: -Infinity,
      suppressed: 0,
    });
  }

  error(stage: string, err: unknown): void {
    const s = this.stages.get(stage);
    if (!s || this.closed) return;
    const h = s.health;
    const message = (err instanceof Error ? err.message : String(err)).slice(0, MAX_ERROR);
    h.error_count++;
    h.last_error = message;
    h.last_error_at = new Date().toISOString();
    s.streak++;
    if (s.streak < (this.o.failAfter ?? 3)) return;
    if (h.state !== 'failing') {
      h.state = 'failing';
      this.log.error({ stage, errors: h.error_count, restarts: h.restarts, err: message }, `stage ${stage} is failing`);
      this.o.onChange?.();
    }
    this.maybeReport(stage, s);
    if (s.restart && !s.timer) this.scheduleRestart(stage, s);
  }

  /** The stage did its work: a failing or restarting stage is ok again. */
  ok(stage: string): void {
    const s = this.stages.get(stage);
    if (!s) return;
    s.streak = 0;
    if (s.health.state === 'ok' || s.timer) return;
    s.health.state = 'ok';
    s.backoff.reset();
    s.lastReportAt = -Infinity;
    this.log.info({ stage, errors: s.health.error_count, restarts: s.health.restarts }, `stage ${stage} recovered`);
    this.o.onChange?.();
  }

  stats(): Record<string, StageHealth> {
    const out: Record<string, StageHealth> = {};
    for (const [name, s] of this.stages) out[name] = { ...s.health };
    return out;
  }

  /** Stops pending restarts (shutdown). */
  close(): void {
    this.closed = true;
    for (const s of this.stages.values()) clearTimeout(s.timer);
  }

  private maybeReport(stage: string, s: Stage): void {
    const now = Date.now();
    if (now - s.lastReportAt < (this.o.reportIntervalMs ?? 60_000)) {
      s.suppressed++;
      return;
    }
    const h = s.health;
    const more = s.suppressed > 0 ? `; ${s.suppressed} more error report(s) suppressed` : '';
    s.lastReportAt = now;
    s.suppressed = 0;
    this.o.report?.(
      stage,
      s.topic,
      `stage ${stage} is failing (${h.error_count} errors, ${h.restarts} restarts${more}): ${h.last_error ?? ''}`,
    );
  }

  private scheduleRestart(stage: string, s: Stage): void {
    const delay = s.backoff.next();
    this.log.warn({ stage, in_ms: delay, restarts: s.health.restarts }, `restarting stage ${stage}`);
    s.timer = setTimeout(() => void this.restart(stage, s), delay);
    s.timer.unref();
  }

  private async restart(stage: string, s: Stage): Promise<void> {
    if (this.closed) return;
    s.health.state = 'restarting';
    s.health.restarts++;
    // Errors in a row count afresh: the restarted stage gets failAfter tries before the next restart.
    s.streak = 0;
    this.o.onChange?.();
    try {
      await s.restart!();
    } catch (err) {
      this.log.error({ stage, err: (err as Error).message }, `stage ${stage} could not be restarted`);
      s.health.last_error = `restart failed: ${(err as Error).message}`.slice(0, MAX_ERROR);
      s.timer = undefined;
      if (!this.closed) this.scheduleRestart(stage, s);
      return;
    }
    s.timer = undefined;
  }
}
