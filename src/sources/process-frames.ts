/** A camera whose frames come from a supervised process writing MJPEG to stdout (ffmpeg, rpicam-vid). */
import type { Logger } from '../common/log.js';
import { FrameSourceBase } from './base.js';
import { JpegSplitter } from './jpeg-splitter.js';
import { ProcessSupervisor } from './supervisor.js';
import type { FrameSource } from './types.js';

/** Bigger frames are dropped: a 4608x2592 MJPEG frame at high quality stays well below this. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

export interface ProcessFrameOptions {
  command: string;
  args: string[];
  restartMinMs: number;
  restartMaxMs: number;
  /** Expected frames per second; sets the stall watchdog and, with decimate, the emitted rate. */
  fps: number;
  /** Drop frames arriving faster than fps (for producers that cannot go as slow as asked). */
  decimate?: boolean;
  maxFrameBytes?: number;
}

export class ProcessFrameSource extends FrameSourceBase implements FrameSource {
  private lastEmitAt = 0;

  constructor(
    name: string,
    kind: string,
    logger: Logger,
    private readonly opts: ProcessFrameOptions,
  ) {
    super(name, kind, logger);
  }

  /** The command line the source runs (for diagnostics and tests). */
  commandLine(): { command: string; args: readonly string[] } {
    return { command: this.opts.command, args: this.opts.args };
  }

  protected async open(): Promise<void> {
    const { command, args, restartMinMs, restartMaxMs, fps } = this.opts;
    this.lastEmitAt = 0;
    const intervalMs = 1000 / fps;
    const splitter = new JpegSplitter({
      maxFrameBytes: this.opts.maxFrameBytes ?? MAX_FRAME_BYTES,
      onFrame: (jpeg) => this.onFrame(jpeg, intervalMs),
      onDiscard: (reason) => {
        this.log.warn(reason);
        this.setState({ lastError: reason });
      },
    });
    const sup = new ProcessSupervisor({
      command,
      args,
      restartMinMs,
      restartMaxMs,
      // Streams that hang (RTSP cameras rebooting) are restarted; slow rates get a proportionate wait.
      stallTimeoutMs: Math.max(15_000, 3 * intervalMs),
      healthyAfterMs: Math.max(10_000, 2 * intervalMs),
      logger: this.log,
    });
    sup.on('stdout', (data: Buffer) => splitter.push(data));
    sup.on('spawn', () => splitter.reset());
    this.superviseProcess(sup);
  }

  protected close(): Promise<void> {
    return this.stopProcess();
  }

  private onFrame(jpeg: Buffer, intervalMs: number): void {
    if (!this.supervising) return;
    if (this.opts.decimate) {
      const now = Date.now();
      // 10% slack so a producer running at exactly fps is not decimated by timer jitter.
      if (this.lastEmitAt && now - this.lastEmitAt < intervalMs * 0.9) return;
      this.lastEmitAt = now;
    }
    this.emitFrame(jpeg);
  }
}
