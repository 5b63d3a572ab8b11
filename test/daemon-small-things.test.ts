/**
 * Small things a user hits (issue #11.6), through the real `perch run` and Mosquitto: answers and captions of a
 * random-weights package say so, errors name the topic the request came on, an oversized push-to-talk gets
 * payload_too_large, and no payload can make a log line of more than a few KB.
 */
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DaemonProcess, SAMPLES } from './daemon-helpers.js';
import { Collector, tempDir, uniqueRoot } from './mqtt-helpers.js';
import { BROKER, makeSeeingPackage, startSeeingDaemon } from './seeing-helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
let root: ReturnType<typeof tempDir>;
beforeAll(() => {
  root = tempDir('perch-small-');
});
afterAll(() => root.cleanup());

const json = (b: Buffer): Record<string, unknown> => JSON.parse(b.toString()) as Record<string, unknown>;
/** Largest payload the daemon takes in these tests (mqtt.max_payload_bytes). */
const MAX_PAYLOAD = 262_144;

/** A daemon with no model, a WAV source (so push-to-talk exists) and JSON logs. */
async function startPlainDaemon() {
  const topicRoot = uniqueRoot();
  const tmp = tempDir('perch-small-daemon-');
  const config = {
    device: { id: `small${process.pid}` },
    log: { level: 'debug', format: 'json' },
    daemon: { state_dir: tmp.dir, drain_timeout_ms: 2000, stats_interval_s: 1 },
    mqtt: { url: BROKER, root_topic: topicRoot, keepalive_s: 5, max_payload_bytes: MAX_PAYLOAD },
    homeassistant: { enabled: false },
    model: { dir: path.join(tmp.dir, 'no-model') },
    audio: {
      enabled: true,
      source: { type: 'wav', path: path.join(SAMPLES, 'speech.wav'), realtime: true, loop: true },
    },
  };
  const watcher = await Collector.connect(BROKER, [`${topicRoot}/#`]);
  const daemon = DaemonProcess.start(tmp.dir, config);
  cleanups.push(async () => {
    await daemon.kill();
    await watcher.close();
    tmp.cleanup();
  });
  await watcher.waitFor(
    (m) => m.some((x) => x.topic === `${topicRoot}/status` && x.payload.toString() === 'online'),
    20_000,
  );
  return { topicRoot, daemon, watcher };
}

describe('small things a user hits', () => {
  it('errors name the topic the request came on; an oversized push-to-talk is payload_too_large; log lines stay short', async () => {
    const { topicRoot, daemon, watcher } = await startPlainDaemon();
    const errors = () => watcher.on(`${topicRoot}/errors`).map((m) => json(m.payload));

    await watcher.client.publishAsync(`${topicRoot}/ask/text`, 'What is in the garden?');
    await watcher.waitFor(() => errors().some((e) => e.code === 'unavailable'));
    expect(errors().find((e) => e.code === 'unavailable')!.topic).toBe(`${topicRoot}/ask/text`);

    await watcher.client.publishAsync(`${topicRoot}/audio/talk`, Buffer.alloc(MAX_PAYLOAD + 1000, 0x41));
    await watcher.waitFor(() => errors().some((e) => e.topic === `${topicRoot}/audio/talk`));
    expect(errors().find((e) => e.topic === `${topicRoot}/audio/talk`)).toMatchObject({ code: 'payload_too_large' });

    // Hostile requests just under and over the limit, full of text that a careless log line would copy.
    const filler = 'x'.repeat(MAX_PAYLOAD - 200);
    await watcher.client.publishAsync(
      `${topicRoot}/ask`,
      JSON.stringify({ id: 'big-1', text: 42, reply_to: filler.slice(0, 3000) }),
    );
    await watcher.client.publishAsync(`${topicRoot}/ask`, JSON.stringify({ id: 'big-3', text: 'hi', [filler]: 1 })); // a field name of 250 KB
    await watcher.client.publishAsync(`${topicRoot}/ask`, `{"id":"big-2","text":"${filler}`);
    // Far over the limit: on MQTT 5 Perch announces its maximum packet size, so the broker drops this one.
    await watcher.client.publishAsync(`${topicRoot}/ask`, Buffer.alloc(1 << 20, 0x7b));
    await watcher.client.publishAsync(`${topicRoot}/listening/set`, filler);
    await watcher.waitFor(() => errors().filter((e) => e.topic === `${topicRoot}/ask`).length >= 3);
    await new Promise((r) => setTimeout(r, 500));
    const longest = Math.max(
      ...daemon
        .log()
        .split('\n')
        .map((l) => l.length),
    );
    expect(longest, 'longest log line').toBeLessThan(4096);
  }, 60_000);

  it('answers and captions from a random-weights package carry random_weights', async () => {
    const modelDir = await makeSeeingPackage(root.dir);
    const { topicRoot, watcher, captions, waitForEnd } = await startSeeingDaemon(cleanups, { modelDir });
    await waitForEnd();
    expect(captions().filter((c) => c.text !== null).length).toBeGreaterThan(0);
    for (const c of captions().filter((x) => x.text !== null)) expect(c.random_weights).toBe(true);

    await watcher.client.publishAsync(`${topicRoot}/ask`, JSON.stringify({ id: 'rw', text: 'Hello?', max_tokens: 4 }));
    await watcher.waitFor(
      (m) => m.some((x) => x.topic === `${topicRoot}/answer` && json(x.payload).id === 'rw'),
      60_000,
    );
    const answer = json(watcher.on(`${topicRoot}/answer`).find((x) => json(x.payload).id === 'rw')!.payload);
    expect(answer.text).toEqual(expect.any(String));
    expect(answer.random_weights).toBe(true);
  }, 120_000);
});
