/**
 * One Wyoming connection. Home Assistant opens one per request: `describe` (answered with `info`), an
 * utterance (`transcribe`, `audio-start`, `audio-chunk`..., `audio-stop`, answered with `transcript`), or a
 * conversation turn (`transcript` in, `handled` out). Audio is heard while it arrives: each chunk goes to a
 * speech stream (engine/speech-stream.ts), so at `audio-stop` only the end of the clip and the transcript's
 * own decode remain, as for Perch's own microphone.
 *
 * Peers from protocol 1.7 on also get the streaming events (transcript-start/-chunk/-stop, handled-start/
 * -chunk/-stop) around the final one, which every peer gets. Unknown events are ignored, as the protocol asks.
 * A failed transcript is answered with `error` and the connection closes (Home Assistant's speech client waits
 * for a transcript or the end of the connection); a failed turn is answered with `error`.
 */
import type { Socket } from 'node:net';
import { type PcmFormat, PcmConverter, checkPcmFormat } from '../audio/pcm.js';
import type { Logger } from '../common/log.js';
import type { SpeechStream } from '../engine/speech-stream.js';
import { ClipLengthError, MAX_CLIP_SAMPLES } from '../engine/transcriber.js';
import type { AnswerEngine, GenerationRequest, SpeechEngine } from '../engine/types.js';
import type { Actions } from '../pipelines/actions.js';
import { errorCodeFor } from '../pipelines/ask.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { Conversations } from './conversations.js';
import { EventReader, ProtocolError, type WyomingEvent, encodeEvent, hasStreamingEvents } from './protocol.js';

/** Longest question text taken from a `transcript` turn. */
export const MAX_TURN_CHARS = 4000;

export interface SessionDeps {
  speech: () => SpeechEngine | undefined;
  engine: () => AnswerEngine;
  scheduler: Scheduler;
  conversations: Conversations;
  /** Allow-listed actions offered to the model in conversation turns. */
  actions?: Actions;
  /** The `info` event's data. */
  info: Record<string, unknown>;
  transcriptMaxTokens: number;
  maxBlockBytes: number;
  idleTimeoutMs: number;
  counts: WyomingCounts;
  logger: Logger;
}

export interface WyomingCounts {
  connections: number;
  transcripts: number;
  turns: number;
  errors: number;
  refused: number;
}

/** The utterance being received. */
interface Utterance {
  converter: PcmConverter;
  samples: Int16Array;
  length: number;
  /** More than the model hears (30 s) arrived; said at audio-stop. */
  tooLong: boolean;
  stream: SpeechStream | null;
}

export class WyomingSession {
  private readonly reader: EventReader;
  /** Events are handled in order, one at a time. */
  private queue: Promise<void> = Promise.resolve();
  private language: string | undefined;
  private utterance: Utterance | null = null;
  /** The scheduler job under way for this connection (cancelled when the peer leaves). */
  private job: string | null = null;
  private jobs = 0;
  private closed = false;
  private peerVersion: string | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly id: string,
    private readonly deps: SessionDeps,
  ) {
    this.reader = new EventReader({ maxHeaderBytes: 64 * 1024, maxBlockBytes: deps.maxBlockBytes });
    socket.setNoDelay(true);
    socket.setTimeout(deps.idleTimeoutMs);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('timeout', () => {
      // Waiting on the model is not idling.
      if (this.job) return;
      this.deps.logger.info({ client: this.id }, 'wyoming client idle: disconnected');
      this.socket.destroy();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => this.onClose());
  }

  /** Resolves once the connection is closed and its work has ended. */
  get done(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) resolve(this.queue);
      else this.socket.once('close', () => resolve(this.queue));
    });
  }

  private onData(chunk: Buffer): void {
    let events: WyomingEvent[];
    try {
      events = this.reader.push(chunk);
    } catch (err) {
      const message = err instanceof ProtocolError ? err.message : String(err);
      this.deps.counts.errors++;
      this.deps.logger.info({ client: this.id, reason: message }, 'wyoming client sent a broken event: disconnected');
      this.send('error', { text: `bad Wyoming event: ${message}`, code: 'invalid_request' });
      this.socket.end();
      this.socket.removeAllListeners('data');
      return;
    }
    for (const ev of events) {
      this.peerVersion = ev.version ?? this.peerVersion;
      this.queue = this.queue
        .then(() => this.handle(ev))
        .catch((err: unknown) => {
          this.deps.logger.error({ err, client: this.id }, 'wyoming event failed');
        });
    }
  }

  private onClose(): void {
    this.closed = true;
    this.utterance?.stream?.discard();
    this.utterance = null;
    if (this.job) this.deps.scheduler.cancel(this.job, 'the Wyoming client disconnected');
  }

  private async handle(ev: WyomingEvent): Promise<void> {
    if (this.closed) return;
    switch (ev.type) {
      case 'describe':
        this.send('info', this.deps.info);
        return;
      case 'ping':
        this.send('pong', typeof ev.data.text === 'string' ? { text: ev.data.text.slice(0, 256) } : {});
        return;
      case 'transcribe':
        this.language = languageCode(ev.data.language);
        return;
      case 'audio-start':
        this.startUtterance(ev.data);
        return;
      case 'audio-chunk':
        this.addChunk(ev);
        return;
      case 'audio-stop':
        await this.finishUtterance();
        return;
      case 'transcript':
        await this.turn(ev.data);
        return;
      default:
        // The protocol asks servers to drop events they do not know (select-program, tts, wake, ...).
        return;
    }
  }

  // ---- speech to text

  private startUtterance(data: Record<string, unknown>): boolean {
    this.utterance?.stream?.discard();
    this.utterance = null;
    const format = checkPcmFormat(data);
    if (typeof format === 'string') {
      this.fail('invalid_request', `audio-start: ${format}`, { close: true });
      return false;
    }
    const language = languageName(this.language);
    this.utterance = {
      converter: new PcmConverter(format),
      samples: new Int16Array(16000 * 4),
      length: 0,
      tooLong: false,
      stream: this.deps.speech()?.openStream?.(language ? { language } : {}) ?? null,
    };
    return true;
  }

  private addChunk(ev: WyomingEvent): void {
    // audio-chunk carries its format too: a peer that skipped audio-start starts here.
    if (!this.utterance && !this.startUtterance(ev.data)) return;
    const u = this.utterance!;
    const format = checkPcmFormat(ev.data);
    if (typeof format === 'string' || !sameFormat(format, u.converter.format)) {
      const why = typeof format === 'string' ? format : 'its format differs from audio-start';
      this.fail('invalid_request', `audio-chunk: ${why}`, { close: true });
      return;
    }
    if (!ev.payload || u.tooLong) return;
    const samples = u.converter.push(ev.payload);
    if (u.length + samples.length > MAX_CLIP_SAMPLES) {
      u.tooLong = true;
      u.stream?.discard();
      u.stream = null;
      return;
    }
    if (u.length + samples.length > u.samples.length) {
      const grown = new Int16Array(
        Math.min(MAX_CLIP_SAMPLES, Math.max(u.length + samples.length, u.samples.length * 2)),
      );
      grown.set(u.samples.subarray(0, u.length));
      u.samples = grown;
    }
    u.samples.set(samples, u.length);
    u.length += samples.length;
    u.stream?.update(u.samples.subarray(0, u.length));
  }

  private async finishUtterance(): Promise<void> {
    const u = this.utterance;
    this.utterance = null;
    if (!u) {
      this.fail('invalid_request', 'audio-stop without audio (send audio-start and audio-chunk first)', {
        close: true,
      });
      return;
    }
    if (u.tooLong) {
      this.fail(
        'invalid_request',
        `the audio is longer than the ${MAX_CLIP_SAMPLES / 16000} s the model hears at once`,
        {
          close: true,
        },
      );
      return;
    }
    const speech = this.deps.speech();
    if (!speech) {
      u.stream?.discard();
      this.fail(
        'unavailable',
        'speech to text is not available: the model is not loaded yet, or its package has no audio encoder',
        { close: true },
      );
      return;
    }
    const clip = u.samples.slice(0, u.length);
    const streaming = hasStreamingEvents(this.peerVersion);
    const language = languageName(this.language);
    const reply = this.language ? { language: this.language } : {};
    try {
      if (streaming) this.send('transcript-start', reply);
      const r = await this.runJob((signal) =>
        speech.transcribe(clip, {
          signal,
          maxTokens: this.deps.transcriptMaxTokens,
          ...(language ? { language } : {}),
          ...(u.stream ? { stream: u.stream } : {}),
          onToken: (delta) => {
            if (streaming && delta) this.send('transcript-chunk', { text: delta });
          },
        }),
      );
      if (r.finishReason === 'cancelled') throw new Error('the transcript was cancelled');
      this.deps.counts.transcripts++;
      this.send('transcript', { text: r.text, ...reply });
      if (streaming) this.send('transcript-stop', {});
      this.deps.logger.info(
        { client: this.id, audio_ms: Math.round(clip.length / 16), streamed_tokens: r.streamedTokens ?? 0 },
        'wyoming transcript',
      );
    } catch (err) {
      u.stream?.discard();
      const code = err instanceof ClipLengthError ? 'invalid_request' : errorCodeFor(err);
      this.fail(code, err instanceof Error ? err.message : String(err), { close: true, err });
    }
  }

  // ---- conversation agent

  private async turn(data: Record<string, unknown>): Promise<void> {
    const text = typeof data.text === 'string' ? data.text.trim() : '';
    if (!text) {
      this.fail('invalid_request', 'transcript: text must be a non-empty string');
      return;
    }
    if (text.length > MAX_TURN_CHARS) {
      this.fail('invalid_request', `transcript: text is longer than ${MAX_TURN_CHARS} characters`);
      return;
    }
    const context =
      typeof data.context === 'object' && data.context !== null ? (data.context as Record<string, unknown>) : {};
    const conversation =
      typeof context.conversation_id === 'string' && context.conversation_id.length <= 128
        ? context.conversation_id
        : undefined;
    const streaming = hasStreamingEvents(this.peerVersion);
    const reply = conversation ? { context: { conversation_id: conversation } } : {};
    const engine = this.deps.engine();
    try {
      if (streaming) this.send('handled-start', reply);
      const actions = this.deps.actions;
      const r = await this.runJob((signal) => {
        const request: GenerationRequest = {
          messages: [...this.deps.conversations.history(conversation), { role: 'user', content: text }],
          signal,
          onToken: (delta) => {
            if (streaming && delta) this.send('handled-chunk', { text: delta });
          },
        };
        // The job's id names the question on <root>/action; the conversation lets its next turn confirm a call.
        const ctx = { id: this.job ?? `wyoming-${this.id}`, ...(conversation ? { conversation } : {}) };
        return actions ? actions.answer((g) => engine.generate(g), request, ctx) : engine.generate(request);
      });
      if (r.finishReason === 'cancelled') throw new Error('the answer was cancelled');
      this.deps.counts.turns++;
      this.deps.conversations.record(conversation, text, r.text);
      this.send('handled', { text: r.text, ...reply });
      if (streaming) this.send('handled-stop', {});
    } catch (err) {
      this.fail(errorCodeFor(err), err instanceof Error ? err.message : String(err), { err });
    }
  }

  // ---- plumbing

  /** Runs work as a job at the spoken-question priority; the peer leaving cancels it. */
  private async runJob<T>(run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const id = `wyoming-${this.id}-${++this.jobs}`;
    this.job = id;
    try {
      return await this.deps.scheduler.submit({ kind: 'answer', id, run });
    } finally {
      this.job = null;
    }
  }

  private fail(code: string, message: string, opts: { close?: boolean; err?: unknown } = {}): void {
    this.deps.counts.errors++;
    if (code === 'internal') this.deps.logger.error({ err: opts.err, client: this.id }, `wyoming: ${message}`);
    else this.deps.logger.info({ client: this.id, code, reason: message }, 'wyoming request not answered');
    this.send('error', { text: message, code });
    if (opts.close) this.socket.end();
  }

  private send(type: string, data: Record<string, unknown>): void {
    if (this.closed || this.socket.destroyed || !this.socket.writable) return;
    this.socket.write(encodeEvent(type, data));
  }
}

function sameFormat(a: PcmFormat, b: PcmFormat): boolean {
  return a.rate === b.rate && a.width === b.width && a.channels === b.channels;
}

/** A language code from the network, or undefined when it is not one (it would end up in the prompt). */
function languageCode(v: unknown): string | undefined {
  return typeof v === 'string' && /^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,2}$/.test(v) ? v : undefined;
}

const names = new Intl.DisplayNames(['en'], { type: 'language', fallback: 'none' });

/** "de" -> "German", for the transcription instruction; undefined lets the model find the language. */
export function languageName(code: string | undefined): string | undefined {
  if (!code) return undefined;
  try {
    return names.of(code.replace('_', '-'));
  } catch {
    return undefined;
  }
}
