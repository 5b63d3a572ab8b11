/** A camera snapshot URL polled at an interval; errors back off exponentially and are reported in state. */
import type { Logger } from '../common/log.js';
import type { CameraSourceSettings } from '../config/schema.js';
import { Backoff, redactCredentials, sleep } from './backoff.js';
import { PollingFrameSource } from './base.js';
import type { FrameSource } from './types.js';

export type HttpSettings = Extract<CameraSourceSettings, { type: 'http' }>;

export const MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024;

export class HttpSnapshotSource extends PollingFrameSource implements FrameSource {
  private readonly url: string;
  private readonly headers: Record<string, string> = { accept: 'image/jpeg' };

  constructor(
    camera: string,
    private readonly settings: HttpSettings,
    logger: Logger,
    private readonly maxBytes = MAX_SNAPSHOT_BYTES,
  ) {
    super(camera, 'http', logger);
    // fetch refuses URLs with user:password@; cameras commonly use them, so they become a Basic header.
    const url = new URL(settings.url);
    if (url.username || url.password) {
      const user = decodeURIComponent(url.username);
      const pass = decodeURIComponent(url.password);
      this.headers.authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
      url.username = '';
      url.password = '';
    }
    this.url = url.toString();
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff(
      this.settings.restart_min_ms,
      Math.max(this.settings.restart_min_ms, this.settings.restart_max_ms),
    );
    while (!signal.aborted) {
      const began = Date.now();
      let wait: number;
      try {
        const jpeg = await this.fetchOnce(signal);
        if (signal.aborted) break;
        backoff.reset();
        this.setState({ status: 'running', lastError: undefined });
        this.emitFrame(jpeg);
        wait = this.settings.interval_ms - (Date.now() - began);
      } catch (err) {
        if (signal.aborted) break;
        const message = redactCredentials(`snapshot from ${this.settings.url} failed: ${describe(err)}`);
        wait = backoff.next();
        this.log.warn({ retryInMs: wait }, message);
        this.setState({ status: 'restarting', restarts: this.state().restarts + 1, lastError: message });
      }
      await sleep(Math.max(0, wait), signal);
    }
  }

  private async fetchOnce(signal: AbortSignal): Promise<Buffer> {
    const both = AbortSignal.any([signal, AbortSignal.timeout(this.settings.timeout_ms)]);
    const res = await fetch(this.url, { signal: both, headers: this.headers, redirect: 'follow' });
    try {
      if (!res.ok) throw new Error(`HTTP ${res.status} ${res.statusText}`.trim());
      const type = (res.headers.get('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
      if (type && !type.startsWith('image/') && type !== 'application/octet-stream') {
        throw new Error(`content-type ${type}, expected image/jpeg`);
      }
      const length = Number(res.headers.get('content-length') ?? NaN);
      if (length > this.maxBytes) throw new Error(`snapshot of ${length} bytes exceeds ${this.maxBytes}`);
      const body = await readBounded(res, this.maxBytes);
      if (body.length < 4 || body[0] !== 0xff || body[1] !== 0xd8 || body[2] !== 0xff)
        throw new Error('response is not a JPEG image');
      return body;
    } finally {
      // Free the connection when we bailed out before reading the body.
      if (!res.bodyUsed) await res.body?.cancel().catch(() => undefined);
    }
  }
}

async function readBounded(res: Response, max: number): Promise<Buffer> {
  if (!res.body) return Buffer.alloc(0);
  const parts: Uint8Array[] = [];
  let total = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > max) {
      await reader.cancel();
      throw new Error(`snapshot larger than ${max} bytes`);
    }
    parts.push(value);
  }
  return Buffer.concat(parts);
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    if (err.name === 'TimeoutError') return 'timed out';
    const cause = (err as Error & { cause?: unknown }).cause;
    return cause instanceof Error ? `${err.message} (${cause.message})` : err.message;
  }
  return String(err);
}
