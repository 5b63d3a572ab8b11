/**
 * The Wyoming protocol's framing (github.com/OHF-Voice/wyoming, as its Python package 1.10 reads and writes it):
 * an event is one JSON header line ending in "\n" ({type, data?, data_length?, payload_length?, version?}),
 * then data_length bytes of JSON merged over the header's data, then payload_length raw bytes. Neither block
 * ends with a newline: a stray one makes the Python reader see a broken event.
 *
 * Everything here comes from the network, so every length is bounded before it is waited for, and a header
 * that is not a JSON object with a string type ends the connection with a clear error.
 */

export interface WyomingEvent {
  type: string;
  data: Record<string, unknown>;
  payload?: Buffer;
  /** The sender's protocol version (the Python package's version), when it says one. */
  version?: string;
}

export interface FrameLimits {
  /** Header line bytes (the Python reader's own limit is 64 KiB). */
  maxHeaderBytes: number;
  /** data_length and payload_length bound. */
  maxBlockBytes: number;
}

/** The peer broke the framing: the connection cannot be read further. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
}

/** The version this server writes in its headers: the protocol's, as the Python package 1.10.2 speaks it. */
export const PROTOCOL_VERSION = '1.10.2';

/** Writes one event as the Python package does: data always as a separate block, lengths in bytes. */
export function encodeEvent(type: string, data?: Record<string, unknown>, payload?: Buffer): Buffer {
  const header: Record<string, unknown> = { type, version: PROTOCOL_VERSION };
  const parts: Buffer[] = [];
  if (data && Object.keys(data).length > 0) {
    const block = Buffer.from(JSON.stringify(data), 'utf8');
    header.data_length = block.length;
    parts.push(block);
  }
  if (payload && payload.length > 0) {
    header.payload_length = payload.length;
    parts.push(payload);
  }
  return Buffer.concat([Buffer.from(`${JSON.stringify(header)}\n`, 'utf8'), ...parts]);
}

type Pending = {
  header: { type: string; data: Record<string, unknown>; version?: string };
  dataLength: number;
  payloadLength: number;
};

/** Incremental reader: push() what the socket gave, get the whole events it completed. */
export class EventReader {
  private buf: Buffer = Buffer.alloc(0);
  private pending: Pending | null = null;

  constructor(private readonly limits: FrameLimits) {}

  push(chunk: Buffer): WyomingEvent[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const events: WyomingEvent[] = [];
    for (;;) {
      if (!this.pending) {
        const nl = this.buf.indexOf(0x0a);
        if (nl < 0) {
          if (this.buf.length > this.limits.maxHeaderBytes)
            throw new ProtocolError(`event header longer than ${this.limits.maxHeaderBytes} bytes`);
          return events;
        }
        if (nl > this.limits.maxHeaderBytes)
          throw new ProtocolError(`event header longer than ${this.limits.maxHeaderBytes} bytes`);
        const line = this.buf.subarray(0, nl).toString('utf8').replace(/\r$/, '');
        this.buf = this.buf.subarray(nl + 1);
        if (line.trim() === '') throw new ProtocolError('empty event header line');
        this.pending = this.parseHeader(line);
      }
      const p = this.pending;
      if (this.buf.length < p.dataLength + p.payloadLength) return events;
      let data = p.header.data;
      if (p.dataLength > 0) {
        const extra = parseJsonObject(this.buf.subarray(0, p.dataLength).toString('utf8'), 'event data');
        data = { ...data, ...extra };
      }
      const payload =
        p.payloadLength > 0 ? Buffer.from(this.buf.subarray(p.dataLength, p.dataLength + p.payloadLength)) : undefined;
      this.buf = this.buf.subarray(p.dataLength + p.payloadLength);
      this.pending = null;
      events.push({
        type: p.header.type,
        data,
        ...(payload ? { payload } : {}),
        ...(p.header.version ? { version: p.header.version } : {}),
      });
    }
  }

  private parseHeader(line: string): Pending {
    const h = parseJsonObject(line, 'event header');
    if (typeof h.type !== 'string' || h.type.length === 0 || h.type.length > 64)
      throw new ProtocolError('event header has no type (a string of 1 to 64 characters)');
    const length = (key: 'data_length' | 'payload_length'): number => {
      const v = h[key];
      if (v === undefined || v === null) return 0;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
        throw new ProtocolError(`${key} must be a whole number of bytes, got ${JSON.stringify(v)}`);
      if (v > this.limits.maxBlockBytes)
        throw new ProtocolError(`${key} ${v} is over the limit of ${this.limits.maxBlockBytes} bytes`);
      return v;
    };
    let data: Record<string, unknown> = {};
    if (h.data !== undefined && h.data !== null) {
      if (typeof h.data !== 'object' || Array.isArray(h.data)) throw new ProtocolError('event data must be an object');
      data = h.data as Record<string, unknown>;
    }
    return {
      header: {
        type: h.type,
        data,
        ...(typeof h.version === 'string' ? { version: h.version.slice(0, 32) } : {}),
      },
      dataLength: length('data_length'),
      payloadLength: length('payload_length'),
    };
  }
}

function parseJsonObject(text: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new ProtocolError(`${what} is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ProtocolError(`${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/** Whether a peer's protocol version has the streaming events (transcript-chunk, handled-chunk): 1.7.0 and later. */
export function hasStreamingEvents(version: string | undefined): boolean {
  const m = /^(\d+)\.(\d+)/.exec(version ?? '');
  if (!m) return false;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > 1 || (major === 1 && minor >= 7);
}
