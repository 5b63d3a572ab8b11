/**
 * Runs the configured sources for the daemon: starts and stops them, pauses and resumes a group
 * (the Listening and Watching switches), and keeps their states for the stats topic.
 * Camera frames become the retained snapshot of their camera, throttled; what the model makes of
 * frames and audio (captions, transcripts) belongs to the hearing and seeing pipelines.
 */
import type { CameraSettings } from '../config/schema.js';
import { silentLogger, type Logger } from '../log.js';
import type { MqttConnection } from '../mqtt/connection.js';
import type { AudioSource, Frame, FrameSource, Source, SourceState } from '../sources/types.js';

/** A set of sources switched on and off together. */
export class SourceGroup {
  private paused = false;
  private running = false;
  private readonly log: Logger;

  constructor(readonly name: string, readonly sources: readonly Source[], logger: Logger = silentLogger) {
    this.log = logger.child({ module: name });
  }

  get active(): boolean {
    return this.running && !this.paused;
  }

  async start(): Promise<void> {
    this.running = true;
    if (!this.paused) await this.startAll();
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.sources.map((s) => s.stop()));
  }

  /** ON/OFF from the switch: a paused group's processes are stopped, so it costs nothing. */
  async setPaused(paused: boolean): Promise<void> {
    if (paused === this.paused) return;
    this.paused = paused;
    this.log.info(paused ? 'paused' : 'resumed');
    if (!this.running) return;
    if (paused) await Promise.all(this.sources.map((s) => s.stop()));
    else await this.startAll();
  }

  states(): Record<string, SourceState> {
    const out: Record<string, SourceState> = {};
    for (const s of this.sources) out[s.name] = this.paused ? { ...s.state(), status: 'paused' } : s.state();
    return out;
  }

  private async startAll(): Promise<void> {
    // A source that cannot start (a missing WAV, say) is reported in its state; the others still run.
    await Promise.all(
      this.sources.map((s) =>
        s.start().catch((err: unknown) => this.log.error({ source: s.name, err: err instanceof Error ? err.message : String(err) }, 'source failed to start')),
      ),
    );
  }
}

/** Publishes each camera's newest frame as its retained snapshot, at most once per snapshot_interval_s. */
export class SnapshotPublisher {
  private readonly last = new Map<string, number>();
  private readonly listeners: Array<[FrameSource, (f: Frame) => void]> = [];

  constructor(
    private readonly conn: MqttConnection,
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
      void this.conn.publish(this.conn.topics.camera(cam.name).snapshot, frame.jpeg, { qos: 0, retain: true, contentType: 'image/jpeg' });
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
