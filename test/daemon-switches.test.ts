/**
 * The Listening and Watching switches through the real `perch run` (a looping WAV source, a looping image
 * directory camera) and a private Mosquitto: pause and resume work every time, in every order of switch
 * messages, and what the switch and stats say is what really happens.
 */
import mqtt from 'mqtt';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DaemonProcess, SAMPLES } from './daemon-helpers.js';
import { tempRoot } from './engine-helpers.js';
import { Collector, privateBrokerForFile, type Received, tempDir } from './mqtt-helpers.js';
import { makeSeeingPackage } from './seeing-helpers.js';

const shared = privateBrokerForFile();
const cleanups = shared.cleanups;
let seq = 0;

const json = (b: Buffer) => JSON.parse(b.toString()) as Record<string, unknown>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, pred: () => boolean, timeoutMs: number, log: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}; daemon log tail:\n${log().slice(-4000)}`);
    await sleep(20);
  }
}

async function startDaemon(over: { model?: string; camera?: Record<string, unknown> } = {}) {
  const tmp = tempDir('perch-switch-');
  const id = `sw${process.pid}-${seq++}`;
  const root = `perch/${id}`;
  const config = {
    device: { id },
    log: { level: 'debug', format: 'json' },
    daemon: { state_dir: tmp.dir, drain_timeout_ms: 2000, stats_interval_s: 1 },
    mqtt: { url: shared.broker.url, keepalive_s: 5, reconnect_min_ms: 200, reconnect_max_ms: 1000 },
    homeassistant: { enabled: false },
    model: over.model
      ? { dir: over.model, threads: 1, context_tokens: 1024, ple_cache_mb: 1, max_answer_tokens: 8 }
      : { dir: path.join(tmp.dir, 'no-model') },
    audio: {
      enabled: true,
      source: { type: 'wav', path: path.join(SAMPLES, 'speech.wav'), realtime: true, loop: true },
      // A level every 100 ms while audio flows: the test sees at once whether it does.
      segmenter: { level_window_ms: 100, level_max_interval_ms: 100 },
    },
    cameras: [
      {
        name: 'yard',
        snapshot_interval_s: 0,
        source: { type: 'directory', path: path.join(SAMPLES, 'frames'), interval_ms: 100, loop: true },
        ...over.camera,
      },
    ],
  };
  const watcher = await Collector.connect(shared.broker.url, [`${root}/#`]);
  const daemon = DaemonProcess.start(tmp.dir, config);
  const pub = await mqtt.connectAsync(shared.broker.url);
  cleanups.push(async () => {
    await pub.endAsync(true);
    await daemon.kill();
    await watcher.close();
    tmp.cleanup();
  });
  const log = () => daemon.log();
  const on = (topic: string): Received[] => watcher.on(`${root}/${topic}`);
  const lastStats = () => {
    const s = on('stats').at(-1);
    return s ? json(s.payload) : undefined;
  };
  const sourceStatus = (name: string) =>
    (lastStats()?.sources as Record<string, { status: string }> | undefined)?.[name]?.status;
  await until('online', () => on('status').some((m) => m.payload.toString() === 'online'), 30_000, log);
  await until(
    'audio and frames flowing',
    () => sourceStatus('audio/audio') === 'running' && sourceStatus('camera/yard') === 'running',
    20_000,
    log,
  );
  const send = (sw: 'listening' | 'watching', value: 'ON' | 'OFF') =>
    pub.publishAsync(`${root}/${sw}/set`, value, { qos: 1 });
  return { root, daemon, watcher, log, on, lastStats, sourceStatus, send };
}

type Daemon = Awaited<ReturnType<typeof startDaemon>>;

/** Every sequence of ON/OFF of length 1 to n. */
function sequences(n: number): Array<Array<'ON' | 'OFF'>> {
  const out: Array<Array<'ON' | 'OFF'>> = [];
  for (let len = 1; len <= n; len++) {
    for (let bits = 0; bits < 2 ** len; bits++)
      out.push(Array.from({ length: len }, (_, i) => ((bits >> i) & 1 ? 'ON' : 'OFF')));
  }
  return out;
}

type Switch = 'listening' | 'watching';
const SOURCE = { listening: 'audio/audio', watching: 'camera/yard' } as const;
const DATA = { listening: 'audio/level', watching: 'camera/yard/snapshot' } as const;

/**
 * Sends both sequences at once, every message back to back (none waits for the previous), waits until the
 * daemon has handled them all (each switch message publishes both switch states once), then checks that
 * switch and stats agree with each last message and that the data really flows, or really stops.
 */
async function runSequences(d: Daemon, seqs: Record<Switch, Array<'ON' | 'OFF'>>): Promise<void> {
  const label = `listening ${seqs.listening.join(',')} / watching ${seqs.watching.join(',')}`;
  const published = d.on('listening').length;
  const total = seqs.listening.length + seqs.watching.length;
  await Promise.all((['listening', 'watching'] as const).flatMap((sw) => seqs[sw].map((v) => d.send(sw, v))));
  await until(`${label}: every message handled`, () => d.on('listening').length >= published + total, 15_000, d.log);
  const says = (sw: Switch) => {
    const last = seqs[sw].at(-1)!;
    return (
      d.on(sw).at(-1)?.payload.toString() === last &&
      d.sourceStatus(SOURCE[sw]) === (last === 'ON' ? 'running' : 'paused')
    );
  };
  // Stats go out right after the switch states; a fresh one must agree too.
  const stats = d.on('stats').length;
  await until(
    `${label}: switch and stats say the last message`,
    () => d.on('stats').length > stats && says('listening') && says('watching'),
    15_000,
    d.log,
  );
  const before = { listening: d.on(DATA.listening).length, watching: d.on(DATA.watching).length };
  await sleep(700);
  for (const sw of ['listening', 'watching'] as const) {
    expect(says(sw), `${label}: ${sw} still says ${seqs[sw].at(-1)}`).toBe(true);
    const flowed = d.on(DATA[sw]).length - before[sw];
    if (seqs[sw].at(-1) === 'ON') expect(flowed, `${label}: ${sw} data flows`).toBeGreaterThanOrEqual(2);
    else expect(flowed, `${label}: nothing flows while ${sw} is paused`).toBe(0);
  }
  if (seqs.watching.at(-1) === 'OFF') {
    // Paused: no motion event left open, none started after the pause.
    expect(d.on('camera/yard/motion').at(-1)?.payload.toString() ?? 'OFF', `${label}: motion OFF`).toBe('OFF');
    const lastEvent = d.on('camera/yard/event').at(-1);
    if (lastEvent) expect(json(lastEvent.payload).type, `${label}: the last event is an end`).toBe('end');
  }
}

describe('perch run: the Listening and Watching switches', () => {
  it('listening OFF then ON hears again at once: no voice detection errors, new speech and utterances', async () => {
    const d = await startDaemon();
    const utterances = () => (d.lastStats()?.audio as { utterances?: number } | undefined)?.utterances ?? 0;
    // Run long enough that the segmenter has cut an utterance (stream time well past 0).
    await until('a first utterance', () => utterances() >= 1, 30_000, d.log);
    await d.send('listening', 'OFF');
    await until(
      'listening OFF',
      () => d.on('listening').at(-1)?.payload.toString() === 'OFF' && d.sourceStatus('audio/audio') === 'paused',
      10_000,
      d.log,
    );
    const heard = utterances();
    const speechOns = d.on('audio/speech').filter((m) => m.payload.toString() === 'ON').length;
    await d.send('listening', 'ON');
    // The sample starts speaking within a second or two: speech ON and a new utterance, well before the
    // time the source had run before the pause.
    await until(
      'speech again after resume',
      () => d.on('audio/speech').filter((m) => m.payload.toString() === 'ON').length > speechOns,
      15_000,
      d.log,
    );
    await until('an utterance after resume', () => utterances() > heard, 15_000, d.log);
    expect(d.log()).not.toMatch(/voice activity detection failed|offset is out of bounds/);
  });

  it('every sequence of up to 4 switch messages, sent back to back, ends where the last message says (listening and watching at once)', async () => {
    const d = await startDaemon();
    const all = sequences(4);
    // Each listening sequence goes with a different watching one, so the two switches interleave in many ways.
    for (let i = 0; i < all.length; i++)
      await runSequences(d, { listening: all[i]!, watching: all[all.length - 1 - i]! });
    expect(d.log()).not.toMatch(/voice activity detection failed|offset is out of bounds/);
  }, 240_000);
});

describe('perch run: Watching OFF with captions', () => {
  let root: string;
  let pkg: string;
  beforeAll(async () => {
    root = tempRoot('switches');
    pkg = await makeSeeingPackage(root);
  }, 180_000);
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('ends the running motion event with its final caption and starts no new one', async () => {
    const d = await startDaemon({
      model: pkg,
      camera: { image_tokens: 70, caption_max_tokens: 12, motion: { cooldown_s: 30 } },
    });
    const engineState = () => (d.lastStats()?.engine as { state?: string } | undefined)?.state;
    await until('the model ready', () => engineState() === 'ready', 60_000, d.log);
    const events = () => d.on('camera/yard/event').map((m) => json(m.payload));
    await until('a motion event', () => events().some((e) => e.type === 'new'), 20_000, d.log);
    const open = events()
      .filter((e) => e.type === 'new')
      .at(-1)!;
    // The model is busy transcribing the WAV source too: the final caption may have to wait its turn.
    const sentAt = events().length;
    await d.send('watching', 'OFF');
    await until(
      'the end of the event',
      () => events().some((e) => e.type === 'end' && e.id === open.id),
      60_000,
      d.log,
    );
    await sleep(1500);
    const after = events().slice(sentAt);
    expect(
      after.filter((e) => e.type === 'new'),
      'no new event after Watching OFF',
    ).toEqual([]);
    const end = after.find((e) => e.type === 'end' && e.id === open.id)!;
    // The final caption, or an error saying why; never lost to a phantom event's caption.
    expect(typeof end.caption === 'string' || end.caption_error !== undefined).toBe(true);
    expect(end.caption_error, 'the final caption was made').toBeUndefined();
    const final = d
      .on('camera/yard/caption')
      .map((m) => json(m.payload))
      .find((c) => c.event_id === open.id && c.stage === 'end');
    expect(final?.text).toBe(end.caption);
    expect(d.on('camera/yard/motion').at(-1)?.payload.toString()).toBe('OFF');
  }, 240_000);
});
