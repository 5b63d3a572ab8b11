/**
 * The daemon as users run it: the real `perch run` process, a real Mosquitto (private, so it can be
 * stopped and restarted), second clients watching what it publishes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import mqtt from 'mqtt';
import { spawnSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { perch } from './cli-helpers.js';
import { DaemonProcess, REPO, SAMPLES } from './daemon-helpers.js';
import { synthPackage } from '../src/model/build/synth.js';
import { messageSchemas } from '../src/mqtt/messages.js';
import { Collector, freePort, privateBrokerForFile, tempDir } from './mqtt-helpers.js';

const shared = privateBrokerForFile();
const cleanups = shared.cleanups;
let seq = 0;

/** A config for one test: unique device id, temp state dir, a looping directory camera and a WAV source. */
function testConfig(stateDir: string, over: Record<string, unknown> = {}) {
  const id = `t${process.pid}-${seq++}`;
  return {
    id,
    root: `perch/${id}`,
    config: {
      device: { id, name: `Perch test ${id}` },
      log: { level: 'debug', format: 'json' },
      daemon: { state_dir: stateDir, drain_timeout_ms: 3000, stats_interval_s: 1 },
      mqtt: {
        url: shared.broker.url,
        keepalive_s: 5,
        reconnect_min_ms: 200,
        reconnect_max_ms: 1000,
        max_payload_bytes: 4096,
      },
      homeassistant: { discovery_prefix: `ha-${id}` },
      model: { dir: path.join(stateDir, 'no-model') },
      audio: {
        enabled: true,
        source: { type: 'wav', path: path.join(SAMPLES, 'speech.wav'), realtime: true, loop: true },
      },
      cameras: [
        {
          name: 'yard',
          snapshot_interval_s: 0,
          source: { type: 'directory', path: path.join(SAMPLES, 'frames'), interval_ms: 200, loop: true },
        },
      ],
      ...over,
    },
  };
}

async function startDaemon(over: Record<string, unknown> = {}) {
  const tmp = tempDir('perch-daemon-');
  const t = testConfig(tmp.dir, over);
  const watcher = await Collector.connect(shared.broker.url, [`${t.root}/#`, `ha-${t.id}/#`]);
  const daemon = DaemonProcess.start(tmp.dir, t.config);
  cleanups.push(async () => {
    await daemon.kill();
    await watcher.close();
    tmp.cleanup();
  });
  await watcher
    .waitFor((m) => m.some((x) => x.topic === `${t.root}/status` && x.payload.toString() === 'online'), 20_000)
    .catch((err: Error) => {
      throw new Error(`${err.message}\ndaemon log:\n${daemon.log()}`);
    });
  return { ...t, daemon, watcher, stateDir: tmp.dir };
}

const json = (b: Buffer) => JSON.parse(b.toString()) as Record<string, unknown>;

describe('perch run against Mosquitto', () => {
  it('a module that cannot start is reported on errors and in stats, and the others run', async () => {
    // The embedded broker asked to listen where the test broker already does: it cannot start.
    const port = Number(new URL(shared.broker.url).port);
    const { root, watcher } = await startDaemon({ embedded_broker: { enabled: true, host: '127.0.0.1', port } });
    await watcher.waitFor((m) =>
      m.some(
        (x) => x.topic === `${root}/stats` && (json(x.payload).modules as Record<string, string>)?.stats === 'running',
      ),
    );
    const stats = json(watcher.on(`${root}/stats`).at(-1)!.payload);
    expect(messageSchemas.stats.safeParse(stats).success).toBe(true);
    const modules = stats.modules as Record<string, string>;
    expect(modules.broker).toBe('failed');
    for (const name of ['model', 'mqtt', 'ask', 'hearing', 'sources', 'motion', 'health'])
      expect(modules[name]).toBe('running');
    const error = watcher
      .on(`${root}/errors`)
      .map((x) => json(x.payload))
      .find((e) => String(e.message).includes('broker'));
    expect(error).toMatchObject({ code: 'internal', topic: `${root}/stats` });
    expect(String(error!.message)).toMatch(
      /^module broker failed to start \(Perch runs without it\): .*port \d+ is already in use/,
    );
    // The others run: camera snapshots still come.
    await watcher.waitFor((m) => m.some((x) => x.topic === `${root}/camera/yard/snapshot`));
  });

  it('publishes status, stats, switch states, Home Assistant discovery and camera snapshots', async () => {
    const { root, id, watcher } = await startDaemon();
    await watcher.waitFor((m) =>
      [
        `${root}/stats`,
        `${root}/listening`,
        `${root}/watching`,
        `ha-${id}/device/perch_${id}/config`,
        `${root}/camera/yard/snapshot`,
      ].every((t) => m.some((x) => x.topic === t)),
    );
    const discovery = json(watcher.on(`ha-${id}/device/perch_${id}/config`)[0]!.payload);
    const cmps = discovery.cmps as Record<string, { p: string; command_topic?: string; image_topic?: string }>;
    const platforms = Object.values(cmps).map((c) => c.p);
    for (const p of ['event', 'sensor', 'image', 'text', 'switch']) expect(platforms).toContain(p);
    expect(Object.values(cmps).some((c) => c.image_topic === `${root}/camera/yard/snapshot`)).toBe(true);
    expect(Object.values(cmps).some((c) => c.command_topic === `${root}/ask/text`)).toBe(true);

    const snap = watcher.on(`${root}/camera/yard/snapshot`)[0]!.payload;
    expect(snap.subarray(0, 3)).toEqual(Buffer.from([0xff, 0xd8, 0xff])); // a JPEG
    expect(watcher.on(`${root}/listening`)[0]!.payload.toString()).toBe('ON');

    await watcher.waitFor((m) =>
      m.some(
        (x) =>
          x.topic === `${root}/stats` &&
          (json(x.payload).sources as Record<string, { status: string }>)['camera/yard']?.status === 'running',
      ),
    );
    const stats = json(watcher.on(`${root}/stats`).at(-1)!.payload);
    expect(stats.engine).toMatchObject({ state: 'unavailable' });
    expect((stats.mqtt as { connected: boolean }).connected).toBe(true);
    expect(Object.keys(stats.sources as object).sort()).toEqual(['audio/audio', 'camera/yard']);
  });

  it('answers an MQTT 5 request on its response topic with its correlation data, and a 3.1.1 request via reply_to', async () => {
    const { root } = await startDaemon();
    const v5 = await mqtt.connectAsync(shared.broker.url, { protocolVersion: 5 });
    const v311 = await mqtt.connectAsync(shared.broker.url, { protocolVersion: 4 });
    cleanups.push(async () => {
      await v5.endAsync(true);
      await v311.endAsync(true);
    });
    const got: Array<{ topic: string; body: Record<string, unknown>; corr?: Buffer }> = [];
    for (const c of [v5, v311])
      c.on('message', (topic, payload, packet) =>
        got.push({ topic, body: json(payload), corr: packet.properties?.correlationData as Buffer | undefined }),
      );
    await v5.subscribeAsync('client5/replies', { qos: 1 });
    await v311.subscribeAsync('client311/replies', { qos: 1 });

    await v5.publishAsync(`${root}/ask`, JSON.stringify({ text: 'What do you see?' }), {
      qos: 1,
      properties: { responseTopic: 'client5/replies', correlationData: Buffer.from('corr-42') },
    });
    await v311.publishAsync(
      `${root}/ask`,
      JSON.stringify({ id: 'q-311', text: 'Hello?', reply_to: 'client311/replies' }),
      { qos: 1 },
    );

    const deadline = Date.now() + 15_000;
    while (got.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    const r5 = got.find((g) => g.topic === 'client5/replies');
    const r311 = got.find((g) => g.topic === 'client311/replies');
    // No engine in this build: each request gets an explicit error reply, never an invented answer.
    expect(r5?.corr?.toString()).toBe('corr-42');
    expect(r5?.body.error).toMatchObject({ code: 'unavailable' });
    expect(r311?.body).toMatchObject({ id: 'q-311', error: { code: 'unavailable' } });
  });

  it('answers malformed, oversized and unknown requests with errors and keeps serving', async () => {
    const { root, watcher } = await startDaemon();
    const c = await mqtt.connectAsync(shared.broker.url);
    cleanups.push(() => c.endAsync(true).then(() => undefined));
    await c.publishAsync(`${root}/ask`, '{"text": "unterminated', { qos: 1 });
    await c.publishAsync(`${root}/ask`, JSON.stringify({ text: 'x'.repeat(10_000) }), { qos: 1 }); // over max_payload_bytes 4096
    await c.publishAsync(`${root}/ask/bogus`, '{}', { qos: 1 });
    await c.publishAsync(`${root}/ask`, JSON.stringify({ id: 'no-text' }), { qos: 1 });
    await c.publishAsync(`${root}/ask`, JSON.stringify({ text: 'about the shed', camera: 'shed' }), { qos: 1 });
    await watcher.waitFor((m) => m.filter((x) => x.topic === `${root}/errors`).length >= 5);
    const codes = watcher.on(`${root}/errors`).map((x) => json(x.payload).code);
    expect(codes).toEqual(
      expect.arrayContaining([
        'invalid_json',
        'payload_too_large',
        'unknown_topic',
        'invalid_request',
        'unknown_camera',
      ]),
    );

    // Still serving: a valid plain-text question (Home Assistant's text entity) gets its reply on <root>/answer.
    await c.publishAsync(`${root}/ask/text`, 'Is anyone in the yard?', { qos: 1 });
    await watcher.waitFor((m) => m.some((x) => x.topic === `${root}/answer`));
    expect(json(watcher.on(`${root}/answer`)[0]!.payload).error).toMatchObject({ code: 'unavailable' });
  });

  it('pauses and resumes the camera pipeline from the Watching switch', async () => {
    const { root, watcher } = await startDaemon();
    const c = await mqtt.connectAsync(shared.broker.url);
    cleanups.push(() => c.endAsync(true).then(() => undefined));
    await c.publishAsync(`${root}/watching/set`, 'OFF', { qos: 1 });
    await watcher.waitFor((m) => m.some((x) => x.topic === `${root}/watching` && x.payload.toString() === 'OFF'));
    await watcher.waitFor((m) =>
      m.some(
        (x) =>
          x.topic === `${root}/stats` &&
          (json(x.payload).sources as Record<string, { status: string }>)['camera/yard']?.status === 'paused',
      ),
    );
    // Paused means no frames: the snapshot count stops growing.
    const before = watcher.on(`${root}/camera/yard/snapshot`).length;
    await new Promise((r) => setTimeout(r, 800));
    expect(watcher.on(`${root}/camera/yard/snapshot`).length).toBe(before);
    await c.publishAsync(`${root}/watching/set`, 'ON', { qos: 1 });
    await watcher.waitFor((m) => m.filter((x) => x.topic === `${root}/camera/yard/snapshot`).length > before + 1);
  });

  it('detects motion in the camera frames: retained motion ON, a camera event, and its end when watching stops', async () => {
    const { root, watcher } = await startDaemon();
    await watcher.waitFor((m) =>
      m.some((x) => x.topic === `${root}/camera/yard/event` && json(x.payload).type === 'new'),
    );
    await watcher.waitFor((m) =>
      m.some((x) => x.topic === `${root}/camera/yard/motion` && x.payload.toString() === 'ON'),
    );
    const started = json(watcher.on(`${root}/camera/yard/event`)[0]!.payload);
    expect(started).toMatchObject({ camera: 'yard', type: 'new' });
    expect((started.box as { w: number }).w).toBeGreaterThan(0);
    // Watching OFF ends the running event at once: `end` with the same id, then motion OFF.
    const c = await mqtt.connectAsync(shared.broker.url);
    cleanups.push(() => c.endAsync(true).then(() => undefined));
    await c.publishAsync(`${root}/watching/set`, 'OFF', { qos: 1 });
    await watcher.waitFor((m) =>
      m.some(
        (x) =>
          x.topic === `${root}/camera/yard/event` &&
          json(x.payload).type === 'end' &&
          json(x.payload).id === started.id,
      ),
    );
    await watcher.waitFor((m) =>
      m.some((x) => x.topic === `${root}/camera/yard/motion` && x.payload.toString() === 'OFF'),
    );
  });

  it('hears the speech sample: speech ON then OFF, a sound level, an utterance counted in stats', async () => {
    const { root, watcher } = await startDaemon();
    await watcher.waitFor(
      (m) => m.some((x) => x.topic === `${root}/audio/speech` && x.payload.toString() === 'ON'),
      20_000,
    );
    await watcher.waitFor(
      (m) =>
        m.some(
          (x) =>
            x.topic === `${root}/stats` &&
            ((json(x.payload).audio as { utterances: number } | undefined)?.utterances ?? 0) >= 1,
        ),
      20_000,
    );
    const speech = watcher.on(`${root}/audio/speech`).map((x) => x.payload.toString());
    expect(speech.indexOf('OFF', speech.indexOf('ON'))).toBeGreaterThan(0); // OFF after ON: the utterance ended
    const levels = watcher.on(`${root}/audio/level`).map((x) => Number(x.payload.toString()));
    expect(levels.length).toBeGreaterThan(0);
    // The sample has silence and speech: the level moves, within dBFS bounds.
    expect(Math.max(...levels)).toBeLessThanOrEqual(0);
    expect(Math.max(...levels) - Math.min(...levels)).toBeGreaterThan(10);
  });

  it('reconnects after the broker is stopped and restarted, says online again and keeps serving', async () => {
    const { root, watcher } = await startDaemon();
    await shared.broker.pause();
    await new Promise((r) => setTimeout(r, 1000));
    await shared.broker.resume();
    const after = Date.now();
    const c = await mqtt.connectAsync(shared.broker.url);
    cleanups.push(() => c.endAsync(true).then(() => undefined));
    await c.subscribeAsync(`${root}/#`, { qos: 1 });
    const seen: string[] = [];
    c.on('message', (topic, payload) =>
      seen.push(`${topic}=${topic.endsWith('/snapshot') ? 'jpeg' : payload.toString()}`),
    );
    await watcher.waitFor(() => seen.includes(`${root}/status=online`) && Date.now() > after);
    await c.publishAsync(`${root}/ask`, JSON.stringify({ id: 'after-restart', text: 'still there?' }), { qos: 1 });
    const deadline = Date.now() + 15_000;
    while (!seen.some((s) => s.startsWith(`${root}/answer=`) && s.includes('after-restart')) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 25));
    expect(seen.some((s) => s.startsWith(`${root}/answer=`) && s.includes('after-restart'))).toBe(true);
  });

  it('leaves the retained last will "offline" when killed with SIGKILL', async () => {
    const { root, daemon } = await startDaemon();
    await daemon.kill('SIGKILL');
    const late = await Collector.connect(shared.broker.url, [`${root}/status`]);
    cleanups.push(() => late.close());
    await late.waitFor((m) => m.some((x) => x.payload.toString() === 'offline' && x.packet.retain));
  });

  it('drains, publishes offline and exits 0 on SIGTERM', async () => {
    const { root, daemon, watcher } = await startDaemon();
    daemon.child.kill('SIGTERM');
    const { code } = await daemon.exited();
    expect(code).toBe(0);
    await watcher.waitFor((m) => m.some((x) => x.topic === `${root}/status` && x.payload.toString() === 'offline'));
    expect(daemon.log()).toContain('job queue drained');
  });
});

describe('answers from a model package', () => {
  let pkg: { dir: string; cleanup(): void };
  beforeAll(async () => {
    pkg = tempDir('perch-pkg-');
    await synthPackage({ preset: 'tiny', outDir: path.join(pkg.dir, 'tiny'), seed: 7 });
  }, 120_000);
  afterAll(() => pkg.cleanup());

  it('transcribes the WAV source: a schema-valid transcript with streamed partials', async () => {
    const { root, watcher } = await startDaemon({
      model: { dir: path.join(pkg.dir, 'tiny'), threads: 1, context_tokens: 1024 },
    });
    await watcher.waitFor((m) => m.some((x) => x.topic === `${root}/audio/transcript`), 60_000);
    const t = json(watcher.on(`${root}/audio/transcript`)[0]!.payload);
    expect(messageSchemas.transcript.safeParse(t).success).toBe(true);
    expect(t.random_weights).toBe(true);
    // The partials of that transcript add up to its text (QoS 0: they may reach the watcher after the final).
    const deltas = () =>
      watcher
        .on(`${root}/audio/transcript/partial`)
        .map((x) => json(x.payload))
        .filter((p) => p.id === t.id)
        .map((p) => p.delta)
        .join('');
    await watcher.waitFor(() => deltas() === t.text, 10_000);
  });

  it('streams an MQTT 5 answer on answer/stream and replies with the same correlation data', async () => {
    const { root, watcher, stateDir } = await startDaemon({
      model: { dir: path.join(pkg.dir, 'tiny'), threads: 1, context_tokens: 256, max_answer_tokens: 12 },
    });
    await watcher.waitFor(
      (m) =>
        m.some((x) => x.topic === `${root}/stats` && (json(x.payload).engine as { state: string }).state === 'ready'),
      60_000,
    );
    // Its weights were prepacked into the cache under the state directory (model.cache_dir unset).
    expect(
      readdirSync(path.join(stateDir, 'model-cache')).filter((n) => /^decoder-[0-9a-f]{20}$/.test(n)),
    ).toHaveLength(1);
    const c = await mqtt.connectAsync(shared.broker.url, { protocolVersion: 5 });
    cleanups.push(() => c.endAsync(true).then(() => undefined));
    const replies: Array<{ body: Record<string, unknown>; corr?: Buffer }> = [];
    c.on('message', (_t, payload, packet) =>
      replies.push({ body: json(payload), corr: packet.properties?.correlationData as Buffer | undefined }),
    );
    await c.subscribeAsync('client/answers', { qos: 1 });
    await c.publishAsync(
      `${root}/ask`,
      JSON.stringify({ id: 'tiny-1', text: 'Say something.', max_tokens: 6, seed: 3 }),
      { qos: 1, properties: { responseTopic: 'client/answers', correlationData: Buffer.from('c-7') } },
    );

    const deadline = Date.now() + 60_000;
    while (replies.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    expect(replies[0]?.corr?.toString()).toBe('c-7');
    const answer = replies[0]!.body;
    expect(answer).toMatchObject({ id: 'tiny-1', tokens: { completion: 6 } });
    expect(['stop', 'length']).toContain(answer.finish_reason);
    // The stream carries the same text, in order, and ends with done (QoS 0: it may reach the watcher after the reply).
    await watcher.waitFor((m) =>
      m.some(
        (x) => x.topic === `${root}/answer/stream` && json(x.payload).id === 'tiny-1' && json(x.payload).done === true,
      ),
    );
    const chunks = watcher
      .on(`${root}/answer/stream`)
      .map((x) => json(x.payload))
      .filter((c) => c.id === 'tiny-1');
    expect(chunks.at(-1)).toMatchObject({ done: true });
    expect(chunks.map((c) => c.delta).join('')).toBe(answer.text);
    expect(chunks.map((c) => c.seq)).toEqual(chunks.map((_, i) => i));
  });
});

describe('cancelling an answer over MQTT', () => {
  let pkg: { dir: string; cleanup(): void };
  beforeAll(async () => {
    pkg = tempDir('perch-pkg-');
    await synthPackage({ preset: 'tiny', outDir: path.join(pkg.dir, 'tiny'), seed: 9 });
  }, 120_000);
  afterAll(() => pkg.cleanup());

  it('stops a running answer (partial text, finish_reason cancelled) and a waiting one (cancelled error)', async () => {
    const { root, watcher } = await startDaemon({
      model: { dir: path.join(pkg.dir, 'tiny'), threads: 1, context_tokens: 8192 },
    });
    await watcher.waitFor(
      (m) =>
        m.some((x) => x.topic === `${root}/stats` && (json(x.payload).engine as { state: string }).state === 'ready'),
      60_000,
    );
    const c = await mqtt.connectAsync(shared.broker.url);
    cleanups.push(() => c.endAsync(true).then(() => undefined));
    // `long` runs (thousands of tokens), `queued` waits behind it; both are cancelled once `long` streams.
    await c.publishAsync(
      `${root}/ask`,
      JSON.stringify({ id: 'long', text: 'Tell a long story.', max_tokens: 8000, seed: 1 }),
      { qos: 1 },
    );
    await c.publishAsync(`${root}/ask`, JSON.stringify({ id: 'queued', text: 'And another.', max_tokens: 8 }), {
      qos: 1,
    });
    await watcher.waitFor(
      (m) => m.some((x) => x.topic === `${root}/answer/stream` && json(x.payload).id === 'long'),
      30_000,
    );
    await c.publishAsync(`${root}/ask/cancel`, JSON.stringify({ id: 'queued' }), { qos: 1 });
    await c.publishAsync(`${root}/ask/cancel`, JSON.stringify({ id: 'long' }), { qos: 1 });
    await watcher.waitFor(
      (m) => ['long', 'queued'].every((id) => m.some((x) => x.topic === `${root}/answer` && json(x.payload).id === id)),
      30_000,
    );
    const answers = watcher.on(`${root}/answer`).map((x) => json(x.payload));
    const long = answers.find((a) => a.id === 'long')!;
    expect(long.finish_reason).toBe('cancelled');
    expect((long.tokens as { completion: number }).completion).toBeGreaterThan(0);
    expect((long.tokens as { completion: number }).completion).toBeLessThan(8000);
    expect(answers.find((a) => a.id === 'queued')!.error).toMatchObject({ code: 'cancelled' });
  });
});

describe('npm start with the shipped dev config', () => {
  it('runs its embedded broker and file sources and publishes status and discovery', async () => {
    const tmp = tempDir('perch-dev-');
    const port = await freePort();
    const env = {
      PERCH_EMBEDDED_BROKER_PORT: String(port),
      PERCH_MQTT_URL: `mqtt://127.0.0.1:${port}`,
      PERCH_DAEMON_STATE_DIR: tmp.dir,
      PERCH_MODEL_DIR: path.join(tmp.dir, 'tiny'),
    };
    const devConfig = path.join(REPO, 'config', 'perch.dev.yaml');
    // What npm start runs first: no package at model.dir, so the model command builds the tiny synthetic one.
    const synth = await perch('model', 'synth', '--preset', 'tiny', '--config', devConfig, '--if-missing', { env });
    expect(synth.code, synth.stderr).toBe(0);
    expect(synth.stderr).toContain('building the tiny synthetic one');
    const daemon = DaemonProcess.start(tmp.dir, undefined, env, devConfig);
    cleanups.push(async () => {
      await daemon.kill();
      tmp.cleanup();
    });
    // The embedded broker comes up with the daemon; retry until it listens.
    let watcher: Collector | undefined;
    for (let i = 0; i < 100 && !watcher; i++) {
      watcher = await Collector.connect(
        `mqtt://127.0.0.1:${port}`,
        ['perch/perch-dev/#', 'homeassistant/device/perch_perch-dev/config'],
        { reconnectPeriod: 0, connectTimeout: 500 },
      ).catch(() => undefined);
      if (!watcher) await new Promise((r) => setTimeout(r, 100));
    }
    expect(watcher, daemon.log()).toBeDefined();
    cleanups.push(() => watcher!.close());
    await watcher!.waitFor((m) =>
      ['perch/perch-dev/status', 'perch/perch-dev/stats', 'homeassistant/device/perch_perch-dev/config'].every((t) =>
        m.some((x) => x.topic === t),
      ),
    );
    expect(daemon.log()).toMatch(/mosquitto_sub -h 127\.0\.0\.1 -p \d+/);
    // The synthetic package loads, and the daemon says loudly that it is random.
    await watcher!.waitFor(
      (m) =>
        m.some(
          (x) => x.topic === 'perch/perch-dev/stats' && (json(x.payload).engine as { state: string }).state === 'ready',
        ),
      60_000,
    );
    expect(daemon.log()).toMatch(/RANDOM/);
    const ready = json(watcher!.on('perch/perch-dev/stats').at(-1)!.payload);
    expect(ready.engine).toMatchObject({ state: 'ready', random_weights: true });
  });
});

describe('perch ha remove', () => {
  it('clears the retained discovery the daemon published', async () => {
    const { id, daemon, config, watcher } = await startDaemon();
    await watcher.waitFor((m) =>
      m.some((x) => x.topic === `ha-${id}/device/perch_${id}/config` && x.payload.length > 0),
    );
    await daemon.kill('SIGTERM');
    const dir = tempDir('perch-ha-');
    cleanups.push(() => dir.cleanup());
    const file = path.join(dir.dir, 'config.yaml');
    writeFileSync(file, stringify(config));
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', path.join(REPO, 'src', 'cli.ts'), 'ha', 'remove', '--config', file],
      { cwd: REPO, encoding: 'utf8', timeout: 20_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`ha-${id}/device/perch_${id}/config`);
    // A fresh subscriber finds no retained discovery for the device any more.
    const late = await Collector.connect(shared.broker.url, [`ha-${id}/#`]);
    cleanups.push(() => late.close());
    await new Promise((r) => setTimeout(r, 500));
    expect(late.messages.filter((m) => m.payload.length > 0)).toEqual([]);
  });
});
