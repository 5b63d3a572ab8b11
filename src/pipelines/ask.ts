/**
 * Questions: `<root>/ask` (JSON), `<root>/ask/text` (Home Assistant's text entity) and `<root>/ask/cancel`,
 * through the scheduler to the answer engine, streamed on `<root>/answer/stream` and answered on the
 * request's reply address. Every request gets an answer or an error.
 */
import type {
  AnswerEngine,
  ContentPart,
  GenerationRequest,
  GenerationResult,
  GenerationTimings,
} from '../engine/types.js';
import { ContextLimitError } from '../engine/engine.js';
import { EngineUnavailableError, InvalidInputError } from '../engine/types.js';
import { silentLogger, type Logger } from '../common/log.js';
import { AskEndpoint, type AskContext } from '../mqtt/ask-endpoint.js';
import type { MqttConnection } from '../mqtt/connection.js';
import { type AskRequest, DEFAULT_MAX_IMAGE_BYTES, type ErrorCode } from '../mqtt/messages.js';
import { RetainedImageError, takeRetainedJpeg } from '../mqtt/retained-image.js';
import { isSchedulerError } from '../scheduler/errors.js';
import type { ActionRecord, Actions } from './actions.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { Frame } from '../sources/types.js';
import type { TokenBudget } from '../model/gemma4/contract.js';
import { InvalidOutputError } from '../common/structured-output.js';

export interface AskPipelineOptions {
  conn: MqttConnection;
  scheduler: Scheduler;
  engine: AnswerEngine;
  maxPayloadBytes: number;
  cameras: readonly string[];
  /** A camera's newest frame, for questions about a camera (taken when the answer starts). */
  latestFrame?: (camera: string) => Frame | undefined;
  /** A camera's image_tokens setting; default 280. */
  imageTokens?: (camera: string) => TokenBudget;
  /** Allow-listed actions offered to the model (none: plain answers). */
  actions?: Actions;
  logger?: Logger;
}

/** How a failed job is reported: scheduler refusals keep their code, a missing engine is `unavailable`. */
export function errorCodeFor(err: unknown): ErrorCode {
  if (err instanceof EngineUnavailableError) return 'unavailable';
  if (err instanceof InvalidOutputError) return 'invalid_output';
  if (err instanceof RetainedImageError) return err.code;
  if (err instanceof ContextLimitError || err instanceof InvalidInputError) return 'invalid_request';
  if (isSchedulerError(err)) {
    switch (err.code) {
      case 'busy':
      case 'deadline':
      case 'cancelled':
        return err.code;
      case 'shutting_down':
        return 'unavailable';
      case 'duplicate':
        return 'invalid_request';
      case 'superseded':
        return 'cancelled';
    }
  }
  return 'internal';
}

export class AskPipeline {
  private readonly endpoint: AskEndpoint;
  private readonly log: Logger;

  constructor(private readonly o: AskPipelineOptions) {
    this.log = (o.logger ?? silentLogger).child({ module: 'ask' });
    this.endpoint = new AskEndpoint(
      o.conn,
      { maxPayloadBytes: o.maxPayloadBytes, cameras: o.cameras },
      { ask: (ctx) => void this.handle(ctx), cancel: (id) => this.o.scheduler.cancel(id, 'cancelled over MQTT') },
      o.logger,
    );
  }

  start(): void {
    this.endpoint.start();
  }

  stop(): void {
    this.endpoint.stop();
  }

  private async handle(ctx: AskContext): Promise<void> {
    const { request, route } = ctx;
    let seq = 0;
    // A running answer that is cancelled still ends with what it generated (finish_reason cancelled);
    // the scheduler reports the cancellation, the engine's partial result is kept here.
    let partial: GenerationResult | undefined;
    let startedAt = 0;
    try {
      // Taken before queueing, so the up to 2 s wait for the topic never holds the model.
      const topicImage =
        request.image_topic !== undefined
          ? await takeRetainedJpeg(this.o.conn, request.image_topic, {
              maxBytes: Math.min(DEFAULT_MAX_IMAGE_BYTES, this.o.maxPayloadBytes),
            })
          : undefined;
      const result = await this.o.scheduler
        .submit({
          kind: 'answer',
          id: request.id,
          run: async (signal) => {
            startedAt = Date.now();
            const camera = request.camera;
            const frame = camera !== undefined ? this.o.latestFrame?.(camera)?.jpeg : undefined;
            const image = questionImage(request, { topicImage, frame });
            const tokens = camera !== undefined ? this.o.imageTokens?.(camera) : undefined;
            const onToken = (delta: string): void => void this.endpoint.streamChunk(route, seq++, delta, false);
            const req = generationRequest(request, { image, tokens, signal, onToken });
            const actions = this.o.actions;
            if (!actions || request.tool_choice === 'none') return (partial = await this.o.engine.generate(req));
            const r = await actions.answer(
              (g) => this.o.engine.generate(g),
              {
                ...req,
                ...(request.tool_choice && request.tool_choice !== 'auto' ? { toolChoice: request.tool_choice } : {}),
              },
              { id: request.id },
            );
            partial = r;
            return r;
          },
        })
        .catch((err: unknown) => {
          if (isSchedulerError(err, 'cancelled') && partial) return partial;
          throw err;
        });
      await this.endpoint.streamChunk(route, seq++, '', true);
      await this.endpoint.answer(route, {
        text: result.text,
        finish_reason: result.finishReason,
        ...(result.thinking !== undefined ? { thinking: result.thinking } : {}),
        ...(request.camera ? { camera: request.camera } : {}),
        tokens: result.tokens,
        latency_ms: {
          queue: Math.max(0, startedAt - ctx.receivedAt),
          ...latencyFields(result.timings),
          total: Date.now() - ctx.receivedAt,
        },
        ...(this.o.engine.status().randomWeights ? { random_weights: true as const } : {}),
        ...('actions' in result && (result.actions as ActionRecord[]).length
          ? { actions: (result.actions as ActionRecord[]).slice(0, 16) }
          : {}),
      });
    } catch (err) {
      const code = errorCodeFor(err);
      const message = err instanceof Error ? err.message : String(err);
      if (code === 'internal') this.log.error({ err, id: request.id }, 'answer failed');
      else this.log.info({ id: request.id, code, reason: message }, 'request not answered');
      await this.endpoint.fail(route, code, message, { topic: ctx.topic });
    }
  }
}

/**
 * The image a question is about: a retained topic's JPEG, the camera's newest frame, or the request's own
 * base64 image. A camera that has no frame yet is `unavailable`.
 */
export function questionImage(request: AskRequest, found: { topicImage?: Buffer; frame?: Buffer }): Buffer | undefined {
  const image =
    found.topicImage ?? found.frame ?? (request.image !== undefined ? Buffer.from(request.image, 'base64') : undefined);
  if (request.camera !== undefined && !image)
    throw new EngineUnavailableError(`no frame from camera ${request.camera} yet`);
  return image;
}

/** An MQTT question in the engine's terms: one user turn, its image (if any) before the text. */
export function generationRequest(
  request: AskRequest,
  o: { image?: Buffer; tokens?: TokenBudget; signal: AbortSignal; onToken?: (delta: string) => void },
): GenerationRequest {
  const content: ContentPart[] = [{ type: 'text', text: request.text }];
  if (o.image)
    content.unshift({ type: 'image', data: o.image, ...(o.tokens !== undefined ? { tokens: o.tokens } : {}) });
  return {
    messages: [{ role: 'user', content }],
    ...(request.max_tokens !== undefined ? { maxTokens: request.max_tokens } : {}),
    sampling: {
      ...(request.temperature !== undefined ? { temperature: request.temperature } : {}),
      ...(request.seed !== undefined ? { seed: request.seed } : {}),
    },
    thinking: request.thinking ?? false,
    signal: o.signal,
    ...(o.onToken ? { onToken: o.onToken } : {}),
  };
}

/** The engine's timings as the latency_ms fields of answers and captions (whole milliseconds). */
export function latencyFields(t: GenerationTimings): {
  first_token: number;
  total: number;
  vision?: number;
  prefill?: number;
  decode?: number;
} {
  return {
    first_token: Math.round(t.firstTokenMs),
    total: Math.round(t.totalMs),
    ...(t.visionMs !== undefined ? { vision: Math.round(t.visionMs) } : {}),
    ...(t.prefillMs !== undefined ? { prefill: Math.round(t.prefillMs) } : {}),
    ...(t.decodeMs !== undefined ? { decode: Math.round(t.decodeMs) } : {}),
  };
}
