/**
 * Turns Perch's mqtt settings into mqtt.js connect options for one connection attempt.
 * Kept apart from the connection so the TLS and session choices are readable in one place.
 */
import { readFileSync } from 'node:fs';
import type { IClientOptions } from 'mqtt';
import type { MqttSettings } from '../config/schema.js';

/** MQTT 5 session expiry: how long the broker keeps our subscriptions and queued QoS 1 requests while we are away. */
export const SESSION_EXPIRY_S = 24 * 60 * 60;
/** Largest packet MQTT 5 brokers may send us (bigger ones are dropped by the broker, unseen). */
export function maxIncomingPacketBytes(maxPayloadBytes: number): number {
  // Room above max_payload_bytes so that moderately oversized requests still arrive and get an error reply.
  return Math.min(268_435_455, Math.max(2 * maxPayloadBytes, maxPayloadBytes + 65_536));
}

export type ProtocolVersion = 4 | 5;

export interface TlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  rejectUnauthorized: boolean;
}

/** Reads the TLS files once (at start), failing with the path in the message. */
export function loadTls(settings: MqttSettings): TlsMaterial {
  const read = (what: string, file: string | undefined) => {
    if (!file) return undefined;
    try {
      return readFileSync(file);
    } catch (err) {
      throw new Error(`mqtt.tls.${what}: cannot read ${file}: ${(err as Error).message}`);
    }
  };
  return {
    ca: read('ca', settings.tls.ca),
    cert: read('cert', settings.tls.cert),
    key: read('key', settings.tls.key),
    rejectUnauthorized: settings.tls.reject_unauthorized,
  };
}

export interface AttemptOptions {
  settings: MqttSettings;
  clientId: string;
  statusTopic: string;
  version: ProtocolVersion;
  tls: TlsMaterial;
  connectTimeoutMs: number;
}

export function clientOptions(o: AttemptOptions): IClientOptions {
  const { settings } = o;
  const secure = /^(mqtts|wss):/.test(settings.url);
  const opts: IClientOptions = {
    protocolVersion: o.version,
    clientId: o.clientId,
    // A stable id and a persistent session keep QoS 1 subscriptions (and requests sent meanwhile) across reconnects.
    clean: false,
    keepalive: settings.keepalive_s,
    connectTimeout: o.connectTimeoutMs,
    // Reconnects are ours (exponential backoff, protocol fallback); a fresh client per attempt.
    reconnectPeriod: 0,
    resubscribe: false,
    queueQoSZero: false,
    username: settings.username,
    password: settings.password,
    will: { topic: o.statusTopic, payload: Buffer.from('offline'), qos: 1, retain: true },
  };
  if (o.version === 5) {
    opts.properties = {
      sessionExpiryInterval: SESSION_EXPIRY_S,
      maximumPacketSize: maxIncomingPacketBytes(settings.max_payload_bytes),
    };
  }
  if (secure) {
    opts.rejectUnauthorized = o.tls.rejectUnauthorized;
    if (o.tls.ca) opts.ca = o.tls.ca;
    if (o.tls.cert) opts.cert = o.tls.cert;
    if (o.tls.key) opts.key = o.tls.key;
  }
  return opts;
}
