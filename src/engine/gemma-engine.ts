/**
 * The daemon's AnswerEngine over the generation engine: loads the package in the background (status says
 * loading / ready / error), answers ask requests with the configured system prompt, and reports synthetic
 * packages as random_weights so nobody mistakes their output for answers. With a vision encoder in the
 * package it also answers about images (a request's JPEG or a camera frame the caller passes): the image's
 * soft-token rows replace the placeholder run of the user turn.
 */
import type { PerchConfig } from '../config/schema.js';
import { type Logger, silentLogger } from '../common/log.js';
import type { AskRequest } from '../mqtt/messages.js';
import { DEFAULT_IMAGE_TOKENS, ImagePreprocessError } from '../vision/preprocess.js';
import { Engine, type EngineLoadOptions, type MediaInput } from './engine.js';
import { type ChatMessage, expandMediaPlaceholders } from './prompt.js';
import type { SamplerOptions } from './sampling.js';
import { defaultCacheDir, packageChecksum } from './prepacked-cache.js';
import { Transcriber } from './transcriber.js';
import {
  type AnswerEngine,
  type AnswerOptions,
  type AnswerResult,
  ENGINE_STAGES,
  type EngineStatus,
  EngineUnavailableError,
  InvalidInputError,
  type StageReporter,
} from './types.js';
import { VisionEncoder, visionEncoderPath } from './vision.js';

export type ModelSettings = PerchConfig['model'];

/** Gemma's recommended sampling (temperature 1, top-k 64, top-p 0.95); requests override temperature and seed. */
export const DEFAULT_SAMPLING: Readonly<SamplerOptions> = { temperature: 1, topK: 64, topP: 0.95 };

export interface GemmaEngineOptions {
  logger?: Logger;
  /** Passed to Engine.load (session tuning, prefill chunk). */
  load?: Partial<Pick<EngineLoadOptions, 'tuning' | 'prefillChunk' | 'prefixSnapshots'>>;
  /** Cache directory when settings.cache_dir is unset (the daemon: under its state_dir; default defaultCacheDir()). */
  defaultCacheDir?: string;
  /** Told of every encoder failure and success (ENGINE_STAGES), so one that keeps failing is restarted. */
  health?: StageReporter;
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

/** The image placeholder as Gemma's template renders an image item (the tokenizer maps it to one id). */
const IMAGE_PLACEHOLDER = '<|image|>';

export class GemmaAnswerEngine implements AnswerEngine {
  private engine: Engine | null = null;
  private vision: VisionEncoder | null = null;
  /** Why images cannot be taken, when they cannot (said in status and in every refusal). */
  private visionGap = 'the model is not loaded yet';
  private hearer: Transcriber | null = null;
  /** The hearer as handed out: it reports to opts.health. */
  private hearerView: Transcriber | null = null;
  private hearingGap = 'the model is not loaded yet';
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
    const cacheDir = this.cacheDir();
    try {
      const engine = await Engine.load(s.dir, {
        threads: s.threads,
        contextTokens: s.context_tokens,
        pleCacheMb: s.ple_cache_mb,
        memoryBudgetMb: s.memory_budget_mb,
        prepackedCache: cacheDir === null ? undefined : { dir: cacheDir },
        logger: this.log,
        ...this.opts.load,
      });
      const vision = await this.loadVision(engine);
      const hearer = await this.loadHearing(engine);
      if (this.closed) {
        await Promise.all([engine.close(), vision?.close(), hearer?.close()]);
        return;
      }
      this.engine = engine;
      this.vision = vision;
      this.hearer = hearer;
      const random = engine.randomWeights;
      const seeing =
        (vision ? '; images: yes' : `; images: no (${this.visionGap})`) +
        (hearer ? '; audio: yes' : `; audio: no (${this.hearingGap})`);
      this.state = {
        state: 'ready',
        detail:
          (random
            ? `synthetic package ${engine.manifest.source.model} loaded: RANDOM WEIGHTS, answers are meaningless; get the real model with \`perch model pull\` (or \`perch model convert\`) and point model.dir at it`
            : `model ${engine.manifest.source.model} ready`) + seeing,
        ...(random ? { random_weights: true } : {}),
        vision: vision !== null,
      };
      if (random)
        this.log.warn({ dir: s.dir }, 'the model package is synthetic (random weights): answers are meaningless');
    } catch (err) {
      this.state = { state: 'error', detail: `model package could not be loaded: ${(err as Error).message}` };
      this.log.error({ dir: s.dir, err: (err as Error).message }, 'model load failed');
    }
  }

  /** The transcriber over the shared engine, when the package has an audio encoder the decoder can take. */
  transcriber(): Transcriber | undefined {
    if (this.closed || !this.hearer) return undefined;
    this.hearerView ??= this.reporting(this.hearer);
    return this.hearerView;
  }

  /**
   * Rebuilds a stage that keeps failing (the health tracker calls this): a fresh ONNX session for the vision
   * encoder, or a fresh transcriber for the audio encoder. A stage that cannot be rebuilt stays off, said in
   * status like at load.
   */
  async restartStage(stage: string): Promise<void> {
    const engine = this.engine;
    if (!engine || this.closed) return;
    if (stage === ENGINE_STAGES.vision) {
      const old = this.vision;
      this.vision = null;
      await old?.close();
      this.vision = await this.loadVision(engine);
    } else if (stage === ENGINE_STAGES.audio) {
      const old = this.hearer;
      this.hearer = null;
      this.hearerView = null;
      await old?.close();
      this.hearer = await this.loadHearing(engine);
    }
  }

  /** The transcriber with its transcribe() and answer() reporting failures and successes to opts.health. */
  private reporting(t: Transcriber): Transcriber {
    const health = this.opts.health;
    if (!health) return t;
    const stage = ENGINE_STAGES.audio;
    return new Proxy(t, {
      get(target, prop, receiver) {
        if (prop !== 'transcribe' && prop !== 'answer') return Reflect.get(target, prop, receiver) as unknown;
        const fn = (target[prop] as (...a: unknown[]) => Promise<unknown>).bind(target);
        return async (...args: unknown[]) => {
          try {
            const r = await fn(...args);
            health.ok(stage);
            return r;
          } catch (err) {
            if ((err as Error).name !== 'AbortError') health.error(stage, err);
            throw err;
          }
        };
      },
    });
  }

  private async loadHearing(engine: Engine): Promise<Transcriber | null> {
    try {
      return await Transcriber.load(this.settings.dir, { engine, threads: this.settings.threads, logger: this.log });
    } catch (err) {
      this.hearingGap = (err as Error).message;
      this.log.warn({ dir: this.settings.dir }, `transcripts unavailable: ${this.hearingGap}`);
      return null;
    }
  }

  /** The prepacked weight cache directory, or null when model.prepacked_cache is off. */
  private cacheDir(): string | null {
    const s = this.settings;
    return s.prepacked_cache ? (s.cache_dir ?? this.opts.defaultCacheDir ?? defaultCacheDir()) : null;
  }

  /** The package's vision encoder, when it has one and the decoder and tokenizer can take images. */
  private async loadVision(engine: Engine): Promise<VisionEncoder | null> {
    const dir = this.settings.dir;
    if (!visionEncoderPath(dir)) {
      this.visionGap =
        'this model package has no vision encoder (vision_encoder.onnx): captions and questions about images are unavailable';
      return null;
    }
    const m = engine.tokenizer.special.markers;
    if (!engine.acceptsMedia)
      this.visionGap = "this model package's decoder was built without media inputs: rebuild the package to use images";
    else if (m.image === undefined || m.imageStart === undefined || m.imageEnd === undefined)
      this.visionGap = "this model package's tokenizer lacks the image markers";
    else {
      try {
        const cacheDir = this.cacheDir();
        const vision = await VisionEncoder.load(dir, {
          threads: this.settings.threads,
          prepacked:
            cacheDir === null
              ? undefined
              : { cache: { dir: cacheDir, logger: this.log }, checksum: packageChecksum(engine.manifest, 'vision') },
        });
        if (vision.hidden === engine.config.hiddenSize) return vision;
        await vision.close();
        this.visionGap = `the vision encoder gives rows of ${vision.hidden} values, the decoder takes ${engine.config.hiddenSize}`;
      } catch (err) {
        this.visionGap = `the vision encoder could not be loaded: ${(err as Error).message}`;
      }
    }
    this.log.warn({ dir }, `images unavailable: ${this.visionGap}`);
    return null;
  }

  status(): EngineStatus {
    return { ...this.state };
  }

  async answer(request: AskRequest, opts: AnswerOptions): Promise<AnswerResult> {
    const engine = this.engine;
    if (!engine || this.closed) throw new EngineUnavailableError(this.state.detail);
    const image = opts.image ?? (request.image !== undefined ? Buffer.from(request.image, 'base64') : undefined);
    if (request.camera !== undefined && !image)
      throw new EngineUnavailableError(`no frame from camera ${request.camera} yet`);
    const t0 = performance.now();
    const messages: ChatMessage[] = [];
    const system = (opts.systemPrompt ?? this.settings.system_prompt).trim();
    if (system) messages.push({ role: 'system', content: system });
    const text = stripControlTokens(request.text);
    const thinking = request.thinking ?? false;
    let prompt: { ids: number[]; prefixTokens: number };
    let media: MediaInput[] | undefined;
    let seen: { visionMs: number; width: number; height: number; tokens: number } | undefined;
    if (image) {
      const vision = this.vision;
      if (!vision) throw new EngineUnavailableError(this.visionGap);
      const encoded = await vision
        .encode(image, { tokenBudget: opts.imageTokens ?? DEFAULT_IMAGE_TOKENS })
        .catch((err: unknown) => {
          if (err instanceof ImagePreprocessError) throw new InvalidInputError(`image: ${err.message}`);
          // A bad image is the request's fault; anything else is the encoder's.
          this.opts.health?.error(ENGINE_STAGES.vision, err);
          throw err;
        });
      this.opts.health?.ok(ENGINE_STAGES.vision);
      if (opts.signal.aborted) return cancelled(t0);
      const base = this.renderWithImage(engine, messages, text, thinking);
      const expanded = expandMediaPlaceholders(base.ids, engine.tokenizer.special, {
        imageTokens: [encoded.numSoftTokens],
      });
      prompt = { ids: expanded.ids, prefixTokens: base.prefixTokens };
      media = [{ position: expanded.media[0]!.start, embeddings: encoded.embeddings }];
      const t = encoded.timings;
      seen = {
        visionMs: t.preprocessMs + t.encodeMs,
        width: encoded.width,
        height: encoded.height,
        tokens: encoded.numSoftTokens,
      };
    } else {
      messages.push({ role: 'user', content: text });
      prompt = engine.preparePrompt(messages, { thinking });
    }
    // Without an explicit max_tokens the default shrinks to what the context has left.
    const room = engine.contextTokens - prompt.ids.length;
    const maxTokens = request.max_tokens ?? Math.max(1, Math.min(this.settings.max_answer_tokens, room));
    const sampling: SamplerOptions = {
      ...DEFAULT_SAMPLING,
      ...(request.temperature !== undefined ? { temperature: request.temperature } : {}),
      ...(request.seed !== undefined ? { seed: request.seed } : {}),
    };
    const tGen = performance.now();
    const r = await engine.generate({
      promptIds: prompt.ids,
      prefixTokens: prompt.prefixTokens,
      maxTokens,
      sampling,
      signal: opts.signal,
      ...(media ? { media } : {}),
      onToken: (delta) => {
        if (delta) opts.onToken(delta);
      },
    });
    return {
      text: r.text,
      finish_reason: r.finishReason,
      ...(thinking && r.thinking ? { thinking: r.thinking } : {}),
      tokens: { prompt: r.promptTokens, completion: r.tokens.length },
      latency_ms: {
        first_token: Math.round(tGen - t0 + r.timings.firstTokenMs),
        total: Math.round(performance.now() - t0),
        ...(seen ? { vision: Math.round(seen.visionMs) } : {}),
        prefill: Math.round(r.timings.prefillMs),
        decode: Math.round(r.timings.decodeMs),
      },
      ...(seen ? { image: { width: seen.width, height: seen.height, tokens: seen.tokens } } : {}),
    };
  }

  /**
   * The prompt with one image before the question. Gemma's template renders an image item as its placeholder;
   * templates that only take string content (the synthetic package's) get the placeholder text, which the
   * tokenizer maps to the same id.
   */
  private renderWithImage(
    engine: Engine,
    messages: ChatMessage[],
    text: string,
    thinking: boolean,
  ): { ids: number[]; prefixTokens: number } {
    const placeholder = engine.tokenizer.special.markers.image;
    try {
      const p = engine.preparePrompt(
        [...messages, { role: 'user', content: [{ type: 'image' }, { type: 'text', text }] }],
        { thinking },
      );
      if (p.ids.filter((id) => id === placeholder).length === 1) return p;
    } catch {
      // falls through to the string form
    }
    return engine.preparePrompt([...messages, { role: 'user', content: `${IMAGE_PLACEHOLDER}\n\n${text}` }], {
      thinking,
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.loading;
    const e = this.engine;
    const v = this.vision;
    const h = this.hearer;
    this.engine = null;
    this.vision = null;
    this.hearer = null;
    this.hearerView = null;
    this.state = { state: 'unavailable', detail: 'engine closed' };
    // The transcriber shares the engine and does not close it.
    await Promise.all([h?.close(), v?.close()]);
    await e?.close();
  }
}

function cancelled(t0: number): AnswerResult {
  return {
    text: '',
    finish_reason: 'cancelled',
    tokens: { prompt: 0, completion: 0 },
    latency_ms: { first_token: 0, total: Math.round(performance.now() - t0) },
  };
}
