/** State bookkeeping shared by every source: one place decides when a 'state' event is worth emitting. */
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.js';
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
