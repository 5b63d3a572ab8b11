/**
 * The Wyoming server as Home Assistant uses it. First the real `perch run` process (tiny package that hears,
 * private Mosquitto) and the real `wyoming` Python package sending what Home Assistant's stt.py and
 * conversation.py send, plus `zeroconf` browsing for it as Home Assistant's discovery does
 * (test/wyoming_clients.py). The transcripts are checked against Perch's own transcriber on the same clips:
 * the right samples, in the right order, reached the model. Then, in process, what cannot be seen from the
 * wire: the conversation a turn carries, connection limits and idle clients.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { silentLogger } from '../src/common/log.js';
import { actionsSettings, perchConfigSchema, schedulerSettings, wyomingSettings } from '../src/config/schema.js';
import type { GemmaAnswerEngine } from '../src/engine/gemma-engine.js';
import { Transcriber } from '../src/engine/transcriber.js';
import type { GenerationRequest } from '../src/engine/types.js';
import { Actions } from '../src/pipelines/actions.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { EventReader, type WyomingEvent, encodeEvent } from '../src/wyoming/protocol.js';
import { WyomingServer } from '../src/wyoming/server.js';
import { DaemonProcess, REPO } from './daemon-helpers.js';
import { recordingEngine, startAnswerEngine, tempRoot } from './engine-helpers.js';
import { freePort, privateBrokerForFile, tempDir, uniqueRoot } from './mqtt-helpers.js';
import { makeHearingPackage, phraseSamples, phraseWav } from './transcribe-helpers.js';

const shared = privateBrokerForFile();
const cleanups: Array<() => unknown> = [];
// biome-ignore lint/suspicious/noExplicitAny: JSON from the Python clients, read field by field below
type Json = any;
let clients: Json;
let pkg: string;
let instance: string;
let port: number;
let daemon: DaemonProcess;
/** Perch's own transcripts of the three phrases (the transcriber in this process, English, 256 tokens). */
let reference: string[];

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { cwd: REPO, maxBuffer: 1 << 26, timeout: 300_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${cmd} failed: ${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
}

async function waitForPort(p: number, daemon: DaemonProcess): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(p, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() - t0 > 90_000) throw new Error(`the Wyoming server did not come up; log:\n${daemon.log()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

beforeAll(async () => {
  const setup = run('bash', [join(REPO, 'reference', 'setup.sh')]);
  const root = tempRoot('wyoming');
  pkg = await makeHearingPackage(root);
  port = await freePort();
  const id = `wy${Date.now().toString(36)}`;
  instance = `perch-${id}`;
  const tmp = tempDir('perch-wyoming-');
  cleanups.push(() => tmp.cleanup());
  daemon = DaemonProcess.start(tmp.dir, {
    device: { id },
    log: { level: 'info' },
    daemon: { state_dir: tmp.dir, drain_timeout_ms: 3000 },
    mqtt: { url: shared.broker.url, root_topic: uniqueRoot() },
    homeassistant: { enabled: false },
    model: { dir: pkg, threads: 1, context_tokens: 1024 },
    // Beyond loopback, so it is advertised over mDNS (the test machine's own network).
    wyoming: { enabled: true, listen: '0.0.0.0', port },
  });
  cleanups.push(() => daemon.kill());
  const transcriber = await Transcriber.load(pkg, { threads: 1, contextTokens: 1024, pleCacheMb: 1 });
  reference = [];
  for (const n of [1, 2, 3] as const)
    reference.push((await transcriber.transcribe(phraseSamples(n), { language: 'English', maxTokens: 256 })).text);
  await transcriber.close();
  await waitForPort(port, daemon);
  // The port opens before the model has loaded (on a fresh machine it packs the weights first): ready when a
  // conversation turn is answered rather than refused as unavailable.
  for (let n = 0; ; n++) {
    const c = new Client(port);
    c.send('transcript', { text: 'ready?' });
    const ev = await c.next(['handled', 'error']);
    c.close();
    if (ev.type === 'handled') break;
    if (n > 300) throw new Error(`the model did not load; log:\n${daemon.log()}`);
    await sleep(500);
  }
  await setup;
  const python = join(REPO, 'reference', '.venv', 'bin', 'python');
  const wavs = ([1, 2, 3] as const).map(phraseWav);
  const out = await run(python, [
    join(REPO, 'test', 'wyoming_clients.py'),
    '127.0.0.1',
    String(port),
    instance,
    ...wavs,
  ]);
  clients = JSON.parse(out);
}, 400_000);

afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('Home Assistant over Wyoming, with the wyoming package, against perch run', () => {
  it('describes one speech-to-text and one conversation program (no satellite), within the 1 s HA allows', () => {
    const d = clients.describe;
    expect(d.ms).toBeLessThan(1000);
    expect(d.satellite).toBe(false);
    expect(d.asr).toEqual([expect.objectContaining({ name: 'perch', installed: true, streaming: true })]);
    expect(d.handle).toEqual([expect.objectContaining({ name: 'perch', installed: true })]);
    expect(d.asr[0].languages).toContain('en');
    expect(d.handle[0].languages).toEqual(d.asr[0].languages);
  });

  it("transcribes HA's event sequence into exactly Perch's own transcript of each clip, streamed as it decodes", () => {
    expect(reference.every((t) => t.length > 0)).toBe(true);
    clients.transcripts.forEach((t: Json, i: number) => {
      expect(t.error).toBeUndefined();
      expect(t.text).toBe(reference[i]);
      expect(t.language).toBe('en');
      // A 1.10 peer gets the streaming events around the final transcript; their chunks add up to it.
      expect(t.types[0]).toBe('transcript-start');
      expect(t.types.slice(-2)).toEqual(['transcript', 'transcript-stop']);
      expect(t.chunks).toBe(t.text);
    });
  });

  it('hears audio sent at the pace of a microphone while it arrives: the same transcript', () => {
    expect(clients.paced.text).toBe(reference[0]);
    // The daemon's log line of each transcript, in order: three at full speed, then the paced one.
    const lines = daemon
      .log()
      .split('\n')
      .filter((l) => l.includes('"msg":"wyoming transcript"'))
      .map((l) => JSON.parse(l) as { audio_ms: number; streamed_tokens: number });
    const paced = lines[3]!;
    // 25 soft tokens a second: most were encoded and prefilled before audio-stop.
    expect(paced.streamed_tokens).toBeGreaterThan((paced.audio_ms / 40) * 0.6);
  });

  it('serves several satellites at once, each its own transcript', () => {
    expect(clients.concurrent.map((t: Json) => t.text)).toEqual(reference);
  });

  it('answers a conversation turn with handled, streamed as handled chunks', () => {
    for (const turn of clients.turns) {
      expect(turn.error).toBeUndefined();
      expect(typeof turn.handled).toBe('string');
      expect(turn.types[0]).toBe('handled-start');
      expect(turn.types.at(-1)).toBe('handled');
      expect(turn.chunks).toBe(turn.handled);
    }
  });

  it('refuses bad input with an error event naming it, and keeps serving', () => {
    const b = clients.bad;
    expect(b.not_json).toEqual([{ type: 'error', text: 'bad Wyoming event: event header is not JSON' }]);
    expect(b.no_type[0].text).toMatch(/has no type/);
    expect(b.huge_payload).toEqual([
      { type: 'error', text: 'bad Wyoming event: payload_length 10485760 is over the limit of 262144 bytes' },
    ]);
    expect(b.wrong_width).toEqual([{ type: 'error', text: 'audio-start: width must be 2 (16-bit PCM), got 4' }]);
    expect(b.stop_without_audio[0].text).toMatch(/audio-stop without audio/);
    // A bad turn is answered and the connection stays open (HA closes it); unknown events are dropped.
    expect(b.empty_turn).toEqual([
      { type: 'error', text: 'transcript: text must be a non-empty string' },
      { type: 'timeout' },
    ]);
    expect(b.unknown_then_ping).toEqual([{ type: 'pong', text: 'p1' }, { type: 'timeout' }]);
    // After all that and a satellite vanishing mid-utterance:
    expect(clients.after_bad.text).toBe(reference[1]);
  });

  it('is found over mDNS as _wyoming._tcp, as Home Assistant discovers it', () => {
    expect(clients.zeroconf.names).toContain(`${instance}._wyoming._tcp.local.`);
    expect(clients.zeroconf.port).toBe(port);
  });
});

/** A minimal client: writes events, reads them until the server closes or `until` matches. */
class Client {
  private readonly socket: net.Socket;
  private readonly reader = new EventReader({ maxHeaderBytes: 1 << 16, maxBlockBytes: 1 << 20 });
  readonly events: WyomingEvent[] = [];
  readonly closed: Promise<void>;
  private waiters: Array<() => void> = [];

  constructor(p: number) {
    this.socket = net.connect(p, '127.0.0.1');
    this.socket.on('data', (b: Buffer) => {
      this.events.push(...this.reader.push(b));
      for (const w of this.waiters.splice(0)) w();
    });
    this.socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => this.socket.on('close', () => resolve()));
  }

  send(type: string, data?: Record<string, unknown>, payload?: Buffer): void {
    this.socket.write(encodeEvent(type, data, payload));
  }

  /** The first event of `type` (or of any of the types). */
  async next(type: string | string[], timeoutMs = 60_000): Promise<WyomingEvent> {
    const t0 = Date.now();
    const types = Array.isArray(type) ? type : [type];
    for (;;) {
      const ev = this.events.find((e) => types.includes(e.type));
      if (ev) return ev;
      if (Date.now() - t0 > timeoutMs) throw new Error(`no ${type} event; got ${this.events.map((e) => e.type)}`);
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), this.closed, sleep(100)]);
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the Wyoming server in process (real engine and scheduler)', () => {
  let engine: GemmaAnswerEngine;
  const requests: GenerationRequest[] = [];
  let server: WyomingServer;
  let at: number;
  let actions: Actions;
  const published: Array<{ topic: string; payload: string }> = [];

  beforeAll(async () => {
    engine = await startAnswerEngine(pkg, { max_answer_tokens: 4 });
    // Sees each request on its way to the real engine.
    const seen = recordingEngine(engine, requests);
    actions = new Actions({
      settings: actionsSettings.parse({
        allowed: [
          {
            name: 'open_garage',
            description: 'Open the garage door',
            parameters: { type: 'object', properties: { door: { type: 'string', enum: ['left', 'right'] } } },
            topic: 'garage/{door}/set',
            payload: { open: true },
            confirm: true,
          },
        ],
      }),
      bus: {
        connected: true,
        publish: async (topic, payload) => void published.push({ topic, payload }),
        subscribe: () => undefined,
        removeOwner: () => undefined,
      },
      recordTopic: 'test/action',
      logger: silentLogger,
    });
    server = new WyomingServer({
      settings: { ...wyomingSettings.parse({ enabled: true, max_clients: 2, idle_timeout_s: 1 }), port: 0 },
      deviceId: 'inproc',
      speech: () => engine.speech(),
      engine: () => seen,
      scheduler: new Scheduler(schedulerSettings.parse({})),
      version: 'test',
      transcriptMaxTokens: 8,
      actions,
      logger: silentLogger,
    });
    at = (await server.start()).port;
  }, 180_000);
  afterAll(async () => {
    await server?.stop();
    await engine?.close();
  });

  const turn = async (text: string, conversationId?: string): Promise<string> => {
    const c = new Client(at);
    c.send('transcript', { text, ...(conversationId ? { context: { conversation_id: conversationId } } : {}) });
    const handled = await c.next('handled');
    c.close();
    return handled.data.text as string;
  };

  it('carries a conversation: the second turn of an id holds the first question and answer', async () => {
    requests.length = 0;
    const first = await turn('Is the garage door open?', 'kitchen-1');
    await turn('And the front door?', 'kitchen-1');
    await turn('Hello?', 'hall-2');
    expect(requests[0]!.messages).toEqual([{ role: 'user', content: 'Is the garage door open?' }]);
    expect(requests[1]!.messages).toEqual([
      { role: 'user', content: 'Is the garage door open?' },
      { role: 'assistant', content: first },
      { role: 'user', content: 'And the front door?' },
    ]);
    expect(requests[2]!.messages).toEqual([{ role: 'user', content: 'Hello?' }]);
  });

  it("a call waiting for confirmation is carried out by the conversation's next turn saying yes", async () => {
    // The previous turn's call of a confirm action (the model asked "shall I?").
    const held = await actions.run(
      { name: 'open_garage', arguments: { door: 'left' } },
      { id: 'q', conversation: 'garage-1' },
    );
    expect(held).toMatchObject({ status: 'awaiting_confirmation', confirmation: expect.any(String) });
    expect(published.filter((p) => p.topic.startsWith('garage/'))).toEqual([]);
    // Another conversation's yes does nothing for it.
    requests.length = 0;
    await turn('Yes please.', 'other-7');
    expect(published.filter((p) => p.topic.startsWith('garage/'))).toEqual([]);
    await turn('Yes please.', 'garage-1');
    expect(published.filter((p) => p.topic.startsWith('garage/'))).toEqual([
      { topic: 'garage/left/set', payload: '{"open":true}' },
    ]);
    // The model answered with the call and its result in front of it.
    const last = requests.at(-1)!.messages;
    expect(last.at(-2)).toMatchObject({
      role: 'assistant',
      toolCalls: [{ name: 'open_garage', arguments: { door: 'left' } }],
    });
    expect(JSON.parse(last.at(-1)!.content as string)).toEqual({ done: true, result: 'published' });
    // Settled: a second yes does nothing more.
    await turn('Yes.', 'garage-1');
    expect(published.filter((p) => p.topic.startsWith('garage/'))).toHaveLength(1);
  });

  it('refuses a client beyond max_clients with busy, and serves again once one leaves', async () => {
    const a = new Client(at);
    const b = new Client(at);
    a.send('ping', { text: 'a' });
    b.send('ping', { text: 'b' });
    await a.next('pong');
    await b.next('pong');
    const c = new Client(at);
    const refused = await c.next('error');
    expect(refused.data).toEqual({ text: 'too many Wyoming clients at once (wyoming.max_clients is 2)', code: 'busy' });
    await c.closed;
    a.close();
    b.close();
    await sleep(100);
    const d = new Client(at);
    d.send('describe');
    expect((await d.next('info')).data.asr).toHaveLength(1);
    d.close();
  });

  it('disconnects a client idle past idle_timeout_s', async () => {
    const c = new Client(at);
    const t0 = Date.now();
    await c.closed;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('refuses more audio than the model hears at once (30 s), naming the limit', async () => {
    const c = new Client(at);
    c.send('audio-start', { rate: 16000, width: 2, channels: 1 });
    const second = Buffer.alloc(32000);
    for (let i = 0; i < 31; i++) c.send('audio-chunk', { rate: 16000, width: 2, channels: 1 }, second);
    c.send('audio-stop');
    expect((await c.next('error')).data).toEqual({
      text: 'the audio is longer than the 30 s the model hears at once',
      code: 'invalid_request',
    });
    await c.closed;
  });

  it('hears a 48 kHz stereo client: the same transcript as its 16 kHz mono samples', async () => {
    const mono = phraseSamples(2);
    const transcribe = async (rate: number, channels: number, bytes: Buffer): Promise<string> => {
      const c = new Client(at);
      c.send('transcribe', { language: 'en' });
      c.send('audio-start', { rate, width: 2, channels });
      for (let i = 0; i < bytes.length; i += 4096)
        c.send('audio-chunk', { rate, width: 2, channels }, bytes.subarray(i, i + 4096));
      c.send('audio-stop');
      const t = await c.next('transcript');
      c.close();
      return t.data.text as string;
    };
    // Each 16 kHz sample three times over, on both channels: resampled and averaged back to itself.
    const wide = Buffer.alloc(mono.length * 12);
    mono.forEach((v, i) => {
      for (let k = 0; k < 3; k++) for (let ch = 0; ch < 2; ch++) wide.writeInt16LE(v, ((i * 3 + k) * 2 + ch) * 2);
    });
    const narrow = Buffer.from(mono.buffer, mono.byteOffset, mono.byteLength);
    expect(await transcribe(48000, 2, wide)).toBe(await transcribe(16000, 1, narrow));
  });
});

describe('docs/wyoming.md', () => {
  it('shows a Perch config that validates, and Home Assistant steps with its port and the names Perch describes', () => {
    const doc = readFileSync(join(REPO, 'docs', 'wyoming.md'), 'utf8');
    const blocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => parse(m[1]!) as Json);
    const perch = perchConfigSchema.parse(blocks[0]);
    expect(perch.wyoming).toMatchObject({ enabled: true, listen: '0.0.0.0', port: 10300, zeroconf: true });
    expect(doc).toContain(`Port: \`${perch.wyoming.port}\``);
    // The names Home Assistant shows are the ones the server described to the real client.
    expect(doc).toContain(`named \`${clients.describe.asr[0].name}\``);
    expect(doc).toContain(`Speech-to-text: \`${clients.describe.asr[0].name}\``);
    expect(doc).toContain(`Conversation agent: \`${clients.describe.handle[0].name}\``);
    expect(doc).toContain(`\`${instance.replace(/^perch-.*/, 'perch-<device.id>')}._wyoming._tcp\``);
    expect(doc).toContain('`en`');
    expect(clients.describe.asr[0].languages).toContain('en');
  });
});
