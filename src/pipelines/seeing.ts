/**
 * Seeing: what the model makes of camera frames.
 *
 * - Captions for motion events. On `new` an early caption of the event's best frame so far; on `end` a final
 *   one of the event's best frame. Both are scheduler jobs of kind `caption` with key `camera:<name>`, so only
 *   the newest frame of a camera waits, and a job not started within scheduler.caption_deadline_ms gives up.
 *   Each attempt is published on `camera/<name>/caption` (QoS 1) with the JPEG it describes as the retained
 *   snapshot; a failed attempt (deadline, busy, unavailable) publishes `text: null` with the reason.
 * - Camera events go out through here (MotionPipeline's sink): `new` and `update` at once, carrying the
 *   event's latest caption once there is one; `end` once its final caption is settled, with the caption or
 *   `caption_error` saying why there is none. Motion ON/OFF never waits for the model.
 * - LatestFrames keeps each camera's newest JPEG for questions about a camera.
 */
import { randomUUID } from 'node:crypto';
import type { CameraSettings } from '../config/schema.js';
import type { AnswerEngine, GenerationResult } from '../engine/types.js';
import { silentLogger, type Logger } from '../common/log.js';
import type { TokenBudget } from '../model/gemma4/contract.js';
import type { CameraPublisher } from '../mqtt/camera-publisher.js';
import {
  isoNow,
  type CameraEventMessage,
  type CaptionMessage,
  type ErrorCode,
  type StatsMessage,
} from '../mqtt/messages.js';
import { isSchedulerError } from '../scheduler/errors.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { Frame, FrameSource } from '../sources/types.js';
import type { MotionUpdate } from '../vision/motion.js';
import {
  compileStructured,
  generateStructured,
  InvalidOutputError,
  type StructuredResult,
} from '../common/structured-output.js';
import { errorCodeFor, latencyFields } from './ask.js';

/** Each camera's newest frame (one JPEG per camera: bounded). */
export class LatestFrames {
  private readonly frames = new Map<string, Frame>();
  private readonly listeners: Array<[FrameSource, (f: Frame) => void]> = [];

  attach(source: FrameSource): void {
    const listener = (frame: Frame): void => void this.frames.set(source.name, frame);
    source.on('frame', listener);
    this.listeners.push([source, listener]);
  }

  latest(camera: string): Frame | undefined {
    return this.frames.get(camera);
  }

  detach(): void {
    for (const [source, listener] of this.listeners) source.off('frame', listener);
    this.listeners.length = 0;
  }
}

export interface SeeingPipelineOptions {
  out: CameraPublisher;
  scheduler: Scheduler;
  engine: AnswerEngine;
  cameras: readonly CameraSettings[];
  /** scheduler.caption_deadline_ms */
  captionDeadlineMs: number;
  logger?: Logger;
}

type CaptionError = { code: ErrorCode; message: string };
type Outcome = { text: string } | { error: CaptionError; superseded?: boolean };

interface EventState {
  caption?: string;
  error?: CaptionError;
}

interface CameraCounts {
  made: number;
  failed: number;
  lastError?: string;
}

export class SeeingPipeline {
  private readonly log: Logger;
  private readonly cameras: Map<string, CameraSettings>;
  /** Validators of cameras with structured captions (the config already checked that the schemas compile). */
  private readonly validators = new Map<string, ReturnType<typeof compileStructured>>();
  private readonly events = new Map<string, EventState>();
  private readonly counts = new Map<string, CameraCounts>();
  /** Per camera, the publishes in order (an `end` joins once its caption settled). */
  private readonly chains = new Map<string, Promise<void>>();
  /** Event ends waiting for their caption (stop() waits for them). */
  private readonly pendingEnds = new Set<Promise<void>>();

  constructor(private readonly o: SeeingPipelineOptions) {
    this.log = (o.logger ?? silentLogger).child({ module: 'seeing' });
    this.cameras = new Map(o.cameras.map((c) => [c.name, c]));
    for (const c of o.cameras) if (c.structured) this.validators.set(c.name, compileStructured(c.structured));
  }

  /** MotionPipeline's sink: publishes the event, with captions, in order per camera. Returns at once. */
  readonly onMotion = (u: MotionUpdate, msg: CameraEventMessage): void => {
    const cam = this.cameras.get(u.camera);
    const captions = cam?.captions ?? false;
    if (u.type === 'new' && captions) this.events.set(u.id, {});
    const state = this.events.get(u.id);
    if (u.type !== 'end') {
      this.enqueue(u.camera, () => this.publishEvent(withCaption(msg, state)));
      // Fire and forget: the result lands in `state` for later updates and the end.
      if (u.type === 'new' && cam && state) void this.caption(cam, u, 'new', state);
      return;
    }
    this.events.delete(u.id);
    if (!cam || !captions || !state) {
      this.enqueue(u.camera, () => this.publishEvent(msg));
      return;
    }
    const done = this.caption(cam, u, 'end', state).then(() => {
      // Enqueued only now: an end waits for its caption without holding back other cameras or motion OFF.
      this.enqueue(u.camera, () => this.publishEvent(withCaption(msg, state)));
    });
    this.pendingEnds.add(done);
    void done.finally(() => this.pendingEnds.delete(done));
  };

  /** Waits for held event ends (their caption jobs settle once the scheduler drains or refuses). */
  async stop(): Promise<void> {
    while (this.pendingEnds.size) await Promise.all([...this.pendingEnds]);
    await Promise.all([...this.chains.values()]);
  }

  stats(): NonNullable<StatsMessage['captions']> {
    const out: NonNullable<StatsMessage['captions']> = {};
    for (const [name, c] of this.counts)
      out[name] = { made: c.made, failed: c.failed, ...(c.lastError ? { last_error: c.lastError.slice(0, 500) } : {}) };
    return out;
  }

  private enqueue(camera: string, fn: () => Promise<void>): void {
    const next = (this.chains.get(camera) ?? Promise.resolve())
      .then(fn)
      .catch((err: unknown) => this.log.error({ err, camera }, 'camera event publish failed'));
    this.chains.set(camera, next);
  }

  private async publishEvent(msg: CameraEventMessage): Promise<void> {
    this.log.info(
      {
        camera: msg.camera,
        id: msg.id,
        type: msg.type,
        caption: msg.caption !== undefined,
        caption_error: msg.caption_error?.code,
      },
      'camera event',
    );
    await this.o.out.event(msg);
  }

  /** One caption attempt for the event's best frame; records the outcome on the event and publishes it. */
  private async caption(cam: CameraSettings, u: MotionUpdate, stage: 'new' | 'end', state: EventState): Promise<void> {
    const outcome = await this.runCaption(cam, u, stage);
    const counts = this.counts.get(cam.name) ?? { made: 0, failed: 0 };
    this.counts.set(cam.name, counts);
    if ('text' in outcome) {
      counts.made++;
      state.caption = outcome.text;
      delete state.error;
    } else {
      // A superseded attempt is no failure: the newer frame's attempt reports for it.
      if (!outcome.superseded) {
        counts.failed++;
        counts.lastError = `${outcome.error.code}: ${outcome.error.message}`;
      }
      state.error = outcome.error;
    }
  }

  private async runCaption(cam: CameraSettings, u: MotionUpdate, stage: 'new' | 'end'): Promise<Outcome> {
    const frame = u.best;
    const id = randomUUID();
    const st = this.o.engine.status();
    // No job for an engine that cannot see: the event says why, the caption topic stays quiet.
    if (st.state !== 'ready' || !st.vision)
      return { error: { code: 'unavailable', message: `no caption: ${st.detail}`.slice(0, 2000) } };
    const submitted = Date.now();
    let started = 0;
    const base = {
      v: 1 as const,
      id,
      camera: cam.name,
      frame_ts: frame.at.toISOString(),
      stage,
      event_id: u.id,
      snapshot_topic: this.o.out.snapshotTopic(cam.name),
    };
    try {
      const validator = this.validators.get(cam.name);
      const { r, s } = await this.o.scheduler.submit({
        kind: 'caption',
        id,
        key: `camera:${cam.name}`,
        deadlineMs: this.o.captionDeadlineMs,
        run: async (signal): Promise<{ r: GenerationResult; s?: StructuredResult }> => {
          started = Date.now();
          // Structured captions decode under the schema's token mask: valid on the first pass; the retries
          // stay for a reply the mask cannot finish (caption_max_tokens too small for the object).
          const ask = (text: string) =>
            this.o.engine.generate({
              ...(validator && cam.structured ? { jsonSchema: cam.structured } : {}),
              messages: [
                {
                  role: 'user',
                  content: [
                    { type: 'image', data: frame.jpeg, tokens: captionBudget(cam, stage) },
                    { type: 'text', text },
                  ],
                },
              ],
              maxTokens: cam.caption_max_tokens,
              signal,
            });
          if (!validator || !cam.structured) return { r: await ask(cam.prompt) };
          // Every attempt runs inside this one job: retries keep the model instead of queueing again.
          let last: GenerationResult | undefined;
          const s = await generateStructured(
            async (prompt) => {
              last = await ask(prompt);
              signal.throwIfAborted();
              return last.text;
            },
            {
              prompt: cam.prompt,
              schema: cam.structured,
              validator,
              retries: cam.structured_retries,
              onInvalid: (attempt, reason) =>
                this.log.debug({ camera: cam.name, id, attempt, reason }, 'structured caption invalid'),
            },
          );
          return { r: last as GenerationResult, s };
        },
      });
      if (r.finishReason === 'cancelled') return { error: { code: 'cancelled', message: 'the caption was cancelled' } };
      const text = s ? s.text : r.text.trim();
      const l = latencyFields(r.timings);
      const msg: CaptionMessage = {
        ...base,
        ts: isoNow(),
        text,
        ...(s ? { data: s.data, attempts: s.attempts } : {}),
        ...(this.o.engine.status().randomWeights ? { random_weights: true as const } : {}),
        ...(r.image ? { width: r.image.width, height: r.image.height, image_tokens: r.image.tokens } : {}),
        latency_ms: {
          queue: started - submitted,
          ...(l.vision !== undefined ? { vision: l.vision } : {}),
          ...(l.prefill !== undefined ? { prefill: l.prefill } : {}),
          ...(l.decode !== undefined ? { decode: l.decode } : {}),
          total: Date.now() - submitted,
        },
      };
      await this.publishCaption(msg, frame.jpeg);
      return { text };
    } catch (err) {
      // A newer frame of this camera took the job's place: that one will be captioned instead.
      const superseded = isSchedulerError(err, 'superseded');
      const code: ErrorCode = superseded ? 'cancelled' : errorCodeFor(err);
      const message = superseded
        ? 'a newer frame of this camera replaced it in the queue'
        : err instanceof Error
          ? err.message
          : String(err);
      if (code === 'internal') this.log.error({ err, camera: cam.name }, 'caption failed');
      else this.log.info({ camera: cam.name, code, reason: message }, 'no caption');
      if (!superseded) {
        const attempts = err instanceof InvalidOutputError ? { attempts: err.attempts } : {};
        await this.publishCaption(
          {
            ...base,
            ts: isoNow(),
            text: null,
            reason: message.slice(0, 500),
            error_code: code,
            ...attempts,
            latency_ms: { total: Date.now() - submitted },
          },
          null,
        );
      }
      return { error: { code, message: message.slice(0, 2000) }, superseded };
    }
  }

  private async publishCaption(msg: CaptionMessage, jpeg: Buffer | null): Promise<void> {
    await this.o.out.caption(msg, jpeg);
  }
}

/**
 * The image token budget of a caption: the early one (when an event starts) is made with the smaller
 * early_image_tokens, so it comes seconds sooner; the final one with image_tokens.
 */
export function captionBudget(
  cam: Pick<CameraSettings, 'image_tokens' | 'early_image_tokens'>,
  stage: 'new' | 'end',
): TokenBudget {
  return stage === 'new' ? (Math.min(cam.early_image_tokens, cam.image_tokens) as TokenBudget) : cam.image_tokens;
}

function withCaption(msg: CameraEventMessage, state: EventState | undefined): CameraEventMessage {
  if (!state) return msg;
  return {
    ...msg,
    ...(state.caption !== undefined ? { caption: state.caption } : {}),
    ...(state.error ? { caption_error: state.error } : {}),
  };
}
