import { connect as netConnect, createServer, type Server } from 'node:net';
import { Writable } from 'node:stream';
import { randomUUID } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerPortInUseError, EmbeddedBroker } from '../src/daemon/embedded-broker.js';
import { createLogger } from '../src/common/log.js';

const brokers: EmbeddedBroker[] = [];
const clients: MqttClient[] = [];
const servers: Server[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.endAsync(true)));
  await Promise.all(brokers.splice(0).map((b) => b.stop()));
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

function captureLogger(): { logger: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: createLogger({ level: 'info', format: 'json' }, dest), lines };
}

async function startBroker(
  maxPayloadBytes?: number,
  logger?: ReturnType<typeof createLogger>,
): Promise<EmbeddedBroker> {
  const broker = new EmbeddedBroker({ settings: { host: '127.0.0.1', port: 0 }, maxPayloadBytes, logger });
  brokers.push(broker);
  await broker.start();
  return broker;
}

async function client(url: string, protocolVersion: 4 | 5, clientId = `t-${randomUUID()}`): Promise<MqttClient> {
  const c = await mqtt.connectAsync(url, { protocolVersion, clientId, reconnectPeriod: 0 });
  clients.push(c);
  return c;
}

function nextMessage(c: MqttClient, topic: string): Promise<Buffer> {
  return new Promise((resolve) =>
    c.on('message', (t, payload) => {
      if (t === topic) resolve(payload);
    }),
  );
}

describe('EmbeddedBroker', () => {
  it('carries messages between real mqtt.js clients and logs them', async () => {
    const { logger, lines } = captureLogger();
    const broker = await startBroker(undefined, logger);
    const sub = await client(broker.url, 4, 'perch-test-sub');
    const pub = await client(broker.url, 4);
    const topic = `perch-test/${randomUUID()}/x`;
    await sub.subscribeAsync(topic, { qos: 1 });
    const got = nextMessage(sub, topic);
    await pub.publishAsync(topic, 'hello', { qos: 1 });
    expect((await got).toString()).toBe('hello');
    expect(lines.some((l) => l.msg === 'client connected' && l.client_id === 'perch-test-sub')).toBe(true);
  });

  it('speaks MQTT 3.1.1 only: an MQTT 5 CONNECT is refused (mqtt.protocol auto must fall back)', async () => {
    const broker = await startBroker();
    const err = await client(broker.url, 5).then(
      () => null,
      (e: unknown) => e,
    );
    expect((err as Error).message).toMatch(/unacceptable protocol version/i);
  });

  it('names the port when it is already in use', async () => {
    const first = await startBroker();
    const port = first.address!.port;
    const second = new EmbeddedBroker({ settings: { host: '127.0.0.1', port } });
    const err = await second.start().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BrokerPortInUseError);
    expect((err as Error).message).toContain(`port ${port} is already in use`);
    expect(second.address).toBeNull();
  });

  it('drops a client whose payload exceeds the bound, without delivering it', async () => {
    const broker = await startBroker(1024);
    const sub = await client(broker.url, 4);
    const pub = await client(broker.url, 4);
    const topic = `perch-test/${randomUUID()}/big`;
    await sub.subscribeAsync(topic, { qos: 1 });
    const received: string[] = [];
    sub.on('message', (_t, p) => received.push(p.toString()));
    const closed = new Promise<void>((r) => pub.once('close', () => r()));
    pub.publish(topic, Buffer.alloc(2048, 'a'), { qos: 1 });
    await closed;
    // A small message after it still flows, so the big one was not merely late.
    const ok = nextMessage(sub, topic);
    const pub2 = await client(broker.url, 4);
    await pub2.publishAsync(topic, 'small', { qos: 1 });
    expect((await ok).toString()).toBe('small');
    expect(received).toEqual(['small']);
  });

  it('closes a connection that announces an oversized packet before its body arrives', async () => {
    const broker = await startBroker(1024);
    const sock = netConnect(broker.address!.port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    // PUBLISH fixed header announcing 10 MiB of remaining length (varint), and no body.
    const len = 10 * 1024 * 1024;
    const varint: number[] = [];
    let x = len;
    do {
      let b = x % 128;
      x = Math.floor(x / 128);
      if (x > 0) b |= 0x80;
      varint.push(b);
    } while (x > 0);
    sock.write(Buffer.from([0x30, ...varint]));
    await new Promise<void>((r) => sock.once('close', () => r()));
    expect(sock.destroyed).toBe(true);
  });

  it('stops: clients are disconnected and the port is free again', async () => {
    const broker = await startBroker();
    const port = broker.address!.port;
    const c = await client(broker.url, 4);
    const closed = new Promise<void>((r) => c.once('close', () => r()));
    await broker.stop();
    await closed;
    await broker.stop();
    const server = createServer();
    servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
  });
});
