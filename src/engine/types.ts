/**
 * The seam between the daemon and the model engine. Pipelines ask an AnswerEngine; the engine that runs
 * Gemma 4 packages plugs in here (generation work). Until it lands, UnavailableEngine answers every job
 * with a clear `unavailable` error: the daemon never invents output.
 */
import type { AskRequest } from '../mqtt/messages.js';

export interface EngineStatus {
  /** Short state for stats and Home Assistant: ready | loading | unavailable | error. */
  state: 'ready' | 'loading' | 'unavailable' | 'error';
  /** One sentence a person can act on. */
  detail: string;
  /** True when outputs are not meaningful (e.g. a synthetic package with random weights). */
  random_weights?: boolean;
}

export interface AnswerResult {
  text: string;
  finish_reason: 'stop' | 'length' | 'cancelled';
  thinking?: string;
  tokens: { prompt: number; completion: number };
  latency_ms: { first_token: number; total: number };
}

export interface AnswerEngine {
  status(): EngineStatus;
  /** Streams tokens through onToken; rejects with EngineUnavailableError when it cannot answer at all. */
  answer(request: AskRequest, opts: { signal: AbortSignal; onToken: (delta: string) => void }): Promise<AnswerResult>;
  close(): Promise<void>;
}

export class EngineUnavailableError extends Error {
  override readonly name = 'EngineUnavailableError';
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
