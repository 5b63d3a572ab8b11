/** The message contract: docs/mqtt.md examples against the schemas, request parsing, topics, reply routing. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../src/mqtt/backoff.js';
import { messageSchemas, parseRequest, type MessageName, type ParsedRequest } from '../src/mqtt/messages.js';
import { replyRouteFor } from '../src/mqtt/requests.js';
import { topicMatches } from '../src/common/mqtt-strings.js';
import { topicsFor } from '../src/mqtt/topics.js';

const doc = readFileSync(new URL('../docs/mqtt.md', import.meta.url), 'utf8');

function examples(): Array<{ name: string; json: string }> {
  const out: Array<{ name: string; json: string }> = [];
  const re = /<!-- example: ([a-z_]+) -->\s*\n```json\n([\s\S]*?)\n```/g;
  for (let m = re.exec(doc); m; m = re.exec(doc)) out.push({ name: m[1], json: m[2] });
  return out;
}

describe('docs/mqtt.md examples', () => {
  const found = examples();

  it('every marker is followed by a json block, and every schema has an example', () => {
    expect(found.length).toBe((doc.match(/<!-- example: /g) ?? []).length);
    expect(new Set(found.map((e) => e.name))).toEqual(new Set(Object.keys(messageSchemas)));
  });

  it.each(examples())('example $name validates', ({ name, json }) => {
    expect(name in messageSchemas).toBe(true);
    const r = messageSchemas[name as MessageName].safeParse(JSON.parse(json));
    expect(r.error?.issues ?? []).toEqual([]);
  });
});

describe('parseRequest', () => {
  const topics = topicsFor('perch/kitchen');
  const limits = { topics, maxPayloadBytes: 4096, maxImageBytes: 64, cameras: ['porch'] };
  const parse = (payload: unknown, topic = topics.ask): ParsedRequest =>
    parseRequest(
      topic,
      Buffer.isBuffer(payload) ? payload : Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)),
      limits,
    );
  const errorOf = (r: ParsedRequest) => (r.ok ? undefined : r.error);

  it('accepts a full request and fills in a missing id', () => {
    const r = parse({
      v: 1,
      text: 'hi',
      camera: 'porch',
      max_tokens: 5,
      seed: 7,
      temperature: 0.5,
      thinking: true,
      reply_to: 'a/b',
    });
    expect(r.ok && r.kind === 'ask' && r.request).toMatchObject({ text: 'hi', camera: 'porch', seed: 7 });
    expect(r.ok && r.kind === 'ask' && r.request.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(parse({ id: 'x', text: 'hi' })).toMatchObject({ ok: true, request: { id: 'x' } });
  });

  it('parses cancels', () => {
    expect(parse({ id: 'q1' }, topics.askCancel)).toEqual({ ok: true, kind: 'cancel', cancel: { id: 'q1' } });
    expect(errorOf(parse({}, topics.askCancel))?.message).toMatch(/^id: /);
  });

  it('names what is wrong', () => {
    expect(errorOf(parse('nope'))?.code).toBe('invalid_json');
    expect(errorOf(parse({ text: '' }))).toMatchObject({
      code: 'invalid_request',
      message: expect.stringMatching(/^text: /),
    });
    expect(errorOf(parse({ text: 'x'.repeat(4001) }))?.message).toMatch(/^text: /);
    expect(errorOf(parse({ text: 'hi', temperature: 3 }))?.message).toMatch(/^temperature: /);
    expect(errorOf(parse({ text: 'hi', v: 2 }))?.message).toMatch(/^v: /);
    expect(errorOf(parse({ text: 'hi', bogus: 1 }))?.message).toBe('unknown field "bogus"');
    expect(errorOf(parse([1, 2]))?.code).toBe('invalid_request');
    expect(errorOf(parse({ text: 'hi', camera: 'garage' }))?.code).toBe('unknown_camera');
    expect(errorOf(parse({ text: 'hi' }, 'perch/kitchen/ask/x'))?.code).toBe('unknown_topic');
  });

  it('bounds sizes: payload before parsing, images after', () => {
    const big = Buffer.alloc(4097, 0x7b); // '{{{{': would be invalid JSON, but size is checked first
    expect(errorOf(parse(big))?.code).toBe('payload_too_large');
    const jpeg = (n: number) =>
      Buffer.concat([Buffer.from([0xff, 0xd8, 0xff]), Buffer.alloc(n - 3)]).toString('base64');
    expect(parse({ text: 'hi', image: jpeg(64) }).ok).toBe(true);
    expect(errorOf(parse({ text: 'hi', image: jpeg(65) }))?.code).toBe('payload_too_large');
    expect(errorOf(parse({ text: 'hi', image: Buffer.from('PNG data').toString('base64') }))?.message).toMatch(
      /^image: .*JPEG/,
    );
    expect(errorOf(parse({ text: 'hi', image: 'not base64!' }))?.message).toMatch(/^image: /);
    expect(errorOf(parse({ text: 'hi', image: jpeg(10), camera: 'porch' }))?.message).toMatch(/not both/);
  });

  it('keeps the id and reply_to of an invalid request so the error can be replied to', () => {
    expect(parse({ id: 'q9', reply_to: 'my/replies', text: 5 })).toMatchObject({
      ok: false,
      id: 'q9',
      replyTo: 'my/replies',
    });
  });
});

describe('reply routing', () => {
  const topics = topicsFor('perch/kitchen');
  it('prefers responseTopic, then reply_to, then <root>/answer', () => {
    const corr = Buffer.from('c');
    expect(replyRouteFor('1', 'r/t', { responseTopic: 'resp/t', correlationData: corr }, topics)).toEqual({
      ok: true,
      route: { id: '1', topic: 'resp/t', correlationData: corr, via: 'response_topic' },
    });
    expect(replyRouteFor('1', 'r/t', {}, topics)).toEqual({
      ok: true,
      route: { id: '1', topic: 'r/t', via: 'reply_to' },
    });
    expect(replyRouteFor('1', undefined, {}, topics)).toEqual({
      ok: true,
      route: { id: '1', topic: 'perch/kitchen/answer', via: 'default' },
    });
  });

  it('refuses wildcards, $ topics, long topics and Perch’s own command topics', () => {
    for (const bad of [
      'a/+/b',
      'a/#',
      '$SYS/x',
      'x'.repeat(513),
      'perch/kitchen/ask',
      'perch/kitchen/listening/set',
      'perch/kitchen',
    ]) {
      expect(replyRouteFor('1', bad, {}, topics).ok, bad).toBe(false);
    }
    expect(replyRouteFor('1', undefined, { responseTopic: 'a/#' }, topics)).toMatchObject({
      ok: false,
      message: expect.stringMatching(/^responseTopic: /),
    });
    expect(replyRouteFor('1', 'perch/kitchen/answer/mine', {}, topics).ok).toBe(true);
    expect(replyRouteFor('1', undefined, { responseTopic: 'r', correlationData: Buffer.alloc(1025) }, topics).ok).toBe(
      false,
    );
  });
});

describe('topics', () => {
  it('lays out every topic under the root', () => {
    const t = topicsFor('perch/kitchen');
    expect([
      t.status,
      t.stats,
      t.transcript,
      t.transcriptPartial,
      t.ask,
      t.askCancel,
      t.answer,
      t.answerStream,
      t.errors,
      t.listening,
      t.listeningSet,
      t.watching,
      t.watchingSet,
    ]).toEqual([
      'perch/kitchen/status',
      'perch/kitchen/stats',
      'perch/kitchen/audio/transcript',
      'perch/kitchen/audio/transcript/partial',
      'perch/kitchen/ask',
      'perch/kitchen/ask/cancel',
      'perch/kitchen/answer',
      'perch/kitchen/answer/stream',
      'perch/kitchen/errors',
      'perch/kitchen/listening',
      'perch/kitchen/listening/set',
      'perch/kitchen/watching',
      'perch/kitchen/watching/set',
    ]);
    expect(t.askText).toBe('perch/kitchen/ask/text');
    expect(t.camera('porch')).toEqual({
      caption: 'perch/kitchen/camera/porch/caption',
      snapshot: 'perch/kitchen/camera/porch/snapshot',
      motion: 'perch/kitchen/camera/porch/motion',
      event: 'perch/kitchen/camera/porch/event',
    });
    expect(() => t.camera('a/#')).toThrow();
    expect(() => topicsFor('perch/#')).toThrow();
  });

  it('matches filters like a broker', () => {
    expect(topicMatches('a/ask/#', 'a/ask')).toBe(true);
    expect(topicMatches('a/ask/#', 'a/ask/cancel')).toBe(true);
    expect(topicMatches('a/+/c', 'a/b/c')).toBe(true);
    expect(topicMatches('a/+/c', 'a/b/d')).toBe(false);
    expect(topicMatches('a/b', 'a/b/c')).toBe(false);
    expect(topicMatches('#', '$SYS/x')).toBe(false);
  });
});

describe('reconnect backoff', () => {
  it('doubles from min to max, with jitter inside the bounds', () => {
    const mid = () => 0.5;
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, 1000, 60_000, mid))).toEqual([
      1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000,
    ]);
    for (const r of [0, 0.999]) {
      for (let n = 0; n < 10; n++) {
        const d = backoffDelay(n, 1000, 60_000, () => r);
        expect(d).toBeGreaterThanOrEqual(1000);
        expect(d).toBeLessThanOrEqual(60_000);
      }
    }
    expect(backoffDelay(3, 1000, 60_000, () => 0)).toBe(6400);
  });
});

describe('plain-text questions on <root>/ask/text', () => {
  const topics = topicsFor('perch/kitchen');
  const limits = { topics, maxPayloadBytes: 4096 };
  it('takes the payload as the question, trimmed', () => {
    const r = parseRequest(topics.askText, Buffer.from('  What is on the counter?\n'), limits);
    expect(r).toMatchObject({ ok: true, kind: 'ask', request: { text: 'What is on the counter?' } });
    expect(r.ok && r.kind === 'ask' && r.request.id).toBeTruthy();
  });
  it('refuses empty and too long text', () => {
    expect(parseRequest(topics.askText, Buffer.from('   '), limits)).toMatchObject({
      ok: false,
      error: { code: 'invalid_request' },
    });
    expect(parseRequest(topics.askText, Buffer.from('x'.repeat(4001)), limits)).toMatchObject({
      ok: false,
      error: { code: 'invalid_request' },
    });
  });
});
