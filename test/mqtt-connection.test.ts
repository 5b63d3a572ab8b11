/**
 * MqttConnection against a private Mosquitto that the tests stop and restart: outbox delivery across
 * broker outages and daemon restarts, status and last will, subscriptions renewed after a restart.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mqttSettings, type MqttSettings } from '../src/config/schema.js';
import { MqttConnection } from '../src/mqtt/connection.js';
import { topicsFor } from '../src/mqtt/topics.js';
import { Collector, Mosquitto, tempDir, uniqueRoot } from './mqtt-helpers.js';

let broker: Mosquitto;
const cleanups: Array<() => Promise<void> | void> = [];

beforeAll(async () => {
  broker = await Mosquitto.start();
});
afterAll(async () => {
  await broker.close();
});
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
  await broker.resume().catch(() => undefined); // a test that failed mid-outage leaves it stopped
});

function settings(root: string, extra: Partial<MqttSettings> = {}): MqttSettings {
  return mqttSettings.parse({
    url: broker.url,
    root_topic: root,
    client_id: `perch-${root.replace(/\W/g, '-')}`,
    reconnect_min_ms: 100,
    reconnect_max_ms: 1000,
    ...extra,
  });
}

function connection(root: string, stateDir?: string, extra: Partial<MqttSettings> = {}): MqttConnection {
  const conn = new MqttConnection({ settings: settings(root, extra), deviceId: 'test', stateDir });
  cleanups.push(() => conn.stop({ offline: false }));
  return conn;
}

async function collector(filters: string[], clientId?: string): Promise<Collector> {
  const c = await Collector.connect(broker.url, filters, clientId ? { clientId, clean: false } : {});
  cleanups.push(() => c.close());
  return c;
}

function state(): string {
  const t = tempDir('perch-state-');
  cleanups.push(t.cleanup);
  return t.dir;
}

/** First occurrences, in arrival order: duplicates are allowed (at-least-once), losses and reordering are not. */
function firstSeen(values: string[]): string[] {
  return [...new Set(values)];
}

describe('MqttConnection with a broker that goes away', () => {
  it('delivers final results published during an outage, in order, after the broker returns', async () => {
    const root = uniqueRoot();
    const t = topicsFor(root);
    // A persistent-session subscriber: the broker queues for it what arrives before it reconnects.
    const sub = await collector([t.transcript, t.status], `sub-${process.pid}-${Date.now()}`);
    const conn = connection(root, state());
    const connects: boolean[] = [];
    conn.on('connected', (info) => connects.push(info.reconnect));
    await conn.start();
    expect(await conn.waitConnected(5000)).toBe(true);
    expect(conn.protocolVersion).toBe('5'); // 'auto' against Mosquitto 2
    await conn.publish(t.transcript, 'before', { final: true, qos: 1, priority: 'transcript' });
    await sub.waitFor(() => sub.on(t.transcript).length === 1);

    await broker.pause();
    await expect.poll(() => conn.connected, { timeout: 5000 }).toBe(false);
    const sent = Array.from({ length: 25 }, (_, i) => `during-${i}`);
    for (const s of sent)
      expect(await conn.publish(t.transcript, s, { final: true, qos: 1, priority: 'transcript' })).toBe('queued');
    expect(conn.stats().outbox.depth).toBe(25);
    // Non-final messages are not queued while offline.
    expect(await conn.publish(t.transcriptPartial, 'partial', { qos: 0 })).toBe('dropped');

    await broker.resume();
    await sub.waitFor(() => firstSeen(sub.on(t.transcript).map((m) => m.payload.toString())).length === 26);
    expect(firstSeen(sub.on(t.transcript).map((m) => m.payload.toString()))).toEqual(['before', ...sent]);
    await expect.poll(() => conn.stats().outbox.depth).toBe(0);
    expect(connects).toEqual([false, true]);
    expect(conn.stats().reconnects).toBe(1);
    // Retained `online` again after the reconnect.
    await sub.waitFor(() => sub.on(t.status).at(-1)?.payload.toString() === 'online');
  });

  it('a connection restarted during the outage (daemon restart) still delivers the persisted outbox', async () => {
    const root = uniqueRoot();
    const t = topicsFor(root);
    const dir = state();
    const sub = await collector([t.errors, `${root}/answer`], `sub2-${process.pid}-${Date.now()}`);
    const first = connection(root, dir);
    await first.start();
    expect(await first.waitConnected(5000)).toBe(true);

    await broker.pause();
    await expect.poll(() => first.connected, { timeout: 5000 }).toBe(false);
    const sent = Array.from({ length: 10 }, (_, i) => `answer-${i}`);
    for (const s of sent) await first.publish(t.answer, s, { final: true, qos: 1, priority: 'answer' });
    await first.stop(); // broker down: nothing to say goodbye to; must not hang
    expect(readdirSync(path.join(dir, 'outbox')).filter((f) => f.endsWith('.msg'))).toHaveLength(10);

    const second = connection(root, dir);
    await second.start();
    expect(second.stats().outbox.depth).toBe(10);
    await broker.resume();
    await sub.waitFor(() => firstSeen(sub.on(t.answer).map((m) => m.payload.toString())).length === 10);
    expect(firstSeen(sub.on(t.answer).map((m) => m.payload.toString()))).toEqual(sent);
    await expect.poll(() => readdirSync(path.join(dir, 'outbox')).length).toBe(0);
  });
});

describe('MqttConnection when the broker dies mid-stream', () => {
  it('loses and reorders nothing that was in flight', async () => {
    const root = uniqueRoot();
    const t = topicsFor(root);
    const sub = await collector([t.transcript], `sub3-${process.pid}-${Date.now()}`);
    const conn = connection(root, state());
    await conn.start();
    expect(await conn.waitConnected(5000)).toBe(true);
    const sent: string[] = [];
    const publishing = (async () => {
      for (let i = 0; i < 200; i++) {
        sent.push(`m${i}`);
        await conn.publish(t.transcript, `m${i}`, { final: true, priority: 'transcript' });
        if (i % 10 === 0) await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await sub.waitFor((m) => m.length >= 20);
    await broker.pause(); // while messages are in flight
    await broker.resume();
    await publishing;
    await sub.waitFor(() => firstSeen(sub.on(t.transcript).map((m) => m.payload.toString())).length === 200, 20_000);
    expect(firstSeen(sub.on(t.transcript).map((m) => m.payload.toString()))).toEqual(sent);
    await expect.poll(() => conn.stats().outbox.depth).toBe(0);
  });
});

describe('MqttConnection outbox storage', () => {
  it('keeps results in memory when the state directory is unusable', async () => {
    const { writeFileSync } = await import('node:fs');
    const notADir = path.join(state(), 'file');
    writeFileSync(notADir, 'x');
    const conn = connection(uniqueRoot(), notADir);
    await conn.start();
    expect(await conn.publish(`${uniqueRoot()}/x`, 'kept', { final: true })).toBe('queued');
    await expect.poll(() => conn.stats().outbox.delivered, { timeout: 5000 }).toBe(1);
  });
});

describe('MqttConnection status and last will', () => {
  it('a second client sees the retained `offline` last will when the socket dies abruptly', async () => {
    const root = uniqueRoot();
    const t = topicsFor(root);
    const conn = connection(root);
    await conn.start();
    expect(await conn.waitConnected(5000)).toBe(true);
    const watcher = await collector([t.status]);
    await watcher.waitFor((m) => m.some((x) => x.payload.toString() === 'online'));
    conn.abort(); // destroys the socket: no DISCONNECT, as when the process is killed
    await watcher.waitFor((m) => m.at(-1)?.payload.toString() === 'offline');
    // Retained: a client arriving later learns it too.
    const late = await collector([t.status]);
    await late.waitFor((m) => m.length > 0);
    expect(late.messages[0].payload.toString()).toBe('offline');
    expect(late.messages[0].packet.retain).toBe(true);
  });

  it('stop({ offline: true }) publishes retained offline and ends cleanly', async () => {
    const root = uniqueRoot();
    const t = topicsFor(root);
    const conn = connection(root);
    await conn.start();
    expect(await conn.waitConnected(5000)).toBe(true);
    const watcher = await collector([t.status]);
    await watcher.waitFor((m) => m.some((x) => x.payload.toString() === 'online'));
    await conn.stop({ offline: true });
    expect(conn.connected).toBe(false);
    await watcher.waitFor((m) => m.at(-1)?.payload.toString() === 'offline');
  });

  it('renews subscriptions after the broker lost them, and removes an owner’s handlers', async () => {
    const root = uniqueRoot();
    const t = topicsFor(root);
    const conn = connection(root);
    const got: string[] = [];
    const gotOther: string[] = [];
    conn.subscribe(t.listeningSet, (m) => void got.push(m.payload.toString()), { owner: 'audio' });
    conn.subscribe(t.watchingSet, (m) => void gotOther.push(m.payload.toString()), { owner: 'camera' });
    await conn.start();
    expect(await conn.waitConnected(5000)).toBe(true);
    const cmd = await mqtt.connectAsync(broker.url);
    cleanups.push(() => cmd.endAsync(true));
    await cmd.publishAsync(t.listeningSet, 'OFF', { qos: 1 });
    await expect.poll(() => got).toEqual(['OFF']);

    // Restart the broker with its persistence gone: the session, and so the subscription, is lost.
    await broker.pause();
    const { rmSync } = await import('node:fs');
    rmSync(path.join(broker.dir, 'mosquitto.db'), { force: true });
    await broker.resume();
    await expect.poll(() => conn.connected, { timeout: 5000 }).toBe(true);
    await expect
      .poll(
        async () => {
          await cmd.publishAsync(t.listeningSet, 'ON', { qos: 1 });
          return got.includes('ON');
        },
        { timeout: 5000, interval: 200 },
      )
      .toBe(true);

    conn.removeOwner('audio');
    await cmd.publishAsync(t.listeningSet, 'LATE', { qos: 1 });
    await cmd.publishAsync(t.watchingSet, 'ON', { qos: 1 });
    await expect.poll(() => gotOther).toEqual(['ON']);
    expect(got).not.toContain('LATE');
  });
});
