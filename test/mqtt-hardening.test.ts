/**
 * No topic from the network can wedge delivery (issue #11, point 1), through the real `perch run` and a
 * real Mosquitto: topics Mosquitto refuses (it drops the client that sends them) are refused as requests,
 * results the broker refuses anyway become dead letters instead of blocking the outbox, replies cannot
 * be aimed at Home Assistant or other Perch roots, and a request is acted on once per id.
 */
import { describe, expect, it } from 'vitest';
import mqtt, { type MqttClient } from 'mqtt';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DaemonProcess } from './daemon-helpers.js';
import { Collector, Mosquitto, privateBrokerForFile, tempDir } from './mqtt-helpers.js';

const shared = privateBrokerForFile();
const cleanups = shared.cleanups;
let seq = 0;

const json = (b: Buffer) => JSON.parse(b.toString()) as Record<string, unknown>;
/** Where test clients want their replies: outside perch/ and the discovery prefix. */
const REPLIES = 'hardening/replies';

interface Started {
  id: string;
  root: string;
  stateDir: string;
  daemon: DaemonProcess;
  watcher: Collector;
  client: MqttClient;
}

/**
 * Starts `perch run` without model, audio or cameras (requests get quick `unavailable` replies).
 * `before` runs on the state directory first, to plant outbox files.
 */
async function startDaemon(b: Mosquitto, before?: (stateDir: string) => void): Promise<Started> {
  const tmp = tempDir('perch-hard-');
  const id = `h${process.pid}-${seq++}`;
  const root = `perch/${id}`;
  before?.(tmp.dir);
  const config = {
    device: { id, name: `Perch hardening ${id}` },
    log: { level: 'debug', format: 'json' },
    daemon: { state_dir: tmp.dir, drain_timeout_ms: 1000, stats_interval_s: 1 },
    mqtt: { url: b.url, keepalive_s: 5, reconnect_min_ms: 200, reconnect_max_ms: 1000, max_payload_bytes: 4096 },
    homeassistant: { discovery_prefix: `ha-${id}`, status_topic: `ha-${id}/status` },
    model: { dir: path.join(tmp.dir, 'no-model') },
    audio: { enabled: false },
    cameras: [],
  };
  const watcher = await Collector.connect(b.url, [`${root}/#`, `${REPLIES}/#`, `ha-${id}/#`, 'perch/other/#']);
  const daemon = DaemonProcess.start(tmp.dir, config);
  const client = await mqtt.connectAsync(b.url, { protocolVersion: 5 });
  cleanups.push(async () => {
    await client.endAsync(true);
    await daemon.kill();
    await watcher.close();
    tmp.cleanup();
  });
  await watcher
    .waitFor((m) => m.some((x) => x.topic === `${root}/status` && x.payload.toString() === 'online'), 20_000)
    .catch((err: Error) => {
      throw new Error(`${err.message}\ndaemon log:\n${daemon.log()}`);
    });
  return { id, root, stateDir: tmp.dir, daemon, watcher, client };
}

const errorsOf = (s: Started) => s.watcher.on(`${s.root}/errors`).map((x) => json(x.payload));
const repliesOf = (s: Started, topic = REPLIES) => s.watcher.on(topic).map((x) => json(x.payload));

/** A normal request still gets its reply (no model: an `unavailable` error reply), and Perch never went offline. */
async function expectStillServing(s: Started, id: string): Promise<void> {
  await s.client.publishAsync(`${s.root}/ask`, JSON.stringify({ id, text: 'Still there?', reply_to: REPLIES }), {
    qos: 1,
  });
  await s.watcher
    .waitFor(() => repliesOf(s).some((r) => r.id === id), 10_000)
    .catch((err: Error) => {
      throw new Error(`${err.message}\ndaemon log tail:\n${s.daemon.log().slice(-3000)}`);
    });
  expect(s.watcher.on(`${s.root}/status`).map((x) => x.payload.toString())).not.toContain('offline');
}

/** Writes a message file into the outbox as an earlier run would have (the format of outbox-store.ts). */
function plantOutboxMessage(stateDir: string, seqNo: number, topic: string, payload: Buffer): void {
  const dir = path.join(stateDir, 'outbox');
  mkdirSync(dir, { recursive: true });
  const header = {
    v: 1,
    seq: seqNo,
    topic,
    retain: false,
    priority: 'answer',
    created_at: Date.now(),
    expiry_s: 3600,
    content_type: 'application/json',
  };
  writeFileSync(
    path.join(dir, `${String(seqNo).padStart(16, '0')}.msg`),
    Buffer.concat([Buffer.from(JSON.stringify(header) + '\n'), payload]),
  );
}

describe('topics from the network', () => {
  it('refuses reply_to and responseTopic values Mosquitto would drop Perch for, and keeps delivering', async () => {
    const s = await startDaemon(shared.broker);
    // Control characters, DEL, C1, noncharacters, a lone surrogate: each one would cost the connection.
    const bad = ['my/\u0001x', 'my/\u007f', 'my/\u0085', 'my/\ufdd0', 'my/\uffff', 'my/\u{10ffff}', 'my/\ud800'];
    for (const [i, topic] of bad.entries()) {
      await s.client.publishAsync(`${s.root}/ask`, JSON.stringify({ id: `bad-${i}`, text: 'Hi', reply_to: topic }), {
        qos: 1,
      });
    }
    await s.watcher.waitFor(() => errorsOf(s).filter((e) => String(e.id).startsWith('bad-')).length === bad.length);
    for (const e of errorsOf(s))
      expect(e).toMatchObject({ code: 'invalid_request', message: expect.stringMatching(/^reply_to: /) });
    await expectStillServing(s, 'after-reply-to');
  });

  it('refuses an image_topic Mosquitto would drop Perch for (no subscribe, no reconnect loop)', async () => {
    const s = await startDaemon(shared.broker);
    await s.client.publishAsync(
      `${s.root}/ask`,
      JSON.stringify({ id: 'bad-img', text: 'What is on it?', image_topic: 'cam/\u0001x', reply_to: REPLIES }),
      { qos: 1 },
    );
    await s.watcher.waitFor(() => repliesOf(s).some((r) => r.id === 'bad-img'));
    expect(repliesOf(s).find((r) => r.id === 'bad-img')).toMatchObject({
      error: { code: 'invalid_request', message: expect.stringMatching(/^image_topic: /) },
    });
    await new Promise((r) => setTimeout(r, 1000)); // a refused subscription would drop the link within this
    await expectStillServing(s, 'after-image-topic');
    expect(s.daemon.log()).not.toMatch(/connection to broker lost/);
  });

  it("refuses replies into Home Assistant's discovery prefix and status topic and into other Perch roots", async () => {
    const s = await startDaemon(shared.broker);
    const targets = [
      `ha-${s.id}/device/x/config`,
      `ha-${s.id}/status`,
      'perch/other/listening/set',
      'perch/other/answer',
    ];
    for (const [i, topic] of targets.entries()) {
      await s.client.publishAsync(`${s.root}/ask`, JSON.stringify({ id: `aim-${i}`, text: 'Hi', reply_to: topic }), {
        qos: 1,
      });
    }
    await s.client.publishAsync(`${s.root}/ask`, JSON.stringify({ id: 'aim-v5', text: 'Hi' }), {
      qos: 1,
      properties: { responseTopic: `ha-${s.id}/status` },
    });
    await s.watcher.waitFor(
      () => errorsOf(s).filter((e) => String(e.id).startsWith('aim-')).length === targets.length + 1,
    );
    for (const e of errorsOf(s)) expect(e.code).toBe('invalid_request');
    await expectStillServing(s, 'after-aim');
    // Nothing reached those topics (the watcher subscribes to all of them).
    const hit = s.watcher.messages.filter(
      (m) =>
        m.topic.startsWith('perch/other/') ||
        (m.topic.startsWith(`ha-${s.id}/`) && !m.topic.startsWith(`ha-${s.id}/device/perch_`)),
    );
    expect(hit.map((m) => m.topic)).toEqual([]);
  });

  it('acts on a request once per id and reply address, however often it arrives', async () => {
    const s = await startDaemon(shared.broker);
    const req = JSON.stringify({ id: 'twice', text: 'Hi', reply_to: REPLIES });
    for (let i = 0; i < 3; i++) await s.client.publishAsync(`${s.root}/ask`, req, { qos: 1 });
    // Another requester with the same id is a different request.
    await s.client.publishAsync(
      `${s.root}/ask`,
      JSON.stringify({ id: 'twice', text: 'Hi', reply_to: `${REPLIES}/other` }),
      { qos: 1 },
    );
    await s.watcher.waitFor(() => repliesOf(s, `${REPLIES}/other`).length === 1);
    await expectStillServing(s, 'after-twice');
    expect(repliesOf(s).filter((r) => r.id === 'twice')).toHaveLength(1);
  });
});

describe('results the broker refuses', () => {
  it('sets aside a persisted message with an invalid topic (dead letter, error, stats) and delivers the rest', async () => {
    const s = await startDaemon(shared.broker, (dir) => {
      plantOutboxMessage(dir, 1, 'my/\u0001x', Buffer.from(JSON.stringify({ v: 1, id: 'dead-1', text: 'lost' })));
      plantOutboxMessage(dir, 2, REPLIES, Buffer.from(JSON.stringify({ v: 1, id: 'queued-2', text: 'kept' })));
    });
    await s.watcher.waitFor(() => errorsOf(s).some((e) => e.code === 'undeliverable'), 10_000);
    expect(errorsOf(s).find((e) => e.code === 'undeliverable')).toMatchObject({ id: 'dead-1', topic: 'my/\u0001x' });
    // The message behind it went out, and so does everything later.
    await s.watcher.waitFor(() => repliesOf(s).some((r) => r.id === 'queued-2'));
    await expectStillServing(s, 'after-dead-topic');
    const dead = path.join(s.stateDir, 'dead-letter', '0000000000000001.msg');
    expect(existsSync(dead)).toBe(true);
    expect(readFileSync(dead).toString()).toContain('dead-1');
    expect(existsSync(path.join(s.stateDir, 'outbox', '0000000000000001.msg'))).toBe(false);
    await s.watcher.waitFor(() =>
      s.watcher
        .on(`${s.root}/stats`)
        .some((x) => (json(x.payload).mqtt as { outbox: { dead_letters?: number } }).outbox.dead_letters === 1),
    );
  });

  it('sets aside a message the broker answers by dropping the connection (over its max_packet_size)', async () => {
    // Passes every check of Perch's, yet Mosquitto disconnects whoever sends it.
    const small = await Mosquitto.start({ extraConfig: ['max_packet_size 16384'] });
    cleanups.push(() => small.close());
    const s = await startDaemon(small, (dir) => {
      plantOutboxMessage(
        dir,
        1,
        `${REPLIES}/big`,
        Buffer.from(JSON.stringify({ v: 1, id: 'big-1', text: 'x'.repeat(20_000) })),
      );
    });
    await s.watcher
      .waitFor(() => errorsOf(s).some((e) => e.code === 'undeliverable'), 20_000)
      .catch((err: Error) => {
        throw new Error(`${err.message}\ndaemon log tail:\n${s.daemon.log().slice(-3000)}`);
      });
    expect(errorsOf(s).find((e) => e.code === 'undeliverable')).toMatchObject({ id: 'big-1', topic: `${REPLIES}/big` });
    expect(existsSync(path.join(s.stateDir, 'dead-letter', '0000000000000001.msg'))).toBe(true);
    await s.client.publishAsync(`${s.root}/ask`, JSON.stringify({ id: 'after-big', text: 'Hi', reply_to: REPLIES }), {
      qos: 1,
    });
    await s.watcher.waitFor(() => repliesOf(s).some((r) => r.id === 'after-big'), 10_000);
  });
});
