/**
 * Request/reply over real brokers: MQTT 5 responseTopic + correlationData and 3.1.1 reply_to + id on
 * the system Mosquitto; 'auto' falling back to 3.1.1 against aedes; bad requests answered with errors
 * while the connection keeps serving.
 */
import { randomUUID } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { mqttSettings, type MqttSettings } from '../src/config/schema.js';
import { AskEndpoint, type AskContext } from '../src/mqtt/ask-endpoint.js';
import { MqttConnection } from '../src/mqtt/connection.js';
import { answerErrorSchema, answerSchema, answerStreamSchema, errorMessageSchema } from '../src/mqtt/messages.js';
import { Collector, startAedes, uniqueRoot } from './mqtt-helpers.js';

const SYSTEM_BROKER = 'mqtt://127.0.0.1:1883';
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** A Perch side: connection + ask endpoint that answers "echo: <text>" (streaming two chunks first). */
async function perch(url: string, extra: Partial<MqttSettings> = {}, cameras?: string[]) {
  const root = uniqueRoot();
  const settings = mqttSettings.parse({
    url,
    root_topic: root,
    client_id: `perch-${randomUUID()}`,
    reconnect_min_ms: 100,
    reconnect_max_ms: 1000,
    ...extra,
  });
  const conn = new MqttConnection({ settings, deviceId: 'test' });
  const asked: AskContext[] = [];
  const cancelled: string[] = [];
  const endpoint: AskEndpoint = new AskEndpoint(
    conn,
    { maxPayloadBytes: settings.max_payload_bytes, cameras },
    {
      ask(ctx) {
        asked.push(ctx);
        void (async () => {
          await endpoint.streamChunk(ctx.route, 0, 'echo: ', false);
          await endpoint.streamChunk(ctx.route, 1, ctx.request.text, true);
          await endpoint.answer(ctx.route, {
            text: `echo: ${ctx.request.text}`,
            finish_reason: 'stop',
            tokens: { prompt: 3, completion: 2 },
            latency_ms: { total: Date.now() - ctx.receivedAt },
          });
        })();
      },
      cancel(id) {
        cancelled.push(id);
      },
    },
  );
  endpoint.start();
  await conn.start();
  cleanups.push(async () => {
    endpoint.stop();
    await conn.stop();
  });
  expect(await conn.waitConnected(5000)).toBe(true);
  return { conn, endpoint, asked, cancelled, topics: conn.topics };
}

async function client(url: string, protocolVersion: 4 | 5): Promise<MqttClient> {
  const c = await mqtt.connectAsync(url, { protocolVersion, reconnectPeriod: 0 });
  cleanups.push(() => c.endAsync(true));
  return c;
}

async function collect(url: string, filters: string[], protocolVersion: 4 | 5 = 5): Promise<Collector> {
  const c = await Collector.connect(url, filters, { protocolVersion });
  cleanups.push(() => c.close());
  return c;
}

const json = (b: Buffer) => JSON.parse(b.toString()) as unknown;

describe('request/reply', () => {
  it('MQTT 5: replies on responseTopic with the correlationData, stream chunks carry it too', async () => {
    const p = await perch(SYSTEM_BROKER, { protocol: '5' });
    expect(p.conn.protocolVersion).toBe('5');
    const replyTopic = `replies-${uniqueRoot()}/reply`; // outside perch-test/, where Perch roots live
    const rx = await collect(SYSTEM_BROKER, [replyTopic, p.topics.answerStream]);
    const requester = await client(SYSTEM_BROKER, 5);
    const corr = Buffer.from([0, 1, 2, 254, 255]);
    await requester.publishAsync(p.topics.ask, JSON.stringify({ text: 'hello there' }), {
      qos: 1,
      properties: { responseTopic: replyTopic, correlationData: corr },
    });

    await rx.waitFor(() => rx.on(replyTopic).length === 1);
    const reply = rx.on(replyTopic)[0];
    expect(Buffer.from(reply.packet.properties!.correlationData!)).toEqual(corr);
    expect(reply.packet.properties!.contentType).toBe('application/json');
    expect(reply.packet.properties!.messageExpiryInterval).toBeGreaterThan(0);
    const answer = answerSchema.parse(json(reply.payload));
    expect(answer.text).toBe('echo: hello there');
    expect(answer.id).toBe(p.asked[0].request.id); // generated, since the request gave none
    await rx.waitFor(() => rx.on(p.topics.answerStream).length === 2);
    for (const s of rx.on(p.topics.answerStream)) {
      expect(answerStreamSchema.parse(json(s.payload)).id).toBe(answer.id);
      expect(Buffer.from(s.packet.properties!.correlationData!)).toEqual(corr);
    }
    expect(p.asked[0].route).toMatchObject({ via: 'response_topic', topic: replyTopic });
  });

  it('MQTT 3.1.1: replies on reply_to with the request id; without either, on <root>/answer', async () => {
    const p = await perch(SYSTEM_BROKER, { protocol: '3.1.1' });
    expect(p.conn.protocolVersion).toBe('3.1.1');
    const replyTopic = `replies-${uniqueRoot()}/reply`; // outside perch-test/, where Perch roots live
    const rx = await collect(SYSTEM_BROKER, [replyTopic, p.topics.answer], 4);
    const requester = await client(SYSTEM_BROKER, 4);
    await requester.publishAsync(
      p.topics.ask,
      JSON.stringify({ v: 1, id: 'q-311', text: 'one', reply_to: replyTopic }),
      { qos: 1 },
    );
    await requester.publishAsync(p.topics.ask, JSON.stringify({ id: 'q-default', text: 'two' }), { qos: 1 });
    await rx.waitFor(() => rx.on(replyTopic).length === 1 && rx.on(p.topics.answer).length === 1);
    expect(answerSchema.parse(json(rx.on(replyTopic)[0].payload))).toMatchObject({ id: 'q-311', text: 'echo: one' });
    expect(answerSchema.parse(json(rx.on(p.topics.answer)[0].payload))).toMatchObject({
      id: 'q-default',
      text: 'echo: two',
    });

    // Home Assistant's text entity: plain text on <root>/ask/text, answered on <root>/answer.
    await requester.publishAsync(p.topics.askText, 'three', { qos: 1 });
    await rx.waitFor(() => rx.on(p.topics.answer).length === 2);
    expect(answerSchema.parse(json(rx.on(p.topics.answer)[1].payload))).toMatchObject({ text: 'echo: three' });

    await requester.publishAsync(p.topics.askCancel, JSON.stringify({ id: 'q-311' }), { qos: 1 });
    await expect.poll(() => p.cancelled).toEqual(['q-311']);
  });

  it("protocol 'auto' falls back to 3.1.1 when the broker (aedes) refuses MQTT 5, and serves requests", async () => {
    const aedes = await startAedes();
    cleanups.push(() => aedes.close());
    const p = await perch(aedes.url, { protocol: 'auto' });
    expect(p.conn.protocolVersion).toBe('3.1.1');
    const replyTopic = 'replies/aedes';
    const rx = await collect(aedes.url, [replyTopic, p.topics.status], 4);
    await rx.waitFor(() => rx.on(p.topics.status).some((m) => m.payload.toString() === 'online'));
    const requester = await client(aedes.url, 4);
    await requester.publishAsync(p.topics.ask, JSON.stringify({ id: 'a1', text: 'fallback', reply_to: replyTopic }), {
      qos: 1,
    });
    await rx.waitFor(() => rx.on(replyTopic).length === 1);
    expect(answerSchema.parse(json(rx.on(replyTopic)[0].payload))).toMatchObject({ id: 'a1', text: 'echo: fallback' });
  });

  it("protocol '5' does not fall back: it stays disconnected from a 3.1.1-only broker", async () => {
    const aedes = await startAedes();
    cleanups.push(() => aedes.close());
    const settings = mqttSettings.parse({
      url: aedes.url,
      protocol: '5',
      root_topic: uniqueRoot(),
      reconnect_min_ms: 100,
      reconnect_max_ms: 1000,
    });
    const conn = new MqttConnection({ settings, deviceId: 'test' });
    cleanups.push(() => conn.stop());
    await conn.start();
    expect(await conn.waitConnected(1500)).toBe(false);
  });
});

describe('bad requests', () => {
  it('oversized, malformed, invalid and misdirected requests become errors; serving goes on', async () => {
    const p = await perch(SYSTEM_BROKER, { protocol: '5', max_payload_bytes: 1024 }, ['porch']);
    const replyTopic = `replies-${uniqueRoot()}/reply`; // outside perch-test/, where Perch roots live
    const rx = await collect(SYSTEM_BROKER, [p.topics.errors, replyTopic]);
    const requester = await client(SYSTEM_BROKER, 5);
    const send = (topic: string, payload: string, props?: { responseTopic: string; correlationData: Buffer }) =>
      requester.publishAsync(topic, payload, { qos: 1, ...(props ? { properties: props } : {}) });

    await send(p.topics.ask, '{"text": "unterminated');
    await send(p.topics.ask, JSON.stringify({ id: 'big', text: 'x'.repeat(2000) }), {
      responseTopic: replyTopic,
      correlationData: Buffer.from('c-big'),
    });
    await send(p.topics.ask, JSON.stringify({ id: 'no-text', reply_to: replyTopic }));
    await send(p.topics.ask, JSON.stringify({ id: 'typo', text: 'hi', max_token: 5 }));
    await send(p.topics.ask, JSON.stringify({ id: 'cam', text: 'hi', camera: 'garage' }));
    await send(`${p.topics.ask}/oops`, JSON.stringify({ text: 'hi' }));
    await send(p.topics.ask, JSON.stringify({ id: 'loop', text: 'hi', reply_to: p.topics.ask }));
    await rx.waitFor(() => rx.on(p.topics.errors).length === 7);

    const errors = rx.on(p.topics.errors).map((m) => errorMessageSchema.parse(json(m.payload)));
    expect(errors.map((e) => [e.id, e.code])).toEqual([
      [undefined, 'invalid_json'],
      [undefined, 'payload_too_large'], // over the limit: not even parsed, so the id is unknown
      ['no-text', 'invalid_request'],
      ['typo', 'invalid_request'],
      ['cam', 'unknown_camera'],
      [undefined, 'unknown_topic'],
      ['loop', 'invalid_request'],
    ]);
    expect(errors[2].message).toMatch(/^text: /);
    expect(errors[3].message).toContain('"max_token"');
    expect(errors[5].topic).toBe(`${p.topics.ask}/oops`);
    expect(errors[6].message).toMatch(/^reply_to: /);

    // Error replies go to the reply addresses that were given (and only there).
    await rx.waitFor(() => rx.on(replyTopic).length === 2);
    const replies = rx.on(replyTopic);
    const big = answerErrorSchema.parse(json(replies.find((r) => r.packet.properties?.correlationData)!.payload));
    expect(big.error.code).toBe('payload_too_large');
    expect(
      answerErrorSchema.parse(json(replies.find((r) => !r.packet.properties?.correlationData)!.payload)),
    ).toMatchObject({ id: 'no-text', error: { code: 'invalid_request' } });
    expect(p.conn.stats().rejected).toBe(1);

    // Still serving.
    const rx2 = await collect(SYSTEM_BROKER, [p.topics.answer]);
    await send(p.topics.ask, JSON.stringify({ id: 'fine', text: 'still there?', camera: 'porch' }));
    await rx2.waitFor(() => rx2.on(p.topics.answer).length === 1);
    expect(answerSchema.parse(json(rx2.on(p.topics.answer)[0].payload))).toMatchObject({ id: 'fine' });
    expect(p.asked.map((a) => a.request.id)).toEqual(['fine']);
  });
});
