/**
 * Motion for each camera: frames into a MotionDetector; events (new / update / end, one id) published as
 * final results on `camera/<name>/event`, and the retained `camera/<name>/motion` ON/OFF. Runs whether or
 * not the model can caption, so automations get motion from the first start.
 */
import type { CameraSettings } from '../config/schema.js';
import { silentLogger, type Logger } from '../common/log.js';
import type { CameraPublisher } from '../mqtt/camera-publisher.js';
import { isoNow, type CameraEventMessage } from '../mqtt/messages.js';
import type { Frame, FrameSource } from '../sources/types.js';
import { MotionDetector, type MotionStats, type MotionUpdate } from '../vision/motion.js';

/**
 * Takes over publishing of camera events (the seeing pipeline adds captions to them). Called in order, must
 * return at once: motion ON/OFF must not wait for the model.
 */
export type CameraEventSink = (update: MotionUpdate, message: CameraEventMessage) => void;

/** Ends events by wall time when frames stop coming (a camera that died mid-event). */
const TICK_MS = 2000;

export function cameraEventMessage(u: MotionUpdate): CameraEventMessage {
  const r = (v: number) => Math.round(Math.min(1, Math.max(0, v)) * 10_000) / 10_000;
  return {
    v: 1,
    id: u.id,
    ts: isoNow(),
    camera: u.camera,
    type: u.type,
    started_at: u.startedAt.toISOString(),
    ...(u.type === 'end' ? { ended_at: u.at.toISOString() } : {}),
    motion: r(u.type === 'end' ? u.peakFraction : u.changedFraction),
    frames: u.motionFrames,
    box: { x: r(u.box.x), y: r(u.box.y), w: r(u.box.w), h: r(u.box.h) },
    zones: u.zonesSeen,
  };
}

class CameraMotion {
  readonly detector: MotionDetector;
  private published: boolean | undefined;
  /** Watching is off: frames are not looked at (the source may still be stopping). */
  private paused = false;
  /** Frames being looked at, up to their updates being handed on. */
  private readonly inFlight = new Set<Promise<void>>();
  private readonly listener = (frame: Frame): void => {
    if (this.paused) return;
    const work = this.detector.push(frame).then(
      (updates) => this.publish(updates),
      (err: unknown) => this.log.warn({ err: String(err) }, 'motion detection failed on a frame'),
    );
    this.inFlight.add(work);
    void work.finally(() => this.inFlight.delete(work));
  };

  constructor(
    readonly camera: CameraSettings,
    private readonly source: FrameSource,
    private readonly out: CameraPublisher,
    private readonly log: Logger,
    private readonly sink: CameraEventSink | undefined,
  ) {
    this.detector = new MotionDetector(camera.name, camera.motion);
    source.on('frame', this.listener);
  }

  tick(): void {
    if (this.paused) return;
    void this.publish(this.detector.tick());
  }

  /**
   * Watching off: ends a running event now. The frame still being looked at is finished first, so its
   * updates belong to the running event instead of opening a new one after the `end`.
   */
  async pause(): Promise<void> {
    this.paused = true;
    await Promise.all([...this.inFlight]);
    await this.close();
  }

  /** Watching on: the background from before the pause says nothing about now; learn it afresh. */
  resume(): void {
    this.detector.forgetBackground();
    this.paused = false;
  }

  /** Ends a running event now (shutdown). */
  close(): Promise<void> {
    return this.publish(this.detector.close());
  }

  detach(): void {
    this.source.off('frame', this.listener);
  }

  /** Retained ON/OFF now, e.g. after a reconnect. */
  republishState(): Promise<unknown> {
    this.published = this.detector.motionOn;
    return this.out.motionState(this.camera.name, this.detector.motionOn);
  }

  private async publish(updates: MotionUpdate[]): Promise<void> {
    for (const u of updates) {
      this.log.info(
        { camera: u.camera, id: u.id, type: u.type, motion: u.changedFraction, zones: u.zonesSeen },
        'motion event',
      );
      if (this.sink) this.sink(u, cameraEventMessage(u));
      else await this.out.event(cameraEventMessage(u));
    }
    if (this.published !== this.detector.motionOn) await this.republishState();
  }
}

export class MotionPipeline {
  private readonly cameras: CameraMotion[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly log: Logger;

  constructor(
    private readonly out: CameraPublisher,
    logger: Logger = silentLogger,
    private readonly sink?: CameraEventSink,
  ) {
    this.log = logger.child({ module: 'motion' });
  }

  attach(camera: CameraSettings, source: FrameSource): void {
    if (camera.motion.enabled) this.cameras.push(new CameraMotion(camera, source, this.out, this.log, this.sink));
  }

  start(): void {
    this.timer = setInterval(() => this.cameras.forEach((c) => c.tick()), TICK_MS);
    this.timer.unref();
  }

  republishStates(): Promise<unknown> {
    return Promise.all(this.cameras.map((c) => c.republishState()));
  }

  /** Watching off (its sources already paused): end running events (their `end` and motion OFF go out). */
  async pause(): Promise<void> {
    await Promise.all(this.cameras.map((c) => c.pause()));
  }

  /** Watching on, before the sources start again. */
  resume(): void {
    for (const c of this.cameras) c.resume();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const c of this.cameras) c.detach();
    await this.pause();
  }

  stats(): Record<string, MotionStats> {
    return Object.fromEntries(this.cameras.map((c) => [c.camera.name, c.detector.stats]));
  }
}
