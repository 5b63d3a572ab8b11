/**
 * The generation engine: a model package (decoder graph + PLE file + tokenizer + chat template) driven by
 * ONNX Runtime. Prefill runs in chunks, decode one token per run; the KV cache is the graph's present.*
 * tensors fed back as past_key_values.*. One generation runs at a time (calls queue).
 */
import { stat } from 'node:fs/promises';
import * as ort from 'onnxruntime-node';
import type { Gemma4TextConfig } from '../model/gemma4/config.js';
import { DECODER_IO, cacheSlots } from '../model/gemma4/contract.js';
import type { Manifest } from '../model/package/manifest.js';
import { openPackage, type OpenedPackage } from '../model/package/load.js';
import type { PlePagerStats } from '../model/ple/pager.js';
import { type Logger, silentLogger } from '../common/log.js';
import { type KvState, PrefixStore, commonPrefix, emptyKvState } from './kv-cache.js';
import { ChatTemplate, type ChatMessage, OutputRouter, type ToolDeclaration, encodeChat } from './prompt.js';
import { type SamplerOptions, createSampler } from './sampling.js';
import { profileMismatch } from './cpu-fit.js';
import {
  type PrepackedCacheOptions,
  type WeightsPacking,
  createCachedSession,
  packageChecksum,
} from './prepacked-cache.js';
import { DEFAULT_TUNING, type DecoderSession, type SessionTuning, decoderSession } from './session.js';
import { PackageTokenizer } from './tokenizer.js';
import { StopMatcher } from './stop.js';
import { type TokenConstraint, applyMask } from './grammar.js';
import type { ModelToolCall } from './tool-calls.js';

export interface EngineLoadOptions {
  /** ORT intra-op threads (model.threads). */
  threads: number;
  /** model.context_tokens: the most tokens (prompt + answer) a full-attention cache may hold. */
  contextTokens: number;
  /** model.ple_cache_mb. */
  pleCacheMb: number;
  /** model.memory_budget_mb: refuse packages whose estimated resident need exceeds it. */
  memoryBudgetMb?: number;
  logger?: Logger;
  /** Session knobs beyond the thread count (benchmarks compare them). */
  tuning?: Partial<Omit<SessionTuning, 'threads'>>;
  /** Prompt tokens per prefill run (default 128). */
  prefillChunk?: number;
  /** Snapshots kept for prefix reuse (default 2; 0 disables reuse). */
  prefixSnapshots?: number;
  /**
   * Keep ORT's prepacked weights in a per-machine file cache (prepacked-cache.ts) so they are memory-mapped
   * instead of copied to the heap. Omitted: packed on the heap at every load.
   */
  prepackedCache?: Omit<PrepackedCacheOptions, 'logger'>;
}

/** Encoder output rows placed at consecutive prompt positions (image / audio soft tokens). */
export interface MediaInput {
  /** Prompt position of the first row. */
  position: number;
  /** [n, hidden] row-major: row r replaces the embedding at position + r. */
  embeddings: Float32Array;
}

export interface GenerateRequest {
  /** A conversation, rendered with the package's chat template (give this or promptIds). */
  messages?: ChatMessage[];
  /** Already tokenised prompt. */
  promptIds?: readonly number[];
  maxTokens: number;
  sampling?: SamplerOptions;
  /** Extra stops: token ids, or strings (a single-token string stops on that token, others on the text). */
  stop?: ReadonlyArray<number | string>;
  signal?: AbortSignal;
  /**
   * Called once per generated token with its answer text (often '' while a character's bytes are pending, or
   * inside a thinking channel, whose text comes as info.thinking); a last call with tokenId -1 may release the tail.
   */
  onToken?: (delta: string, info: { tokenId: number; thinking: string }) => void;
  /** Render the template with thinking on (messages only). */
  thinking?: boolean;
  /** Tools declared to the model (messages only); generation stops where it waits for a tool's response. */
  tools?: ToolDeclaration[];
  media?: MediaInput[];
  /**
   * Prompt tokens worth keeping in the prefix store (e.g. the system turn). With messages the engine finds the
   * system turn itself; this overrides it.
   */
  prefixTokens?: number;
  /**
   * The kind of fixed prefix prefixTokens is ('system' by default: the system turn; 'transcript': the instruction
   * before a clip): kept pinned until the next prefix of the same kind.
   */
  prefixKind?: string;
  /** False: each prefill chunk reads its PLE rows only when it runs (benchmarks compare). Default true. */
  pleReadAhead?: boolean;
  /** False: compute the whole prompt and keep no snapshot of it (benchmarks of prefill). Default true. */
  reusePrefix?: boolean;
  /** Per-request prefill chunk (tests compare chunkings). */
  prefillChunk?: number;
  /** Start from this prefilled prompt (Engine.prefill), which the prompt must continue, instead of the prefix store. */
  resume?: PrefilledPrompt;
  /** Benchmarks: do not stop on eos / end of turn (custom stops still apply), so decode runs maxTokens steps. */
  ignoreEos?: boolean;
  /** Debug/test hook: the logits each sampled token was drawn from. */
  onLogits?: (logits: Float32Array, step: number) => void;
  /** Decode under this token mask (engine/grammar.ts): each step samples only among the ids it allows. */
  constraint?: TokenConstraint;
}

export interface PrefillRequest
  extends Pick<GenerateRequest, 'media' | 'prefixTokens' | 'prefixKind' | 'signal' | 'prefillChunk' | 'pleReadAhead'> {
  promptIds: readonly number[];
  /** Continue this prefilled prompt (the new ids must extend its ids). */
  from?: PrefilledPrompt;
}

/** A prompt whose KV cache is computed (Engine.prefill): holds its cache tensors until dropped. */
export class PrefilledPrompt {
  constructor(
    /** The engine that made it (only that engine can resume it). */
    readonly engine: Engine,
    readonly ids: readonly number[],
    /** @internal */
    readonly state: KvState,
  ) {}

  get length(): number {
    return this.ids.length;
  }
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface GenerateTimings {
  prefillMs: number;
  /** From the call to the first sampled token. */
  firstTokenMs: number;
  decodeMs: number;
  /** Decode rate: tokens produced by decode runs / decodeMs. */
  tokensPerSecond: number;
  /** Prompt tokens taken from the prefix store instead of being run. */
  reusedTokens: number;
  /** With a constraint: time spent on the grammar's masks (computing and applying them), all steps. */
  maskMs?: number;
}

export interface GenerateResult {
  text: string;
  thinking: string;
  /** Generated ids (stop token excluded). */
  tokens: number[];
  promptTokens: number;
  finishReason: FinishReason;
  /** Tool calls the model made (in <|tool_call> markers, not part of text), and any it wrote that did not parse. */
  toolCalls: ModelToolCall[];
  toolCallErrors: string[];
  timings: GenerateTimings;
}

export class ContextLimitError extends Error {
  override readonly name = 'ContextLimitError';
}

const DEFAULT_PREFILL_CHUNK = 128;

export class Engine {
  private readonly prefixes: PrefixStore;
  private queue: Promise<unknown> = Promise.resolve();
  private lastPrompt: readonly number[] = [];
  private closed = false;

  private constructor(
    readonly pkg: OpenedPackage,
    readonly decoder: DecoderSession,
    readonly tokenizer: PackageTokenizer,
    readonly template: ChatTemplate | null,
    readonly contextTokens: number,
    private readonly prefillChunk: number,
    private readonly log: Logger,
    prefixSnapshots: number,
  ) {
    this.prefixes = new PrefixStore(prefixSnapshots);
  }

  static async load(dir: string, opts: EngineLoadOptions): Promise<Engine> {
    const log = opts.logger ?? silentLogger;
    const pkg = await openPackage(dir, { pleCacheMb: opts.pleCacheMb });
    try {
      const cfg = pkg.config;
      const prefillChunk = opts.prefillChunk ?? DEFAULT_PREFILL_CHUNK;
      if (!Number.isInteger(prefillChunk) || prefillChunk < 1)
        throw new Error(`prefill chunk must be a positive integer, got ${prefillChunk}`);
      if (opts.memoryBudgetMb !== undefined) {
        const need = await estimateResidentMb(pkg, opts.contextTokens, opts.pleCacheMb, prefillChunk);
        if (need > opts.memoryBudgetMb) {
          throw new Error(
            `model package ${dir} needs about ${need} MiB resident (weights, KV cache for ${opts.contextTokens} tokens, PLE cache), over model.memory_budget_mb ${opts.memoryBudgetMb}`,
          );
        }
      }
      const tokenizer = await PackageTokenizer.load(dir);
      if (tokenizer.vocabSize > cfg.vocabSize)
        throw new Error(`tokenizer has ${tokenizer.vocabSize} ids, the model only ${cfg.vocabSize}`);
      // Without a template the engine still serves promptIds (benchmarks); messages then fail with a clear error.
      const template = await ChatTemplate.load(dir).catch((e: Error) => {
        log.warn({ dir, err: e.message }, 'no usable chat template: only pre-tokenised prompts will work');
        return null;
      });
      const tuning: SessionTuning = { ...DEFAULT_TUNING, ...opts.tuning, threads: opts.threads };
      const t0 = performance.now();
      const decoder = await openDecoder(pkg, tuning, opts.prepackedCache, log);
      log.info(
        {
          dir,
          ms: Math.round(performance.now() - t0),
          threads: opts.threads,
          media: decoder.acceptsMedia,
          prepacked: decoder.prepacked,
        },
        'decoder session ready',
      );
      const mismatch = await profileMismatch(pkg.manifest.quantisation);
      if (mismatch) log.warn({ dir, profile: pkg.manifest.quantisation.profile }, mismatch);
      return new Engine(
        pkg,
        decoder,
        tokenizer,
        template,
        opts.contextTokens,
        prefillChunk,
        log,
        opts.prefixSnapshots ?? 2,
      );
    } catch (e) {
      await pkg.close();
      throw e;
    }
  }

  /** Whether the decoder's weights come prepacked from the file cache (file-backed) or were packed on the heap. */
  get prepacked(): WeightsPacking {
    return this.decoder.prepacked;
  }

  get config(): Gemma4TextConfig {
    return this.pkg.config;
  }

  get manifest(): Manifest {
    return this.pkg.manifest;
  }

  /** True for synthetic packages (random weights: output is not meaningful). */
  get randomWeights(): boolean {
    return this.pkg.manifest.source.kind === 'synth';
  }

  get acceptsMedia(): boolean {
    return this.decoder.acceptsMedia;
  }

  /** Renders messages with the package template and tokenises them. */
  encodeMessages(
    messages: ChatMessage[],
    opts: { thinking?: boolean; addGenerationPrompt?: boolean; tools?: ToolDeclaration[] } = {},
  ): number[] {
    if (!this.template) throw new Error(`model package ${this.pkg.dir} has no chat template`);
    return encodeChat(this.template, this.tokenizer, messages, {
      addGenerationPrompt: opts.addGenerationPrompt ?? true,
      enableThinking: opts.thinking ?? false,
      ...(opts.tools ? { tools: opts.tools } : {}),
    }).ids;
  }

  /** Queues a generation behind any running one. */
  generate(req: GenerateRequest): Promise<GenerateResult> {
    const run = this.queue.then(() => this.run(req));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Drops the prefix snapshots (their KV tensors). */
  clearPrefixCache(): void {
    this.prefixes.clear();
  }

  prefixCacheBytes(): number {
    return this.prefixes.bytes();
  }

  /** For stats and benchmarks: PLE pager counters and the memory held by stored KV snapshots. */
  stats(): { ple: PlePagerStats; prefixSnapshots: number; prefixCacheBytes: number } {
    return {
      ple: this.pkg.pager.stats(),
      prefixSnapshots: this.prefixes.size,
      prefixCacheBytes: this.prefixes.bytes(),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    this.prefixes.clear();
    await this.decoder.release();
    await this.pkg.close();
  }

  private async run(req: GenerateRequest): Promise<GenerateResult> {
    if (this.closed) throw new Error('engine is closed');
    const t0 = performance.now();
    const { ids, prefixHint } = this.promptOf(req);
    const cfg = this.pkg.config;
    if (!Number.isInteger(req.maxTokens) || req.maxTokens < 1)
      throw new Error(`max_tokens must be a positive integer, got ${req.maxTokens}`);
    if (ids.length === 0) throw new Error('empty prompt');
    if (ids.length + req.maxTokens > this.contextTokens) {
      throw new ContextLimitError(
        `prompt of ${ids.length} tokens + max_tokens ${req.maxTokens} exceeds model.context_tokens ${this.contextTokens}`,
      );
    }
    for (const id of ids)
      if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize)
        throw new Error(`prompt token id ${id} is outside the vocabulary (0..${cfg.vocabSize - 1})`);
    const media = this.checkMedia(req.media ?? [], ids.length);
    // Snapshots must not cover media rows: the ids there are placeholders and say nothing about the content.
    const firstMedia = media.length ? Math.min(...media.map((m) => m.position)) : ids.length;
    const sampler = createSampler(req.sampling ?? {});
    // With tools, the model ends a call by opening the tool's response: that is where its turn waits.
    const waitsForTool = req.tools?.length ? this.tokenizer.special.markers.toolResponseStart : undefined;
    const stops = new StopMatcher(
      this.tokenizer,
      [...(req.stop ?? []), ...(waitsForTool !== undefined ? [waitsForTool] : [])],
      {
        modelStops: !req.ignoreEos,
      },
    );
    const router = new OutputRouter(this.tokenizer);
    const signal = req.signal;

    const timings: GenerateTimings = {
      prefillMs: 0,
      firstTokenMs: 0,
      decodeMs: 0,
      tokensPerSecond: 0,
      reusedTokens: 0,
    };
    const result = (finishReason: FinishReason, tokens: number[]): GenerateResult => {
      const r = router.result();
      const calls = router.toolCalls();
      return {
        text: stops.trim(r.answer),
        thinking: r.thinking,
        tokens,
        promptTokens: ids.length,
        finishReason,
        toolCalls: calls.calls,
        toolCallErrors: calls.errors,
        timings,
      };
    };
    if (signal?.aborted) return result('cancelled', []);

    // ---- prefill: resume from a prefilled prompt or the longest stored prefix, end a chunk at the boundary
    // worth keeping. A snapshot may end right before the first media row (match() keeps at least one token to run).
    const reuse = req.reusePrefix ?? true;
    let start: KvState;
    if (req.resume) {
      start = this.resumeState(req.resume, ids);
    } else {
      const hit = reuse && firstMedia > 0 ? this.prefixes.match(ids.slice(0, firstMedia + 1)) : null;
      start = hit ? hit.state : this.emptyState();
    }
    timings.reusedTokens = start.length;
    const filled = await this.prefillFrom(start, ids, media, firstMedia, prefixHint, req, true);
    if (!filled) return result('cancelled', []);
    let { state, logits } = filled;
    let pos = ids.length;
    timings.prefillMs = performance.now() - t0;

    // ---- decode
    const generated: number[] = [];
    const history = [...ids];
    let finish: FinishReason = 'length';
    let decodeStart = 0;
    let decodeRuns = 0;
    for (let step = 0; ; step++) {
      if (req.constraint) {
        const t = performance.now();
        applyMask(logits!, await req.constraint.allowed(), this.tokenizer.vocabSize);
        timings.maskMs = (timings.maskMs ?? 0) + performance.now() - t;
      }
      req.onLogits?.(logits!, step);
      const id = sampler.sample(logits!, history);
      if (step === 0) {
        timings.firstTokenMs = performance.now() - t0;
        decodeStart = performance.now();
      }
      if (stops.isStopId(id)) {
        finish = 'stop';
        break;
      }
      if (req.constraint && !req.constraint.accept(id))
        throw new Error(`the grammar refused token ${id}, which its own mask allowed`);
      generated.push(id);
      history.push(id);
      const delta = router.push(id);
      const fed = stops.feed(delta.answer);
      req.onToken?.(fed.text, { tokenId: id, thinking: delta.thinking });
      if (fed.stopped) {
        finish = 'stop';
        break;
      }
      if (generated.length >= req.maxTokens) break;
      if (signal?.aborted) {
        finish = 'cancelled';
        break;
      }
      const out = await this.runChunk(state, this.chunkInput([id], pos, []), true);
      state = out.state;
      logits = out.logits;
      pos++;
      decodeRuns++;
    }
    // Bytes of an unfinished character and held-back stop-string prefixes go out last.
    const tail = router.finish();
    const rest = stops.feed(tail.answer).text + stops.flush();
    if (rest || tail.thinking) req.onToken?.(rest, { tokenId: -1, thinking: tail.thinking });
    timings.decodeMs = decodeStart ? performance.now() - decodeStart : 0;
    timings.tokensPerSecond = timings.decodeMs > 0 ? (decodeRuns * 1000) / timings.decodeMs : 0;
    // Keep the whole conversation state for a follow-up turn (not after a cancel: that state is dropped).
    if (reuse && finish !== 'cancelled' && media.length === 0) this.prefixes.add({ ids: history.slice(0, pos), state });
    this.log.debug(
      { prompt: ids.length, reused: timings.reusedTokens, completion: generated.length, finish },
      'generation done',
    );
    return result(finish, generated);
  }

  /**
   * Prefills a prompt into the KV cache ahead of its generation, e.g. speech while it is still being spoken: give
   * the result back as `resume` of a later prefill (more of the prompt) or generate (the whole prompt). Queued
   * like a generation. Without `from` it starts from the longest stored prefix, as generate does.
   */
  prefill(req: PrefillRequest): Promise<PrefilledPrompt> {
    const run = this.queue.then(async () => {
      if (this.closed) throw new Error('engine is closed');
      const ids = [...req.promptIds];
      if (ids.length + 1 > this.contextTokens)
        throw new ContextLimitError(
          `prompt of ${ids.length} tokens leaves no room in model.context_tokens ${this.contextTokens}`,
        );
      const media = this.checkMedia(req.media ?? [], ids.length);
      const firstMedia = media.length ? Math.min(...media.map((m) => m.position)) : ids.length;
      let start: KvState;
      if (req.from) {
        start = this.resumeState(req.from, ids, true);
      } else {
        // No logits are wanted, so a snapshot may cover the whole prompt (up to its first media row).
        const upTo = Math.min(firstMedia, ids.length);
        const hit = upTo > 0 ? this.prefixes.match(ids.slice(0, upTo), { orEqual: true }) : null;
        start = hit ? hit.state : this.emptyState();
      }
      const filled = await this.prefillFrom(start, ids, media, firstMedia, req.prefixTokens ?? 0, req, false);
      if (!filled) throw new DOMException('prefill cancelled', 'AbortError');
      return new PrefilledPrompt(this, ids, filled.state);
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private emptyState(): KvState {
    return emptyKvState(this.decoder.slots, this.decoder.cacheOutputs, this.contextTokens);
  }

  /** The state of a prefilled prompt that `ids` continues (strictly, for generate: its last token must run). */
  private resumeState(p: PrefilledPrompt, ids: readonly number[], allowEqual = false): KvState {
    if (p.engine !== this) throw new Error('a prefilled prompt resumes only on the engine that made it');
    const n = p.ids.length;
    if (n > ids.length || (n === ids.length && !allowEqual) || commonPrefix(p.ids, ids) !== n)
      throw new Error('the prompt does not continue the prefilled prompt it resumes');
    return p.state;
  }

  /**
   * Runs ids[start.length..] on top of `start` in chunks, storing snapshots at the fixed prefix (pinned by kind)
   * and at the part shared with the previous prompt. Null when cancelled.
   */
  private async prefillFrom(
    start: KvState,
    ids: readonly number[],
    media: readonly MediaInput[],
    firstMedia: number,
    prefixHint: number,
    req: Pick<GenerateRequest, 'reusePrefix' | 'prefillChunk' | 'pleReadAhead' | 'prefixKind' | 'signal'>,
    wantLogits: boolean,
  ): Promise<{ state: KvState; logits: Float32Array | null } | null> {
    const reuse = req.reusePrefix ?? true;
    // Snapshot points: the fixed prefix (pinned: every later prompt of its kind starts with it) and the part
    // shared with the previous prompt (likely shared with the next one too).
    const usable = (b: number): boolean =>
      reuse &&
      this.prefixes.enabled &&
      b > start.length &&
      (b < ids.length || (!wantLogits && b === ids.length)) &&
      b <= firstMedia;
    const pinnedAt = usable(prefixHint) ? prefixHint : -1;
    // Media prompts share at most what comes before their first media row.
    const lcp = Math.min(commonPrefix(this.lastPrompt, ids), firstMedia);
    const sharedAt = usable(lcp) && lcp !== pinnedAt ? lcp : -1;
    this.lastPrompt = ids;
    const chunk = req.prefillChunk ?? this.prefillChunk;
    const chunks: Array<[number, number]> = [];
    for (let at = start.length; at < ids.length; ) {
      let end = Math.min(ids.length, at + chunk);
      for (const b of [pinnedAt, sharedAt]) if (b > at && b < end) end = b;
      chunks.push([at, end]);
      at = end;
    }
    const inputOf = ([from, end]: [number, number]): ChunkInput => this.chunkInput(ids.slice(from, end), from, media);
    let state = start;
    let logits: Float32Array | null = null;
    let next: ChunkInput | undefined;
    for (const [i, chunkAt] of chunks.entries()) {
      if (req.signal?.aborted) return null;
      const input = next ?? inputOf(chunkAt);
      // The next chunk's PLE rows are read from disk while this one runs.
      const after = chunks[i + 1];
      next = after && req.pleReadAhead !== false ? inputOf(after) : undefined;
      const end = chunkAt[1];
      const out = await this.runChunk(state, input, wantLogits && end === ids.length);
      state = out.state;
      logits = out.logits;
      if (end === pinnedAt || end === sharedAt)
        this.prefixes.add(
          { ids: ids.slice(0, end), state },
          end === pinnedAt ? { pin: req.prefixKind ?? 'system' } : {},
        );
    }
    return { state, logits };
  }

  private promptOf(req: GenerateRequest): { ids: number[]; prefixHint: number } {
    if ((req.messages === undefined) === (req.promptIds === undefined))
      throw new Error('give exactly one of messages and promptIds');
    if (req.promptIds) return { ids: [...req.promptIds], prefixHint: req.prefixTokens ?? 0 };
    const p = this.preparePrompt(req.messages!, { thinking: req.thinking, ...(req.tools ? { tools: req.tools } : {}) });
    return { ids: p.ids, prefixHint: req.prefixTokens ?? p.prefixTokens };
  }

  /**
   * Prompt ids for a conversation, and how many of them are the system turn (worth keeping for reuse): pass
   * both back as promptIds / prefixTokens when the caller needs the length before generating.
   */
  preparePrompt(
    messages: ChatMessage[],
    opts: { thinking?: boolean; tools?: ToolDeclaration[] } = {},
  ): { ids: number[]; prefixTokens: number } {
    const ids = this.encodeMessages(messages, {
      thinking: opts.thinking,
      ...(opts.tools ? { tools: opts.tools } : {}),
    });
    let prefixTokens = 0;
    if (messages[0]?.role === 'system' && messages.length > 1) {
      // The system turn alone renders to a prefix of the full prompt with Gemma's template.
      const sys = this.encodeMessages([messages[0]], {
        thinking: opts.thinking,
        addGenerationPrompt: false,
        ...(opts.tools ? { tools: opts.tools } : {}),
      });
      if (commonPrefix(sys, ids) === sys.length) prefixTokens = sys.length;
    }
    return { ids, prefixTokens };
  }

  private checkMedia(media: MediaInput[], promptLength: number): MediaInput[] {
    if (media.length === 0) return media;
    if (!this.decoder.acceptsMedia)
      throw new Error(
        `model package ${this.pkg.dir} was built without media inputs; rebuild it to use images or audio`,
      );
    const H = this.pkg.config.hiddenSize;
    const spans = media.map((m) => {
      const n = m.embeddings.length / H;
      if (!Number.isInteger(n) || n < 1)
        throw new Error(`media embeddings must hold whole rows of ${H} values, got ${m.embeddings.length}`);
      if (!Number.isInteger(m.position) || m.position < 0 || m.position + n > promptLength) {
        throw new Error(
          `media at position ${m.position} with ${n} rows does not fit in a prompt of ${promptLength} tokens`,
        );
      }
      return { start: m.position, end: m.position + n };
    });
    spans.sort((a, b) => a.start - b.start);
    for (let i = 1; i < spans.length; i++)
      if (spans[i]!.start < spans[i - 1]!.end) throw new Error('media inputs overlap');
    return media;
  }

  /** A decoder run's inputs for ids at positions start..; its PLE rows start being read now. */
  private chunkInput(ids: readonly number[], start: number, media: readonly MediaInput[]): ChunkInput {
    const n = ids.length;
    const H = this.pkg.config.hiddenSize;
    const feedIds = ids.slice();
    let mask: Uint8Array | null = null;
    let embeds: Float32Array | null = null;
    if (this.decoder.acceptsMedia) {
      const pad = this.tokenizer.special.pad ?? 0;
      mask = new Uint8Array(n);
      embeds = new Float32Array(n * H);
      for (const m of media) {
        const rows = m.embeddings.length / H;
        for (let r = 0; r < rows; r++) {
          const p = m.position + r - start;
          if (p < 0 || p >= n) continue;
          // As transformers does: media positions look up the pad id (embedding and PLE row); the graph
          // then replaces the embedding with the encoder row.
          feedIds[p] = pad;
          mask[p] = 1;
          embeds.set(m.embeddings.subarray(r * H, (r + 1) * H), p * H);
        }
      }
    }
    const pleRows = this.pkg.pager.rowsFor(feedIds);
    // Awaited by runChunk; this keeps a read that fails after an abort from being an unhandled rejection.
    pleRows.catch(() => undefined);
    return { start, feedIds, mask, embeds, pleRows };
  }

  /** One decoder run; returns the next state and the last position's logits. */
  private async runChunk(
    state: KvState,
    c: ChunkInput,
    wantLogits: boolean,
  ): Promise<{ state: KvState; logits: Float32Array | null }> {
    const { start, feedIds, mask, embeds } = c;
    const n = feedIds.length;
    const H = this.pkg.config.hiddenSize;
    const rows = await c.pleRows;
    const feeds: Record<string, ort.Tensor> = {
      ...state.feeds(),
      input_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(feedIds, (i) => BigInt(i)),
        [1, n],
      ),
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(feedIds, (_, i) => BigInt(start + i)),
        [1, n],
      ),
    };
    // Gemma 3 packages have no per-layer embeddings: no rows to feed.
    if (this.decoder.pleWidth) feeds.per_layer_rows = new ort.Tensor('float32', rows, [1, n, this.decoder.pleWidth]);
    if (mask && embeds) {
      feeds.media_mask = new ort.Tensor('bool', mask, [1, n]);
      feeds.media_embeds = new ort.Tensor('float32', embeds, [1, n, H]);
    }
    // Without logits only the cache is fetched: ONNX Runtime then skips the LM head (the last row's logits).
    const out = await this.decoder.session.run(
      feeds,
      wantLogits ? [DECODER_IO.logits, ...state.fetches()] : state.fetches(),
    );
    const next = state.after(out, n);
    if (!wantLogits) return { state: next, logits: null };
    const data = out.logits!.data as Float32Array;
    const V = this.decoder.vocabSize;
    // 'last' graphs give [1, 1, V] (a fresh buffer per run: no copy needed); 'all' graphs [1, n, V]: the last row.
    return { state: next, logits: data.length === V ? data : data.slice(data.length - V) };
  }
}

/** One decoder run's inputs: the ids it feeds, the media rows that replace theirs, its PLE rows (being read). */
interface ChunkInput {
  start: number;
  feedIds: number[];
  mask: Uint8Array | null;
  embeds: Float32Array | null;
  pleRows: Promise<Float32Array>;
}

/** Rough resident need: decoder data (pre-packing copies it to the heap), KV cache at full context, PLE cache. */
async function estimateResidentMb(
  pkg: OpenedPackage,
  contextTokens: number,
  pleCacheMb: number,
  chunk: number,
): Promise<number> {
  const weights = (await stat(pkg.path('decoder-weights')!)).size;
  let kv = 0;
  for (const s of cacheSlots(pkg.config)) {
    const len = s.maxLength === null ? contextTokens : 2 * s.maxLength + chunk;
    kv += 2 * s.kvHeads * len * s.headDim * 4;
  }
  const mib = 1024 * 1024;
  return Math.ceil((weights + kv) / mib + pleCacheMb + 64);
}

/** The decoder session, from the prepacked file cache when one is configured. */
async function openDecoder(
  pkg: OpenedPackage,
  tuning: SessionTuning,
  cache: EngineLoadOptions['prepackedCache'],
  log: Logger,
): Promise<DecoderSession> {
  const graph = pkg.path('decoder-graph')!;
  const source = { modelPath: graph, checksum: packageChecksum(pkg.manifest, 'decoder') };
  const { session, prepacked } = await createCachedSession(
    source,
    tuning,
    cache ? { ...cache, logger: log } : undefined,
  );
  return decoderSession(session, graph, pkg.config, prepacked);
}
