/** Typed failures of the job scheduler: callers map `code` straight onto the `<root>/errors` payload. */

export type JobKind = 'answer' | 'transcript' | 'http' | 'caption';

export type SchedulerErrorCode =
  /** The queue is full (scheduler.max_queued), or a higher-priority job took this one's place. */
  | 'busy'
  /** The job was not started before its deadline. */
  | 'deadline'
  /** cancel(id) was called. */
  | 'cancelled'
  /** A newer job with the same key replaced this one while it waited. */
  | 'superseded'
  /** drain() was called: no new jobs, and what was left at the end was aborted. */
  | 'shutting_down'
  /** A job with the same id is already waiting or running. */
  | 'duplicate';

export interface SchedulerErrorDetail {
  jobId: string;
  kind: JobKind;
  key?: string;
  /** How long the job waited in the queue, in ms. */
  waitedMs?: number;
  /** The job that held the model when this one gave up, if any. */
  runningJob?: { id: string; kind: JobKind };
  /** Jobs that were ahead of this one (higher priority or earlier) when it gave up. */
  ahead?: number;
}

export class SchedulerError extends Error {
  override readonly name = 'SchedulerError';

  constructor(
    readonly code: SchedulerErrorCode,
    message: string,
    readonly detail: SchedulerErrorDetail,
  ) {
    super(message);
  }
}

export function isSchedulerError(err: unknown, code?: SchedulerErrorCode): err is SchedulerError {
  return err instanceof SchedulerError && (code === undefined || err.code === code);
}
