/**
 * The daemon's AnswerEngine over the generation engine: loads the package in the background (status says
 * loading / ready / error), answers ask requests with the configured system prompt, and reports synthetic
 * packages as random_weights so nobody mistakes their output for answers.
 */
import type { PerchConfig } from '../config/schema.js';
import { type Logger, silentLogger } from '../log.js';
import type { AskRequest } from '../mqtt/messages.js';
import { Engine, type EngineLoadOptions } from './engine.js';
import type { ChatMessage } from './prompt.js';
import type { SamplerOptions } from './sampling.js';
import { type AnswerEngine, type AnswerResult, type EngineStatus, EngineUnavailableError } from './types.js';

export type ModelSettings = PerchConfig['model'];

/** Gemma's recommended sampling (temperature 1, top-k 64, top-p 0.95); requests override temperature and seed. */
export const DEFAULT_SAMPLING: Readonly<SamplerOptions> = { temperature: 1, topK: 64, topP: 0.95 };

export interface GemmaEngineOptions {
  logger?: Logger;
  /** Passed to Engine.load (session tuning, prefill chunk). */
  load?: Partial<Pick<EngineLoadOptions, 'tuning' | 'prefillChunk' | 'prefixSnapshots'>>;
}

/**
 * Text of the model's control tokens (`<|turn>`, `<turn|>`, `<|image|>`, `<bos>` ...). The tokenizer maps
 * such text to the tokens themselves, so a question over MQTT could otherwise close its turn and forge
 * another. Questions are untrusted: the markers are removed before the prompt is rendered.
 */
const CONTROL_TOKEN_TEXT = /<\|[^<>|\s]{1,40}\|?>|<[^<>|\s]{1,40}\|>|<(?:bos|eos|pad|unk|mask)>/g;

export function stripControlTokens(text: string): string {
  let out = text;
  // Repeat: removing one marker can join the pieces of another (`<|tu<bos>rn>`).
  for (let prev = ''; prev !== out; ) {
    prev = out;
    out = out.replace(CONTROL_TOKEN_TEXT, '');
  }
  return out;
}

export class GemmaAnswerEngine implements AnswerEngine {
  private engine: Engine | null = null;
  private state: EngineStatus = { state: 'loading', detail: 'loading the model package' };
  private loading: Promise<void> | null = null;
  private closed = false;
  private readonly log: Logger;

  constructor(
    private readonly settings: ModelSettings,
    private readonly opts: GemmaEngineOptions = {},
  ) {
    this.log = opts.logger ?? silentLogger;
  }

  /** Loads the package; resolves when ready or failed (never rejects: the failure is in status()). */
  start(): Promise<void> {
    this.loading ??= this.load();
    return this.loading;
  }

  private async load(): Promise<void> {
    const s = this.settings;
    try {
      const engine = await Engine.load(s.dir, {
        threads: s.threads,
        contextTokens: s.context_tokens,
        pleCacheMb: s.ple_cache_mb,
        memoryBudgetMb: s.memory_budget_mb,
        logger: this.log,
        ...this.opts.load,
      });
      if (this.closed) {
        await engine.close();
        return;
      }
      this.engine = engine;
      const random = engine.randomWeights;
      this.state = {
        state: 'ready',
        detail: random
          ? `synthetic package ${engine.manifest.source.model} loaded: RANDOM WEIGHTS, answers are meaningless; get the real model with \`perch model pull\` (or \`perch model convert\`) and point model.dir at it`
          : `model ${engine.manifest.source.model} ready`,
        ...(random ? { random_weights: true } : {}),
      };
      if (random) this.log.warn({ dir: s.dir }, 'the model package is synthetic (random weights): answers are meaningless');
    } catch (err) {
      this.state = { state: 'error', detail: `model package could not be loaded: ${(err as Error).message}` };
      this.log.error({ dir: s.dir, err: (err as Error).message }, 'model load failed');
    }
  }

  status(): EngineStatus {
    return { ...this.state };
  }

  async answer(request: AskRequest, opts: { signal: AbortSignal; onToken: (delta: string) => void }): Promise<AnswerResult> {
    const engine = this.engine;
    if (!engine || this.closed) throw new EngineUnavailableError(this.state.detail);
    if (request.image !== undefined || request.camera !== undefined) {
      throw new EngineUnavailableError('questions about images need the vision encoder, which this engine does not have yet');
    }
    const t0 = performance.now();
    const messages: ChatMessage[] = [];
    const system = this.settings.system_prompt.trim();
    if (system) messages.push({ role: 'system', content: system });
    messages.push({ role: 'user', content: stripControlTokens(request.text) });
    const thinking = request.thinking ?? false;
    const prompt = engine.preparePrompt(messages, { thinking });
    // Without an explicit max_tokens the default shrinks to what the context has left.
    const room = engine.contextTokens - prompt.ids.length;
    const maxTokens = request.max_tokens ?? Math.max(1, Math.min(this.settings.max_answer_tokens, room));
    const sampling: SamplerOptions = {
      ...DEFAULT_SAMPLING,
      ...(request.temperature !== undefined ? { temperature: request.temperature } : {}),
      ...(request.seed !== undefined ? { seed: request.seed } : {}),
    };
    const r = await engine.generate({
      promptIds: prompt.ids,
      prefixTokens: prompt.prefixTokens,
      maxTokens,
      sampling,
      signal: opts.signal,
      onToken: (delta) => {
        if (delta) opts.onToken(delta);
      },
    });
    return {
      text: r.text,
      finish_reason: r.finishReason,
      ...(thinking && r.thinking ? { thinking: r.thinking } : {}),
      tokens: { prompt: r.promptTokens, completion: r.tokens.length },
      latency_ms: { first_token: Math.round(r.timings.firstTokenMs), total: Math.round(performance.now() - t0) },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.loading;
    const e = this.engine;
    this.engine = null;
    this.state = { state: 'unavailable', detail: 'engine closed' };
    await e?.close();
  }
}
