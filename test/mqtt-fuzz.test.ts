/**
 * Fuzzing the request interface (issue #11, point 7): generated requests, with hostile reply topics,
 * image topics, texts and garbage payloads, thrown at the real `perch run` on a real Mosquitto.
 * Properties: every request gets exactly one error on `<root>/errors` (there is no model, so even a valid
 * request ends as `unavailable`) and at most one reply; Perch never loses its connection; a normal
 * request still gets its reply afterwards. Deterministic (fixed seed) and bounded in count and time.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import mqtt, { type MqttClient } from 'mqtt';
import path from 'node:path';
import { DaemonProcess } from './daemon-helpers.js';
import { Collector, Mosquitto, tempDir } from './mqtt-helpers.js';

const SEED = 20_251_101;
/** Batches (property runs) and requests per batch: up to 800 requests in all, about 400 on this seed. */
const RUNS = 20;
const MAX_BATCH = 40;
/** The whole property stops here, well inside the test timeout. */
const TIME_LIMIT_MS = 60_000;
const REPLY_WAIT_MS = 15_000;

/** Characters that have broken MQTT stacks: control, DEL, C1, noncharacters, lone surrogates, wildcards. */
const HOSTILE = [
  '\u0000',
  '\u0001',
  '\t',
  '\n',
  '\u001f',
  '\u007f',
  '\u0085',
  '\u009f',
  '\ufdd0',
  '\ufffe',
  '\uffff',
  '\u{1fffe}',
  '\u{10ffff}',
  '\ud800',
  '\udfff',
  '\ufeff',
  '+',
  '#',
  '$',
  '/',
  ' ',
  'é',
  '😀',
];
const topicish = fc.string({
  unit: fc.oneof(
    { weight: 1, arbitrary: fc.constantFrom(...HOSTILE) },
    { weight: 3, arbitrary: fc.constantFrom('a', 'b', 'x', '1', '/') },
  ),
  maxLength: 12,
});
/** Prefixes that aim at places replies must not reach, or at ordinary ones. */
const aimed = fc
  .tuple(fc.constantFrom('', 'fuzz/', 'perch/', 'perch/other/', 'homeassistant/', '$SYS/', 'PREFIX'), topicish)
  .map(([p, t]) => p + t);

type Req =
  | { kind: 'json'; body: Record<string, unknown>; responseTopic?: string }
  | { kind: 'garbage'; payload: Uint8Array };

const jsonReq: fc.Arbitrary<Req> = fc
  .record(
    {
      text: fc.oneof(fc.string({ maxLength: 30 }), fc.string({ unit: 'binary', maxLength: 10 }), fc.constant('')),
      reply_to: aimed,
      image_topic: aimed,
      camera: fc.constantFrom('yard', 'NOPE', ''),
      max_tokens: fc.oneof(fc.integer({ min: -5, max: 10_000 }), fc.constant('8')),
      junk: fc.string({ maxLength: 5 }),
    },
    { requiredKeys: ['text'] },
  )
  .chain((body) =>
    // MQTT 5 responseTopic: only strings the client library can send (the broker drops the client otherwise).
    fc
      .option(fc.constantFrom('fuzz/r', 'perch/other/answer', 'homeassistant/status', '$SYS/x', 'PREFIX/x'), {
        nil: undefined,
      })
      .map((responseTopic) => ({ kind: 'json' as const, body, responseTopic })),
  );
const garbage: fc.Arbitrary<Req> = fc
  .uint8Array({ minLength: 1, maxLength: 64 })
  .map((payload) => ({ kind: 'garbage' as const, payload }));
const batch = fc.array(fc.oneof({ weight: 5, arbitrary: jsonReq }, { weight: 1, arbitrary: garbage }), {
  minLength: 1,
  maxLength: MAX_BATCH,
});

let broker: Mosquitto;
let daemon: DaemonProcess;
let watcher: Collector;
let client: MqttClient;
let tmp: { dir: string; cleanup(): void };
const id = `fz${process.pid}`;
const root = `perch/${id}`;

beforeAll(async () => {
  broker = await Mosquitto.start();
  tmp = tempDir('perch-fuzz-');
  // A private broker: the watcher can take everything, wherever a generated reply topic points.
  watcher = await Collector.connect(broker.url, ['#']);
  daemon = DaemonProcess.start(tmp.dir, {
    device: { id, name: 'Perch fuzz' },
    log: { level: 'info', format: 'json' },
    daemon: { state_dir: tmp.dir, drain_timeout_ms: 1000, stats_interval_s: 5 },
    mqtt: { url: broker.url, keepalive_s: 5, reconnect_min_ms: 200, reconnect_max_ms: 1000, max_payload_bytes: 4096 },
    model: { dir: path.join(tmp.dir, 'no-model') },
    audio: { enabled: false },
    cameras: [],
  });
  client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  await watcher.waitFor(
    (m) => m.some((x) => x.topic === `${root}/status` && x.payload.toString() === 'online'),
    20_000,
  );
});
afterAll(async () => {
  await client?.endAsync(true);
  await daemon?.kill();
  await watcher?.close();
  await broker?.close();
  tmp?.cleanup();
});

const json = (b: Buffer): Record<string, unknown> | undefined => {
  try {
    return JSON.parse(b.toString()) as Record<string, unknown>;
  } catch {
    return undefined;
  }
};
const errors = () => watcher.on(`${root}/errors`).map((x) => json(x.payload)!);
/** Final replies (answers or error replies, not stream chunks or the errors topic) carrying `rid`. */
const repliesTo = (rid: string) =>
  watcher.messages
    .filter((m) => m.topic !== `${root}/errors` && m.topic !== `${root}/answer/stream`)
    .map((m) => json(m.payload))
    .filter((b) => b?.id === rid && ('error' in b || 'finish_reason' in b));

describe('fuzzing perch run over MQTT', () => {
  it('answers every generated request exactly once and stays connected', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(batch, async (reqs) => {
        const ids: string[] = [];
        const garbageBefore = errors().filter((e) => e.id === undefined).length;
        let garbageSent = 0;
        for (const r of reqs) {
          if (r.kind === 'garbage') {
            // Valid JSON objects without an id are not garbage; a leading 0xff byte makes sure of it.
            await client.publishAsync(`${root}/ask`, Buffer.concat([Buffer.from([0xff]), r.payload]), { qos: 1 });
            garbageSent++;
            continue;
          }
          const rid = `fz-${n++}`;
          ids.push(rid);
          const body = JSON.stringify({ ...r.body, id: rid }).replaceAll('PREFIX', `${root}/`);
          const props = r.responseTopic ? { responseTopic: r.responseTopic.replace('PREFIX/', `${root}/`) } : undefined;
          await client.publishAsync(`${root}/ask`, body, { qos: 1, ...(props ? { properties: props } : {}) });
        }
        const settled = () =>
          ids.every((rid) => errors().some((e) => e.id === rid)) &&
          errors().filter((e) => e.id === undefined).length >= garbageBefore + garbageSent;
        await watcher.waitFor(settled, REPLY_WAIT_MS);
        await new Promise((r) => setTimeout(r, 200)); // room for a duplicate to show up
        for (const rid of ids) {
          expect(
            errors().filter((e) => e.id === rid),
            rid,
          ).toHaveLength(1);
          expect(repliesTo(rid).length, rid).toBeLessThanOrEqual(1);
        }
        expect(errors().filter((e) => e.id === undefined)).toHaveLength(garbageBefore + garbageSent);
        expect(watcher.on(`${root}/status`).map((x) => x.payload.toString())).not.toContain('offline');
      }),
      { seed: SEED, numRuns: RUNS, interruptAfterTimeLimit: TIME_LIMIT_MS, endOnFailure: true },
    );
    expect(n).toBeGreaterThan(0);
    expect(daemon.child.exitCode).toBeNull();
    expect(daemon.log()).not.toMatch(/connection to broker lost/);
    // A normal request still works.
    await client.publishAsync(
      `${root}/ask`,
      JSON.stringify({ id: 'fz-final', text: 'Hello?', reply_to: 'fuzz/final' }),
      { qos: 1 },
    );
    await watcher.waitFor(() => watcher.on('fuzz/final').length === 1, REPLY_WAIT_MS);
    expect(json(watcher.on('fuzz/final')[0]!.payload)).toMatchObject({
      id: 'fz-final',
      error: { code: 'unavailable' },
    });
  }, 120_000);
});
