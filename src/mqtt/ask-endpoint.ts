/**
 * AskEndpoint: serves `<root>/ask` and `<root>/ask/cancel` on an MqttConnection.
 *
 * It validates each request (parseRequest), works out where the reply goes (replyRouteFor) and hands
 * valid requests to the controller; anything wrong becomes a message on `<root>/errors` and, when the
 * request gave a reply address (responseTopic or reply_to), an error reply there. The controller answers
 * through answer(), streamChunk() and fail(), so the reply format lives here and nowhere else.
 *
 * A request is acted on at most once: the broker redelivers a QoS 1 request whose acknowledgement was
 * lost in a disconnect, and a client may retry. A request naming an id is ignored when the same id,
 * for the same reply address, was accepted within REQUEST_DEDUP_WINDOW_MS.
 */
import { silentLogger, type Logger } from '../common/log.js';
import type { IncomingMessage, MqttConnection, PublishResult } from './connection.js';
import {
  encode,
  isoNow,
  parseRequest,
  type AnswerErrorMessage,
  type AnswerMessage,
  type AnswerStreamMessage,
  type AskRequest,
  type ErrorCode,
  type RequestLimits,
} from './messages.js';
import { errorMessage } from './errors.js';
import { replyRouteFor, type ReplyRoute } from './requests.js';

export interface AskContext {
  request: AskRequest;
  route: ReplyRoute;
  /** Epoch ms the request arrived (start of latency_ms.total). */
  receivedAt: number;
  /** The topic the request came on (ask or ask/text): errors name it. */
  topic: string;
}

export interface AskHandlers {
  /** A valid request; answer it through answer()/fail() with ctx.route. */
  ask(ctx: AskContext): void;
  /** ask/cancel for request `id`. */
  cancel(id: string): void;
}

/** Answer fields the controller supplies; v, id and ts are added here. */
export type AnswerBody = Omit<AnswerMessage, 'v' | 'id' | 'ts'>;

/** Most characters of a refusal's reason that reach the log (the reply carries up to 2000). */
const LOGGED_CHARS = 500;
const OWNER = 'ask-endpoint';
const JSON_TYPE = 'application/json';
/** How long an accepted request id is remembered. */
export const REQUEST_DEDUP_WINDOW_MS = 10 * 60_000;
/** Most ids remembered; the oldest is forgotten first, so a flood cannot grow memory without bound. */
export const REQUEST_DEDUP_MAX_IDS = 10_000;

/** Keys seen within a window, oldest first (Map keeps insertion order). */
class RecentKeys {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly windowMs: number,
    private readonly maxKeys: number,
  ) {}

  /** True when `key` was added within the window; otherwise remembers it and returns false. */
  check(key: string, now = Date.now()): boolean {
    for (const [k, at] of this.seen) {
      if (now - at < this.windowMs && this.seen.size < this.maxKeys) break;
      this.seen.delete(k);
    }
    if (this.seen.has(key)) return true;
    this.seen.set(key, now);
    return false;
  }
}

export class AskEndpoint {
  private readonly log: Logger;
  private readonly recent = new RecentKeys(REQUEST_DEDUP_WINDOW_MS, REQUEST_DEDUP_MAX_IDS);

  constructor(
    private readonly conn: MqttConnection,
    private readonly limits: RequestLimits,
    private readonly handlers: AskHandlers,
    logger: Logger = silentLogger,
  ) {
    this.log = logger.child({ module: 'ask' });
  }

  /**
   * Subscribes `<root>/ask/#` (QoS 1; kept across reconnects by the connection). The filter matches
   * `<root>/ask` and `<root>/ask/cancel`, and also misdirected topics below, which get unknown_topic.
   */
  start(): void {
    this.conn.subscribe(`${this.conn.topics.ask}/#`, (msg: IncomingMessage) => this.onRequest(msg), {
      qos: 1,
      owner: OWNER,
      acceptOversized: true,
    });
  }

  stop(): void {
    this.conn.removeOwner(OWNER);
  }

  /** Final answer: QoS 1 through the outbox, highest keep priority. */
  answer(route: ReplyRoute, body: AnswerBody): Promise<PublishResult> {
    const msg: AnswerMessage = { v: 1, id: route.id, ts: isoNow(), ...body };
    return this.conn.publish(route.topic, encode(msg), {
      final: true,
      qos: 1,
      priority: 'answer',
      contentType: JSON_TYPE,
      correlationData: route.correlationData,
    });
  }

  /** One streamed piece of an answer, QoS 0 on `<root>/answer/stream` (correlationData echoed on MQTT 5). */
  streamChunk(route: ReplyRoute, seq: number, delta: string, done: boolean): Promise<PublishResult> {
    const msg: AnswerStreamMessage = { v: 1, id: route.id, ts: isoNow(), seq, delta, done };
    return this.conn.publish(this.conn.topics.answerStream, encode(msg), {
      qos: 0,
      contentType: JSON_TYPE,
      correlationData: route.correlationData,
    });
  }

  /**
   * A request failed (busy, deadline, engine error ...): an error on `<root>/errors`, and an error reply
   * on the request's reply topic (which is `<root>/answer` for requests that named none).
   */
  async fail(
    route: ReplyRoute | undefined,
    code: ErrorCode,
    message: string,
    opts: { id?: string; topic?: string } = {},
  ): Promise<void> {
    const id = route?.id ?? opts.id;
    const error = errorMessage({ ...(id ? { id } : {}), code, message, topic: opts.topic ?? this.conn.topics.ask });
    const tasks: Array<Promise<PublishResult>> = [this.conn.publishError(error)];
    if (route) {
      const reply: AnswerErrorMessage = {
        v: 1,
        ...(id ? { id } : {}),
        ts: error.ts,
        error: { code, message: error.message },
      };
      tasks.push(
        this.conn.publish(route.topic, encode(reply), {
          final: true,
          qos: 1,
          priority: 'answer',
          contentType: JSON_TYPE,
          correlationData: route.correlationData,
        }),
      );
    }
    await Promise.all(tasks);
  }

  /**
   * Whether this request was accepted already. Only requests that name an id count (a generated id is
   * new every time); the reply address is part of the key, so two clients that both use id "1" do not
   * silence each other. Text-topic requests carry no id.
   */
  private isRepeat(msg: IncomingMessage, route: ReplyRoute): boolean {
    if (msg.topic !== this.conn.topics.ask || !hasExplicitId(msg.payload)) return false;
    const key = JSON.stringify([route.id, route.topic, route.correlationData?.toString('base64') ?? null]);
    return this.recent.check(key);
  }

  private onRequest(msg: IncomingMessage): void {
    const receivedAt = Date.now();
    const parsed = parseRequest(msg.topic, msg.payload, { ...this.limits, topics: this.conn.topics });
    if (!parsed.ok) {
      this.log.info(
        { topic: msg.topic, code: parsed.error.code, err: parsed.error.message.slice(0, LOGGED_CHARS) },
        'request refused',
      );
      // Reply only to an explicit address: a broken request without one has no waiting requester to tell.
      const r = replyRouteFor(parsed.id ?? '', parsed.replyTo, msg.properties, this.conn.topics, this.conn.reserved);
      const route = r.ok && r.route.via !== 'default' ? { ...r.route } : undefined;
      void this.fail(route, parsed.error.code, parsed.error.message, { id: parsed.id, topic: msg.topic });
      return;
    }
    if (parsed.kind === 'cancel') {
      this.handlers.cancel(parsed.cancel.id);
      return;
    }
    const req = parsed.request;
    const r = replyRouteFor(req.id, req.reply_to, msg.properties, this.conn.topics, this.conn.reserved);
    if (!r.ok) {
      void this.fail(undefined, 'invalid_request', r.message, { id: req.id, topic: msg.topic });
      return;
    }
    if (this.isRepeat(msg, r.route)) {
      this.log.info({ id: req.id, topic: msg.topic }, 'request ignored: already accepted with this id');
      return;
    }
    try {
      this.handlers.ask({ request: req, route: r.route, receivedAt, topic: msg.topic });
    } catch (err) {
      this.log.error({ err: String(err) }, 'ask handler failed');
      void this.fail(r.route, 'internal', 'the request could not be handled', { topic: msg.topic });
    }
  }
}

/** The request JSON names its own id (parseRequest already validated it). */
function hasExplicitId(payload: Buffer): boolean {
  try {
    return typeof (JSON.parse(payload.toString('utf8')) as { id?: unknown }).id === 'string';
  } catch {
    return false;
  }
}
