/**
 * Allow-listed actions end to end: the real `perch run` with a tiny random package and a private Mosquitto, an
 * action declared in config for zigbee2mqtt-style lights, and this test playing zigbee2mqtt (it answers each
 * `<device>/set` with the device's state, as zigbee2mqtt does). A question asked with tool_choice required makes
 * the model call the action (decoded under its schema, so even random weights give a valid call): the call is
 * validated, published, its reply taken as the result and folded into the answer, and said on <root>/action.
 * Then the Actions switch, the rate limit, and hostile arguments (directly against the same code).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { silentLogger } from '../src/common/log.js';
import { actionsSettings, perchConfigSchema } from '../src/config/schema.js';
import { actionMessageSchema, answerSchema } from '../src/mqtt/messages.js';
import { type ActionBus, Actions, fillPayload, fillTopic } from '../src/pipelines/actions.js';
import { DaemonProcess, REPO } from './daemon-helpers.js';
import { tempRoot } from './engine-helpers.js';
import { Collector, privateBrokerForFile, tempDir, uniqueRoot } from './mqtt-helpers.js';
import { makeHearingPackage } from './transcribe-helpers.js';

const shared = privateBrokerForFile();
const cleanups: Array<() => unknown> = [];
let root: string;
let z2m: string;
let daemon: DaemonProcess;
let watcher: Collector;
let device: mqtt.MqttClient;

const LIGHT = {
  name: 'set_light',
  description: 'Switch a light on or off',
  parameters: {
    type: 'object',
    properties: {
      device: { type: 'string', enum: ['kitchen', 'hall'] },
      state: { type: 'string', enum: ['ON', 'OFF'] },
    },
    required: ['device', 'state'],
  },
};

beforeAll(async () => {
  const pkg = await makeHearingPackage(tempRoot('actions'));
  root = uniqueRoot();
  z2m = `${root}-z2m`;
  const tmp = tempDir('perch-actions-');
  cleanups.push(() => tmp.cleanup());
  daemon = DaemonProcess.start(tmp.dir, {
    device: { id: `act${Date.now().toString(36)}` },
    log: { level: 'info' },
    daemon: { state_dir: tmp.dir, drain_timeout_ms: 3000 },
    mqtt: { url: shared.broker.url, root_topic: root },
    homeassistant: { enabled: false },
    model: { dir: pkg, threads: 1, context_tokens: 1024, max_answer_tokens: 64 },
    actions: {
      max_per_minute: 3,
      reply_timeout_ms: 3000,
      allowed: [
        {
          ...LIGHT,
          topic: `${z2m}/{device}/set`,
          payload: { state: '{state}' },
          reply_topic: `${z2m}/{device}`,
        },
        {
          name: 'open_garage',
          description: 'Open the garage door',
          parameters: { type: 'object', properties: { seconds: { type: 'integer', minimum: 1, maximum: 60 } } },
          topic: `${z2m}/garage/set`,
          payload: { state: 'OPEN', seconds: '{seconds}' },
          confirm: true,
        },
      ],
    },
  });
  cleanups.push(() => daemon.kill());
  // zigbee2mqtt: a set command is answered with the device's new state.
  device = await mqtt.connectAsync(shared.broker.url);
  await device.subscribeAsync(`${z2m}/+/set`, { qos: 1 });
  device.on('message', (topic, payload) => {
    const name = topic.split('/').at(-2)!;
    const { state } = JSON.parse(payload.toString()) as { state: string };
    void device.publishAsync(`${z2m}/${name}`, JSON.stringify({ state, brightness: 254, linkquality: 80 }), { qos: 1 });
  });
  cleanups.push(() => device.endAsync());
  watcher = await Collector.connect(shared.broker.url, [
    `${root}/answer`,
    `${root}/action`,
    `${root}/actions`,
    `${root}/errors`,
    `${z2m}/#`,
  ]);
  cleanups.push(() => watcher.close());
  await watcher.waitFor((m) => m.some((x) => x.topic === `${root}/actions`), 90_000);
  // Ready when a plain question is answered (not `unavailable` while the model loads).
  for (let n = 0; ; n++) {
    const r = await reply({ id: `warm-${n}`, text: 'hi', max_tokens: 1, tool_choice: 'none' });
    if (!r.error) break;
    if (n > 120) throw new Error(`the model did not load; log:\n${daemon.log()}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}, 180_000);

afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** The answer (or error) to one question. */
async function reply(body: Record<string, unknown>): Promise<{ error?: unknown } & Record<string, unknown>> {
  const c = await mqtt.connectAsync(shared.broker.url);
  await c.publishAsync(`${root}/ask`, JSON.stringify(body), { qos: 1 });
  await c.endAsync();
  await watcher.waitFor(
    (m) => m.some((x) => x.topic === `${root}/answer` && JSON.parse(x.payload.toString()).id === body.id),
    120_000,
  );
  const msg = watcher.on(`${root}/answer`).find((x) => JSON.parse(x.payload.toString()).id === body.id)!;
  return JSON.parse(msg.payload.toString());
}

/** The answer to one question; an error reply fails the test, with the daemon's log. */
async function ask(body: Record<string, unknown>): Promise<ReturnType<typeof answerSchema.parse>> {
  const r = await reply(body);
  if (r.error) throw new Error(`answer error: ${JSON.stringify(r.error)}\n${daemon.log().slice(-3000)}`);
  return answerSchema.parse(r);
}

describe('actions through perch run', () => {
  it('a required call is validated, published to zigbee2mqtt, its reply folded into the answer and said on <root>/action', async () => {
    expect(watcher.on(`${root}/actions`).at(-1)!.payload.toString()).toBe('ON');
    const a = await ask({
      id: 'act-1',
      text: 'Turn on the kitchen light.',
      tool_choice: { name: 'set_light' },
      seed: 7,
    });
    expect(a.actions, JSON.stringify(a)).toHaveLength(1);
    const rec = a.actions![0]!;
    expect(rec).toMatchObject({ name: 'set_light', status: 'done' });
    const { device: name, state } = rec.arguments as { device: string; state: string };
    expect(['kitchen', 'hall']).toContain(name);
    expect(['ON', 'OFF']).toContain(state);
    // Published where its template says, with the payload its template makes.
    expect(rec.topic).toBe(`${z2m}/${name}/set`);
    const set = watcher.on(`${z2m}/${name}/set`);
    expect(set.map((m) => JSON.parse(m.payload.toString()))).toEqual([{ state }]);
    // The device's reply is the result the model read back.
    expect(rec.result).toEqual({ state, brightness: 254, linkquality: 80 });
    // Said on <root>/action with the question's id.
    const said = watcher.on(`${root}/action`).map((m) => actionMessageSchema.parse(JSON.parse(m.payload.toString())));
    expect(said).toEqual([
      expect.objectContaining({ id: 'act-1', name: 'set_light', status: 'done', topic: rec.topic }),
    ]);
    // The model went on after the result: the final answer is a turn of its own.
    expect(['stop', 'length']).toContain(a.finish_reason);
  }, 120_000);

  it('a confirm action waits: nothing published until <root>/action/confirm says yes; a no drops it', async () => {
    const confirm = async (body: unknown): Promise<void> => {
      const c = await mqtt.connectAsync(shared.broker.url);
      await c.publishAsync(`${root}/action/confirm`, JSON.stringify(body), { qos: 1 });
      await c.endAsync();
    };
    const records = () =>
      watcher.on(`${root}/action`).map((m) => actionMessageSchema.parse(JSON.parse(m.payload.toString())));
    const a = await ask({ id: 'gar-1', text: 'Open the garage.', tool_choice: { name: 'open_garage' }, seed: 3 });
    const held = a.actions![0]!;
    expect(held).toMatchObject({
      name: 'open_garage',
      status: 'awaiting_confirmation',
      confirmation: expect.any(String),
    });
    expect(watcher.on(`${z2m}/garage/set`)).toEqual([]);
    await confirm({ confirmation: held.confirmation, confirm: true });
    await watcher.waitFor((m) => m.some((x) => x.topic === `${z2m}/garage/set`));
    const { seconds } = held.arguments as { seconds?: number };
    expect(JSON.parse(watcher.on(`${z2m}/garage/set`)[0]!.payload.toString())).toEqual({
      state: 'OPEN',
      seconds: seconds ?? null,
    });
    await watcher.waitFor((m) => m.filter((x) => x.topic === `${root}/action`).length >= 3);
    expect(records().at(-1)).toMatchObject({ id: 'gar-1', name: 'open_garage', status: 'done' });
    // Once only: a second yes names nothing waiting, and says so on <root>/errors.
    await confirm({ confirmation: held.confirmation, confirm: true });
    const aboutConfirm = () =>
      watcher
        .on(`${root}/errors`)
        .map((m) => JSON.parse(m.payload.toString()))
        .filter((e) => e.topic === `${root}/action/confirm`);
    await watcher.waitFor(() => aboutConfirm().length > 0);
    expect(aboutConfirm()[0]).toMatchObject({
      code: 'invalid_request',
      topic: `${root}/action/confirm`,
      message: expect.stringMatching(/no action waits for confirmation/),
    });
    // A no drops the next one.
    const b = await ask({ id: 'gar-2', text: 'Open it again.', tool_choice: { name: 'open_garage' }, seed: 4 });
    await confirm({ confirmation: b.actions![0]!.confirmation, confirm: false });
    await watcher.waitFor((m) =>
      m.some((x) => x.topic === `${root}/action` && x.payload.toString().includes('"cancelled"')),
    );
    expect(watcher.on(`${z2m}/garage/set`)).toHaveLength(1);
  }, 120_000);

  it('refuses past max_per_minute, and tells the model (the answer still comes)', async () => {
    await ask({ id: 'act-2', text: 'And the hall.', tool_choice: { name: 'set_light' }, seed: 8 });
    const a = await ask({ id: 'act-3', text: 'And again.', tool_choice: { name: 'set_light' }, seed: 9 });
    expect(a.actions![0]).toMatchObject({ status: 'refused', reason: 'more than 3 actions in a minute' });
    expect(watcher.on(`${z2m}/kitchen/set`).length + watcher.on(`${z2m}/hall/set`).length).toBe(2);
  }, 120_000);

  it("Home Assistant's Actions switch turns them off: no tools offered, nothing published", async () => {
    const c = await mqtt.connectAsync(shared.broker.url);
    await c.publishAsync(`${root}/actions/set`, 'OFF', { qos: 1 });
    await c.endAsync();
    await watcher.waitFor(
      (m) =>
        m
          .filter((x) => x.topic === `${root}/actions`)
          .at(-1)
          ?.payload.toString() === 'OFF',
    );
    const before = watcher.on(`${root}/action`).length;
    const a = await ask({ id: 'act-4', text: 'Lights off.', tool_choice: 'required', seed: 10 });
    expect(a.actions).toBeUndefined();
    expect(watcher.on(`${root}/action`)).toHaveLength(before);
  }, 120_000);
});

describe('hostile calls, against the same code with a real broker', () => {
  let client: mqtt.MqttClient;
  let actions: Actions;
  const published: string[] = [];

  beforeAll(async () => {
    client = await mqtt.connectAsync(shared.broker.url);
    const bus: ActionBus = {
      connected: true,
      publish: async (topic, payload) => {
        published.push(topic);
        await client.publishAsync(topic, payload, { qos: 1 });
      },
      subscribe: () => undefined,
      removeOwner: () => undefined,
    };
    actions = new Actions({
      settings: actionsSettings.parse({
        allowed: [
          {
            name: 'set_any',
            description: 'Set a named device',
            parameters: {
              type: 'object',
              properties: { device: { type: 'string' }, level: { type: 'integer' } },
              required: ['device'],
            },
            topic: 'lab/{device}/set',
            payload: { level: '{level}', note: 'for {device}' },
          },
        ],
      }),
      bus,
      recordTopic: `${uniqueRoot()}/action`,
      logger: silentLogger,
    });
  });
  afterAll(() => client.endAsync());

  it.each([
    [{ device: 'kitchen/#' }, /cannot go in a topic/],
    [{ device: '+' }, /cannot go in a topic/],
    [{ device: '../../homeassistant/status' }, /cannot go in a topic/],
    [{ device: '' }, /cannot go in a topic/],
    [{ device: 'x'.repeat(65) }, /cannot go in a topic/],
    [{ device: 'hall', level: 'max' }, /do not match the schema: level/],
    [{ level: 3 }, /do not match the schema: device/],
  ])('refuses %j without publishing', async (args, reason) => {
    const rec = await actions.run({ name: 'set_any', arguments: args }, { id: 'h' });
    expect(rec.status).toBe('refused');
    expect(rec.reason).toMatch(reason);
    expect(published.filter((t) => t.startsWith('lab/'))).toEqual([]);
  });

  it('refuses an action that is not declared', async () => {
    expect((await actions.run({ name: 'open_door', arguments: {} }, { id: 'h' })).reason).toMatch(
      /no action is called "open_door"/,
    );
  });

  it('fills templates with escaped values: JSON payloads stay JSON, typed where a value stands alone', () => {
    expect(fillPayload({ level: '{level}', note: 'for {device}' }, { level: 3, device: 'a"b' })).toBe(
      '{"level":3,"note":"for a\\"b"}',
    );
    expect(fillPayload('{state}', { state: 'ON' })).toBe('ON');
    expect(fillTopic('z2m/{device}/set', { device: 'Living room lamp' })).toBe('z2m/Living room lamp/set');
    expect(() => fillTopic('z2m/{device}/set', { device: 'a/b' })).toThrow(/cannot go in a topic/);
  });
});

describe('actions config', () => {
  it('refuses placeholders that are not parameters, wildcard topics and duplicate names', () => {
    const base = { name: 'a', description: 'd', parameters: { type: 'object', properties: { x: {} } }, payload: 'p' };
    expect(() => actionsSettings.parse({ allowed: [{ ...base, topic: 't/{y}' }] })).toThrow(
      /\{y\} is not one of the parameters/,
    );
    expect(() => actionsSettings.parse({ allowed: [{ ...base, topic: 't/#' }] })).toThrow(/wildcards/);
    expect(() =>
      actionsSettings.parse({
        allowed: [
          { ...base, topic: 't' },
          { ...base, topic: 'u' },
        ],
      }),
    ).toThrow(/duplicate/);
  });
});

describe('docs/actions.md', () => {
  it('its zigbee2mqtt example validates and fills the topics and payload it describes', () => {
    const doc = readFileSync(join(REPO, 'docs', 'actions.md'), 'utf8');
    const yaml = /```yaml\n([\s\S]*?)```/.exec(doc)![1]!;
    const config = perchConfigSchema.parse(parse(yaml));
    const light = config.actions.allowed[0]!;
    const args = { device: 'kitchen', state: 'ON' };
    expect(fillTopic(light.topic, args)).toBe('zigbee2mqtt/kitchen/set');
    expect(fillPayload(light.payload, args)).toBe('{"state":"ON"}');
    expect(fillTopic(light.reply_topic!, args)).toBe('zigbee2mqtt/kitchen');
    expect(doc).toContain('`{"state":"ON"}` to `zigbee2mqtt/kitchen/set`');
    // The confirm example is an entry of the same list.
    const entry = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)][1]![1]!;
    const garage = actionsSettings.parse(parse(`allowed:\n${entry}`)).allowed[0]!;
    expect(garage).toMatchObject({ name: 'open_garage', confirm: true, payload: 'OPEN' });
  });
});
