/**
 * Spoken conversations through the real hearing pipeline: push-to-talk on <root>/audio/talk and the
 * follow-up window. Real WavSource, segmenter, scheduler, a tiny package that can hear, the system
 * Mosquitto under a unique root; a separate client presses the button and checks what arrives.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { segmenterSettingsSchema } from '../src/config/segmenter-settings.js';
import { segment } from '../src/audio/segment-clip.js';
import { actionsSettings, mqttSettings, schedulerSettings } from '../src/config/schema.js';
import type { GenerationRequest } from '../src/engine/types.js';
import { Actions } from '../src/pipelines/actions.js';
import { Transcriber } from '../src/engine/transcriber.js';
import { silentLogger } from '../src/common/log.js';
import { MqttConnection } from '../src/mqtt/connection.js';
import { HearingPublisher } from '../src/mqtt/hearing-publisher.js';
import { answerSchema, errorMessageSchema, transcriptSchema } from '../src/mqtt/messages.js';
import { conversationPrompt, parseTalk, QUESTION_PROMPT } from '../src/pipelines/conversation.js';
import { HearingPipeline, type HearingOptions } from '../src/pipelines/hearing.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { WavSource } from '../src/sources/wav.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';
import { recordingEngine, startAnswerEngine, tempRoot } from './engine-helpers.js';
import { Collector, uniqueRoot } from './mqtt-helpers.js';
import { SPEECH_WAV, makeHearingPackage, phraseSamples } from './transcribe-helpers.js';

const BROKER = 'mqtt://127.0.0.1:1883';
let root: string;
let pkg: string;
let transcriber: Transcriber;
/** speech.wav, 2 s of silence, phrase 1, 1 s of silence: two utterances, one right after the other. */
let twoUtterances: string;
const cleanups: Array<() => unknown> = [];

/** 16 kHz mono 16-bit PCM WAV. */
function writeWav(path: string, samples: Int16Array): void {
  const data = Buffer.from(samples.buffer, samples.byteOffset, samples.byteLength);
  const h = Buffer.alloc(44);
  h.write('RIFF', 0, 'latin1');
  h.writeUInt32LE(36 + data.length, 4);
  h.write('WAVEfmt ', 8, 'latin1');
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20);
  h.writeUInt16LE(1, 22);
  h.writeUInt32LE(16_000, 24);
  h.writeUInt32LE(32_000, 28);
  h.writeUInt16LE(2, 32);
  h.writeUInt16LE(16, 34);
  h.write('data', 36, 'latin1');
  h.writeUInt32LE(data.length, 40);
  writeFileSync(path, Buffer.concat([h, data]));
}

beforeAll(async () => {
  root = tempRoot('conversation');
  const dir = await makeHearingPackage(root);
  pkg = dir;
  transcriber = await Transcriber.load(dir, { threads: 1, contextTokens: 1024, pleCacheMb: 1 });
  const a = wavTo16kMono(readFileSync(SPEECH_WAV)).samples;
  const b = phraseSamples(1);
  const all = new Int16Array(a.length + 32_000 + b.length + 16_000);
  all.set(a, 0);
  all.set(b, a.length + 32_000);
  twoUtterances = join(root, 'two.wav');
  writeWav(twoUtterances, all);
}, 180_000);
afterAll(async () => {
  await transcriber?.close();
  rmSync(root, { recursive: true, force: true });
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function rig(wav: string, hearingOpts: Omit<HearingOptions, 'scheduler'> = {}) {
  const rootTopic = uniqueRoot();
  const conn = new MqttConnection({
    settings: mqttSettings.parse({ url: BROKER, root_topic: rootTopic, client_id: `perch-${randomUUID()}` }),
    deviceId: 'test',
  });
  cleanups.push(() => conn.stop({ offline: false }));
  await conn.start();
  expect(await conn.waitConnected(5000)).toBe(true);
  const collector = await Collector.connect(BROKER, [
    `${rootTopic}/audio/transcript`,
    `${rootTopic}/errors`,
    `${rootTopic}/answer`,
  ]);
  cleanups.push(() => collector.close());
  const scheduler = new Scheduler(schedulerSettings.parse({}), silentLogger);
  const source = new WavSource(
    { type: 'wav', path: wav, realtime: false, loop: false, restart_min_ms: 1000, restart_max_ms: 60000 },
    silentLogger,
  );
  const hearing = new HearingPipeline(
    new HearingPublisher(conn),
    source,
    segmenterSettingsSchema.parse({}),
    silentLogger,
    {
      scheduler,
      transcriber: () => transcriber,
      maxTokens: 8,
      answerMaxTokens: 5,
      ...hearingOpts,
    },
  );
  await hearing.start();
  cleanups.push(() => hearing.stop());
  // Subscriptions go out in order on one connection: once this one delivers, the pipeline's is in place.
  const marker = `${rootTopic}/test/marker`;
  const seen = new Promise<void>((resolve) => conn.subscribe(marker, () => resolve()));
  for (let i = 0; i < 50; i++) {
    await conn.publish(marker, 'x', { qos: 1 });
    if (await Promise.race([seen.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 100))]))
      break;
  }
  const topics = conn.topics;
  const play = async (): Promise<void> => {
    const ended = new Promise<void>((resolve) => source.once('end', () => resolve()));
    await source.start();
    await ended;
    await source.stop();
    await hearing.pause();
    await hearing.settled();
  };
  const talk = (payload: string): Promise<unknown> => collector.client.publishAsync(topics.talk, payload, { qos: 1 });
  const sync = async (): Promise<void> => {
    const m = `${topics.answer}/marker`;
    await collector.client.subscribeAsync(m, { qos: 1 });
    await conn.publish(m, 'x', { qos: 1 });
    await collector.waitFor((ms) => ms.some((x) => x.topic === m));
  };
  /** Waits until the pipeline has seen the talk message: it is the only thing that arms it. */
  const waitArmed = async (): Promise<void> => {
    const deadline = Date.now() + 5000;
    while (!hearing.talkArmed()) {
      if (Date.now() > deadline) throw new Error('push-to-talk never arrived');
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return { hearing, collector, topics, play, talk, sync, waitArmed };
}

const json = (b: Buffer): unknown => JSON.parse(b.toString('utf8'));

describe('push-to-talk and payloads', () => {
  it('parses any payload, or a JSON object with a valid id', () => {
    expect(parseTalk(Buffer.from('PRESS'))).toEqual({ ok: true });
    expect(parseTalk(Buffer.from(''))).toEqual({ ok: true });
    expect(parseTalk(Buffer.from('{"id":"q-1"}'))).toEqual({ ok: true, id: 'q-1' });
    expect(parseTalk(Buffer.from('{}'))).toEqual({ ok: true });
    expect(parseTalk(Buffer.from('{"id":"has space"}')).ok).toBe(false);
    expect(parseTalk(Buffer.from('{"id":5}')).ok).toBe(false);
    expect(parseTalk(Buffer.from('{nope')).ok).toBe(false);
  });

  it('puts earlier exchanges into the instruction, and leaves it as it is without them', () => {
    expect(conversationPrompt(QUESTION_PROMPT, [])).toBe(QUESTION_PROMPT);
    const p = conversationPrompt(QUESTION_PROMPT, [{ question: 'Is it raining?', answer: 'No.' }]);
    expect(p).toContain('"Is it raining?"');
    expect(p).toContain('"No."');
    expect(p.endsWith(QUESTION_PROMPT)).toBe(true);
  });

  it('answers the utterance after a push-to-talk message, transcript and answer under the id it named', async () => {
    const { hearing, collector, topics, play, talk, waitArmed } = await rig(SPEECH_WAV, { followUpS: 0 });
    await talk(JSON.stringify({ id: 'ptt-42' }));
    await waitArmed();
    await play();
    await collector.waitFor(
      (m) => m.some((x) => x.topic === topics.answer) && m.some((x) => x.topic === topics.transcript),
    );
    const t = transcriptSchema.parse(json(collector.on(topics.transcript)[0]!.payload));
    const a = answerSchema.parse(json(collector.on(topics.answer)[0]!.payload));
    expect(t).toMatchObject({ id: 'ptt-42', question: 'talk' });
    expect(t.wake).toBeUndefined();
    expect(a.id).toBe('ptt-42');
    // Answered from the audio with the plain question instruction.
    const clip = (await segment(wavTo16kMono(readFileSync(SPEECH_WAV)).samples))[0]!;
    expect(a.text).toBe((await transcriber.answer(clip.samples, { prompt: QUESTION_PROMPT, maxTokens: 5 })).text);
    expect(hearing.stats()).toMatchObject({ transcripts: 1, questions: 1 });
  }, 120_000);

  it('with actions on, answers from the transcript with the actions as tools', async () => {
    const engine = await startAnswerEngine(pkg);
    cleanups.push(() => engine.close());
    const requests: GenerationRequest[] = [];
    const seen = recordingEngine(engine, requests);
    const actions = new Actions({
      settings: actionsSettings.parse({
        allowed: [
          {
            name: 'set_light',
            description: 'Switch a light',
            parameters: { type: 'object', properties: { on: { type: 'boolean' } } },
            topic: 'lights/set',
            payload: { on: '{on}' },
          },
        ],
      }),
      bus: {
        connected: true,
        publish: async () => undefined,
        subscribe: () => undefined,
        removeOwner: () => undefined,
      },
      recordTopic: 'test/action',
      logger: silentLogger,
    });
    const { collector, topics, play, talk, waitArmed } = await rig(SPEECH_WAV, {
      followUpS: 0,
      actions: { actions, engine: () => seen },
    });
    await talk(JSON.stringify({ id: 'ptt-act' }));
    await waitArmed();
    await play();
    await collector.waitFor((m) => m.some((x) => x.topic === topics.answer));
    const t = transcriptSchema.parse(json(collector.on(topics.transcript)[0]!.payload));
    const a = answerSchema.parse(json(collector.on(topics.answer)[0]!.payload));
    expect(a.id).toBe('ptt-act');
    // One request to the answer engine: the transcript as the question, the action as a tool.
    expect(requests).toHaveLength(1);
    expect(requests[0]!.messages).toEqual([{ role: 'user', content: t.text }]);
    expect(requests[0]!.tools?.map((x) => x.name)).toEqual(['set_light']);
    expect(a.tokens.prompt).toBeGreaterThan(0);
  }, 120_000);

  it('refuses a push-to-talk id that is not a message id, and answers nothing', async () => {
    const { collector, topics, play, talk, sync } = await rig(SPEECH_WAV, { followUpS: 0 });
    await talk('{"id":"no spaces allowed"}');
    await collector.waitFor((m) => m.some((x) => x.topic === topics.errors));
    expect(errorMessageSchema.parse(json(collector.on(topics.errors)[0]!.payload))).toMatchObject({
      code: 'invalid_request',
      topic: topics.talk,
    });
    await play();
    await sync();
    expect(collector.on(topics.transcript)).toHaveLength(1);
    expect(collector.on(topics.answer)).toHaveLength(0);
  }, 120_000);
});

describe('follow-up window', () => {
  it('answers the utterance right after an answered one without the wake phrase, each under its own id', async () => {
    const { hearing, collector, topics, play, talk, waitArmed } = await rig(twoUtterances, { followUpS: 8 });
    await talk('PRESS');
    await waitArmed();
    await play();
    await collector.waitFor(
      (m) =>
        m.filter((x) => x.topic === topics.answer).length === 2 &&
        m.filter((x) => x.topic === topics.transcript).length === 2,
    );
    const ts = collector.on(topics.transcript).map((m) => transcriptSchema.parse(json(m.payload)));
    const as = collector.on(topics.answer).map((m) => answerSchema.parse(json(m.payload)));
    expect(ts.map((t) => t.question)).toEqual(['talk', 'follow_up']);
    expect(as.map((a) => a.id)).toEqual(ts.map((t) => t.id));
    expect(ts[0]!.id).not.toBe(ts[1]!.id);
    // The follow-up is answered from its own audio with the first exchange in the instruction.
    const clips = await segment(wavTo16kMono(readFileSync(twoUtterances)).samples);
    expect(clips).toHaveLength(2);
    const prompt = conversationPrompt(QUESTION_PROMPT, [{ question: ts[0]!.text, answer: as[0]!.text }]);
    expect(as[1]!.text).toBe((await transcriber.answer(clips[1]!.samples, { prompt, maxTokens: 5 })).text);
    expect(hearing.stats()).toMatchObject({ utterances: 2, transcripts: 2, questions: 2 });
  }, 120_000);

  it('answers only the pressed utterance when follow_up_s is 0', async () => {
    const { hearing, collector, topics, play, talk, waitArmed, sync } = await rig(twoUtterances, { followUpS: 0 });
    await talk('PRESS');
    await waitArmed();
    await play();
    await sync();
    const ts = collector.on(topics.transcript).map((m) => transcriptSchema.parse(json(m.payload)));
    expect(ts.map((t) => t.question)).toEqual(['talk', undefined]);
    expect(collector.on(topics.answer).map((m) => answerSchema.parse(json(m.payload)).id)).toEqual([ts[0]!.id]);
    expect(hearing.stats()).toMatchObject({ utterances: 2, transcripts: 2, questions: 1 });
  }, 120_000);
});
