/**
 * The daemon's AnswerEngine over the generation engine: loads the package in the background (status says
 * loading / ready / error), answers ask requests with the configured system prompt, and reports synthetic
 * packages as random_weights so nobody mistakes their output for answers. With a vision encoder in the
 * package it also answers about images (a request's JPEG or a camera frame the caller passes): the image's
 * soft-token rows replace the placeholder run of the user turn.
 */
import type { PerchConfig } from '../config/schema.js';
import { JsonGrammars, type TokenConstraint } from './grammar.js';
import { type Logger, silentLogger } from '../common/log.js';
import { DEFAULT_IMAGE_TOKENS, type TokenBudget } from '../model/gemma4/contract.js';
import { ImagePreprocessError } from '../vision/preprocess.js';
import { Engine, type EngineLoadOptions, type MediaInput } from './engine.js';
import {
  type ChatMessage,
  type ContentItem,
  type ToolDeclaration,
  expandMediaPlaceholders,
  placeholderContent,
} from './prompt.js';
import type { SamplerOptions } from './sampling.js';
import { defaultCacheDir, packageChecksum } from './prepacked-cache.js';
import { ClipLengthError, Transcriber } from './transcriber.js';
import {
  type AnswerEngine,
  ENGINE_STAGES,
  EngineUnavailableError,
  type EngineStatus,
  type GenerationMessage,
  type GenerationRequest,
  type GenerationResult,
  InvalidInputError,
  type SpeechEngine,
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

export class GemmaAnswerEngine implements AnswerEngine {
  private engine: Engine | null = null;
  private vision: VisionEncoder | null = null;
  /** Why images cannot be taken, when they cannot (said in status and in every refusal). */
  private visionGap = 'the model is not loaded yet';
  private hearer: Transcriber | null = null;
  /** The hearer as handed out: it reports to opts.health. */
  private hearerView: SpeechEngine | null = null;
  private hearingGap = 'the model is not loaded yet';
  private state: EngineStatus = { state: 'loading', detail: 'loading the model package' };
  private loading: Promise<void> | null = null;
  private closed = false;
  /** Constrained decoding's tables for the engine in use. */
  private grammars: { engine: Engine; tables: Promise<JsonGrammars> } | null = null;
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
        ...(random ? { randomWeights: true } : {}),
        vision: vision !== null,
        audio: hearer !== null,
      };
      if (random)
        this.log.warn({ dir: s.dir }, 'the model package is synthetic (random weights): answers are meaningless');
    } catch (err) {
      this.state = { state: 'error', detail: `model package could not be loaded: ${(err as Error).message}` };
      this.log.error({ dir: s.dir, err: (err as Error).message }, 'model load failed');
    }
  }

  /** Speech to text over the shared engine, when the package has an audio encoder the decoder can take. */
  speech(): SpeechEngine | undefined {
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
  private reporting(t: Transcriber): SpeechEngine {
    const health = this.opts.health;
    if (!health) return t;
    const report = async <T>(run: () => Promise<T>): Promise<T> => {
      try {
        const r = await run();
        health.ok(ENGINE_STAGES.audio);
        return r;
      } catch (err) {
        if ((err as Error).name !== 'AbortError') health.error(ENGINE_STAGES.audio, err);
        throw err;
      }
    };
    return {
      get randomWeights() {
        return t.randomWeights;
      },
      transcribe: (samples, opts) => report(() => t.transcribe(samples, opts)),
      answer: (samples, opts) => report(() => t.answer(samples, opts)),
      openStream: (opts) => t.openStream(opts),
    };
  }

  private async loadHearing(engine: Engine): Promise<Transcriber | null> {
    try {
      const cacheDir = this.cacheDir();
      return await Transcriber.load(this.settings.dir, {
        engine,
        threads: this.settings.threads,
        logger: this.log,
        ...(cacheDir === null ? {} : { prepackedCache: { dir: cacheDir } }),
      });
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

  async generate(request: GenerationRequest): Promise<GenerationResult> {
    const engine = this.engine;
    if (!engine || this.closed) throw new EngineUnavailableError(this.state.detail);
    const t0 = performance.now();
    const signal = request.signal;
    const media = await this.encodeMedia(request.messages, signal);
    if (signal.aborted) return cancelled(t0);
    const tools: ToolDeclaration[] | undefined = request.tools?.length
      ? request.tools.map((t) => ({
          type: 'function',
          function: {
            name: t.name,
            description: t.description ?? '',
            parameters: t.parameters ?? { type: 'object', properties: {} },
          },
        }))
      : undefined;
    const thinking = (request.thinking ?? false) && !request.jsonSchema;
    const base = this.render(engine, this.withSystemPrompt(request.messages), thinking, tools);
    const expanded = expandMediaPlaceholders(base.ids, engine.tokenizer.special, {
      imageTokens: media.images.map((m) => m.count),
      audioTokens: media.audio.map((m) => m.count),
    });
    const rows = { image: media.images, audio: media.audio };
    const mediaInputs: MediaInput[] = expanded.media.map((span) => ({
      position: span.start,
      embeddings: rows[span.kind][span.index]!.rows,
    }));
    // Without an explicit bound the default shrinks to what the context has left.
    const room = engine.contextTokens - expanded.ids.length;
    const maxTokens = request.maxTokens ?? Math.max(1, Math.min(this.settings.max_answer_tokens, room));
    const s = request.sampling ?? {};
    const sampling: SamplerOptions = {
      ...DEFAULT_SAMPLING,
      ...(s.temperature !== undefined ? { temperature: s.temperature } : {}),
      ...(s.topK !== undefined ? { topK: s.topK } : {}),
      ...(s.topP !== undefined ? { topP: s.topP } : {}),
      ...(s.seed !== undefined ? { seed: s.seed } : {}),
    };
    const constraint = request.jsonSchema
      ? await this.grammarsFor(engine).constraint(request.jsonSchema)
      : await this.forcedCall(engine, request);
    const tGen = performance.now();
    const r = await engine
      .generate({
        ...(constraint ? { constraint } : {}),
        promptIds: expanded.ids,
        prefixTokens: base.prefixTokens,
        maxTokens,
        sampling,
        signal,
        ...(request.stop?.length ? { stop: request.stop } : {}),
        ...(tools ? { tools } : {}),
        ...(mediaInputs.length > 0 ? { media: mediaInputs } : {}),
        onToken: (delta) => {
          if (delta) request.onToken?.(delta);
        },
      })
      .finally(() => constraint?.dispose());
    const first = media.images[0];
    return {
      text: r.text,
      finishReason: r.finishReason,
      ...(thinking && r.thinking ? { thinking: r.thinking } : {}),
      ...(r.toolCalls.length ? { toolCalls: r.toolCalls } : {}),
      tokens: { prompt: r.promptTokens, completion: r.tokens.length },
      timings: {
        firstTokenMs: tGen - t0 + r.timings.firstTokenMs,
        totalMs: performance.now() - t0,
        ...(media.images.length > 0 ? { visionMs: media.visionMs } : {}),
        ...(media.audio.length > 0 ? { audioMs: media.audioMs } : {}),
        prefillMs: r.timings.prefillMs,
        decodeMs: r.timings.decodeMs,
        ...(r.timings.maskMs !== undefined ? { maskMs: r.timings.maskMs } : {}),
      },
      ...(first ? { image: { width: first.width, height: first.height, tokens: first.count } } : {}),
    };
  }

  /** With toolChoice 'required' or a name: the constraint that makes the reply one call of the tools it allows. */
  private async forcedCall(engine: Engine, request: GenerationRequest): Promise<TokenConstraint | undefined> {
    const choice = request.toolChoice ?? 'auto';
    if (choice === 'auto' || !request.tools?.length) return undefined;
    const tools = typeof choice === 'object' ? request.tools.filter((t) => t.name === choice.name) : request.tools;
    if (tools.length === 0)
      throw new InvalidInputError(
        `tool_choice names ${JSON.stringify((choice as { name: string }).name)}, which is not among the tools`,
      );
    const m = engine.tokenizer.special.markers;
    if (m.toolCallStart === undefined || m.toolCallEnd === undefined || m.toolResponseStart === undefined)
      throw new InvalidInputError("this model's vocabulary has no tool-call markers: it cannot be made to call a tool");
    return (await this.grammarsFor(engine).tables()).toolCall(
      tools.map((t) => ({ name: t.name, parameters: t.parameters ?? { type: 'object', properties: {} } })),
      { callStart: m.toolCallStart, callEnd: m.toolCallEnd, responseStart: m.toolResponseStart },
    );
  }

  /** The grammar tables of the engine in use (built on the first constrained reply, about 0.4 s for Gemma's vocabulary). */
  private grammarsFor(engine: Engine): {
    constraint(schema: Record<string, unknown>): Promise<TokenConstraint>;
    tables(): Promise<JsonGrammars>;
  } {
    if (this.grammars?.engine !== engine) {
      const tables = JsonGrammars.create(engine.tokenizer);
      this.grammars = { engine, tables };
      // A failure is said to this request and tried again by the next.
      tables.catch(() => {
        if (this.grammars?.tables === tables) this.grammars = null;
      });
    }
    const tables = this.grammars.tables;
    return { constraint: async (schema) => (await tables).constraint(schema), tables: () => tables };
  }

  /** The configured system prompt first, unless the request brings its own system message. */
  private withSystemPrompt(messages: GenerationMessage[]): GenerationMessage[] {
    if (messages.some((m) => m.role === 'system'))
      return messages.filter((m) => m.role !== 'system' || typeof m.content !== 'string' || m.content.trim() !== '');
    const system = this.settings.system_prompt.trim();
    return system ? [{ role: 'system', content: system }, ...messages] : messages;
  }

  /** Every image and audio part of the request through its encoder, in order of appearance. */
  private async encodeMedia(messages: GenerationMessage[], signal: AbortSignal): Promise<EncodedMedia> {
    const out: EncodedMedia = { images: [], audio: [], visionMs: 0, audioMs: 0 };
    for (const m of messages) {
      if (typeof m.content === 'string') continue;
      for (const part of m.content) {
        if (signal.aborted) return out;
        if (part.type === 'image') out.images.push(await this.encodeImage(part.data, part.tokens, out));
        else if (part.type === 'audio') out.audio.push(await this.encodeClip(part.samples, out));
      }
    }
    return out;
  }

  private async encodeImage(data: Buffer, tokens: TokenBudget | undefined, total: EncodedMedia): Promise<EncodedImage> {
    const vision = this.vision;
    if (!vision) throw new EngineUnavailableError(this.visionGap);
    const encoded = await vision.encode(data, { tokenBudget: tokens ?? DEFAULT_IMAGE_TOKENS }).catch((err: unknown) => {
      if (err instanceof ImagePreprocessError) throw new InvalidInputError(`image: ${err.message}`);
      // A bad image is the request's fault; anything else is the encoder's.
      this.opts.health?.error(ENGINE_STAGES.vision, err);
      throw err;
    });
    this.opts.health?.ok(ENGINE_STAGES.vision);
    total.visionMs += encoded.timings.preprocessMs + encoded.timings.encodeMs;
    return { rows: encoded.embeddings, count: encoded.numSoftTokens, width: encoded.width, height: encoded.height };
  }

  private async encodeClip(samples: Int16Array | Float32Array, total: EncodedMedia): Promise<EncodedPart> {
    const hearer = this.hearer;
    if (!hearer) throw new EngineUnavailableError(this.hearingGap);
    const clip = await hearer.encodeAudio(samples).catch((err: unknown) => {
      if (err instanceof ClipLengthError) throw new InvalidInputError(`audio: ${err.message}`);
      this.opts.health?.error(ENGINE_STAGES.audio, err);
      throw err;
    });
    this.opts.health?.ok(ENGINE_STAGES.audio);
    total.audioMs += clip.featuresMs + clip.encodeMs;
    return { rows: clip.rows, count: clip.count };
  }

  /**
   * Prompt ids with one placeholder per image and audio part. Gemma's template renders media items as their
   * placeholders; templates that only take string content (the synthetic package's) get the placeholder text,
   * which the tokenizer maps to the same ids.
   */
  private render(
    engine: Engine,
    messages: GenerationMessage[],
    thinking: boolean,
    tools?: ToolDeclaration[],
  ): { ids: number[]; prefixTokens: number } {
    const markers = engine.tokenizer.special.markers;
    const want = { image: 0, audio: 0 };
    const clean: GenerationMessage[] = messages.map((m) => ({
      ...m,
      content:
        typeof m.content === 'string'
          ? stripControlTokens(m.content)
          : m.content.map((p) => (p.type === 'text' ? { type: 'text', text: stripControlTokens(p.text) } : p)),
    }));
    for (const m of clean)
      if (typeof m.content !== 'string') for (const p of m.content) if (p.type !== 'text') want[p.type]++;
    const fits = (ids: number[]): boolean =>
      ids.filter((id) => id === markers.image).length === want.image &&
      ids.filter((id) => id === markers.audio).length === want.audio;
    if (want.image + want.audio > 0) {
      try {
        const p = engine.preparePrompt(clean.map(asTemplateItems), { thinking, ...(tools ? { tools } : {}) });
        if (fits(p.ids)) return p;
      } catch {
        // falls through to the string form
      }
    }
    return engine.preparePrompt(clean.map(asPlaceholderText), { thinking, ...(tools ? { tools } : {}) });
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

interface EncodedPart {
  /** [count, hidden] row-major. */
  rows: Float32Array;
  count: number;
}

/** An image's rows and its size after resizing. */
interface EncodedImage extends EncodedPart {
  width: number;
  height: number;
}

interface EncodedMedia {
  images: EncodedImage[];
  audio: EncodedPart[];
  visionMs: number;
  audioMs: number;
}

/** A message as Gemma's template takes it: media parts as items the template renders as placeholders. */
function asTemplateItems(m: GenerationMessage): ChatMessage {
  const calls = toolFields(m);
  if (typeof m.content === 'string') return { role: m.role, content: m.content, ...calls };
  return {
    role: m.role,
    content: m.content.map((p) => (p.type === 'text' ? { type: 'text', text: p.text } : { type: p.type })),
    ...calls,
  };
}

/** A message as string content, media parts as their placeholder text (for string-only templates). */
function asPlaceholderText(m: GenerationMessage): ChatMessage {
  if (typeof m.content === 'string') return { role: m.role, content: m.content, ...toolFields(m) };
  return { role: m.role, content: placeholderContent(asTemplateItems(m).content as ContentItem[]), ...toolFields(m) };
}

/** A turn's tool calls and a tool turn's name, as transformers' template takes them. */
function toolFields(m: GenerationMessage): Pick<ChatMessage, 'tool_calls' | 'name'> {
  return {
    ...(m.toolCalls?.length
      ? {
          tool_calls: m.toolCalls.map((c) => ({
            type: 'function' as const,
            function: { name: c.name, arguments: c.arguments },
          })),
        }
      : {}),
    ...(m.role === 'tool' && m.name ? { name: m.name } : {}),
  };
}

function cancelled(t0: number): GenerationResult {
  const totalMs = performance.now() - t0;
  return {
    text: '',
    finishReason: 'cancelled',
    tokens: { prompt: 0, completion: 0 },
    timings: { firstTokenMs: 0, totalMs },
  };
}
