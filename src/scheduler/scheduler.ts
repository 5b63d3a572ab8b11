/**
 * One model, many producers. The model engine runs one job at a time, so every producer (spoken questions,
 * MQTT asks, transcripts, camera captions) submits here and this queue decides what runs next:
 *
 * - priority: answer > transcript > http (requests of the HTTP API) > caption; first come, first served within a kind;
 * - coalescing: a job with a `key` (e.g. `caption:<camera>`) replaces the waiting job with the same key, keeping
 *   its place in line (so a busy camera is not pushed back forever) but taking the newer frame and deadline;
 *   the replaced job rejects with `superseded`;
 * - deadlines: a job not started within its deadline rejects with `deadline`, saying what held the model;
 * - a bounded queue: beyond max_queued a new job is refused with `busy`, unless it outranks a waiting job,
 *   which is then dropped instead (a question should not wait behind a backlog of captions);
 * - cancellation by id: waiting jobs leave the queue, a running job's AbortSignal fires;
 * - drain(timeoutMs) for shutdown.
 */
import type { PerchConfig } from '../config/schema.js';
import { silentLogger, type Logger } from '../common/log.js';
import { SchedulerError, type JobKind, type SchedulerErrorCode } from './errors.js';

export { SchedulerError, isSchedulerError } from './errors.js';
export type { JobKind, SchedulerErrorCode, SchedulerErrorDetail } from './errors.js';

export type SchedulerSettings = PerchConfig['scheduler'];

/** Highest priority first: the order jobs are picked in, and which waiting job a full queue gives up. */
export const JOB_KINDS: readonly JobKind[] = ['answer', 'transcript', 'http', 'caption'];
const PRIORITY = Object.fromEntries(JOB_KINDS.map((kind, rank) => [kind, rank])) as Record<JobKind, number>;

export interface JobSpec<T> {
  kind: JobKind;
  /** Unique among waiting and running jobs; cancel(id) uses it. */
  id: string;
  /** Jobs with the same key coalesce: only the newest one waits. */
  key?: string;
  /** Most ms the job may wait before it starts; default: the kind's *_deadline_ms setting. */
  deadlineMs?: number;
  /** The work. Must stop soon after `signal` aborts (cancel or shutdown). */
  run: (signal: AbortSignal) => Promise<T>;
}

export interface RunningJobInfo {
  id: string;
  kind: JobKind;
  key?: string;
  started_at: string;
  running_ms: number;
}

/** Snake case: this object goes onto the retained stats topic as is. */
export interface SchedulerStats {
  accepting: boolean;
  max_queued: number;
  /** Jobs waiting (not counting the running one). */
  depth: number;
  depth_by_kind: Record<JobKind, number>;
  running: RunningJobInfo | null;
  counts: {
    submitted: number;
    completed: number;
    failed: number;
    expired: number;
    superseded: number;
    cancelled: number;
    refused: number;
    aborted: number;
  };
}

export interface DrainResult {
  /** True when every job finished within the timeout. */
  drained: boolean;
  /** Waiting jobs rejected with shutting_down at the timeout. */
  dropped: number;
  /** Whether a running job was aborted at the timeout. */
  abortedRunning: boolean;
}

interface Job {
  id: string;
  kind: JobKind;
  key?: string;
  /** Place in line within the kind. */
  seq: number;
  submittedAt: number;
  deadlineMs: number;
  timer?: NodeJS.Timeout;
  run: (signal: AbortSignal) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
  controller?: AbortController;
  startedAt?: number;
  /** Set when a running job is cancelled or aborted: how its promise settles once run() returns. */
  abortCode?: SchedulerErrorCode;
}

export class Scheduler {
  private readonly lanes: Record<JobKind, Job[]> = { answer: [], transcript: [], http: [], caption: [] };
  private running: Job | null = null;
  private accepting = true;
  private seq = 0;
  private idleWaiters: Array<() => void> = [];
  private readonly counts: SchedulerStats['counts'] = {
    submitted: 0,
    completed: 0,
    failed: 0,
    expired: 0,
    superseded: 0,
    cancelled: 0,
    refused: 0,
    aborted: 0,
  };

  constructor(
    private readonly settings: SchedulerSettings,
    private readonly log: Logger = silentLogger,
  ) {}

  submit<T>(spec: JobSpec<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const job: Job = {
        id: spec.id,
        kind: spec.kind,
        key: spec.key,
        seq: this.seq++,
        submittedAt: Date.now(),
        deadlineMs: spec.deadlineMs ?? this.defaultDeadline(spec.kind),
        run: spec.run,
        resolve: (v) => resolve(v as T),
        reject,
      };
      const refusal = this.admit(job);
      if (refusal) {
        reject(refusal);
        return;
      }
      this.counts.submitted++;
      job.timer = setTimeout(() => this.expire(job), job.deadlineMs);
      this.pump();
    });
  }

  /**
   * Cancels a job by id. Returns where it was: 'waiting' (removed, rejected now), 'running' (its signal fires;
   * it rejects with `cancelled` once run() returns) or false when no such job exists.
   */
  cancel(id: string, reason = 'cancelled by request'): 'waiting' | 'running' | false {
    if (this.running?.id === id) {
      this.abortRunning('cancelled', reason);
      return 'running';
    }
    const job = this.findWaiting(id);
    if (!job) return false;
    this.removeWaiting(job);
    this.counts.cancelled++;
    job.reject(this.error('cancelled', `${job.kind} job ${job.id} ${reason}`, job));
    this.notifyIdle();
    return 'waiting';
  }

  has(id: string): boolean {
    return this.running?.id === id || this.findWaiting(id) !== undefined;
  }

  stats(): SchedulerStats {
    const now = Date.now();
    const r = this.running;
    return {
      accepting: this.accepting,
      max_queued: this.settings.max_queued,
      depth: this.depth(),
      depth_by_kind: {
        answer: this.lanes.answer.length,
        transcript: this.lanes.transcript.length,
        http: this.lanes.http.length,
        caption: this.lanes.caption.length,
      },
      running:
        r && r.startedAt !== undefined
          ? {
              id: r.id,
              kind: r.kind,
              ...(r.key !== undefined ? { key: r.key } : {}),
              started_at: new Date(r.startedAt).toISOString(),
              running_ms: now - r.startedAt,
            }
          : null,
      counts: { ...this.counts },
    };
  }

  /**
   * Shutdown: refuse new jobs, let waiting and running ones finish for up to timeoutMs, then reject what still
   * waits and abort the running job (its promise rejects with shutting_down when run() returns).
   */
  async drain(timeoutMs: number): Promise<DrainResult> {
    this.accepting = false;
    if (this.isIdle()) return { drained: true, dropped: 0, abortedRunning: false };
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<boolean>((resolve) => this.idleWaiters.push(() => resolve(true)));
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const drained = await Promise.race([idle, timeout]);
    clearTimeout(timer);
    if (drained) return { drained: true, dropped: 0, abortedRunning: false };

    let dropped = 0;
    for (const kind of JOB_KINDS) {
      for (const job of this.lanes[kind].splice(0)) {
        clearTimeout(job.timer);
        this.counts.aborted++;
        dropped++;
        job.reject(this.error('shutting_down', `${job.kind} job ${job.id} dropped: shutting down`, job));
      }
    }
    const abortedRunning = this.running !== null;
    if (abortedRunning) this.abortRunning('shutting_down', 'aborted: shutting down');
    this.log.warn({ dropped, abortedRunning }, 'scheduler drain timed out');
    return { drained: false, dropped, abortedRunning };
  }

  /** Resolves when nothing waits or runs (for tests and orderly shutdown). */
  onIdle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private defaultDeadline(kind: JobKind): number {
    switch (kind) {
      case 'answer':
        return this.settings.answer_deadline_ms;
      case 'transcript':
        return this.settings.transcript_deadline_ms;
      case 'http':
        return this.settings.http_deadline_ms;
      case 'caption':
        return this.settings.caption_deadline_ms;
    }
  }

  /** Puts the job in line, or returns why it cannot be. */
  private admit(job: Job): SchedulerError | undefined {
    if (!this.accepting) {
      this.counts.refused++;
      return this.error('shutting_down', `${job.kind} job ${job.id} refused: shutting down`, job);
    }
    if (this.has(job.id)) {
      this.counts.refused++;
      return this.error(
        'duplicate',
        `${job.kind} job ${job.id} refused: a job with this id is already waiting or running`,
        job,
      );
    }
    const lane = this.lanes[job.kind];
    if (job.key !== undefined) {
      const idx = lane.findIndex((j) => j.key === job.key);
      if (idx >= 0) {
        // Take the old job's place in line; the old one settles as superseded.
        const old = lane[idx]!;
        job.seq = old.seq;
        lane[idx] = job;
        clearTimeout(old.timer);
        this.counts.superseded++;
        old.reject(this.error('superseded', `${old.kind} job ${old.id} superseded by ${job.id} (key ${job.key})`, old));
        return undefined;
      }
    }
    if (this.depth() >= this.settings.max_queued) {
      const victim = this.lowerPriorityVictim(job.kind);
      if (!victim) {
        this.counts.refused++;
        return this.error(
          'busy',
          `${job.kind} job ${job.id} refused: queue full (${this.depth()} jobs waiting, scheduler.max_queued = ${this.settings.max_queued})`,
          job,
        );
      }
      this.removeWaiting(victim);
      this.counts.refused++;
      victim.reject(
        this.error(
          'busy',
          `${victim.kind} job ${victim.id} dropped for a higher-priority ${job.kind} job: queue full (scheduler.max_queued = ${this.settings.max_queued})`,
          victim,
        ),
      );
    }
    lane.push(job);
    return undefined;
  }

  /** The newest waiting job of the lowest kind that ranks below `kind`, if any. */
  private lowerPriorityVictim(kind: JobKind): Job | undefined {
    for (let i = JOB_KINDS.length - 1; i >= 0; i--) {
      const k = JOB_KINDS[i]!;
      if (PRIORITY[k] <= PRIORITY[kind]) return undefined;
      const lane = this.lanes[k];
      if (lane.length > 0) return lane[lane.length - 1];
    }
    return undefined;
  }

  private expire(job: Job): void {
    if (!this.removeWaiting(job)) return;
    this.counts.expired++;
    const ahead = this.aheadOf(job);
    const waited = Date.now() - job.submittedAt;
    const busyWith = this.running ? `; the model was busy with ${this.running.kind} job ${this.running.id}` : '';
    const what =
      job.kind === 'caption' && job.key !== undefined
        ? `caption job ${job.id} (${job.key})`
        : `${job.kind} job ${job.id}`;
    job.reject(
      this.error('deadline', `${what} not started within ${job.deadlineMs} ms: ${ahead} job(s) ahead${busyWith}`, job, {
        ahead,
        waitedMs: waited,
      }),
    );
    this.notifyIdle();
  }

  private pump(): void {
    if (this.running) return;
    const job = this.next();
    if (!job) {
      this.notifyIdle();
      return;
    }
    this.removeWaiting(job);
    clearTimeout(job.timer);
    const controller = new AbortController();
    job.controller = controller;
    job.startedAt = Date.now();
    this.running = job;
    this.log.debug({ id: job.id, kind: job.kind, waited_ms: job.startedAt - job.submittedAt }, 'job started');
    // A microtask boundary: run() never executes inside submit(), and a synchronous throw becomes a rejection.
    Promise.resolve()
      .then(() => job.run(controller.signal))
      .then(
        (value) => this.finish(job, { ok: true, value }),
        (error: unknown) => this.finish(job, { ok: false, error }),
      );
  }

  private finish(job: Job, outcome: { ok: true; value: unknown } | { ok: false; error: unknown }): void {
    this.running = null;
    if (job.abortCode !== undefined) {
      const reason = job.controller?.signal.reason;
      if (job.abortCode === 'cancelled') this.counts.cancelled++;
      else this.counts.aborted++;
      job.reject(
        reason instanceof SchedulerError ? reason : this.error(job.abortCode, `${job.kind} job ${job.id} aborted`, job),
      );
    } else if (!outcome.ok) {
      this.counts.failed++;
      job.reject(outcome.error);
    } else {
      this.counts.completed++;
      job.resolve(outcome.value);
    }
    this.pump();
  }

  private abortRunning(code: SchedulerErrorCode, reason: string): void {
    const job = this.running;
    if (!job || job.abortCode !== undefined) return;
    job.abortCode = code;
    job.controller?.abort(this.error(code, `${job.kind} job ${job.id} ${reason}`, job));
  }

  private next(): Job | undefined {
    for (const kind of JOB_KINDS) {
      const lane = this.lanes[kind];
      if (lane.length === 0) continue;
      // Coalesced jobs keep their old seq, so the lane is not always sorted by push order.
      let best = lane[0]!;
      for (const j of lane) if (j.seq < best.seq) best = j;
      return best;
    }
    return undefined;
  }

  private aheadOf(job: Job): number {
    let n = this.running ? 1 : 0;
    for (const kind of JOB_KINDS) {
      for (const j of this.lanes[kind]) {
        if (PRIORITY[kind] < PRIORITY[job.kind] || (kind === job.kind && j.seq < job.seq)) n++;
      }
    }
    return n;
  }

  private findWaiting(id: string): Job | undefined {
    for (const kind of JOB_KINDS) {
      const job = this.lanes[kind].find((j) => j.id === id);
      if (job) return job;
    }
    return undefined;
  }

  private removeWaiting(job: Job): boolean {
    const lane = this.lanes[job.kind];
    const idx = lane.indexOf(job);
    if (idx < 0) return false;
    lane.splice(idx, 1);
    clearTimeout(job.timer);
    return true;
  }

  private depth(): number {
    return JOB_KINDS.reduce((n, k) => n + this.lanes[k].length, 0);
  }

  private isIdle(): boolean {
    return this.running === null && this.depth() === 0;
  }

  private notifyIdle(): void {
    if (!this.isIdle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  private error(
    code: SchedulerErrorCode,
    message: string,
    job: Job,
    extra: { ahead?: number; waitedMs?: number } = {},
  ): SchedulerError {
    const running = this.running && this.running !== job ? { id: this.running.id, kind: this.running.kind } : undefined;
    return new SchedulerError(code, message, {
      jobId: job.id,
      kind: job.kind,
      ...(job.key !== undefined ? { key: job.key } : {}),
      waitedMs: extra.waitedMs ?? (job.startedAt ?? Date.now()) - job.submittedAt,
      ...(running ? { runningJob: running } : {}),
      ...(extra.ahead !== undefined ? { ahead: extra.ahead } : {}),
    });
  }
}
