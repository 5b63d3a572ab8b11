/**
 * The daemon sees: the real `perch run` process with a tiny package that has a vision encoder, an image
 * directory camera and the system Mosquitto. Camera events carry captions; captions come with the JPEG they
 * describe as the retained snapshot; questions about a camera's frame are answered; a corrupt image gets an
 * error and the daemon keeps serving; when the model is busy past the caption deadline the event says why.
 */
import { rmSync } from 'node:fs';
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cameraSettings } from '../src/config/schema.js';
import { statsSchema } from '../src/mqtt/messages.js';
import { captionBudget } from '../src/pipelines/seeing.js';
import { makeTinyPackage, tempRoot } from './engine-helpers.js';
import { Collector, type Received } from './mqtt-helpers.js';
import { BROKER, frame, makeSeeingPackage, startSeeingDaemon } from './seeing-helpers.js';

let root: string;
let pkg: string;
const cleanups: Array<() => Promise<void> | void> = [];

beforeAll(async () => {
  root = tempRoot('seeing');
  pkg = await makeSeeingPackage(root);
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** The yard-camera daemon on this file's package (or `modelDir`). */
function startDaemon(over: { scheduler?: Record<string, unknown>; imageTokens?: number; modelDir?: string } = {}) {
  return startSeeingDaemon(cleanups, {
    modelDir: over.modelDir ?? pkg,
    ...(over.scheduler ? { scheduler: over.scheduler } : {}),
    ...(over.imageTokens ? { camera: { image_tokens: over.imageTokens } } : {}),
  });
}

const json = (m: Received): unknown => JSON.parse(m.payload.toString());

describe('perch run sees', () => {
  it('captions a motion event (early and final), puts the caption into the event, answers about the camera, refuses a corrupt image', async () => {
    const { topicRoot, t, watcher, events, captions, waitForEnd } = await startDaemon();
    await waitForEnd();
    const evs = events();
    const first = evs[0]!;
    expect(first.type).toBe('new');
    expect(first.caption).toBeUndefined();
    const end = evs.find((e) => e.type === 'end')!;
    expect(end.id).toBe(first.id);
    expect(typeof end.caption).toBe('string');
    expect(end.caption_error).toBeUndefined();

    const final = captions().find((c) => c.stage === 'end')!;
    expect(final).toMatchObject({
      v: 1,
      camera: 'yard',
      event_id: first.id,
      image_tokens: 66,
      width: 528,
      height: 288,
      snapshot_topic: `${t}/snapshot`,
    });
    expect(final.text).toBe(end.caption);
    for (const k of ['queue', 'vision', 'prefill', 'decode', 'total'])
      expect(final.latency_ms[k]).toBeGreaterThanOrEqual(0);
    // Every caption attempt went out; the early one may have been replaced in the queue by the final one.
    expect(captions().every((c) => c.event_id === first.id && typeof c.text === 'string')).toBe(true);

    // The described JPEG is the retained snapshot: the periodic snapshot only fires once an hour here, so
    // the later snapshots are the captioned frames, each one of the sample frames.
    const snaps = watcher.on(`${t}/snapshot`);
    expect(snaps.length).toBeGreaterThanOrEqual(2);
    const samples = [1, 2, 3, 4, 5, 6].map(frame);
    expect(samples.some((s) => s.equals(snaps.at(-1)!.payload))).toBe(true);
    expect(snaps.at(-1)!.packet.retain).toBe(false); // live delivery; retained for late subscribers:
    const late = await Collector.connect(BROKER, [`${t}/snapshot`]);
    await late.waitFor((m) => m.length > 0);
    expect(late.messages[0]!.payload.equals(snaps.at(-1)!.payload)).toBe(true);
    await late.close();

    // A question about the camera's latest frame, then a corrupt image (error), then the daemon still answers.
    const ask = async (body: Record<string, unknown>): Promise<Record<string, unknown>> => {
      const reply = `${topicRoot}/answer/${String(body.id)}`;
      const c = await mqtt.connectAsync(BROKER, { protocolVersion: 4 });
      await c.publishAsync(`${topicRoot}/ask`, JSON.stringify({ ...body, reply_to: reply }), { qos: 1 });
      await c.endAsync();
      await watcher.waitFor((m) => m.some((x) => x.topic === reply), 20_000);
      return json(watcher.on(reply)[0]!) as Record<string, unknown>;
    };
    const cam = await ask({ id: 'q-cam', text: 'What is in the yard?', camera: 'yard', seed: 3, max_tokens: 4 });
    expect(cam).toMatchObject({ id: 'q-cam', camera: 'yard', tokens: { prompt: expect.any(Number) } });
    expect((cam.tokens as { prompt: number }).prompt).toBeGreaterThan(66);
    expect((cam.latency_ms as Record<string, number>).vision).toBeGreaterThanOrEqual(0);

    const corrupt = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(120, 3)]).toString('base64');
    const bad = await ask({ id: 'q-bad', text: 'And this?', image: corrupt });
    expect(bad).toMatchObject({
      id: 'q-bad',
      error: { code: 'invalid_request', message: expect.stringMatching(/^image: cannot decode image/) },
    });
    const after = await ask({
      id: 'q-after',
      text: 'Still there?',
      image: frame(2).toString('base64'),
      seed: 1,
      max_tokens: 3,
    });
    expect(after).toMatchObject({ id: 'q-after', finish_reason: expect.any(String) });

    await watcher.waitFor((m) =>
      m.some((x) => x.topic === `${topicRoot}/stats` && (statsSchema.parse(json(x)).captions?.yard?.made ?? 0) >= 1),
    );
  }, 90_000);

  it('when the model is busy past the caption deadline, the event ends without a caption and says why', async () => {
    const { topicRoot, events, captions, watcher, waitForEnd } = await startDaemon({
      scheduler: { caption_deadline_ms: 100 },
    });
    // Keep the model busy: questions about an image (each one encodes the image), three in flight at all
    // times; answers outrank captions, so a caption never starts within 100 ms.
    const flood = await mqtt.connectAsync(BROKER, { protocolVersion: 4 });
    const reply = `${topicRoot}/answer/flood`;
    const image = frame(3).toString('base64');
    let n = 0;
    let stop = false;
    const next = (): void =>
      void flood.publishAsync(
        `${topicRoot}/ask`,
        JSON.stringify({ id: `f${n++}`, text: 'Describe it.', image, max_tokens: 8, reply_to: reply }),
        { qos: 1 },
      );
    flood.on('message', () => !stop && next());
    await flood.subscribeAsync(reply, { qos: 1 });
    cleanups.push(async () => {
      stop = true;
      await flood.endAsync(true);
    });
    next();
    next();
    next();

    // On a loaded machine the six frames can come with a pause long enough to end the event and start another:
    // then the second event's early caption takes the first end's place in the queue (said as such), and the
    // second event's end is the one that meets the deadline. Either way an end comes without a caption.
    const deadlineEnd = () => events().find((e) => e.type === 'end' && e.caption_error?.code === 'deadline');
    await waitForEnd();
    await watcher.waitFor(() => deadlineEnd() !== undefined, 40_000);
    stop = true;
    const end = deadlineEnd()!;
    expect(end.caption).toBeUndefined();
    expect(end.caption_error).toMatchObject({
      code: 'deadline',
      message: expect.stringMatching(/not started within 100 ms.*busy with answer job/),
    });
    for (const e of events().filter((x) => x.type === 'end')) {
      expect(e.caption).toBeUndefined();
      expect(
        e.caption_error?.code === 'deadline' ||
          e.caption_error?.message === 'a newer frame of this camera replaced it in the queue',
      ).toBe(true);
    }
    const failed = captions().filter((c) => c.text === null && c.event_id === end.id && c.stage === 'end');
    expect(failed.at(-1)).toMatchObject({
      error_code: 'deadline',
      reason: expect.stringMatching(/not started within 100 ms/),
    });
    await watcher.waitFor((m) =>
      m.some((x) => x.topic === `${topicRoot}/stats` && (statsSchema.parse(json(x)).captions?.yard?.failed ?? 0) >= 1),
    );
  }, 90_000);

  it('with a package that cannot see, events still go out and say why they have no caption', async () => {
    const { dir: blind } = await makeTinyPackage(root, 'blind');
    const { captions, events, watcher, topicRoot, waitForEnd } = await startDaemon({ modelDir: blind });
    await waitForEnd();
    const end = events().find((e) => e.type === 'end')!;
    expect(end.caption).toBeUndefined();
    expect(end.caption_error).toMatchObject({
      code: 'unavailable',
      message: expect.stringMatching(/no vision encoder/),
    });
    // No attempts were made, so the caption topic stays quiet.
    expect(captions()).toEqual([]);
    const stats = watcher.on(`${topicRoot}/stats`).map((m) => statsSchema.parse(json(m)));
    expect(stats.at(-1)!.engine.detail).toMatch(/images: no/);
  }, 90_000);
});

describe('caption budgets', () => {
  it('makes the early caption with early_image_tokens (never above image_tokens) and the final one with image_tokens', () => {
    const cam = (over: Record<string, unknown>) =>
      cameraSettings.parse({ name: 'door', source: { type: 'directory', path: '/tmp' }, ...over });
    const defaults = cam({});
    expect([defaults.image_tokens, defaults.early_image_tokens]).toEqual([280, 70]);
    expect(captionBudget(defaults, 'new')).toBe(70);
    expect(captionBudget(defaults, 'end')).toBe(280);
    expect(captionBudget(cam({ image_tokens: 140, early_image_tokens: 560 }), 'new')).toBe(140);
    expect(captionBudget(cam({ image_tokens: 1120, early_image_tokens: 140 }), 'new')).toBe(140);
    expect(() => cam({ early_image_tokens: 100 })).toThrow();
  });
});
