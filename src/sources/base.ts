/** State bookkeeping shared by every source: one place decides when a 'state' event is worth emitting. */
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.js';
import type { ProcessSupervisor, SupervisorState } from './supervisor.js';
import type { Frame, SourceState } from './types.js';

export abstract class SourceBase extends EventEmitter {
  private current: SourceState = { status: 'stopped', restarts: 0 };
  protected readonly log: Logger;

  constructor(
    readonly name: string,
    readonly kind: string,
    logger: Logger,
  ) {
    super();
    this.log = logger.child({ module: 'source', source: name, kind });
  }

  state(): SourceState {
    return { ...this.current };
  }

  /**
   * Merges a change into the state. 'state' is emitted only when status, restarts or lastError change,
   * so per-chunk lastDataAt updates stay silent.
   */
  protected setState(patch: Partial<SourceState>): void {
    const before = this.current;
    const next: SourceState = { ...before, ...patch };
    if (patch.lastError === undefined && 'lastError' in patch) delete next.lastError;
    this.current = next;
    if (before.status !== next.status || before.restarts !== next.restarts || before.lastError !== next.lastError) {
      if (before.status !== next.status) this.log.debug({ status: next.status, lastError: next.lastError }, 'source state');
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
    sup.on('state', (s: SupervisorState) => this.setState({ status: s.status, restarts: s.restarts, lastError: s.lastError }));
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
    this.setState({ status: 'stopped' });
  }

  protected markData(): void {
    this.current.lastDataAt = new Date().toISOString();
  }
}

/** Common frame emission: sequence numbers and lastDataAt. */
export abstract class FrameSourceBase extends SourceBase {
  private seq = 0;

  constructor(name: string, kind: string, logger: Logger) {
    super(name, kind, logger);
  }

  protected emitFrame(jpeg: Buffer): void {
    const frame: Frame = { camera: this.name, jpeg, at: new Date(), seq: this.seq++ };
    this.markData();
    this.emit('frame', frame);
  }

  protected resetSeq(): void {
    this.seq = 0;
  }
}

/** A frame source that runs one loop until stopped (polling a URL, walking a directory). */
export abstract class PollingFrameSource extends FrameSourceBase {
  private abort?: AbortController;
  private loop?: Promise<void>;

  async start(): Promise<void> {
    if (this.abort) return;
    this.resetSeq();
    this.abort = new AbortController();
    this.setState({ status: 'starting', restarts: 0, lastError: undefined });
    this.loop = this.run(this.abort.signal);
  }

  async stop(): Promise<void> {
    this.abort?.abort();
    this.abort = undefined;
    await this.loop;
    this.loop = undefined;
    // A source that reached its end (a non-looping directory) says so rather than 'stopped'.
    if (this.state().status !== 'ended') this.setState({ status: 'stopped' });
  }

  /** The loop: returns when `signal` aborts (or the source has ended). */
  protected abstract run(signal: AbortSignal): Promise<void>;
}
