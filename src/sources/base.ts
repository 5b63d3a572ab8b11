/**
 * What every source shares: one small state machine for start, pause and stop, its state events, and one
 * timeline for what it delivers.
 *
 * Requests (start, pause, stop) may come at any time, also while an earlier one is still starting or
 * stopping the source (switch messages in quick succession). They run one at a time, in order, and each
 * brings the source to the latest wish: the last request wins, and a request's promise resolves once the
 * source really is where that request (or a later one) put it. Data flows only while the wish is `running`
 * and the source is open, so nothing leaks out of a start that a pause overtook.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from '../common/log.js';
import type { ProcessSupervisor, SupervisorState } from './supervisor.js';
import { StreamClock } from './stream-clock.js';
import type { AudioChunk, Frame, SourceState } from './types.js';
import { AUDIO_SAMPLE_RATE } from './types.js';

/** What the requests ask for. */
export type SourceWish = 'running' | 'paused' | 'stopped';
/** Where the source really is: closed, opening, open, closing. */
export type SourcePhase = 'idle' | 'starting' | 'open' | 'stopping';

export abstract class SourceBase extends EventEmitter {
  private current: SourceState = { status: 'stopped', restarts: 0 };
  private wish: SourceWish = 'stopped';
  private phase: SourcePhase = 'idle';
  /** The requests, one after the other. */
  private queue: Promise<void> = Promise.resolve();
  protected readonly log: Logger;

  constructor(
    readonly name: string,
    readonly kind: string,
    logger: Logger,
  ) {
    super();
    this.log = logger.child({ module: 'source', source: name, kind });
  }

  /** Opens the source (again); rejects when it cannot (a missing WAV file), with the reason in state. */
  start(): Promise<void> {
    return this.request('running');
  }

  /** Closes the source for a while: status `paused` until the next start. */
  pause(): Promise<void> {
    return this.request('paused');
  }

  /** Closes the source and any child process; resolves when it is gone. */
  stop(): Promise<void> {
    return this.request('stopped');
  }

  state(): SourceState {
    return { ...this.current };
  }

  /** The machine's phase (for tests and diagnostics). */
  get lifecycle(): { wish: SourceWish; phase: SourcePhase } {
    return { wish: this.wish, phase: this.phase };
  }

  /** Starts delivering; called only from the idle phase. */
  protected abstract open(): Promise<void>;
  /** Stops delivering and resolves when nothing more can come; called only from the open phase. */
  protected abstract close(): Promise<void>;
  /** Called before every open(), e.g. to mark a break in the timeline. */
  protected opening(): void {}

  /** Whether what the source produces may go out now. */
  protected get flowing(): boolean {
    return this.wish === 'running' && (this.phase === 'starting' || this.phase === 'open');
  }

  private request(wish: SourceWish): Promise<void> {
    this.wish = wish;
    const step = this.queue.then(() => this.settle());
    this.queue = step.catch(() => undefined);
    return step;
  }

  /** Moves the source towards the latest wish; loops because the wish may change while it waits. */
  private async settle(): Promise<void> {
    for (;;) {
      if (this.wish === 'running' && this.phase === 'idle') {
        this.phase = 'starting';
        this.setStatus({ status: 'starting', restarts: 0, lastError: undefined });
        this.opening();
        try {
          await this.open();
          this.phase = 'open';
        } catch (err) {
          this.phase = 'idle';
          // A start that a pause or stop overtook fails nobody: the later request is what counts.
          if (this.wish === 'running') throw err;
        }
        continue;
      }
      if (this.wish !== 'running' && this.phase === 'open') {
        this.phase = 'stopping';
        this.setStatus({ status: 'stopping' });
        try {
          await this.close();
        } catch (err) {
          this.log.error({ err: err instanceof Error ? err.message : String(err) }, 'source did not close cleanly');
        }
        this.phase = 'idle';
        continue;
      }
      if (this.phase === 'idle' && this.wish !== 'running') {
        const s = this.current.status;
        // A stopped source that had ended or failed keeps saying so; a paused one says paused.
        if (this.wish === 'paused') this.setStatus({ status: 'paused' });
        else if (s !== 'ended' && s !== 'failed') this.setStatus({ status: 'stopped' });
      }
      return;
    }
  }

  /**
   * The source's own state changes (running, restarting, ended, errors). While it is not open, its status
   * changes are ignored: the machine says what is happening (stopping, paused, stopped).
   */
  protected setState(patch: Partial<SourceState>): void {
    if (patch.status !== undefined && this.phase !== 'starting' && this.phase !== 'open') {
      const { status: _ignored, ...rest } = patch;
      patch = rest;
    }
    this.setStatus(patch);
  }

  /**
   * Merges a change into the state. 'state' is emitted only when status, restarts or lastError change,
   * so per-chunk lastDataAt updates stay silent.
   */
  private setStatus(patch: Partial<SourceState>): void {
    const before = this.current;
    const next: SourceState = { ...before, ...patch };
    if (patch.lastError === undefined && 'lastError' in patch) delete next.lastError;
    this.current = next;
    if (before.status !== next.status || before.restarts !== next.restarts || before.lastError !== next.lastError) {
      if (before.status !== next.status)
        this.log.debug({ status: next.status, lastError: next.lastError }, 'source state');
      this.emit('state', this.state());
    }
  }

  private supervisor?: ProcessSupervisor;

  /** Whether a supervised child process is running (or restarting) for this source. */
  protected get supervising(): boolean {
    return this.supervisor !== undefined;
  }

  /** Runs the source's child process under `sup`, mirroring its state; stopProcess() ends it. */
  protected superviseProcess(sup: ProcessSupervisor): void {
    sup.on('state', (s: SupervisorState) =>
      this.setState({ status: s.status, restarts: s.restarts, lastError: s.lastError }),
    );
    this.supervisor = sup;
    sup.start();
  }

  protected async stopProcess(): Promise<void> {
    const sup = this.supervisor;
    this.supervisor = undefined;
    if (sup) {
      await sup.stop();
      sup.removeAllListeners();
    }
  }

  protected markData(): void {
    this.current.lastDataAt = new Date().toISOString();
  }
}

/**
 * Audio delivery on one timeline: stream time runs on across pauses and restarts, never backwards, and a
 * reopened source leaves a gap (see StreamClock), so consumers see the break and never reuse old times.
 */
export abstract class AudioSourceBase extends SourceBase {
  private readonly clock = new StreamClock();

  protected override opening(): void {
    this.clock.reopen();
  }

  /** Sends 16 kHz samples on as the next chunk (dropped when the source is pausing or stopping). */
  protected emitAudio(samples: Int16Array): void {
    if (!this.flowing) return;
    const chunk: AudioChunk = { samples, sampleRate: AUDIO_SAMPLE_RATE, startMs: this.clock.take(samples.length) };
    this.markData();
    this.emit('chunk', chunk);
  }
}

/** Common frame emission: sequence numbers (never reset: one timeline per source) and lastDataAt. */
export abstract class FrameSourceBase extends SourceBase {
  private seq = 0;

  protected emitFrame(jpeg: Buffer): void {
    if (!this.flowing) return;
    const frame: Frame = { camera: this.name, jpeg, at: new Date(), seq: this.seq++ };
    this.markData();
    this.emit('frame', frame);
  }
}

/** A frame source that runs one loop until closed (polling a URL, walking a directory). */
export abstract class PollingFrameSource extends FrameSourceBase {
  private abort?: AbortController;
  private loop?: Promise<void>;

  protected async open(): Promise<void> {
    this.abort = new AbortController();
    this.loop = this.run(this.abort.signal);
  }

  protected async close(): Promise<void> {
    this.abort?.abort();
    this.abort = undefined;
    await this.loop;
    this.loop = undefined;
  }

  /** The loop: returns when `signal` aborts (or the source has ended). */
  protected abstract run(signal: AbortSignal): Promise<void>;
}
