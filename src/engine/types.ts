/**
 * The seam between the daemon and the model engine. Pipelines ask an AnswerEngine; the engine that runs
 * Gemma 4 packages plugs in here (generation work). Until it lands, UnavailableEngine answers every job
 * with a clear `unavailable` error: the daemon never invents output.
 */
import type { AskRequest } from '../mqtt/messages.js';
import type { TokenBudget } from '../vision/preprocess.js';

export interface EngineStatus {
  /** Short state for stats and Home Assistant: ready | loading | unavailable | error. */
  state: 'ready' | 'loading' | 'unavailable' | 'error';
  /** One sentence a person can act on. */
  detail: string;
  /** True when outputs are not meaningful (e.g. a synthetic package with random weights). */
  random_weights?: boolean;
  /** True when the engine can take images (a vision encoder is loaded): captions and image questions. */
  vision?: boolean;
}

export interface AnswerResult {
  text: string;
  finish_reason: 'stop' | 'length' | 'cancelled';
  thinking?: string;
  tokens: { prompt: number; completion: number };
  /** vision (preprocess + encoder), prefill and decode are there when known. */
  latency_ms: { first_token: number; total: number; vision?: number; prefill?: number; decode?: number };
  /** The image the answer is about: its size after resizing and its soft tokens. */
  image?: { width: number; height: number; tokens: number };
}

export interface AnswerOptions {
  signal: AbortSignal;
  onToken: (delta: string) => void;
  /** The image to answer about (a camera's frame); else the request's base64 `image`, if any. */
  image?: Buffer;
  /** Soft-token budget of the image (the camera's image_tokens); default 280. */
  imageTokens?: TokenBudget;
  /** Replaces model.system_prompt for this request ('' for none). */
  systemPrompt?: string;
}

export interface AnswerEngine {
  status(): EngineStatus;
  /**
   * Streams tokens through onToken; rejects with EngineUnavailableError when it cannot answer at all and with
   * InvalidInputError when the request's content is unusable (an image that does not decode).
   */
  answer(request: AskRequest, opts: AnswerOptions): Promise<AnswerResult>;
  close(): Promise<void>;
}

export class EngineUnavailableError extends Error {
  override readonly name = 'EngineUnavailableError';
}

/** The request cannot be served as given (e.g. a corrupt image); reported as invalid_request. */
export class InvalidInputError extends Error {
  override readonly name = 'InvalidInputError';
}

export class UnavailableEngine implements AnswerEngine {
  constructor(private readonly reason: string) {}

  status(): EngineStatus {
    return { state: 'unavailable', detail: this.reason };
  }

  async answer(): Promise<AnswerResult> {
    throw new EngineUnavailableError(this.reason);
  }

  async close(): Promise<void> {}
}

/**
 * Where the engine's stages (its encoders) report each failure and success: the daemon's health tracker,
 * which restarts a stage that keeps failing.
 */
export interface StageReporter {
  error(stage: string, err: unknown): void;
  ok(stage: string): void;
}

/** Health stage names of the engine's encoders. */
export const ENGINE_STAGES = { vision: 'model/vision_encoder', audio: 'model/audio_encoder' } as const;

/**
 * The engine the pipelines hold. Its `current` engine can be replaced while the daemon runs (a model package
 * that arrived after start), so pipelines never keep a stale one.
 */
export class EngineSlot implements AnswerEngine {
  constructor(public current: AnswerEngine) {}

  status(): EngineStatus {
    return this.current.status();
  }

  answer(request: AskRequest, opts: AnswerOptions): Promise<AnswerResult> {
    return this.current.answer(request, opts);
  }

  close(): Promise<void> {
    return this.current.close();
  }
}
