/**
 * The engine's own API: what a generation request and its result are in the engine's terms. The MQTT topics,
 * the CLI and the HTTP and Wyoming interfaces each translate their wire format to these types at their edge;
 * nothing here knows a topic or a JSON field. UnavailableEngine answers every request with a clear
 * `unavailable` error until a model package is loaded: the daemon never invents output.
 */
import type { SpeechStream } from './speech-stream.js';
import type { TokenBudget } from '../model/gemma4/contract.js';

export interface EngineStatus {
  /** Short state for stats and Home Assistant. */
  state: 'ready' | 'loading' | 'unavailable' | 'error';
  /** One sentence a person can act on. */
  detail: string;
  /** True when outputs are not meaningful (a synthetic package with random weights). */
  randomWeights?: boolean;
  /** True when the engine can take images (a vision encoder is loaded). */
  vision?: boolean;
  /** True when the engine can take audio (an audio encoder is loaded). */
  audio?: boolean;
}

/** One part of a message's content. */
export type ContentPart =
  | { type: 'text'; text: string }
  /** An encoded image (JPEG, PNG, WebP), with its soft-token budget (default 280). */
  | { type: 'image'; data: Buffer; tokens?: TokenBudget }
  /** 16 kHz mono audio, int16 or float in [-1, 1], at most 30 s. */
  | { type: 'audio'; samples: Int16Array | Float32Array };

export interface GenerationMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string | ContentPart[];
  /** Calls the model made in this (assistant) turn. */
  toolCalls?: ToolCallRecord[];
  /** The tool that answered (tool turns; content is its result). */
  name?: string;
}

/** A function the model may call: its name, what it does, and a JSON schema of its arguments. */
export interface ToolSpec {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
}

/** A call of a tool: the name and the arguments object. */
export interface ToolCallRecord {
  name: string;
  arguments: Record<string, unknown>;
}

export interface SamplingSettings {
  /** 0 is greedy. Default: Gemma's recommended 1. */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Same seed, same output. Random when absent. */
  seed?: number;
}

export interface GenerationRequest {
  /**
   * The conversation. Without a system message the engine uses its configured system prompt; a system message
   * with empty content means none. Text is untrusted: control-token markers are removed from it.
   */
  messages: GenerationMessage[];
  /** Bound on generated tokens; default: the configured answer length, lowered to what the context has left. */
  maxTokens?: number;
  sampling?: SamplingSettings;
  /** Let the model think first (its thoughts come back apart from the text). */
  thinking?: boolean;
  /** Texts that end the answer where they appear (not included in it). */
  stop?: string[];
  /** Tools the model may call; its calls come back in the result (the caller runs them). */
  tools?: ToolSpec[];
  /**
   * 'auto' (default): the model decides. 'required': the reply is one call of one of the tools, decoded under
   * their schemas (engine/grammar.ts); { name }: one call of that tool.
   */
  toolChoice?: 'auto' | 'required' | { name: string };
  /**
   * The reply must be one JSON value valid against this schema: it is decoded under a token mask
   * (engine/grammar.ts), so it is valid as soon as it is complete. Thinking is off for such a reply.
   */
  jsonSchema?: Record<string, unknown>;
  /** Aborting it ends generation with finishReason 'cancelled' and what was generated so far. */
  signal: AbortSignal;
  /** Each piece of text as it is generated. */
  onToken?: (delta: string) => void;
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface GenerationTimings {
  /** From the call to the first generated token (media encoding included). */
  firstTokenMs: number;
  totalMs: number;
  /** Image preprocessing and encoding, when the request had images. */
  visionMs?: number;
  /** Audio features and encoding, when the request had audio. */
  audioMs?: number;
  prefillMs?: number;
  decodeMs?: number;
  /** With jsonSchema: the grammar's mask, computed and applied, over all steps. */
  maskMs?: number;
}

export interface GenerationResult {
  text: string;
  finishReason: FinishReason;
  thinking?: string;
  tokens: { prompt: number; completion: number };
  timings: GenerationTimings;
  /** Calls the model made (with tools declared); the text is what it said besides. */
  toolCalls?: ToolCallRecord[];
  /** The first image of the request: its size after resizing and its soft tokens. */
  image?: { width: number; height: number; tokens: number };
}

/** Speech to text and spoken questions (see Transcriber), as the hearing pipeline uses them. */
export interface SpeechEngine {
  /** True when the package is synthetic (random weights). */
  readonly randomWeights: boolean;
  transcribe(samples: Int16Array | Float32Array, opts?: SpeechOptions): Promise<SpeechResult>;
  /** Answers what is said in a clip; `prompt` is the instruction. */
  answer(samples: Int16Array | Float32Array, opts: SpeechOptions & { prompt: string }): Promise<SpeechResult>;
  /**
   * Hears an utterance while it is spoken (engine/speech-stream.ts): give it the samples as they come, then
   * pass it to transcribe with the finished clip. Null when the package cannot stream (older packages).
   */
  openStream?(opts?: Pick<SpeechOptions, 'language'>): SpeechStream | null;
}

export interface SpeechOptions {
  signal?: AbortSignal;
  onToken?: (delta: string) => void;
  maxTokens?: number;
  /** Spoken language, e.g. "English"; default: the model finds it. */
  language?: string;
  /** Replaces the whole instruction (the audio still follows it). */
  prompt?: string;
  /** The stream this clip was heard through while spoken (openStream); a failed stream is ignored. */
  stream?: SpeechStream;
}

export interface SpeechResult {
  text: string;
  finishReason: FinishReason;
  /** Soft tokens the clip became. */
  audioTokens: number;
  /** Of those, the ones encoded and prefilled while the clip was spoken (a stream; 0 otherwise). */
  streamedTokens?: number;
  promptTokens: number;
  tokens: ArrayLike<number>;
  timings: {
    featuresMs: number;
    encodeMs: number;
    prefillMs: number;
    firstTokenMs: number;
    decodeMs: number;
    totalMs: number;
  };
}

export interface AnswerEngine {
  status(): EngineStatus;
  /**
   * Generates, streaming text through request.onToken. Rejects with EngineUnavailableError when it cannot
   * answer at all (no model, no encoder for a part's kind) and with InvalidInputError when the request's
   * content is unusable (an image that does not decode, a clip that is too long).
   */
  generate(request: GenerationRequest): Promise<GenerationResult>;
  /** Speech to text over the same model, when the package can hear. */
  speech?(): SpeechEngine | undefined;
  /** Rebuilds an encoder stage that keeps failing (ENGINE_STAGES), when the engine has such stages. */
  restartStage?(stage: string): Promise<void>;
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

  async generate(): Promise<GenerationResult> {
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

  generate(request: GenerationRequest): Promise<GenerationResult> {
    return this.current.generate(request);
  }

  speech(): SpeechEngine | undefined {
    return this.current.speech?.();
  }

  async restartStage(stage: string): Promise<void> {
    await this.current.restartStage?.(stage);
  }

  close(): Promise<void> {
    return this.current.close();
  }
}
