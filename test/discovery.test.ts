import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import {
  DiscoveryPublisher,
  buildDiscovery,
  detectBoard,
  discoveryOptionsFromConfig,
  haRemove,
  type DiscoveryOptions,
  type DiscoveryPayload,
  type PublishFn,
} from '../src/mqtt/discovery.js';
import { perchConfigSchema } from '../src/config/schema.js';
import { REPO } from './daemon-helpers.js';

/**
 * Home Assistant renders templates with Jinja2: each stats message through the value and attributes templates,
 * by the Jinja2 of the reference environment (made by reference/setup.sh on first use, reused after).
 */
async function renderJinja(value: string, attrs: string, stats: object[]): Promise<Array<[string, string]>> {
  const script = [
    'import json, sys, jinja2',
    'env = jinja2.Environment()',
    't = json.load(sys.stdin)',
    'print(json.dumps([[env.from_string(t["value"]).render(value_json=s), env.from_string(t["attrs"]).render(value_json=s)] for s in t["stats"]]))',
  ].join('\n');
  await new Promise<void>((resolve, reject) =>
    execFile('bash', [join(REPO, 'reference', 'setup.sh')], { cwd: REPO, maxBuffer: 1 << 24 }, (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  const python = join(REPO, 'reference', '.venv', 'bin', 'python');
  const out = await new Promise<string>((resolve, reject) => {
    const child = execFile(python, ['-c', script], (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    );
    child.stdin!.end(JSON.stringify({ value, attrs, stats }));
  });
  return JSON.parse(out) as Array<[string, string]>;
}

const BROKER = 'mqtt://127.0.0.1:1883';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function client(): Promise<MqttClient> {
  const c = await connectAsync(BROKER, {
    clientId: `perch-discovery-test-${randomBytes(6).toString('hex')}`,
    reconnectPeriod: 0,
  });
  cleanups.push(() => c.endAsync());
  return c;
}

/** One test's world: unique prefix, device id, topics and state dir, so tests never see each other's retained messages. */
async function world(cameras: string[] = ['porch', 'back-yard']) {
  const run = randomBytes(4).toString('hex');
  const base = `perchtest/${run}`;
  const stateDir = await mkdtemp(join(tmpdir(), 'perch-discovery-'));
  const pub = await client();
  const publish: PublishFn = (topic, payload, opts) => pub.publishAsync(topic, payload, opts);
  const opts: DiscoveryOptions = {
    deviceId: `t${run}`,
    deviceName: 'Test Perch',
    rootTopic: `${base}/perch`,
    discoveryPrefix: `${base}/homeassistant`,
    cameras,
    audio: true,
    swVersion: '0.1.0',
    board: 'Raspberry Pi 5 Model B Rev 1.0',
  };
  const haStatusTopic = `${base}/ha/status`;
  const topic = `${opts.discoveryPrefix}/device/perch_${opts.deviceId}/config`;
  cleanups.push(async () => {
    await haRemove(publish, { discoveryPrefix: opts.discoveryPrefix, deviceId: opts.deviceId, stateDir });
    await rm(stateDir, { recursive: true, force: true });
  });
  const publisher = (discovery: DiscoveryOptions = opts) =>
    new DiscoveryPublisher({ discovery, haStatusTopic, stateDir, publish });
  return { run, base, stateDir, pub, publish, opts, haStatusTopic, topic, publisher };
}

/** Retained messages a fresh subscriber gets on `topic` (the broker sends them right after SUBACK). */
async function retained(topic: string): Promise<Buffer[]> {
  const c = await client();
  const got: Buffer[] = [];
  c.on('message', (t, payload, packet) => {
    if (t === topic && packet.retain) got.push(payload);
  });
  await c.subscribeAsync(topic, { qos: 1 });
  await new Promise((r) => setTimeout(r, 300));
  return got;
}

async function retainedDiscovery(topic: string): Promise<DiscoveryPayload> {
  const msgs = await retained(topic);
  expect(msgs).toHaveLength(1);
  return JSON.parse(msgs[0]!.toString('utf8')) as DiscoveryPayload;
}

function nextMessage(c: MqttClient, topic: string, timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      c.off('message', on);
      reject(new Error(`no message on ${topic}`));
    }, timeoutMs);
    const on = (t: string, payload: Buffer) => {
      if (t !== topic) return;
      clearTimeout(timer);
      c.off('message', on);
      resolve(payload);
    };
    c.on('message', on);
  });
}

const CAMERA_COMPONENTS = (cam: string) => [
  `cam_${cam}_caption`,
  `cam_${cam}_snapshot`,
  `cam_${cam}_motion`,
  `cam_${cam}_event`,
];

describe('buildDiscovery', () => {
  const opts: DiscoveryOptions = {
    deviceId: 'kitchen',
    deviceName: 'Kitchen Perch',
    rootTopic: 'perch/kitchen',
    discoveryPrefix: 'homeassistant',
    cameras: ['door'],
    audio: true,
    swVersion: '1.2.3',
    board: 'Raspberry Pi 5 Model B Rev 1.0',
  };

  it('describes one device with origin, availability and every entity on the contract topics', () => {
    const { topic, payload } = buildDiscovery(opts);
    expect(topic).toBe('homeassistant/device/perch_kitchen/config');
    expect(payload.dev).toEqual({
      ids: ['perch_kitchen'],
      name: 'Kitchen Perch',
      mf: 'Perch',
      mdl: 'Gemma 4 E2B on Raspberry Pi 5 Model B Rev 1.0',
      sw: '1.2.3',
    });
    expect(payload.o).toMatchObject({ name: 'Perch', sw: '1.2.3' });
    expect(payload.availability).toEqual([
      { topic: 'perch/kitchen/status', payload_available: 'online', payload_not_available: 'offline' },
    ]);
    const c = payload.cmps;
    expect(Object.keys(c).sort()).toEqual([
      'answer',
      'ask',
      'cam_door_caption',
      'cam_door_event',
      'cam_door_motion',
      'cam_door_snapshot',
      'last_answer',
      'last_transcript',
      'listening',
      'problem',
      'queue',
      'sound_level',
      'speech',
      'status',
      'talk',
      'transcript',
      'watching',
    ]);
    expect(c.talk).toMatchObject({ p: 'button', command_topic: 'perch/kitchen/audio/talk' });
    expect(c.speech).toMatchObject({
      p: 'binary_sensor',
      state_topic: 'perch/kitchen/audio/speech',
      device_class: 'sound',
    });
    expect(c.sound_level).toMatchObject({
      p: 'sensor',
      state_topic: 'perch/kitchen/audio/level',
      unit_of_measurement: 'dBFS',
    });
    for (const [cid, comp] of Object.entries(c)) {
      expect(comp.unique_id).toBe(`perch_kitchen_${cid}`);
      expect(comp.default_entity_id).toBe(`${comp.p}.perch_kitchen_${cid}`);
    }
    expect(c.transcript).toMatchObject({
      p: 'event',
      state_topic: 'perch/kitchen/audio/transcript',
      event_types: ['transcript', 'wake'],
    });
    expect(c.answer).toMatchObject({ p: 'event', state_topic: 'perch/kitchen/answer' });
    expect(c.ask).toMatchObject({ p: 'text', name: 'Ask', command_topic: 'perch/kitchen/ask/text', max: 255 });
    expect(c.listening).toMatchObject({
      p: 'switch',
      command_topic: 'perch/kitchen/listening/set',
      state_topic: 'perch/kitchen/listening',
    });
    expect(c.watching).toMatchObject({
      p: 'switch',
      command_topic: 'perch/kitchen/watching/set',
      state_topic: 'perch/kitchen/watching',
    });
    expect(c.cam_door_caption).toMatchObject({
      p: 'sensor',
      name: 'door caption',
      state_topic: 'perch/kitchen/camera/door/caption',
      json_attributes_topic: 'perch/kitchen/camera/door/caption',
    });
    expect(String(c.cam_door_caption!.value_template)).toContain('[:255]');
    expect(c.cam_door_snapshot).toMatchObject({
      p: 'image',
      image_topic: 'perch/kitchen/camera/door/snapshot',
      content_type: 'image/jpeg',
    });
    expect(c.cam_door_motion).toMatchObject({
      p: 'binary_sensor',
      state_topic: 'perch/kitchen/camera/door/motion',
      payload_on: 'ON',
      payload_off: 'OFF',
      device_class: 'motion',
    });
    expect(c.cam_door_event).toMatchObject({
      p: 'event',
      state_topic: 'perch/kitchen/camera/door/event',
      event_types: ['new', 'update', 'end'],
    });
    expect(c.status).toMatchObject({
      p: 'sensor',
      state_topic: 'perch/kitchen/stats',
      json_attributes_topic: 'perch/kitchen/stats',
    });
    expect(c.queue).toMatchObject({ p: 'sensor', state_topic: 'perch/kitchen/stats' });
    expect(c.problem).toMatchObject({
      p: 'binary_sensor',
      state_topic: 'perch/kitchen/stats',
      device_class: 'problem',
      entity_category: 'diagnostic',
    });
  });

  it("the Problem entity's templates, rendered by Python's Jinja2: on for a failing stage or a failed module", async () => {
    const { payload } = buildDiscovery(opts);
    const p = payload.cmps.problem as unknown as { value_template: string; json_attributes_template: string };
    const ok = { health: { 'audio/vad': { state: 'ok' } }, modules: { mqtt: 'running', motion: 'running' } };
    const stats = [
      ok,
      {},
      { ...ok, health: { 'audio/vad': { state: 'ok' }, 'camera/door/decoder': { state: 'failing' } } },
      { ...ok, modules: { broker: 'failed', mqtt: 'running', hearing: 'failed' } },
    ];
    const rendered = await renderJinja(p.value_template, p.json_attributes_template, stats);
    expect(rendered.map(([v]) => v)).toEqual(['OFF', 'OFF', 'ON', 'ON']);
    expect(JSON.parse(rendered[0]![1])).toEqual({ 'audio/vad': { state: 'ok' }, failed_modules: [] });
    expect(JSON.parse(rendered[2]![1])).toMatchObject({ 'camera/door/decoder': { state: 'failing' } });
    expect(JSON.parse(rendered[3]![1]).failed_modules).toEqual(['broker', 'hearing']);
  }, 900_000); // the first run on a machine makes the reference environment

  it('counts HTTP requests with the HTTP API on (rendered by Jinja2), and has no such entity without it', async () => {
    expect(buildDiscovery(opts).payload.cmps.http_requests).toBeUndefined();
    const { payload } = buildDiscovery({ ...opts, http: true });
    const h = payload.cmps.http_requests as unknown as { value_template: string; json_attributes_template: string };
    expect(h).toMatchObject({ p: 'sensor', state_topic: 'perch/kitchen/stats', state_class: 'total_increasing' });
    const counts = { requests: 7, generations: 5, errors: 2, rejected: 1 };
    const rendered = await renderJinja(h.value_template, h.json_attributes_template, [{ http: counts }, {}]);
    expect(rendered.map(([v]) => v)).toEqual(['7', '0']);
    expect(JSON.parse(rendered[0]![1])).toEqual(counts);
  }, 900_000);

  it('has an Actions switch and a Last action sensor (rendered by Jinja2) only with actions declared', async () => {
    expect(buildDiscovery(opts).payload.cmps.actions).toBeUndefined();
    const { payload } = buildDiscovery({ ...opts, actions: true });
    expect(payload.cmps.actions).toMatchObject({
      p: 'switch',
      command_topic: 'perch/kitchen/actions/set',
      state_topic: 'perch/kitchen/actions',
    });
    const last = payload.cmps.last_action as unknown as { value_template: string; state_topic: string };
    expect(last.state_topic).toBe('perch/kitchen/action');
    const rendered = await renderJinja(last.value_template, '{{ 1 }}', [{ name: 'set_light', status: 'done' }]);
    expect(rendered[0]![0]).toBe('set_light: done');
  }, 900_000);

  it('leaves out audio entities without audio and camera entities without cameras', () => {
    const { payload } = buildDiscovery({ ...opts, audio: false, cameras: [] });
    expect(Object.keys(payload.cmps).sort()).toEqual(['answer', 'ask', 'last_answer', 'problem', 'queue', 'status']);
  });

  it('makes entity ids from camera names with dashes', () => {
    const { payload } = buildDiscovery({ ...opts, cameras: ['back-yard'] });
    expect(payload.cmps['cam_back-yard_caption']!.default_entity_id).toBe('sensor.perch_kitchen_cam_back_yard_caption');
    expect(payload.cmps['cam_back-yard_caption']!.unique_id).toBe('perch_kitchen_cam_back-yard_caption');
  });

  it('takes its options from a config, only enabled cameras', () => {
    const config = perchConfigSchema.parse({
      device: { id: 'hall', name: 'Hall' },
      cameras: [
        { name: 'a', source: { type: 'directory', path: '/tmp/x' } },
        { name: 'b', enabled: false, source: { type: 'directory', path: '/tmp/y' } },
      ],
    });
    const o = discoveryOptionsFromConfig(config, { swVersion: '9', board: 'Pi' });
    expect(o).toMatchObject({
      deviceId: 'hall',
      deviceName: 'Hall',
      rootTopic: 'perch/hall',
      discoveryPrefix: 'homeassistant',
      cameras: ['a'],
      audio: false,
    });
  });

  it('reads the board name from the device tree file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'perch-board-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, 'model'), 'Raspberry Pi 4 Model B Rev 1.5\0');
    expect(detectBoard(join(dir, 'model'))).toBe('Raspberry Pi 4 Model B Rev 1.5');
    expect(detectBoard(join(dir, 'missing'))).toMatch(/^\w+ \w+$/);
  });
});

describe('DiscoveryPublisher with Mosquitto', () => {
  it('publishes one retained discovery message that a second client sees with every component', async () => {
    const w = await world();
    await w.publisher().start();
    const payload = await retainedDiscovery(w.topic);
    expect(payload.dev.ids).toEqual([`perch_${w.opts.deviceId}`]);
    expect(payload.availability[0]!.topic).toBe(`${w.base}/perch/status`);
    for (const cid of [
      ...CAMERA_COMPONENTS('porch'),
      ...CAMERA_COMPONENTS('back-yard'),
      'transcript',
      'answer',
      'ask',
      'listening',
      'watching',
      'status',
      'queue',
    ]) {
      expect(payload.cmps[cid], cid).toBeDefined();
      expect(payload.cmps[cid]!.unique_id).toBe(`perch_${w.opts.deviceId}_${cid}`);
    }
    expect(payload.cmps.cam_porch_snapshot).toMatchObject({
      p: 'image',
      image_topic: `${w.base}/perch/camera/porch/snapshot`,
    });
    expect(payload.cmps.ask).toMatchObject({ command_topic: `${w.base}/perch/ask/text` });
  });

  it('republishes when Home Assistant announces online, not on offline', async () => {
    const w = await world(['porch']);
    const publisher = w.publisher();
    // The daemon's connection subscribes to the status topic and forwards messages.
    const handled: boolean[] = [];
    const forwards: Array<Promise<boolean>> = [];
    w.pub.on('message', (topic, payload) => {
      forwards.push(
        publisher.handleMessage(topic, payload).then((h) => {
          handled.push(h);
          return h;
        }),
      );
    });
    await w.pub.subscribeAsync(publisher.subscriptions, { qos: 1 });
    await publisher.start();

    const watcher = await client();
    const first = nextMessage(watcher, w.topic);
    await watcher.subscribeAsync(w.topic, { qos: 1 });
    await first;

    const ha = await client();
    const offline = nextMessage(watcher, w.topic, 700);
    await ha.publishAsync(w.haStatusTopic, 'offline', { qos: 1 });
    await expect(offline).rejects.toThrow('no message');

    const again = nextMessage(watcher, w.topic);
    await ha.publishAsync(w.haStatusTopic, 'online', { qos: 1 });
    const payload = JSON.parse((await again).toString('utf8')) as DiscoveryPayload;
    expect(Object.keys(payload.cmps)).toContain('cam_porch_caption');
    await Promise.all(forwards);
    expect(handled).toEqual([true, true]);
    await expect(publisher.handleMessage(`${w.base}/other`, 'online')).resolves.toBe(false);
  });

  it('removes the components of a camera taken out of the config, and forgets the tombstones once Home Assistant restarts', async () => {
    const w = await world(['porch', 'garage']);
    await w.publisher().start();
    // Restart with the garage camera gone from the config (same state dir).
    const publisher = w.publisher({ ...w.opts, cameras: ['porch'] });
    await publisher.start();

    let payload = await retainedDiscovery(w.topic);
    for (const cid of CAMERA_COMPONENTS('garage')) {
      expect(payload.cmps[cid], cid).toEqual({
        p: cid.endsWith('snapshot')
          ? 'image'
          : cid.endsWith('motion')
            ? 'binary_sensor'
            : cid.endsWith('event')
              ? 'event'
              : 'sensor',
      });
    }
    expect(payload.cmps.cam_porch_caption).toMatchObject({
      p: 'sensor',
      state_topic: `${w.base}/perch/camera/porch/caption`,
    });
    const state = JSON.parse(await readFile(join(w.stateDir, 'homeassistant-discovery.json'), 'utf8')) as {
      components: Record<string, string>;
      tombstones: Record<string, string>;
    };
    expect(Object.keys(state.tombstones).sort()).toEqual(CAMERA_COMPONENTS('garage').sort());
    expect(state.components.cam_garage_caption).toBeUndefined();

    // A later start (Home Assistant may still have been down) keeps removing them.
    await w.publisher({ ...w.opts, cameras: ['porch'] }).start();
    payload = await retainedDiscovery(w.topic);
    expect(payload.cmps.cam_garage_caption).toEqual({ p: 'sensor' });

    // Home Assistant's birth: it has read the retained message, so the tombstones can go.
    await publisher.handleMessage(w.haStatusTopic, Buffer.from('online'));
    payload = await retainedDiscovery(w.topic);
    expect(payload.cmps.cam_garage_caption).toBeUndefined();
    expect(payload.cmps.cam_porch_caption).toBeDefined();
  });

  it('removeAll leaves no retained discovery for the device and forgets the state', async () => {
    const w = await world(['porch']);
    const publisher = w.publisher();
    await publisher.start();
    expect(await retained(w.topic)).toHaveLength(1);
    await publisher.removeAll();
    expect(await retained(w.topic)).toHaveLength(0);
    expect(existsSync(join(w.stateDir, 'homeassistant-discovery.json'))).toBe(false);
  });

  it('clears the old device when the device id changes, and haRemove finds topics from the state file', async () => {
    const w = await world(['porch']);
    await w.publisher().start();
    const renamed = { ...w.opts, deviceId: `${w.opts.deviceId}b` };
    const newTopic = `${w.opts.discoveryPrefix}/device/perch_${renamed.deviceId}/config`;
    await w.publisher(renamed).start();
    expect(await retained(w.topic)).toHaveLength(0);
    expect(await retained(newTopic)).toHaveLength(1);

    // `perch ha remove` run with the old id still clears the device the state file names.
    const cleared = await haRemove(w.publish, {
      discoveryPrefix: w.opts.discoveryPrefix,
      deviceId: w.opts.deviceId,
      stateDir: w.stateDir,
    });
    expect(cleared).toContain(newTopic);
    expect(await retained(newTopic)).toHaveLength(0);
  });
});
