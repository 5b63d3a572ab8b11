/**
 * AskEndpoint: serves `<root>/ask` and `<root>/ask/cancel` on an MqttConnection.
 *
 * It validates each request (parseRequest), works out where the reply goes (replyRouteFor) and hands
 * valid requests to the controller; anything wrong becomes a message on `<root>/errors` and, when the
 * request gave a reply address (responseTopic or reply_to), an error reply there. The controller answers
 * through answer(), streamChunk() and fail(), so the reply format lives here and nowhere else.
 */
import { silentLogger, type Logger } from '../log.js';
import type { IncomingMessage, MqttConnection, PublishResult } from './connection.js';
import { encode, isoNow, parseRequest, type AnswerErrorMessage, type AnswerMessage, type AnswerStreamMessage, type AskRequest, type ErrorCode, type ErrorMessage, type RequestLimits } from './messages.js';
import { replyRouteFor, type ReplyRoute } from './requests.js';

export interface AskContext {
  request: AskRequest;
  route: ReplyRoute;
  /** Epoch ms the request arrived (start of latency_ms.total). */
  receivedAt: number;
}

export interface AskHandlers {
  /** A valid request; answer it through answer()/fail() with ctx.route. */
  ask(ctx: AskContext): void;
  /** ask/cancel for request `id`. */
  cancel(id: string): void;
}

/** Answer fields the controller supplies; v, id and ts are added here. */
export type AnswerBody = Omit<AnswerMessage, 'v' | 'id' | 'ts'>;

const OWNER = 'ask-endpoint';
const JSON_TYPE = 'application/json';

export class AskEndpoint {
  private readonly log: Logger;

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
    this.conn.subscribe(`${this.conn.topics.ask}/#`, (msg: IncomingMessage) => this.onRequest(msg), { qos: 1, owner: OWNER, acceptOversized: true });
  }

  stop(): void {
    this.conn.removeOwner(OWNER);
  }

  /** Final answer: QoS 1 through the outbox, highest keep priority. */
  answer(route: ReplyRoute, body: AnswerBody): Promise<PublishResult> {
    const msg: AnswerMessage = { v: 1, id: route.id, ts: isoNow(), ...body };
    return this.conn.publish(route.topic, encode(msg), { final: true, qos: 1, priority: 'answer', contentType: JSON_TYPE, correlationData: route.correlationData });
  }

  /** One streamed piece of an answer, QoS 0 on `<root>/answer/stream` (correlationData echoed on MQTT 5). */
  streamChunk(route: ReplyRoute, seq: number, delta: string, done: boolean): Promise<PublishResult> {
    const msg: AnswerStreamMessage = { v: 1, id: route.id, ts: isoNow(), seq, delta, done };
    return this.conn.publish(this.conn.topics.answerStream, encode(msg), { qos: 0, contentType: JSON_TYPE, correlationData: route.correlationData });
  }

  /**
   * A request failed (busy, deadline, engine error ...): an error on `<root>/errors`, and an error reply
   * on the request's reply topic (which is `<root>/answer` for requests that named none).
   */
  async fail(route: ReplyRoute | undefined, code: ErrorCode, message: string, opts: { id?: string; topic?: string } = {}): Promise<void> {
    const id = route?.id ?? opts.id;
    const error: ErrorMessage = { v: 1, ts: isoNow(), ...(id ? { id } : {}), code, message: message.slice(0, 2000) || code, topic: opts.topic ?? this.conn.topics.ask };
    const tasks: Array<Promise<PublishResult>> = [
      this.conn.publish(this.conn.topics.errors, encode(error), { final: true, qos: 1, priority: 'other', contentType: JSON_TYPE }),
    ];
    if (route) {
      const reply: AnswerErrorMessage = { v: 1, ...(id ? { id } : {}), ts: error.ts, error: { code, message: error.message } };
      tasks.push(this.conn.publish(route.topic, encode(reply), { final: true, qos: 1, priority: 'answer', contentType: JSON_TYPE, correlationData: route.correlationData }));
    }
    await Promise.all(tasks);
  }

  private onRequest(msg: IncomingMessage): void {
    const receivedAt = Date.now();
    const parsed = parseRequest(msg.topic, msg.payload, { ...this.limits, topics: this.conn.topics });
    if (!parsed.ok) {
      this.log.info({ topic: msg.topic, code: parsed.error.code, err: parsed.error.message }, 'request refused');
      // Reply only to an explicit address: a broken request without one has no waiting requester to tell.
      const r = replyRouteFor(parsed.id ?? '', parsed.replyTo, msg.properties, this.conn.topics);
      const route = r.ok && r.route.via !== 'default' ? { ...r.route } : undefined;
      void this.fail(route, parsed.error.code, parsed.error.message, { id: parsed.id, topic: msg.topic });
      return;
    }
    if (parsed.kind === 'cancel') {
      this.handlers.cancel(parsed.cancel.id);
      return;
    }
    const req = parsed.request;
    const r = replyRouteFor(req.id, req.reply_to, msg.properties, this.conn.topics);
    if (!r.ok) {
      void this.fail(undefined, 'invalid_request', r.message, { id: req.id, topic: msg.topic });
      return;
    }
    try {
      this.handlers.ask({ request: req, route: r.route, receivedAt });
    } catch (err) {
      this.log.error({ err: String(err) }, 'ask handler failed');
      void this.fail(r.route, 'internal', 'the request could not be handled');
    }
  }
}
