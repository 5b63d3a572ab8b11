/**
 * The outbox's file format: one file per message, `<seq, 16 digits>.msg`, holding one JSON header line
 * and then the raw payload. Written to `<seq>.tmp`, fsync'd, renamed and the directory fsync'd, so after
 * a crash a file is either complete or absent. Dead letters (messages the broker refused) use the same
 * format in their own folder, with `dead_letter` in the header saying why and when.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';

export type OutboxPriority = 'answer' | 'transcript' | 'caption' | 'event' | 'other';
export const PRIORITIES: readonly OutboxPriority[] = ['answer', 'transcript', 'caption', 'event', 'other'];

/** What a message file holds. */
export interface StoredMessage {
  seq: number;
  topic: string;
  payload: Buffer;
  retain: boolean;
  priority: OutboxPriority;
  createdAt: number;
  expiryS?: number;
  contentType?: string;
  correlationData?: Buffer;
}

export const MESSAGE_FILE = /^(\d{16})\.msg$/;
export const fileName = (seq: number): string => `${String(seq).padStart(16, '0')}.msg`;

/** Writes one message file atomically; `extra` adds header fields (a dead letter's reason). Throws on I/O errors. */
export async function writeMessage(dir: string, e: StoredMessage, extra: Record<string, unknown> = {}): Promise<void> {
  const header = JSON.stringify({
    v: 1,
    seq: e.seq,
    topic: e.topic,
    retain: e.retain,
    priority: e.priority,
    created_at: e.createdAt,
    expiry_s: e.expiryS,
    content_type: e.contentType,
    correlation_data: e.correlationData?.toString('base64'),
    ...extra,
  });
  const tmp = path.join(dir, `${String(e.seq).padStart(16, '0')}.tmp`);
  try {
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writev([Buffer.from(header + '\n'), e.payload]);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, path.join(dir, fileName(e.seq)));
    await syncDir(dir);
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** Reads one message file; throws when it is not one. */
export async function readMessage(file: string, seq: number): Promise<StoredMessage> {
  const buf = await fsp.readFile(file);
  const nl = buf.indexOf(0x0a);
  if (nl < 0) throw new Error('no header');
  const h = JSON.parse(buf.subarray(0, nl).toString('utf8')) as Record<string, unknown>;
  if (
    h.v !== 1 ||
    h.seq !== seq ||
    typeof h.topic !== 'string' ||
    typeof h.retain !== 'boolean' ||
    typeof h.created_at !== 'number'
  ) {
    throw new Error('bad header');
  }
  const priority = PRIORITIES.includes(h.priority as OutboxPriority) ? (h.priority as OutboxPriority) : 'other';
  return {
    seq,
    topic: h.topic,
    payload: Buffer.from(buf.subarray(nl + 1)),
    retain: h.retain,
    priority,
    createdAt: h.created_at,
    expiryS: typeof h.expiry_s === 'number' ? h.expiry_s : undefined,
    contentType: typeof h.content_type === 'string' ? h.content_type : undefined,
    correlationData: typeof h.correlation_data === 'string' ? Buffer.from(h.correlation_data, 'base64') : undefined,
  };
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
