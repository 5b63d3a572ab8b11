/**
 * The daemon with a structured-caption camera and questions about a JPEG held on a topic: the real `perch run`
 * process, a tiny package that can see (random weights), a directory camera and the system Mosquitto. A
 * structured caption is decoded under its schema's token mask and validates on the first attempt; one the mask
 * cannot finish within caption_max_tokens is asked 1 + structured_retries times and then fails with
 * invalid_output and its reason; image_topic questions take the retained JPEG, and refuse an empty topic or a
 * payload that is not a JPEG.
 */
import { rmSync } from 'node:fs';
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { tempRoot } from './engine-helpers.js';
import type { Received } from './mqtt-helpers.js';
import { BROKER, frame, makeSeeingPackage, startSeeingDaemon } from './seeing-helpers.js';

let root: string;
let pkg: string;
const cleanups: Array<() => Promise<void> | void> = [];

beforeAll(async () => {
  root = tempRoot('seeing-structured');
  pkg = await makeSeeingPackage(root);
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const json = (m: Received): unknown => JSON.parse(m.payload.toString());

describe('perch run with structured captions and image_topic questions', () => {
  it('decodes a structured caption under the schema: valid on the first attempt, even with random weights', async () => {
    const schema = {
      type: 'object',
      properties: {
        people: { type: 'integer', minimum: 0, maximum: 9 },
        vehicle: { type: 'string', enum: ['car', 'bike', 'none'] },
        summary: { type: 'string', maxLength: 16 },
      },
      required: ['people', 'vehicle', 'summary'],
    };
    const { daemon, captions, waitForEnd } = await startSeeingDaemon(cleanups, {
      modelDir: pkg,
      endTimeoutMs: 60_000,
      // Room for the longest valid object: 16 summary characters may take 4 byte tokens each.
      camera: { caption_max_tokens: 160, structured: schema, structured_retries: 2 },
    });
    await waitForEnd();
    const made = captions().filter((c) => c.data !== undefined);
    expect(made.length).toBeGreaterThan(0);
    for (const c of made) {
      expect(c.attempts).toBe(1);
      expect(Object.keys(c.data as object)).toEqual(['people', 'vehicle', 'summary']);
      expect(['car', 'bike', 'none']).toContain((c.data as { vehicle: string }).vehicle);
      expect(JSON.parse(c.text as string)).toEqual(c.data);
    }
    expect(daemon.log()).not.toContain('structured caption invalid');
  }, 120_000);

  it('retries an invalid structured caption, then publishes invalid_output; answers about a retained JPEG', async () => {
    const { topicRoot, daemon, watcher, events, captions, waitForEnd } = await startSeeingDaemon(cleanups, {
      modelDir: pkg,
      endTimeoutMs: 60_000,
      camera: {
        caption_max_tokens: 8,
        structured: {
          type: 'object',
          properties: { people: { type: 'integer' }, summary: { type: 'string' } },
          required: ['people', 'summary'],
        },
        structured_retries: 2,
      },
    });
    await waitForEnd();

    const end = events().find((e) => e.type === 'end')!;
    expect(end.caption_error).toMatchObject({
      code: 'invalid_output',
      message: expect.stringMatching(/after 3 attempts/),
    });
    const failed = captions().find((c) => c.stage === 'end')!;
    expect(failed).toMatchObject({
      text: null,
      error_code: 'invalid_output',
      attempts: 3,
      reason: expect.stringMatching(/no valid structured caption after 3 attempts: /),
    });
    expect(failed.data).toBeUndefined();
    // The model really was asked three times for that caption: one log line per invalid reply.
    const invalid = daemon
      .log()
      .split('\n')
      .filter((l) => l.includes('structured caption invalid') && l.includes(failed.id))
      .map((l) => (JSON.parse(l) as { attempt: number }).attempt);
    expect(invalid).toEqual([1, 2, 3]);

    // Questions about the JPEG retained on another topic (like another camera's snapshot).
    const held = `${topicRoot}-elsewhere/camera/gate/snapshot`;
    const pub = await mqtt.connectAsync(BROKER, { protocolVersion: 4 });
    cleanups.push(async () => {
      // Clear the retained test payloads from the system broker.
      await pub.publishAsync(held, Buffer.alloc(0), { qos: 1, retain: true });
      await pub.publishAsync(`${held}-text`, Buffer.alloc(0), { qos: 1, retain: true });
      await pub.endAsync();
    });
    await pub.publishAsync(held, frame(2), { qos: 1, retain: true });
    await pub.publishAsync(`${held}-text`, Buffer.from('not a picture'), { qos: 1, retain: true });
    const ask = async (body: Record<string, unknown>): Promise<Record<string, unknown>> => {
      const reply = `${topicRoot}/answer/${String(body.id)}`;
      await pub.publishAsync(`${topicRoot}/ask`, JSON.stringify({ ...body, reply_to: reply }), { qos: 1 });
      await watcher.waitFor((m) => m.some((x) => x.topic === reply), 20_000);
      return json(watcher.on(reply)[0]!) as Record<string, unknown>;
    };
    const ok = await ask({ id: 'q-held', text: 'Who is at the gate?', image_topic: held, seed: 1, max_tokens: 3 });
    expect(ok).toMatchObject({ id: 'q-held', finish_reason: expect.any(String) });
    // The image went into the prompt: its soft tokens (at least 66 for this frame) and the vision encoder's time.
    expect((ok.tokens as { prompt: number }).prompt).toBeGreaterThan(66);
    expect((ok.latency_ms as Record<string, number>).vision).toBeGreaterThanOrEqual(0);

    const empty = await ask({ id: 'q-empty', text: 'Anything?', image_topic: `${topicRoot}-elsewhere/nothing/here` });
    expect(empty).toMatchObject({
      id: 'q-empty',
      error: { code: 'invalid_request', message: expect.stringMatching(/nothing arrived on .* within 2000 ms/) },
    });
    const notJpeg = await ask({ id: 'q-text', text: 'Anything?', image_topic: `${held}-text` });
    expect(notJpeg).toMatchObject({
      id: 'q-text',
      error: { code: 'invalid_request', message: expect.stringMatching(/is not a JPEG/) },
    });
    const wildcard = await ask({ id: 'q-wild', text: 'Anything?', image_topic: `${topicRoot}-elsewhere/#` });
    expect(wildcard).toMatchObject({
      id: 'q-wild',
      error: { code: 'invalid_request', message: expect.stringMatching(/image_topic/) },
    });
  }, 120_000);
});
