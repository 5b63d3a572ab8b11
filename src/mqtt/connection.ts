/**
 * MqttConnection: Perch's one link to the broker, over mqtt.js.
 *
 * - Lifecycle: start() opens the outbox and begins connecting (it does not wait for the broker: a board
 *   may boot before its broker); stop() says `offline` and disconnects cleanly; abort() drops the link
 *   like a crash (the broker then publishes the last will).
 * - One fresh mqtt.js client per connection attempt, with mqtt.js's own reconnect off: delays grow
 *   exponentially between reconnect_min_ms and reconnect_max_ms, and protocol 'auto' can switch from
 *   MQTT 5 to 3.1.1 when a broker refuses 5 (CONNACK code 1 or 0x84), for the rest of this run.
 * - Every (re)connect: retained `online` on status, subscriptions renewed, outbox delivery restarted.
 * - publish(final: true) goes through the persisted outbox (at-least-once, in order); other messages
 *   are sent only while connected and are dropped (and counted) otherwise.
 * - No topic or filter the broker would refuse goes out: Mosquitto answers one by dropping the
 *   connection, and the outbox would send it again first on every reconnect. A final message with such
 *   a topic, or one the broker refuses anyway, becomes a dead letter under <state_dir>/dead-letter,
 *   reported on `errors` (code undeliverable).
 */
import { EventEmitter } from 'node:events';
import path from 'node:path';
import mqtt, { type IClientPublishOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { MqttSettings } from '../config/schema.js';
import { silentLogger, type Logger } from '../common/log.js';
import { backoffDelay } from './backoff.js';
import { clientOptions, loadTls, type ProtocolVersion, type TlsMaterial } from './client-options.js';
import { type ErrorReport, errorMessage } from './errors.js';
import { type ErrorMessage, encode } from './messages.js';
import { Outbox, PermanentSendError, type DeadLetter, type OutboxEntry } from './outbox.js';
import type { OutboxPriority } from './outbox-store.js';
import { DEFAULT_RESERVED_TOPICS, type ReservedTopics } from './requests.js';
import { topicFilterProblem, topicMatches, topicNameProblem } from '../common/mqtt-strings.js';
import { defaultClientId, defaultRootTopic, topicsFor, type PerchTopics } from './topics.js';
import type {
  ConnectedInfo,
  IncomingMessage,
  MessageHandler,
  MqttConnectionOptions,
  MqttStats,
  PublishOptions,
  PublishResult,
  SubscribeOptions,
} from './connection-types.js';

export type {
  ConnectedInfo,
  IncomingMessage,
  IncomingProperties,
  MessageHandler,
  MqttConnectionOptions,
  MqttStats,
  PublishOptions,
  PublishResult,
  SubscribeOptions,
} from './connection-types.js';
export { statsSection } from './connection-types.js';

/** A connection that lasted this long resets the backoff; shorter ones (flapping) keep it growing. */
const STABLE_MS = 10_000;
const CONNACK_REFUSED_VERSION = new Set([1, 0x84]);
/** Folder under state_dir for results the broker refused. */
export const DEAD_LETTER_DIR = 'dead-letter';
/** Bounds of the error message schema (messages.ts). */

interface Handler {
  fn: MessageHandler;
  owner: string;
  acceptOversized: boolean;
}

export class MqttConnection extends EventEmitter<{
  connected: [ConnectedInfo];
  disconnected: [{ error?: string }];
  message: [IncomingMessage];
}> {
  readonly topics: PerchTopics;
  /** Topics outside the root that replies must not reach (see replyTopicProblem). */
  readonly reserved: ReservedTopics;
  readonly clientId: string;
  private readonly settings: MqttSettings;
  private readonly log: Logger;
  private readonly stateDir: string | undefined;
  private readonly connectTimeoutMs: number;
  private readonly subs = new Map<string, { qos: 0 | 1; handlers: Set<Handler> }>();
  private outbox: Outbox | undefined;
  private tls: TlsMaterial | undefined;
  private client: MqttClient | undefined;
  private version: ProtocolVersion = 5;
  private live = false;
  private running = false;
  private failures = 0;
  private connectedAt = 0;
  private connects = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly counters = { published: 0, received: 0, rejected: 0, droppedOffline: 0 };

  constructor(opts: MqttConnectionOptions) {
    super();
    this.settings = opts.settings;
    this.log = (opts.logger ?? silentLogger).child({ module: 'mqtt' });
    this.stateDir = opts.stateDir;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    this.clientId = opts.settings.client_id ?? defaultClientId(opts.deviceId);
    this.topics = topicsFor(opts.settings.root_topic ?? defaultRootTopic(opts.deviceId));
    const ha = opts.homeAssistant;
    this.reserved = ha
      ? { haDiscoveryPrefix: ha.discovery_prefix, haStatusTopic: ha.status_topic }
      : DEFAULT_RESERVED_TOPICS;
  }

  /** The protocol of the current connection, or null while disconnected. */
  get protocolVersion(): '5' | '3.1.1' | null {
    return this.live ? (this.version === 5 ? '5' : '3.1.1') : null;
  }

  get connected(): boolean {
    return this.live;
  }

  /** Loads the outbox and starts connecting in the background. Throws on unreadable TLS files. */
  async start(): Promise<void> {
    if (this.running) return;
    this.tls = loadTls(this.settings);
    this.outbox ??= await this.openOutbox();
    this.running = true;
    this.version = this.settings.protocol === '3.1.1' ? 4 : 5;
    this.failures = 0;
    this.connects = 0;
    this.attempt();
  }

  /** Resolves true once connected, false after timeoutMs. */
  waitConnected(timeoutMs: number): Promise<boolean> {
    if (this.live) return Promise.resolve(true);
    return new Promise((resolve) => {
      const onConnected = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.off('connected', onConnected);
        resolve(false);
      }, timeoutMs);
      this.once('connected', onConnected);
    });
  }

  /**
   * Ends the connection. drainMs: wait up to this long for the outbox to empty first (what stays is
   * persisted and sent on the next start). offline (default true): publish retained `offline` first.
   */
  async stop(opts: { offline?: boolean; drainMs?: number } = {}): Promise<void> {
    if (!this.running) return;
    const { offline = true, drainMs = 0 } = opts;
    if (drainMs > 0 && this.live && this.outbox) await this.outbox.whenEmpty(drainMs);
    this.running = false;
    clearTimeout(this.timer);
    this.outbox?.detach();
    const client = this.client;
    this.client = undefined;
    if (client && this.live) {
      if (offline)
        await this.sendDirect(client, this.topics.status, Buffer.from('offline'), { qos: 1, retain: true }, 3000);
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => client.end(true, () => resolve()), 3000);
        client.end(false, () => {
          clearTimeout(force);
          resolve();
        });
      });
    } else {
      client?.end(true);
    }
    this.setDisconnected();
    await this.outbox?.close();
    this.subs.clear();
  }

  /**
   * Drops the network link without DISCONNECT, like a crashed process: the broker publishes the last
   * will. No reconnect follows. For tests and fatal paths.
   */
  abort(): void {
    this.running = false;
    clearTimeout(this.timer);
    this.outbox?.detach();
    const client = this.client;
    this.client = undefined;
    client?.stream?.destroy();
    client?.end(true);
    this.setDisconnected();
  }

  stats(): MqttStats {
    const outbox = this.outbox?.stats() ?? {
      depth: 0,
      bytes: 0,
      dropped: 0,
      droppedByPriority: { answer: 0, transcript: 0, caption: 0, event: 0, other: 0 },
      expired: 0,
      superseded: 0,
      rejected: 0,
      deadLettered: 0,
      delivered: 0,
      persistErrors: 0,
    };
    return {
      connected: this.live,
      protocol: this.protocolVersion,
      reconnects: Math.max(0, this.connects - 1),
      ...this.counters,
      outbox,
    };
  }

  /**
   * Publishes a message. final: through the outbox (resolves 'queued' once persisted, or 'dropped' when
   * the outbox had to refuse it). Otherwise sent now when connected, else 'dropped'.
   */
  async publish(topic: string, payload: Buffer | string, opts: PublishOptions = {}): Promise<PublishResult> {
    const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
    if (opts.final) {
      if (!this.outbox) throw new Error('MqttConnection.publish(final) before start()');
      const expiry = opts.expiry ?? this.settings.message_expiry_s;
      return this.outbox.enqueue({
        topic,
        payload: body,
        retain: opts.retain ?? false,
        priority: opts.priority ?? 'other',
        expiryS: expiry > 0 ? expiry : undefined,
        contentType: opts.contentType,
        correlationData: opts.correlationData,
      });
    }
    const problem = topicNameProblem(topic);
    if (problem) {
      this.log.error({ topic, problem }, 'not published: invalid topic');
      return 'dropped';
    }
    const client = this.client;
    if (!client || !this.live) {
      this.counters.droppedOffline++;
      return 'dropped';
    }
    const pubOpts: IClientPublishOptions = { qos: opts.qos ?? 0, retain: opts.retain ?? false };
    if (this.version === 5) pubOpts.properties = props5(opts.expiry, opts.contentType, opts.correlationData);
    return this.sendDirect(client, topic, body, pubOpts, 30_000);
  }

  /**
   * Subscribes `handler` to `filter`; returns a function that removes it. Survives reconnects. Throws on
   * a filter the broker would refuse (it would drop the connection, again at every renewal).
   */
  subscribe(filter: string, handler: MessageHandler, opts: SubscribeOptions = {}): () => void {
    const problem = topicFilterProblem(filter);
    if (problem) throw new Error(`invalid topic filter ${JSON.stringify(filter)}: ${problem}`);
    const entry: Handler = { fn: handler, owner: opts.owner ?? '', acceptOversized: opts.acceptOversized ?? false };
    let sub = this.subs.get(filter);
    if (!sub) {
      sub = { qos: opts.qos ?? 1, handlers: new Set() };
      this.subs.set(filter, sub);
      if (this.client && this.live) this.brokerSubscribe(this.client, { [filter]: { qos: sub.qos } });
    }
    sub.handlers.add(entry);
    return () => this.removeHandlers(filter, (h) => h === entry);
  }

  /** Removes every handler registered with `owner`, unsubscribing filters nobody listens to any more. */
  removeOwner(owner: string): void {
    for (const filter of [...this.subs.keys()]) this.removeHandlers(filter, (h) => h.owner === owner);
  }

  // -------------------------------------------------------------------------------------------------

  /** The persisted outbox; memory-only (with an error in the log) when state_dir is not writable. */
  private async openOutbox(): Promise<Outbox> {
    const caps = {
      maxMessages: this.settings.outbox.max_messages,
      maxBytes: this.settings.outbox.max_bytes,
      logger: this.log,
      onDeadLetter: (d: DeadLetter) => this.reportDeadLetter(d),
    };
    if (!this.stateDir) return Outbox.open(caps);
    const dir = path.join(this.stateDir, 'outbox');
    try {
      return await Outbox.open({ ...caps, dir, deadLetterDir: path.join(this.stateDir, DEAD_LETTER_DIR) });
    } catch (err) {
      this.log.error(
        { dir, err: (err as Error).message },
        'outbox directory unusable: results are kept in memory only and lost on restart',
      );
      return Outbox.open(caps);
    }
  }

  private removeHandlers(filter: string, which: (h: Handler) => boolean): void {
    const sub = this.subs.get(filter);
    if (!sub) return;
    for (const h of [...sub.handlers]) if (which(h)) sub.handlers.delete(h);
    if (sub.handlers.size === 0) {
      this.subs.delete(filter);
      if (this.client && this.live)
        this.client.unsubscribe(
          filter,
          (err) => err && this.log.warn({ filter, err: err.message }, 'unsubscribe failed'),
        );
    }
  }

  private attempt(): void {
    if (!this.running || !this.tls) return;
    const version = this.version;
    const client = mqtt.connect(
      this.settings.url,
      clientOptions({
        settings: this.settings,
        clientId: this.clientId,
        statusTopic: this.topics.status,
        version,
        tls: this.tls,
        connectTimeoutMs: this.connectTimeoutMs,
      }),
    );
    this.client = client;
    let refusedVersion = false;
    let lastError: string | undefined;
    client.on('connect', (connack) => this.onConnect(client, connack.sessionPresent));
    client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet));
    client.on('error', (err) => {
      lastError = err.message;
      const code = (err as Error & { code?: unknown }).code;
      if (version === 5 && typeof code === 'number' && CONNACK_REFUSED_VERSION.has(code)) refusedVersion = true;
    });
    client.once('close', () => {
      if (this.client !== client) return; // stopped, aborted or replaced
      client.end(true);
      const wasLive = this.live;
      const lived = Date.now() - this.connectedAt;
      // Before setDisconnected detaches it: the outbox counts the loss against the message in flight.
      if (wasLive) this.outbox?.connectionLost();
      this.setDisconnected();
      if (wasLive) this.emit('disconnected', { error: lastError });
      if (!this.running) return;
      if (refusedVersion && this.settings.protocol === 'auto') {
        this.log.info('broker refused MQTT 5; using MQTT 3.1.1');
        this.version = 4;
        this.schedule(0);
        return;
      }
      if (wasLive && lived >= STABLE_MS) this.failures = 0;
      const delay = backoffDelay(this.failures++, this.settings.reconnect_min_ms, this.settings.reconnect_max_ms);
      const log = this.failures === 1 ? this.log.warn.bind(this.log) : this.log.debug.bind(this.log);
      log(
        { url: redact(this.settings.url), err: lastError, retryInMs: delay },
        wasLive ? 'connection to broker lost' : 'cannot connect to broker',
      );
      this.schedule(delay);
    });
  }

  private schedule(delay: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.attempt(), delay);
  }

  private onConnect(client: MqttClient, sessionPresent: boolean): void {
    if (this.client !== client) return;
    this.live = true;
    this.connectedAt = Date.now();
    const info: ConnectedInfo = {
      protocol: this.version === 5 ? '5' : '3.1.1',
      sessionPresent,
      reconnect: this.connects > 0,
    };
    this.connects++;
    this.log.info({ url: redact(this.settings.url), ...info }, 'connected to broker');
    void this.sendDirect(client, this.topics.status, Buffer.from('online'), { qos: 1, retain: true }, 30_000);
    // Renew every subscription: the broker may have lost the session (restart without persistence).
    const map: Record<string, { qos: 0 | 1 }> = {};
    for (const [filter, sub] of this.subs) map[filter] = { qos: sub.qos };
    if (Object.keys(map).length) this.brokerSubscribe(client, map);
    this.outbox?.attach((entry) => this.deliver(client, entry));
    this.emit('connected', info);
  }

  private brokerSubscribe(client: MqttClient, map: Record<string, { qos: 0 | 1 }>): void {
    client.subscribe(map, (err, granted) => {
      if (err) this.log.warn({ err: err.message }, 'subscribe failed');
      for (const g of granted ?? [])
        if (g.qos === 128) this.log.error({ filter: g.topic }, 'broker refused subscription');
    });
  }

  /** Outbox sender: resolves on PUBACK. */
  private deliver(client: MqttClient, e: OutboxEntry): Promise<void> {
    // Checked here, not only at publish(): messages persisted by an earlier run come back through here.
    const problem = topicNameProblem(e.topic);
    if (problem) return Promise.reject(new PermanentSendError(`invalid topic: ${problem}`));
    return new Promise((resolve, reject) => {
      const opts: IClientPublishOptions = { qos: 1, retain: e.retain };
      if (this.version === 5) {
        // Expiry counts the time spent in the outbox, as a broker would.
        const left = e.expiryS ? Math.max(1, Math.ceil(e.expiryS - (Date.now() - e.createdAt) / 1000)) : undefined;
        opts.properties = props5(left, e.contentType, e.correlationData);
      }
      client.publish(e.topic, e.payload, opts, (err) => {
        if (!err) {
          this.counters.published++;
          resolve();
          return;
        }
        const code = (err as Error & { code?: unknown }).code;
        // A PUBACK reason code >= 0x80 is the broker's considered answer (not authorized, topic invalid, too large).
        reject(typeof code === 'number' && code >= 0x80 ? new PermanentSendError(err.message) : err);
      });
    });
  }

  private sendDirect(
    client: MqttClient,
    topic: string,
    payload: Buffer,
    opts: IClientPublishOptions,
    timeoutMs: number,
  ): Promise<PublishResult> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve('dropped'), timeoutMs);
      client.publish(topic, payload, opts, (err) => {
        clearTimeout(timer);
        if (err) {
          this.log.debug({ topic, err: err.message }, 'publish failed');
          resolve('dropped');
        } else {
          this.counters.published++;
          resolve('sent');
        }
      });
    });
  }

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    this.counters.received++;
    const p = packet.properties;
    const oversized = payload.byteLength > this.settings.max_payload_bytes;
    if (oversized) {
      this.counters.rejected++;
      this.log.warn(
        { topic, bytes: payload.byteLength, max: this.settings.max_payload_bytes },
        'incoming payload too large',
      );
    }
    const msg: IncomingMessage = {
      topic,
      payload,
      qos: packet.qos,
      retain: packet.retain,
      properties: {
        responseTopic: p?.responseTopic,
        correlationData: p?.correlationData ? Buffer.from(p.correlationData) : undefined,
        contentType: p?.contentType,
      },
      oversized,
    };
    if (!oversized) this.emit('message', msg);
    const handlers = new Set<Handler>();
    for (const [filter, sub] of this.subs) {
      if (topicMatches(filter, topic))
        for (const h of sub.handlers) if (!oversized || h.acceptOversized) handlers.add(h);
    }
    for (const h of handlers) {
      // A failing handler must not break the client's packet processing.
      try {
        const r = h.fn(msg);
        if (r instanceof Promise)
          r.catch((err: unknown) => this.log.error({ topic, err: String(err) }, 'message handler failed'));
      } catch (err) {
        this.log.error({ topic, err: String(err) }, 'message handler failed');
      }
    }
  }

  /**
   * A failure on `<root>/errors` (src/mqtt/errors.ts), kept until delivered like every final result; a message
   * already built with errorMessage() goes as it is.
   */
  publishError(report: ErrorReport | ErrorMessage, priority: OutboxPriority = 'other'): Promise<PublishResult> {
    const message = 'v' in report ? report : errorMessage(report);
    return this.publish(this.topics.errors, encode(message), {
      final: true,
      qos: 1,
      priority,
      contentType: 'application/json',
    });
  }

  /** A dead letter goes to `errors`, unless it was itself an error report (no chain of refused reports). */
  private reportDeadLetter(d: DeadLetter): void {
    if (d.entry.topic === this.topics.errors) return;
    const id = idOf(d.entry.payload);
    void this.publishError({
      ...(id ? { id } : {}),
      code: 'undeliverable',
      message: `${d.reason}; set aside${d.file ? ` in ${d.file}` : ''}`,
      topic: d.entry.topic,
    });
  }

  private setDisconnected(): void {
    if (this.live) this.outbox?.detach();
    this.live = false;
  }
}

function props5(
  expiry: number | undefined,
  contentType: string | undefined,
  correlationData: Buffer | undefined,
): IClientPublishOptions['properties'] {
  const props: NonNullable<IClientPublishOptions['properties']> = {};
  if (expiry && expiry > 0) props.messageExpiryInterval = expiry;
  if (contentType) props.contentType = contentType;
  if (correlationData) props.correlationData = correlationData;
  return props;
}

/** The broker URL without credentials, for logs. */
function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@');
}

/** The `id` of a JSON result, so a dead letter's error names what was lost. */
function idOf(payload: Buffer): string | undefined {
  try {
    const id = (JSON.parse(payload.toString('utf8')) as { id?: unknown }).id;
    return typeof id === 'string' && /^[\x21-\x7e]{1,128}$/.test(id) ? id : undefined;
  } catch {
    return undefined;
  }
}
