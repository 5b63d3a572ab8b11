/**
 * Runs the configured sources for the daemon: starts and stops them, pauses and resumes a group
 * (the Listening and Watching switches), and keeps their states for the stats topic.
 * Camera frames become the retained snapshot of their camera, throttled; what the model makes of
 * frames and audio (captions, transcripts) belongs to the hearing and seeing pipelines.
 */
import type { CameraSettings } from '../config/schema.js';
import { silentLogger, type Logger } from '../common/log.js';
import type { CameraPublisher } from '../mqtt/camera-publisher.js';
import type { AudioSource, Frame, FrameSource, Source, SourceState } from '../sources/types.js';

/** What the group's consumers do when the switch turns it off or on. */
export interface GroupHooks {
  /** After the sources paused (nothing more comes): end what is in progress (an utterance, a motion event). */
  paused?: () => Promise<void>;
  /** Before the sources start again: forget what was seen before the pause. */
  resuming?: () => void;
}

/** Where the group's sources were last brought: what the switch state and stats say. */
type GroupState = 'stopped' | 'paused' | 'active';

/**
 * A set of sources switched on and off together. Switch messages, start and stop may overlap (a message
 * arriving while the sources are still starting or stopping): they are applied one at a time, in order,
 * each bringing the group to the latest wish, so the last one wins and `active` says what really is.
 */
export class SourceGroup {
  /** The switch's latest wish. */
  private paused = false;
  /** Between start() and stop(). */
  private running = false;
  private applied: GroupState = 'stopped';
  private queue: Promise<void> = Promise.resolve();
  private readonly log: Logger;

  constructor(
    readonly name: string,
    readonly sources: readonly Source[],
    logger: Logger = silentLogger,
    private readonly hooks: GroupHooks = {},
  ) {
    this.log = logger.child({ module: name });
  }

  /** Whether the sources are running (not paused, stopped, or still on their way there). */
  get active(): boolean {
    return this.applied === 'active';
  }

  start(): Promise<void> {
    this.running = true;
    return this.request();
  }

  stop(): Promise<void> {
    this.running = false;
    return this.request();
  }

  /** ON/OFF from the switch: a paused group's processes are stopped, so it costs nothing. */
  setPaused(paused: boolean): Promise<void> {
    this.paused = paused;
    return this.request();
  }

  /**
   * Restarts one source (a health check gave up on it) in turn with the switch messages: only while the
   * group is active, so a restart can never undo a pause.
   */
  restart(source: Source): Promise<void> {
    const step = this.queue.then(async () => {
      if (this.applied !== 'active' || !this.sources.includes(source)) return;
      await source.stop();
      await source
        .start()
        .catch((err: unknown) =>
          this.log.error(
            { source: source.name, err: err instanceof Error ? err.message : String(err) },
            'source failed to restart',
          ),
        );
    });
    this.queue = step.catch(() => undefined);
    return step;
  }

  states(): Record<string, SourceState> {
    const out: Record<string, SourceState> = {};
    for (const s of this.sources) out[s.name] = s.state();
    return out;
  }

  private request(): Promise<void> {
    const step = this.queue.then(() => this.apply());
    this.queue = step.catch(() => undefined);
    return step;
  }

  private async apply(): Promise<void> {
    const want: GroupState = !this.running ? 'stopped' : this.paused ? 'paused' : 'active';
    const was = this.applied;
    if (want === was) return;
    if (want === 'active') {
      this.log.info('resumed');
      this.hooks.resuming?.();
      await this.startAll();
    } else {
      await Promise.all(this.sources.map((s) => (want === 'paused' ? s.pause() : s.stop())));
      if (want === 'paused') this.log.info('paused');
      // Consumers finish what the sources fed them before the pause; a shutdown has its own order.
      if (want === 'paused' && was === 'active') {
        await this.hooks
          .paused?.()
          .catch((err: unknown) =>
            this.log.error({ err: err instanceof Error ? err.message : String(err) }, 'pausing the consumers failed'),
          );
      }
    }
    this.applied = want;
  }

  private async startAll(): Promise<void> {
    // A source that cannot start (a missing WAV, say) is reported in its state; the others still run.
    await Promise.all(
      this.sources.map((s) =>
        s
          .start()
          .catch((err: unknown) =>
            this.log.error(
              { source: s.name, err: err instanceof Error ? err.message : String(err) },
              'source failed to start',
            ),
          ),
      ),
    );
  }
}

/** Publishes each camera's newest frame as its retained snapshot, at most once per snapshot_interval_s. */
export class SnapshotPublisher {
  private readonly last = new Map<string, number>();
  private readonly listeners: Array<[FrameSource, (f: Frame) => void]> = [];

  constructor(
    private readonly out: CameraPublisher,
    private readonly cameras: readonly CameraSettings[],
  ) {}

  attach(source: FrameSource): void {
    const cam = this.cameras.find((c) => c.name === source.name);
    if (!cam) return;
    const listener = (frame: Frame): void => {
      const now = Date.now();
      const previous = this.last.get(cam.name);
      if (previous !== undefined && now - previous < cam.snapshot_interval_s * 1000) return;
      this.last.set(cam.name, now);
      this.out.snapshot(cam.name, frame.jpeg);
    };
    source.on('frame', listener);
    this.listeners.push([source, listener]);
  }

  detach(): void {
    for (const [source, listener] of this.listeners) source.off('frame', listener);
    this.listeners.length = 0;
  }
}

/** Counts audio delivered, so stats show the microphone is alive even before transcripts exist. */
export class AudioMeter {
  samples = 0;
  private readonly listener = (chunk: { samples: Int16Array }): void => {
    this.samples += chunk.samples.length;
  };

  constructor(private readonly source: AudioSource) {
    source.on('chunk', this.listener);
  }

  detach(): void {
    this.source.off('chunk', this.listener);
  }
}
