/**
 * The Wyoming module: a TCP server speaking the Wyoming protocol (protocol.ts), one WyomingSession per
 * connection, so Home Assistant can put Perch in an Assist pipeline as its speech to text and its conversation
 * agent, both from one server (one config entry). Advertised over mDNS as `_wyoming._tcp` (zeroconf.ts) unless
 * it listens on loopback only, so Home Assistant offers to add it.
 *
 * Each utterance and each turn is a scheduler job at the spoken-question priority (`answer`): satellites share
 * the model with Perch's own microphone, first come first served among them. Connections beyond
 * `max_clients` are told so and closed; a session's failure never reaches another.
 */
import * as net from 'node:net';
import type { Logger } from '../common/log.js';
import type { WyomingSettings } from '../config/schema.js';
import type { AnswerEngine, SpeechEngine } from '../engine/types.js';
import type { Actions } from '../pipelines/actions.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import { Conversations } from './conversations.js';
import { encodeEvent } from './protocol.js';
import { type WyomingCounts, WyomingSession } from './session.js';
import { type Advertisement, advertise, isLoopback } from './zeroconf.js';

export interface WyomingServerOptions {
  settings: WyomingSettings;
  /** perch-<device id> unless settings.name says otherwise. */
  deviceId: string;
  speech: () => SpeechEngine | undefined;
  engine: () => AnswerEngine;
  scheduler: Scheduler;
  version: string;
  transcriptMaxTokens: number;
  actions?: Actions;
  logger: Logger;
}

export const MODEL_ATTRIBUTION = { name: 'Google', url: 'https://ai.google.dev/gemma' };
/** Perch has no public home page yet: the protocol needs the field, Home Assistant shows nothing for an empty one. */
export const PERCH_ATTRIBUTION = { name: 'Perch', url: '' };

/** The `info` event's data: one speech-to-text program and one handle program, the same model. */
export function wyomingInfo(languages: string[], version: string): Record<string, unknown> {
  const model = {
    name: 'gemma-4-e2b',
    attribution: MODEL_ATTRIBUTION,
    installed: true,
    description: 'Gemma 4 E2B on this board',
    version: null,
    languages,
  };
  const program = { attribution: PERCH_ATTRIBUTION, installed: true, version, models: [model] };
  return {
    asr: [
      {
        name: 'perch',
        description: 'Perch speech to text (Gemma 4, hears while you speak)',
        ...program,
        supports_transcript_streaming: true,
      },
    ],
    handle: [
      {
        name: 'perch',
        description: 'Perch conversation agent (Gemma 4)',
        ...program,
        supports_handled_streaming: true,
        supports_home_control: false,
      },
    ],
    tts: [],
    intent: [],
    wake: [],
    mic: [],
    snd: [],
  };
}

export class WyomingServer {
  private server: net.Server | null = null;
  private readonly sessions = new Set<WyomingSession>();
  private readonly sockets = new Set<net.Socket>();
  private readonly conversations = new Conversations();
  private readonly counts: WyomingCounts = { connections: 0, transcripts: 0, turns: 0, errors: 0, refused: 0 };
  private advertisement: Advertisement | null = null;
  /** The `info` every `describe` gets (the settings do not change while the server runs). */
  private readonly info: Record<string, unknown>;
  private next = 0;

  constructor(private readonly o: WyomingServerOptions) {
    this.info = wyomingInfo(o.settings.languages, o.version);
  }

  get instanceName(): string {
    return this.o.settings.name ?? `perch-${this.o.deviceId}`;
  }

  async start(): Promise<{ host: string; port: number }> {
    const { settings } = this.o;
    const server = net.createServer((socket) => this.onConnection(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(settings.port, settings.listen, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.o.logger.error({ err }, 'wyoming server error'));
    this.server = server;
    const port = (server.address() as net.AddressInfo).port;
    this.o.logger.info(`Wyoming server listening on ${settings.listen}:${port}`);
    if (settings.zeroconf && !isLoopback(settings.listen)) {
      this.advertisement = advertise({ name: this.instanceName, port, logger: this.o.logger });
    } else if (settings.zeroconf) {
      this.o.logger.info('Wyoming server not advertised over mDNS: it listens on loopback only');
    }
    return { host: settings.listen, port };
  }

  async stop(): Promise<void> {
    await this.advertisement?.stop();
    this.advertisement = null;
    const server = this.server;
    this.server = null;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await Promise.all([...this.sessions].map((s) => s.done));
    await closed;
  }

  stats(): { wyoming: WyomingCounts & { clients: number } } {
    return { wyoming: { ...this.counts, clients: this.sessions.size } };
  }

  private onConnection(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    if (this.sessions.size >= this.o.settings.max_clients) {
      this.counts.refused++;
      socket.on('error', () => undefined);
      socket.end(
        encodeEvent('error', {
          text: `too many Wyoming clients at once (wyoming.max_clients is ${this.o.settings.max_clients})`,
          code: 'busy',
        }),
      );
      return;
    }
    this.counts.connections++;
    const session = new WyomingSession(socket, String(++this.next), {
      speech: this.o.speech,
      engine: this.o.engine,
      scheduler: this.o.scheduler,
      conversations: this.conversations,
      ...(this.o.actions ? { actions: this.o.actions } : {}),
      info: this.info,
      transcriptMaxTokens: this.o.transcriptMaxTokens,
      maxBlockBytes: this.o.settings.max_chunk_bytes,
      idleTimeoutMs: this.o.settings.idle_timeout_s * 1000,
      counts: this.counts,
      logger: this.o.logger,
    });
    this.sessions.add(session);
    void session.done.then(() => this.sessions.delete(session));
  }
}
