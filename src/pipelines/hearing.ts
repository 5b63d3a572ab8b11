/**
 * Hearing: the audio source runs through the voice-activity segmenter, which publishes speech ON/OFF and the
 * sound level for automations, and cuts utterances. With a transcriber (a package with an audio encoder),
 * each utterance becomes a scheduler job of kind `transcript` (id = the utterance id): its tokens stream on
 * audio/transcript/partial (QoS 0) and the transcript goes out on audio/transcript (QoS 1, through the
 * outbox). Without one, utterances are counted and logged only.
 *
 * Spoken questions: with a wake phrase configured, a transcript that contains it (case and punctuation
 * aside) turns its utterance into a question. The model answers from the audio itself (not from the
 * transcript, which may have misheard), as an `answer` job with the utterance's id: tokens on answer/stream,
 * the answer on answer, so transcript and answer share one id. A message on audio/talk (push-to-talk) makes
 * the next utterance a question too, and after an answer, utterances starting within the follow-up window
 * continue the conversation without the phrase (the exchanges so far go into the instruction). Utterances
 * are decided in order: each waits for the previous one's answer, which it may follow up.
 *
 * Long speech: the segmenter splits it into overlapping parts, each transcribed and published on its own.
 * Once the last part is transcribed, the whole group goes out too, stitched (transcript-groups.ts).
 *
 * Times: the segmenter works in stream time (the source's one timeline, which runs on after a gap across
 * pauses and restarts). Each chunk's arrival re-anchors stream time to the wall clock, so the gaps need not
 * match the wall clock exactly. Latencies count
 * from the end of speech: `first_token` and `total` are what a listener waits.
 */
import { Segmenter, type SpeechProgress, type Utterance } from '../audio/segmenter.js';
import type { PerchConfig } from '../config/schema.js';
import type { SpeechEngine } from '../engine/types.js';
import type { SpeechStream } from '../engine/speech-stream.js';
import { silentLogger, type Logger } from '../common/log.js';
import { type HearingPublisher, MAX_TEXT } from '../mqtt/hearing-publisher.js';
import { isoNow, type AnswerMessage, type TranscriptMessage } from '../mqtt/messages.js';
import { isSchedulerError } from '../scheduler/errors.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { AnswerEngine, GenerationMessage } from '../engine/types.js';
import type { Actions } from './actions.js';
import type { AudioChunk, AudioSource } from '../sources/types.js';
import { errorCodeFor } from './ask.js';
import {
  QUESTION_PROMPT,
  containsWakePhrase,
  conversationPrompt,
  parseTalk,
  spokenQuestionPrompt,
  type Exchange,
  type QuestionKind,
} from './conversation.js';
import { type GroupOutcome, TranscriptGroups } from './transcript-groups.js';

/** Audio per soft token: 4 frames of 10 ms. */
const AUDIO_TOKEN_MS = 40;

export interface HearingOptions {
  /** The model's job queue; with a transcriber, every utterance becomes a `transcript` job. */
  scheduler?: Scheduler;
  /** The transcriber once the model can hear (asked per utterance: the model loads in the background). */
  transcriber?: () => SpeechEngine | undefined;
  /** Tokens per transcript (default 256). */
  maxTokens?: number;
  /** Spoken language for the instruction and the message, e.g. "en" or "English"; default: the model finds it. */
  language?: string;
  /** A transcript containing this phrase (e.g. "hey perch") is a question to answer; default: none. */
  wakePhrase?: string;
  /** Tokens per spoken answer (default 256). */
  answerMaxTokens?: number;
  /** Seconds after an answer during which utterances are follow-up questions (default 8; 0: none). */
  followUpS?: number;
  /** Seconds after a push-to-talk message within which the next utterance must start (default 10). */
  talkWindowS?: number;
  /** Told of each voice-activity failure (error) and of each processed stretch of audio (ok): the health tracker. */
  vadHealth?: { error(err: unknown): void; ok(): void };
  /**
   * Hear speech while it is spoken (default true): the audio is encoded and prefilled as it arrives, so the
   * transcript is ready sooner after the end. Off: each utterance is heard whole once it has ended.
   */
  streaming?: boolean;
  /**
   * Allow-listed actions: while they are on, a spoken question is answered from its transcript by the answer
   * engine with the actions as tools (a call is carried out and its result goes back to the model), instead of
   * from the audio.
   */
  actions?: { actions: Actions; engine: () => AnswerEngine };
}

/** A spoken question's answer, from the audio or from the transcript with actions: what respond() publishes. */
interface SpokenReply {
  text: string;
  finishReason: AnswerMessage['finish_reason'];
  tokens: AnswerMessage['tokens'];
  /** The model's part of latency_ms (encode, prefill, decode: whatever the path measured). */
  latency: { encode?: number; prefill?: number; decode?: number };
  actions?: NonNullable<AnswerMessage['actions']>;
}

/** The conversation as the last decided utterance left it. */
interface Turn {
  /** Wall-clock ms of the latest answer; undefined when nothing has been answered. */
  answeredAt?: number;
  history: Exchange[];
}

interface Counts {
  transcripts: number;
  failed: number;
  untranscribed: number;
  questions: number;
}

export class HearingPipeline {
  private segmenter: Segmenter | undefined;
  private detach: (() => void) | undefined;
  private speaking = false;
  private readonly log: Logger;
  /** Wall-clock ms of stream time 0, from the latest chunk. */
  private anchor = Date.now();
  private readonly pending = new Map<string, Promise<void>>();
  private readonly counts: Counts = { transcripts: 0, failed: 0, untranscribed: 0, questions: 0 };
  private stopping = false;
  /** Resolves with the conversation once the previous utterance is decided (and answered, if a question). */
  private lastTurn: Promise<Turn> = Promise.resolve({ history: [] });
  /** Push-to-talk armed at this wall-clock ms, with the id the requester wants on the result. */
  private talk: { at: number; id?: string } | undefined;
  /** Long utterances whose last part has not been transcribed yet, by group id. */
  private readonly groups = new TranscriptGroups(MAX_TEXT);
  /** Utterances in progress heard while spoken, by utterance id (first parts only). */
  private readonly streams = new Map<string, SpeechStream>();

  constructor(
    private readonly out: HearingPublisher,
    private readonly source: AudioSource,
    private readonly settings: PerchConfig['audio']['segmenter'],
    logger: Logger = silentLogger,
    private readonly opts: HearingOptions = {},
  ) {
    this.log = logger.child({ module: 'hearing' });
  }

  async start(): Promise<void> {
    this.stopping = false;
    const seg = await Segmenter.create(this.settings, { logger: this.log });
    seg.on('activity', (a) => {
      this.speaking = a.speaking;
      void this.republishState();
    });
    seg.on('level', (l) => this.out.soundLevel(l.dbfs));
    seg.on('processed', () => this.opts.vadHealth?.ok());
    seg.on('utterance', (u) => this.onUtterance(u));
    if (this.opts.streaming !== false) {
      seg.on('progress', (p) => this.onProgress(p));
      seg.on('dropped', (id) => this.dropStream(id));
    }
    seg.on('error', (err: unknown) => {
      this.log.error({ err: String(err) }, 'voice activity detection failed');
      this.opts.vadHealth?.error(err);
    });
    this.segmenter = seg;
    const onChunk = (c: AudioChunk): void => {
      this.anchor = Date.now() - (c.startMs + (c.samples.length * 1000) / c.sampleRate);
    };
    this.source.on('chunk', onChunk);
    const detachSeg = seg.attach(this.source);
    this.detach = () => {
      detachSeg();
      this.source.off('chunk', onChunk);
    };
    // Oversized presses come too: they are answered with payload_too_large, not dropped in silence.
    this.out.onTalk((m) => this.onTalk(m.payload, m.oversized));
  }

  /** Replaces the voice activity detector with a fresh one (a new ONNX session) after repeated failures. */
  async restartVad(): Promise<void> {
    const old = this.segmenter;
    if (!old || this.stopping) return;
    this.detach?.();
    await this.start();
    await old.close();
  }

  /** Whether a push-to-talk message is waiting for its utterance. */
  talkArmed(): boolean {
    return this.talk !== undefined;
  }

  /** Push-to-talk: arms the next utterance as a question (a later press re-arms, with its own id). */
  private onTalk(payload: Buffer, oversized: boolean): void {
    const t = oversized
      ? { ok: false as const, message: `payload of ${payload.byteLength} bytes is too large` }
      : parseTalk(payload);
    if (!t.ok) {
      void this.out.talkRefused(oversized ? 'payload_too_large' : 'invalid_request', t.message);
      return;
    }
    this.talk = { at: Date.now(), ...(t.id !== undefined ? { id: t.id } : {}) };
    this.log.info({ id: t.id }, 'push-to-talk: the next utterance is a question');
  }

  republishState(): Promise<unknown> {
    return this.out.speech(this.speaking);
  }

  /** Listening switched off: the utterance in progress ends (and is still transcribed), speech goes OFF. */
  async pause(): Promise<void> {
    await this.segmenter?.flush();
    this.speaking = false;
    await this.republishState();
  }

  /** Stops listening; transcripts still waiting or running are cancelled (the controller drains first). */
  async stop(): Promise<void> {
    this.out.stop();
    this.talk = undefined;
    this.detach?.();
    this.detach = undefined;
    await this.pause();
    this.stopping = true;
    for (const id of [...this.streams.keys()]) this.dropStream(id);
    for (const id of this.pending.keys()) this.opts.scheduler?.cancel(id, 'hearing stopped');
    await Promise.allSettled([...this.pending.values()]);
    await this.segmenter?.close();
    this.groups.clear();
  }

  /** Resolves when every transcript started so far has been published (or has failed). */
  async settled(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending.values()]);
  }

  stats(): {
    speaking: boolean;
    utterances: number;
    dropped_short: number;
    dropped_backlog_ms: number;
    transcripts: number;
    transcripts_failed: number;
    questions: number;
  } {
    const s = this.segmenter?.stats();
    return {
      speaking: this.speaking,
      utterances: s?.utterances ?? 0,
      dropped_short: s?.droppedShort ?? 0,
      dropped_backlog_ms: Math.round(s?.droppedBacklogMs ?? 0),
      transcripts: this.counts.transcripts,
      transcripts_failed: this.counts.failed,
      questions: this.counts.questions,
    };
  }

  private wall(streamMs: number): number {
    return this.anchor + streamMs;
  }

  /** Speech in progress: its samples go to the utterance's stream (opened on its first window). */
  private onProgress(p: SpeechProgress): void {
    if (p.part !== 1 || this.stopping) return;
    let stream = this.streams.get(p.id);
    if (!stream) {
      const opened = this.opts
        .transcriber?.()
        ?.openStream?.(this.opts.language ? { language: this.opts.language } : {});
      if (!opened) return;
      stream = opened;
      this.streams.set(p.id, stream);
    }
    stream.update(p.samples);
  }

  private dropStream(id: string): void {
    this.streams.get(id)?.discard();
    this.streams.delete(id);
  }

  private onUtterance(u: Utterance): void {
    // A long utterance's parts are heard whole: the stream of its first part ends here unused.
    const stream = u.split ? undefined : this.streams.get(u.id);
    if (stream) this.streams.delete(u.id);
    else this.dropStream(u.split ? u.split.group : u.id);
    const transcriber = this.opts.transcriber?.();
    const scheduler = this.opts.scheduler;
    if (!transcriber || !scheduler || this.stopping) {
      this.counts.untranscribed++;
      this.log.info(
        { id: u.id, start_ms: u.startMs, end_ms: u.endMs },
        'utterance (no transcript: the model package cannot transcribe, or is not loaded yet)',
      );
      return;
    }
    // Push-to-talk claims the first utterance whose speech starts within the window after the press
    // (or was already under way when it came).
    let talk: { id?: string } | undefined;
    if (this.talk) {
      if (this.wall(u.speechStartMs) <= this.talk.at + (this.opts.talkWindowS ?? 10) * 1000) talk = this.talk;
      this.talk = undefined;
    }
    const prev = this.lastTurn;
    let done!: (t: Turn) => void;
    this.lastTurn = new Promise<Turn>((r) => (done = r));
    const job = this.transcribe(u, transcriber, scheduler, prev, talk, stream)
      .then(done, (err: unknown) => {
        this.log.error({ err, id: u.id }, 'hearing failed');
        done({ history: [] });
      })
      .finally(() => this.pending.delete(u.id));
    this.pending.set(u.id, job);
  }

  /** Transcribes, decides whether the utterance is a question, answers it; returns the conversation after it. */
  private async transcribe(
    u: Utterance,
    transcriber: SpeechEngine,
    scheduler: Scheduler,
    prevTurn: Promise<Turn>,
    talk: { id?: string } | undefined,
    stream: SpeechStream | undefined,
  ): Promise<Turn> {
    // Results carry the requester's id after push-to-talk with one; the job keeps the utterance id.
    const id = talk?.id ?? u.id;
    const cutAt = Date.now();
    const speechStart = this.wall(u.speechStartMs);
    // The segmenter hands an utterance on after its hang-over: speech ended before now, never after.
    const speechEnd = Math.min(this.wall(u.speechEndMs), cutAt);
    let startedAt = 0;
    let firstTokenAt = 0;
    let seq = 0;
    let text = '';
    try {
      const r = await scheduler.submit({
        kind: 'transcript',
        id: u.id,
        run: (signal) => {
          startedAt = Date.now();
          return transcriber.transcribe(u.samples, {
            signal,
            maxTokens: this.opts.maxTokens,
            language: this.opts.language,
            ...(stream ? { stream } : {}),
            onToken: (delta) => {
              firstTokenAt ||= Date.now();
              text = (text + delta).slice(-MAX_TEXT);
              this.out.transcriptPartial(id, seq++, delta, text);
            },
          });
        },
      });
      if (r.finishReason === 'cancelled') throw new Error('the transcript was cancelled');
      const done = Date.now();
      const since = (t: number): number => Math.max(0, Math.round(t - speechEnd));
      const tm = r.timings;
      const msg: TranscriptMessage = {
        v: 1,
        id,
        ts: isoNow(done),
        text: r.text.slice(0, MAX_TEXT),
        started_at: isoNow(speechStart),
        ended_at: isoNow(speechEnd),
        audio_ms: Math.round(u.endMs - u.startMs),
        ...(stream ? { heard_while_speaking_ms: Math.round((r.streamedTokens ?? 0) * AUDIO_TOKEN_MS) } : {}),
        source: this.source.kind,
        ...(this.opts.language && this.opts.language.length >= 2 && this.opts.language.length <= 16
          ? { language: this.opts.language }
          : {}),
        ...(u.split
          ? {
              part: {
                group: u.split.group,
                part: u.split.part,
                ...(u.split.of !== undefined ? { of: u.split.of } : {}),
                last: u.split.last,
                overlap_ms: Math.round(u.split.overlapMs),
              },
            }
          : {}),
        ...(transcriber.randomWeights ? { random_weights: true } : {}),
        latency_ms: {
          total: since(done),
          first_token: since(firstTokenAt || done),
          // End of speech until the segmenter cut the utterance (its hang-over), then waiting for the model.
          endpoint: since(cutAt),
          queue: Math.max(0, startedAt - cutAt),
          encode: Math.round(tm.featuresMs + tm.encodeMs),
          prefill: Math.round(tm.prefillMs),
          decode: Math.round(tm.decodeMs),
        },
      };
      const phrase = this.opts.wakePhrase;
      const wake = phrase !== undefined && containsWakePhrase(msg.text, phrase);
      // Waits for the previous utterance's answer: this one may follow it up.
      const turn = await prevTurn;
      const followUpMs = (this.opts.followUpS ?? 8) * 1000;
      const inWindow = followUpMs > 0 && turn.answeredAt !== undefined && speechStart <= turn.answeredAt + followUpMs;
      const kind: QuestionKind | undefined = wake ? 'wake' : talk ? 'talk' : inWindow ? 'follow_up' : undefined;
      if (wake) msg.wake = true;
      if (kind) msg.question = kind;
      this.counts.transcripts++;
      this.log.info({ id, chars: msg.text.length, question: kind, latency_ms: msg.latency_ms }, 'transcript');
      await this.out.transcript(msg);
      if (u.split) await this.publishGroup(this.groups.add(u.split, msg, speechEnd));
      if (!kind) return turn;
      const history = inWindow ? turn.history : [];
      const acting = this.opts.actions?.actions.on ? this.opts.actions : undefined;
      const answer = acting
        ? await this.act(u, id, acting, scheduler, msg.text, history, speechEnd)
        : await this.answer(
            u,
            id,
            transcriber,
            scheduler,
            conversationPrompt(wake ? spokenQuestionPrompt(phrase!) : QUESTION_PROMPT, history),
            speechEnd,
          );
      if (answer === undefined) return { history: [] };
      return { answeredAt: Date.now(), history: [...history, { question: msg.text, answer }] };
    } catch (err) {
      if (u.split) this.groups.fail(u.split);
      this.counts.failed++;
      const code = errorCodeFor(err);
      const message = (err as Error).message ?? String(err);
      // Shutdown and cancellation are not failures anyone needs to hear about.
      if (isSchedulerError(err, 'shutting_down') || isSchedulerError(err, 'cancelled') || this.stopping) {
        this.log.info({ id: u.id, reason: message }, 'transcript dropped');
        return prevTurn;
      }
      if (code === 'internal') this.log.error({ err, id: u.id }, 'transcript failed');
      else this.log.warn({ id: u.id, code, reason: message }, 'no transcript');
      await this.out.transcriptFailed(id, code, message);
      return prevTurn;
    }
  }
  /** Publishes the stitched transcript of a finished group (or says why there is none). */
  private async publishGroup(done: GroupOutcome): Promise<void> {
    if (done === null) return;
    if ('missing' in done) {
      this.log.warn({ group: done.group }, 'long utterance not stitched: a part is missing');
      return;
    }
    const msg = done.stitched;
    this.log.info({ id: msg.id, parts: msg.stitched_from?.length, chars: msg.text.length }, 'stitched transcript');
    await this.out.transcript(msg);
  }

  /** Answers a spoken question from its transcript with the allow-listed actions as tools (see respond). */
  private act(
    u: Utterance,
    id: string,
    acting: NonNullable<HearingOptions['actions']>,
    scheduler: Scheduler,
    question: string,
    history: Turn['history'],
    speechEnd: number,
  ): Promise<string | undefined> {
    return this.respond(
      u,
      id,
      scheduler,
      speechEnd,
      'spoken question answered (actions offered)',
      async (signal, onToken) => {
        const messages: GenerationMessage[] = [
          ...history.flatMap((h) => [
            { role: 'user' as const, content: h.question },
            { role: 'assistant' as const, content: h.answer },
          ]),
          { role: 'user', content: question },
        ];
        const r = await acting.actions.answer(
          (g) => acting.engine().generate(g),
          {
            messages,
            ...(this.opts.answerMaxTokens !== undefined ? { maxTokens: this.opts.answerMaxTokens } : {}),
            signal,
            onToken,
          },
          { id },
        );
        return {
          text: r.text,
          finishReason: r.finishReason,
          tokens: r.tokens,
          latency: {
            ...(r.timings.prefillMs !== undefined ? { prefill: Math.round(r.timings.prefillMs) } : {}),
            ...(r.timings.decodeMs !== undefined ? { decode: Math.round(r.timings.decodeMs) } : {}),
          },
          ...(r.actions.length ? { actions: r.actions.slice(0, 16) } : {}),
        };
      },
    );
  }

  /** Answers a spoken question from its audio (see respond). */
  private answer(
    u: Utterance,
    id: string,
    transcriber: SpeechEngine,
    scheduler: Scheduler,
    prompt: string,
    speechEnd: number,
  ): Promise<string | undefined> {
    return this.respond(u, id, scheduler, speechEnd, 'spoken question answered', async (signal, onToken) => {
      const r = await transcriber.answer(u.samples, { signal, prompt, maxTokens: this.opts.answerMaxTokens, onToken });
      return {
        text: r.text,
        finishReason: r.finishReason,
        tokens: { prompt: r.promptTokens, completion: r.tokens.length },
        latency: {
          encode: Math.round(r.timings.featuresMs + r.timings.encodeMs),
          prefill: Math.round(r.timings.prefillMs),
          decode: Math.round(r.timings.decodeMs),
        },
      };
    });
  }

  /**
   * Runs a spoken question's answer as an `answer` job under `id` (its transcript's), streams its tokens, and
   * publishes it with its latency from the end of speech; returns the answer text (undefined when it failed,
   * which is said on the answer topic).
   */
  private async respond(
    u: Utterance,
    id: string,
    scheduler: Scheduler,
    speechEnd: number,
    logLine: string,
    run: (signal: AbortSignal, onToken: (delta: string) => void) => Promise<SpokenReply>,
  ): Promise<string | undefined> {
    const submitted = Date.now();
    let startedAt = 0;
    let firstTokenAt = 0;
    let seq = 0;
    try {
      const r = await scheduler.submit({
        kind: 'answer',
        id: u.id,
        run: (signal) => {
          startedAt = Date.now();
          return run(signal, (delta) => {
            firstTokenAt ||= Date.now();
            this.out.answerChunk(id, seq++, delta, false);
          });
        },
      });
      this.out.answerChunk(id, seq++, '', true);
      const done = Date.now();
      const since = (t: number): number => Math.max(0, Math.round(t - speechEnd));
      const msg: AnswerMessage = {
        v: 1,
        id,
        ts: isoNow(done),
        text: r.text.slice(0, MAX_TEXT),
        finish_reason: r.finishReason,
        tokens: r.tokens,
        latency_ms: {
          total: since(done),
          first_token: since(firstTokenAt || done),
          queue: Math.max(0, startedAt - submitted),
          ...r.latency,
        },
        ...(r.actions ? { actions: r.actions } : {}),
      };
      this.counts.questions++;
      this.log.info({ id, chars: msg.text.length, latency_ms: msg.latency_ms, actions: r.actions?.length }, logLine);
      await this.out.answer(msg);
      return msg.text;
    } catch (err) {
      if (this.stopping || isSchedulerError(err, 'shutting_down') || isSchedulerError(err, 'cancelled'))
        return undefined;
      const code = errorCodeFor(err);
      const message = (err as Error).message ?? String(err);
      this.log.warn({ id, code, reason: message }, 'spoken question not answered');
      await this.out.answerFailed(id, code, message);
      return undefined;
    }
  }
}
