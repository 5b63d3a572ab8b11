/**
 * The hearing pipeline end to end: a real WavSource on config/samples/speech.wav, the real segmenter (Silero
 * VAD), the real scheduler, a Transcriber on a tiny package that can hear, and a real MqttConnection to the
 * system Mosquitto (127.0.0.1:1883) under a unique root. A separate client checks what arrives.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { segmenterSettingsSchema, type SegmenterSettingsInput } from '../src/config/segmenter-settings.js';
import { stitchTranscripts } from '../src/audio/stitch.js';
import { segment } from '../src/audio/segment-clip.js';
import { mqttSettings, schedulerSettings } from '../src/config/schema.js';
import { Transcriber } from '../src/engine/transcriber.js';
import { silentLogger } from '../src/common/log.js';
import { MqttConnection } from '../src/mqtt/connection.js';
import { HearingPublisher } from '../src/mqtt/hearing-publisher.js';
import {
  answerSchema,
  answerStreamSchema,
  errorMessageSchema,
  transcriptPartialSchema,
  transcriptSchema,
  type TranscriptMessage,
  type TranscriptPartialMessage,
} from '../src/mqtt/messages.js';
import { containsWakePhrase, normalizeForMatch, spokenQuestionPrompt } from '../src/pipelines/conversation.js';
import { HearingPipeline, type HearingOptions } from '../src/pipelines/hearing.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { WavSource } from '../src/sources/wav.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';
import { tempRoot } from './engine-helpers.js';
import { Collector, uniqueRoot } from './mqtt-helpers.js';
import { SPEECH_WAV, makeHearingPackage } from './transcribe-helpers.js';

const BROKER = 'mqtt://127.0.0.1:1883';
let root: string;
let transcriber: Transcriber;
const cleanups: Array<() => unknown> = [];

beforeAll(async () => {
  root = tempRoot('hearing');
  const dir = await makeHearingPackage(root);
  transcriber = await Transcriber.load(dir, { threads: 1, contextTokens: 1024, pleCacheMb: 1 });
}, 180_000);
afterAll(async () => {
  await transcriber?.close();
  rmSync(root, { recursive: true, force: true });
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Rig {
  hearing: HearingPipeline;
  collector: Collector;
  topics: MqttConnection['topics'];
  scheduler: Scheduler;
  /** Plays speech.wav through (as fast as possible) and waits until the segmenter is done with it. */
  play(): Promise<void>;
  /** Publishes a marker through the pipeline's own connection and waits for it: what it sent before is in. */
  sync(): Promise<void>;
}

async function rig(
  opts: {
    segmenter?: SegmenterSettingsInput;
    hearing?: Omit<HearingOptions, 'scheduler'>;
    transcriptDeadlineMs?: number;
    /** Play the file at its own pace (as a microphone would), not as fast as possible. */
    realtime?: boolean;
  } = {},
): Promise<Rig> {
  const rootTopic = uniqueRoot();
  const conn = new MqttConnection({
    settings: mqttSettings.parse({ url: BROKER, root_topic: rootTopic, client_id: `perch-${randomUUID()}` }),
    deviceId: 'test',
  });
  cleanups.push(() => conn.stop({ offline: false }));
  await conn.start();
  expect(await conn.waitConnected(5000)).toBe(true);
  const collector = await Collector.connect(BROKER, [
    `${rootTopic}/audio/transcript/#`,
    `${rootTopic}/audio/transcript`,
    `${rootTopic}/errors`,
    `${rootTopic}/answer`,
    `${rootTopic}/answer/stream`,
  ]);
  cleanups.push(() => collector.close());
  const scheduler = new Scheduler(
    schedulerSettings.parse({ transcript_deadline_ms: opts.transcriptDeadlineMs ?? 60_000 }),
    silentLogger,
  );
  const source = new WavSource(
    {
      type: 'wav',
      path: SPEECH_WAV,
      realtime: opts.realtime ?? false,
      loop: false,
      restart_min_ms: 1000,
      restart_max_ms: 60000,
    },
    silentLogger,
  );
  const hearing = new HearingPipeline(
    new HearingPublisher(conn),
    source,
    segmenterSettingsSchema.parse(opts.segmenter ?? {}),
    silentLogger,
    {
      scheduler,
      transcriber: () => transcriber,
      maxTokens: 10,
      ...opts.hearing,
    },
  );
  await hearing.start();
  cleanups.push(() => hearing.stop());
  const play = async (): Promise<void> => {
    const ended = new Promise<void>((resolve) => source.once('end', () => resolve()));
    await source.start();
    await ended;
    await source.stop();
    await hearing.pause(); // flushes the segmenter: the last utterance is cut
  };
  const sync = async (): Promise<void> => {
    const marker = `${conn.topics.transcript}/marker`;
    await conn.publish(marker, randomUUID(), { qos: 1 });
    await collector.waitFor((m) => m.some((x) => x.topic === marker));
  };
  return { hearing, collector, topics: conn.topics, scheduler, play, sync };
}

const json = <T>(b: Buffer): T => JSON.parse(b.toString('utf8')) as T;

describe('HearingPipeline with a transcriber', () => {
  it('hears speech while it is spoken: at a microphone’s pace, all but the end is done before the speaker stops', async () => {
    const utterances = await segment(wavTo16kMono(readFileSync(SPEECH_WAV)).samples);
    const direct = await transcriber.transcribe(utterances[0]!.samples, { maxTokens: 10 });
    for (const streaming of [true, false]) {
      const { hearing, collector, topics, play } = await rig({ realtime: true, hearing: { streaming } });
      await play();
      await hearing.settled();
      await collector.waitFor((m) => m.some((x) => x.topic === topics.transcript));
      const t = transcriptSchema.parse(json(collector.on(topics.transcript)[0]!.payload)) as TranscriptMessage;
      expect(t.text).toBe(direct.text);
      if (streaming) {
        // The tiny model keeps up easily: only the audio after the last exact chunk boundary is left, at most
        // the hang-over the segmenter streamed before cutting (500 ms) plus one chunk (480 ms).
        expect(t.heard_while_speaking_ms!).toBeGreaterThanOrEqual(t.audio_ms - 1000);
      } else {
        expect(t.heard_while_speaking_ms).toBeUndefined();
      }
    }
  }, 60_000);

  it('streams partials and publishes a schema-valid transcript of the spoken question', async () => {
    const { hearing, collector, topics, play } = await rig();
    await play();
    await hearing.settled();
    await collector.waitFor((m) => m.some((x) => x.topic === topics.transcript));

    const finals = collector.on(topics.transcript);
    expect(finals).toHaveLength(1);
    expect(finals[0]!.packet.qos).toBe(1);
    const t = transcriptSchema.parse(json(finals[0]!.payload)) as TranscriptMessage;

    // The same text the transcriber gives the segmenter's utterance of this file directly.
    const utterances = await segment(wavTo16kMono(readFileSync(SPEECH_WAV)).samples);
    expect(utterances).toHaveLength(1);
    const u = utterances[0]!;
    const direct = await transcriber.transcribe(u.samples, { maxTokens: 10 });
    expect(t.text).toBe(direct.text);
    expect(t.text.length).toBeGreaterThan(0);
    // Heard through a stream (audio.stream is on by default); how far it got depends on the machine's pace.
    expect(t.heard_while_speaking_ms).toBeDefined();
    expect(t.heard_while_speaking_ms!).toBeLessThan(t.audio_ms);

    // Times: the speech's own length, and the clip handed to the model.
    const spoken = Date.parse(t.ended_at) - Date.parse(t.started_at);
    expect(Math.abs(spoken - (u.speechEndMs - u.speechStartMs))).toBeLessThanOrEqual(2);
    expect(t.audio_ms).toBe(Math.round(u.endMs - u.startMs));
    expect(t.source).toBe('wav');
    expect(t.random_weights).toBe(true);
    expect(t.part).toBeUndefined();
    const l = t.latency_ms;
    expect(l.first_token).toBeLessThanOrEqual(l.total);
    for (const k of ['first_token', 'endpoint', 'queue', 'encode', 'prefill', 'decode'])
      expect(l[k]).toBeGreaterThanOrEqual(0);

    // Partials: QoS 0, same id, seq 0..n-1, text accumulating to the transcript.
    // (Fewer partials than tokens: a token that ends mid-character sends nothing until the character is whole.)
    const norm = (s: string): string => s.replace(/\s*\n\s*/g, ' ').trim();
    await collector.waitFor((m) =>
      m.some(
        (x) => x.topic === topics.transcriptPartial && norm(json<TranscriptPartialMessage>(x.payload).text) === t.text,
      ),
    );
    const partials = collector.on(topics.transcriptPartial).map((p) => {
      expect(p.packet.qos).toBe(0);
      return transcriptPartialSchema.parse(json(p.payload)) as TranscriptPartialMessage;
    });
    expect(partials.length).toBeGreaterThan(0);
    expect(partials.map((p) => p.id)).toEqual(partials.map(() => t.id));
    expect(partials.map((p) => p.seq)).toEqual(partials.map((_, i) => i));
    let acc = '';
    for (const p of partials) {
      acc += p.delta;
      expect(p.text).toBe(acc);
    }
    expect(norm(acc)).toBe(t.text);
    expect(partials.length).toBeLessThanOrEqual(direct.tokens.length + 1);
    expect(hearing.stats()).toMatchObject({ utterances: 1, transcripts: 1, transcripts_failed: 0 });
  }, 120_000);

  it('marks the parts of speech longer than max_utterance_ms, then publishes the group stitched', async () => {
    const { hearing, collector, topics, play } = await rig({
      segmenter: { max_utterance_ms: 2000, split_overlap_ms: 500 },
    });
    await play();
    await hearing.settled();
    const done = hearing.stats().transcripts;
    // One transcript per part, then the group's stitched one.
    await collector.waitFor((m) => m.filter((x) => x.topic === topics.transcript).length === done + 1);
    const all = collector.on(topics.transcript).map((m) => {
      expect(m.packet.qos).toBe(1);
      return transcriptSchema.parse(json(m.payload)) as TranscriptMessage;
    });
    const parts = all.filter((t) => t.part !== undefined);
    expect(parts).toHaveLength(done);
    expect(parts.length).toBeGreaterThanOrEqual(2);
    const group = parts[0]!.part!.group;
    expect(parts.map((p) => p.part?.group)).toEqual(parts.map(() => group));
    expect(parts.map((p) => p.part!.part)).toEqual(parts.map((_, i) => i + 1));
    expect(parts.map((p) => p.part!.last)).toEqual(parts.map((_, i) => i === parts.length - 1));
    expect(parts.at(-1)!.part!.of).toBe(parts.length);
    expect(parts[0]!.part!.overlap_ms).toBe(0);
    expect(parts[1]!.part!.overlap_ms).toBe(500);
    expect(new Set(parts.map((p) => p.id)).size).toBe(parts.length);

    // The stitched transcript comes after the last part: the group's id, the parts' ids, their texts joined.
    const whole = all.at(-1)!;
    expect(whole.part).toBeUndefined();
    expect(whole.id).toBe(group);
    expect(whole.stitched_from).toEqual(parts.map((p) => p.id));
    expect(whole.text).toBe(stitchTranscripts(parts.map((p) => p.text)));
    expect(whole.text.length).toBeGreaterThan(0);
    expect(whole.started_at).toBe(parts[0]!.started_at);
    expect(whole.ended_at).toBe(parts.at(-1)!.ended_at);
    expect(whole.audio_ms).toBe(parts.reduce((sum, p) => sum + p.audio_ms - p.part!.overlap_ms, 0));
    expect(whole.source).toBe('wav');
    expect(whole.random_weights).toBe(true);
    expect(hearing.stats().transcripts).toBe(done); // the stitched transcript is no extra model job
  }, 120_000);

  it('publishes no stitched transcript for a group with a part missing', async () => {
    // The model is not ready for the first part (it is only counted), so the group has a gap.
    let calls = 0;
    const { hearing, collector, topics, play, sync } = await rig({
      segmenter: { max_utterance_ms: 2000, split_overlap_ms: 500 },
      // Not streamed: each speech window would ask for the transcriber too.
      hearing: { transcriber: () => (calls++ === 0 ? undefined : transcriber), streaming: false },
    });
    await play();
    await hearing.settled();
    await sync();
    const all = collector
      .on(topics.transcript)
      .map((m) => transcriptSchema.parse(json(m.payload)) as TranscriptMessage);
    expect(all.length).toBeGreaterThanOrEqual(1);
    expect(all.every((t) => t.part !== undefined && t.part.part > 1)).toBe(true);
    expect(all.some((t) => t.part!.last)).toBe(true);
    expect(all.filter((t) => t.stitched_from !== undefined)).toHaveLength(0);
  }, 120_000);

  it('publishes an error with the utterance id when the model stays busy past the transcript deadline', async () => {
    const { hearing, collector, topics, scheduler, play } = await rig({ transcriptDeadlineMs: 100 });
    let release!: () => void;
    const busy = scheduler.submit({
      kind: 'answer',
      id: 'long-answer',
      run: () => new Promise<void>((r) => (release = r)),
    });
    await play();
    await collector.waitFor((m) => m.some((x) => x.topic === topics.errors));
    release();
    await busy;
    await hearing.settled();
    const e = errorMessageSchema.parse(json(collector.on(topics.errors)[0]!.payload));
    expect(e).toMatchObject({ code: 'deadline', topic: topics.transcript });
    expect(e.id).toMatch(/^u/);
    expect(e.message).toMatch(/no transcript/);
    expect(collector.on(topics.transcript)).toHaveLength(0);
    expect(hearing.stats()).toMatchObject({ utterances: 1, transcripts: 0, transcripts_failed: 1 });
  }, 120_000);
});

describe('HearingPipeline without a transcriber', () => {
  it('counts utterances and publishes no transcript', async () => {
    const { hearing, collector, topics, play, sync } = await rig({ hearing: { transcriber: () => undefined } });
    await play();
    await hearing.settled();
    await sync();
    expect(collector.on(topics.transcript)).toHaveLength(0);
    expect(collector.on(topics.transcriptPartial)).toHaveLength(0);
    expect(hearing.stats()).toMatchObject({ utterances: 1, transcripts: 0, transcripts_failed: 0 });
  }, 60_000);
});

describe('spoken questions', () => {
  it('matches the wake phrase whatever the case and punctuation, as whole words', () => {
    expect(containsWakePhrase('Hey, Perch! What time is it?', 'hey perch')).toBe(true);
    expect(containsWakePhrase('HEY PERCH.', 'Hey Perch')).toBe(true);
    expect(containsWakePhrase('okay — hey…perch, lights on', 'hey perch')).toBe(true);
    expect(containsWakePhrase('they perched on the roof', 'hey perch')).toBe(false);
    expect(containsWakePhrase('heyperch', 'hey perch')).toBe(false);
    expect(containsWakePhrase('anything', '?!')).toBe(false);
  });

  it('answers an utterance whose transcript holds the wake phrase, from its audio, under the same id', async () => {
    // Random weights: learn what the tiny model transcribes this file as, and take a word of it as the phrase.
    const u = (await segment(wavTo16kMono(readFileSync(SPEECH_WAV)).samples))[0]!;
    const heard = (await transcriber.transcribe(u.samples, { maxTokens: 10 })).text;
    const phrase = normalizeForMatch(heard).split(' ')[0]!;
    expect(phrase.length).toBeGreaterThan(0);
    const { hearing, collector, topics, play } = await rig({
      hearing: { wakePhrase: phrase.toUpperCase(), answerMaxTokens: 6 },
    });
    await play();
    await hearing.settled();
    await collector.waitFor(
      (m) => m.some((x) => x.topic === topics.answer) && m.some((x) => x.topic === topics.transcript),
    );
    const t = transcriptSchema.parse(json(collector.on(topics.transcript)[0]!.payload));
    const a = answerSchema.parse(json(collector.on(topics.answer)[0]!.payload));
    expect(t.wake).toBe(true);
    expect(a.id).toBe(t.id);
    // The answer comes from the audio with the question instruction, not from the transcript.
    const direct = await transcriber.answer(u.samples, {
      prompt: spokenQuestionPrompt(phrase.toUpperCase()),
      maxTokens: 6,
    });
    expect(a.text).toBe(direct.text);
    expect(a.tokens.completion).toBe(direct.tokens.length);
    await collector.waitFor((m) =>
      m.some((x) => x.topic === topics.answerStream && json<{ done: boolean }>(x.payload).done),
    );
    const stream = collector.on(topics.answerStream).map((m) => answerStreamSchema.parse(json(m.payload)));
    expect(stream.every((c) => c.id === t.id)).toBe(true);
    expect(stream.map((c) => c.seq)).toEqual(stream.map((_, i) => i));
    expect(
      stream
        .map((c) => c.delta)
        .join('')
        .trim(),
    ).toBe(a.text);
    expect(hearing.stats()).toMatchObject({ transcripts: 1, questions: 1 });
  }, 120_000);

  it('publishes only the transcript when the phrase is not heard', async () => {
    const { hearing, collector, topics, play, sync } = await rig({ hearing: { wakePhrase: 'zzz never said' } });
    await play();
    await hearing.settled();
    await sync();
    const t = transcriptSchema.parse(json(collector.on(topics.transcript)[0]!.payload));
    expect(t.wake).toBeUndefined();
    expect(collector.on(topics.answer)).toHaveLength(0);
    expect(hearing.stats()).toMatchObject({ transcripts: 1, questions: 0 });
  }, 60_000);
});
