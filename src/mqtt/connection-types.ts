/**
 * The types of MqttConnection's interface (options, messages, stats) and the stats section built from
 * them, apart from the connection's machinery so both stay readable.
 */
import type { MqttSettings } from '../config/schema.js';
import type { Logger } from '../common/log.js';
import type { StatsMessage } from './messages.js';
import type { OutboxPriority, OutboxStats } from './outbox.js';

export interface MqttConnectionOptions {
  settings: MqttSettings;
  /** device.id: default client id perch-<id> and root perch/<id>. */
  deviceId: string;
  /** daemon.state_dir: the outbox lives in <stateDir>/outbox; absent: memory-only outbox. */
  stateDir?: string;
  logger?: Logger;
  connectTimeoutMs?: number;
  /** The homeassistant settings: replies may not go to its discovery prefix or status topic. */
  homeAssistant?: { discovery_prefix: string; status_topic: string };
}

export interface PublishOptions {
  /** Default 0; final messages are always QoS 1. */
  qos?: 0 | 1 | 2;
  retain?: boolean;
  /** A result that must survive outages and restarts: persisted in the outbox, sent QoS 1. */
  final?: boolean;
  /** Outbox drop order when full (final messages only). Default 'other'. */
  priority?: OutboxPriority;
  /** MQTT 5 message expiry in seconds; default mqtt.message_expiry_s for final messages, none otherwise; 0: none. */
  expiry?: number;
  /** MQTT 5 content type, e.g. application/json or image/jpeg. */
  contentType?: string;
  /** MQTT 5 correlation data echoed on replies. */
  correlationData?: Buffer;
}

/** queued: persisted in the outbox; sent: written (QoS 0) or acknowledged (QoS 1); dropped: not sent. */
export type PublishResult = 'queued' | 'sent' | 'dropped';

export interface IncomingProperties {
  responseTopic?: string;
  correlationData?: Buffer;
  contentType?: string;
}

export interface IncomingMessage {
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  retain: boolean;
  properties: IncomingProperties;
  /** Payload exceeds mqtt.max_payload_bytes; only subscriptions with acceptOversized see it. */
  oversized: boolean;
}

export type MessageHandler = (msg: IncomingMessage) => void | Promise<void>;

export interface SubscribeOptions {
  qos?: 0 | 1;
  /** Who subscribes; removeOwner(owner) drops all of its handlers (e.g. when that module stops). */
  owner?: string;
  /** Also deliver payloads over max_payload_bytes (flagged `oversized`) so they can be answered with an error. */
  acceptOversized?: boolean;
}

export interface MqttStats {
  connected: boolean;
  protocol: '5' | '3.1.1' | null;
  /** Successful connects after the first. */
  reconnects: number;
  /** Messages sent (QoS 0) or acknowledged (QoS 1), outbox deliveries included. */
  published: number;
  received: number;
  /** Incoming payloads refused for size. */
  rejected: number;
  /** Non-final messages dropped because the broker was unreachable. */
  droppedOffline: number;
  outbox: OutboxStats;
}

export interface ConnectedInfo {
  protocol: '5' | '3.1.1';
  sessionPresent: boolean;
  /** False on the first connect of this run. */
  reconnect: boolean;
}

/** The `mqtt` section of the stats message (docs/mqtt.md, statsSchema). */
export function statsSection(s: MqttStats): StatsMessage['mqtt'] {
  const { connected, protocol, reconnects, published, received, rejected, outbox } = s;
  return {
    connected,
    protocol,
    reconnects,
    published,
    received,
    rejected,
    outbox: {
      depth: outbox.depth,
      bytes: outbox.bytes,
      dropped: outbox.dropped,
      expired: outbox.expired,
      dead_letters: outbox.deadLettered,
    },
  };
}
