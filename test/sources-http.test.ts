import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { HttpSnapshotSource } from '../src/sources/http.js';
import { createFrameSource } from '../src/sources/index.js';
import type { Frame, FrameSource, SourceState } from '../src/sources/types.js';
import { waitFor } from './fixtures/fake-bin.js';
import { image } from './fixtures/media.js';

type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;
let jpeg: Buffer;
let server: Server | undefined;
let source: FrameSource | undefined;
const requests: Array<{ at: number; auth?: string; url?: string }> = [];

beforeAll(async () => {
  jpeg = await image(77, 'jpeg', 100, 60);
});

afterEach(async () => {
  await source?.stop();
  source = undefined;
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r));
  server = undefined;
  requests.length = 0;
});

async function serve(handler: Handler): Promise<string> {
  let n = 0;
  server = createServer((req, res) => {
    requests.push({ at: Date.now(), auth: req.headers.authorization, url: req.url });
    handler(req, res, n++);
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function sendJpeg(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': jpeg.length });
  res.end(jpeg);
}

function poll(
  url: string,
  maxBytes?: number,
  timeout_ms = 2000,
): { frames: Frame[]; states: SourceState[]; src: FrameSource } {
  const settings = {
    type: 'http' as const,
    url,
    interval_ms: 100,
    timeout_ms,
    restart_min_ms: 50,
    restart_max_ms: 400,
  };
  const src = maxBytes
    ? new HttpSnapshotSource('porch', settings, silentLogger, maxBytes)
    : createFrameSource('porch', settings, silentLogger);
  source = src;
  const frames: Frame[] = [];
  const states: SourceState[] = [];
  src.on('frame', (f) => frames.push(f));
  src.on('state', (s) => states.push(s));
  return { frames, states, src };
}

describe('HTTP snapshot source', () => {
  it('polls the URL and emits each JPEG, sending URL credentials as Basic auth', async () => {
    const host = await serve((_req, res) => sendJpeg(res));
    const { frames, src } = poll(`http://cam%20user:p%40ss@${host}/snap.jpg?x=1`);
    await src.start();
    await waitFor(() => frames.length >= 3, 'three snapshots');
    expect(frames.map((f) => f.seq).slice(0, 3)).toEqual([0, 1, 2]);
    expect(frames.every((f) => f.jpeg.equals(jpeg) && f.camera === 'porch')).toBe(true);
    expect(requests[0]!.auth).toBe(`Basic ${Buffer.from('cam user:p@ss').toString('base64')}`);
    expect(requests[0]!.url).toBe('/snap.jpg?x=1');
    // Polling waits its interval between requests.
    expect(requests[2]!.at - requests[1]!.at).toBeGreaterThanOrEqual(90);
    expect(src.state().status).toBe('running');
  });

  it('backs off on errors, reports them without credentials, and recovers', async () => {
    const host = await serve((_req, res, n) => {
      if (n < 3) {
        res.writeHead(503, { 'content-type': 'text/plain' });
        res.end('busy');
      } else sendJpeg(res);
    });
    const { frames, states, src } = poll(`http://admin:hunter2@${host}/snap`);
    await src.start();
    await waitFor(() => frames.length >= 1, 'a snapshot after the errors');
    const errors = states.filter((s) => s.status === 'restarting');
    expect(errors.length).toBe(3);
    expect(errors[0]!.lastError).toMatch(/HTTP 503/);
    expect(errors[0]!.lastError).toContain('http://***@');
    expect(errors.some((s) => s.lastError?.includes('hunter2'))).toBe(false);
    // Delays 50, 100, 200 ms between the failing requests.
    expect(requests[1]!.at - requests[0]!.at).toBeGreaterThanOrEqual(45);
    expect(requests[2]!.at - requests[1]!.at).toBeGreaterThanOrEqual(95);
    expect(requests[3]!.at - requests[2]!.at).toBeGreaterThanOrEqual(195);
    expect(src.state()).toMatchObject({ status: 'running', restarts: 3 });
    expect(src.state().lastError).toBeUndefined();
  });

  it('rejects responses that are not JPEG images', async () => {
    const host = await serve((_req, res, n) => {
      if (n % 2 === 0) {
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end('<html>login</html>');
      } else {
        res.writeHead(200, { 'content-type': 'image/jpeg' });
        res.end('GIF89a not really');
      }
    });
    const { frames, states, src } = poll(`http://${host}/`);
    await src.start();
    await waitFor(() => states.filter((s) => s.status === 'restarting').length >= 2, 'two failures');
    const messages = states.map((s) => s.lastError ?? '');
    expect(messages.some((m) => m.includes('content-type text/html, expected image/jpeg'))).toBe(true);
    expect(messages.some((m) => m.includes('not a JPEG image'))).toBe(true);
    expect(frames).toEqual([]);
  });

  it('bounds the snapshot size, with and without a content-length', async () => {
    const host = await serve((_req, res, n) => {
      if (n % 2 === 0) {
        res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': jpeg.length });
        res.end(jpeg);
      } else {
        res.writeHead(200, { 'content-type': 'image/jpeg' }); // chunked
        res.write(jpeg.subarray(0, 200));
        setTimeout(() => res.end(jpeg.subarray(200)), 20);
      }
    });
    const { frames, states, src } = poll(`http://${host}/`, 300);
    await src.start();
    await waitFor(() => states.filter((s) => s.status === 'restarting').length >= 2, 'two failures');
    const messages = states.map((s) => s.lastError ?? '');
    expect(messages.some((m) => m.includes(`snapshot of ${jpeg.length} bytes exceeds 300`))).toBe(true);
    expect(messages.some((m) => m.includes('snapshot larger than 300 bytes'))).toBe(true);
    expect(frames).toEqual([]);
  });

  it('times out a camera that does not answer, and stop() does not wait for it', async () => {
    const host = await serve(() => undefined); // never responds
    const { states, src } = poll(`http://${host}/`, undefined, 150);
    await src.start();
    await waitFor(() => states.find((s) => s.status === 'restarting'), 'a timeout');
    expect(states.find((s) => s.status === 'restarting')!.lastError).toMatch(/timed out/);
    await src.stop();
    // A 20 s timeout in flight: stop() aborts the request rather than waiting it out.
    const slow = poll(`http://${host}/`, undefined, 20_000);
    const before = requests.length;
    await slow.src.start();
    await waitFor(() => requests.length > before, 'the request in flight');
    const began = Date.now();
    await slow.src.stop();
    expect(Date.now() - began).toBeLessThan(10_000);
    expect(slow.src.state().status).toBe('stopped');
    expect(slow.states.some((s) => s.status === 'restarting')).toBe(false);
  });
});
