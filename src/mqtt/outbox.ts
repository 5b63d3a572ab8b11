/**
 * Outbox: the bounded, persisted queue of final results (QoS 1) between Perch and the broker.
 *
 * Every final message enters here first and leaves only when the broker acknowledged it (PUBACK), so
 * results survive broker outages and, because each message is also written to disk, daemon restarts.
 *
 * Storage: one file per message, `<state_dir>/outbox/<seq, 16 digits>.msg`, holding one JSON header
 * line and then the raw payload. A message is written to `<seq>.tmp`, fsync'd, renamed and the
 * directory fsync'd, so after a crash a file is either complete or absent (leftover .tmp files are
 * removed on open). Acknowledged or dropped messages are unlinked: with one file per message there is
 * no log to compact. Writes run one at a time in sequence order. A message may be sent before its file
 * is complete (results are not delayed by a slow SD card); its file is removed after the write ends.
 *
 * Caps: at most max_messages messages and max_bytes bytes (payload + topic + correlation data). When a
 * new message does not fit, the oldest message of the lowest priority goes first (priority: answer >
 * transcript > caption = event > other); if the new message itself has the lowest priority, it is the
 * one dropped. Messages being sent are never dropped. A retained message supersedes a queued,
 * not yet sent retained message on the same topic (only the newest retained value matters).
 * Messages with an expiry are dropped when it passes before they could be sent.
 *
 * Delivery: attach(sender) starts sending in sequence order with a window of in-flight messages;
 * detach() (the connection dropped) forgets what was in flight, and the next attach() starts again
 * from the oldest message. So delivery is at-least-once and in order.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { silentLogger, type Logger } from '../log.js';

export type OutboxPriority = 'answer' | 'transcript' | 'caption' | 'event' | 'other';
const RANK: Record<OutboxPriority, number> = { answer: 3, transcript: 2, caption: 1, event: 1, other: 0 };
const PRIORITIES = Object.keys(RANK) as OutboxPriority[];

export interface OutboxInput {
  topic: string;
  payload: Buffer;
  retain: boolean;
  priority: OutboxPriority;
  /** Seconds the message stays useful (MQTT 5 message expiry); 0 or absent: forever. */
  expiryS?: number;
  contentType?: string;
  correlationData?: Buffer;
}

export interface OutboxEntry extends OutboxInput {
  readonly seq: number;
  /** Epoch ms when the message was queued (kept across restarts, so expiry counts the outage). */
  readonly createdAt: number;
  readonly bytes: number;
}

interface Slot extends OutboxEntry {
  sending: boolean;
  removed: boolean;
  persisted: Promise<void>;
}

/** Sends one message; resolves on PUBACK. Rejects with `permanent: true` when a retry cannot help. */
export type OutboxSender = (entry: OutboxEntry) => Promise<void>;
export class PermanentSendError extends Error {
  readonly permanent = true;
}

export interface OutboxOptions {
  /** Directory for the message files; absent: memory only (lost on restart). */
  dir?: string;
  maxMessages: number;
  maxBytes: number;
  /** Messages sent before their PUBACK arrives. */
  window?: number;
  logger?: Logger;
  now?: () => number;
}

export interface OutboxStats {
  depth: number;
  bytes: number;
  /** Dropped because the outbox was full (or the message alone exceeded max_bytes). */
  dropped: number;
  droppedByPriority: Record<OutboxPriority, number>;
  expired: number;
  superseded: number;
  /** Refused by the broker with a reason code that retrying cannot fix. */
  rejected: number;
  delivered: number;
  persistErrors: number;
}

const FILE = /^(\d{16})\.msg$/;
const fileName = (seq: number) => `${String(seq).padStart(16, '0')}.msg`;

export class Outbox {
  private readonly entries = new Map<number, Slot>();
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly window: number;
  private nextSeq = 1;
  private bytes = 0;
  private writeChain: Promise<void> = Promise.resolve();
  private sender: OutboxSender | undefined;
  private generation = 0;
  private inFlight = 0;
  private stalled = false;
  private emptyWaiters: Array<() => void> = [];
  private readonly counters = { dropped: 0, expired: 0, superseded: 0, rejected: 0, delivered: 0, persistErrors: 0 };
  private readonly droppedByPriority = Object.fromEntries(PRIORITIES.map((p) => [p, 0])) as Record<OutboxPriority, number>;

  private constructor(private readonly opts: OutboxOptions) {
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
    this.window = Math.max(1, opts.window ?? 16);
  }

  /** Opens the outbox, loading messages persisted by an earlier run. */
  static async open(opts: OutboxOptions): Promise<Outbox> {
    const box = new Outbox(opts);
    if (opts.dir) await box.load(opts.dir);
    return box;
  }

  stats(): OutboxStats {
    return { depth: this.entries.size, bytes: this.bytes, ...this.counters, droppedByPriority: { ...this.droppedByPriority } };
  }

  /** Messages in delivery order. */
  list(): OutboxEntry[] {
    return [...this.entries.values()];
  }

  /**
   * Queues a message. It is in memory (and sendable) at once; the promise resolves when its file is
   * written. 'dropped' when it did not fit (it had the lowest priority, or alone exceeds max_bytes).
   */
  async enqueue(input: OutboxInput): Promise<'queued' | 'dropped'> {
    const bytes = input.payload.byteLength + Buffer.byteLength(input.topic) + (input.correlationData?.byteLength ?? 0);
    if (bytes > this.opts.maxBytes) {
      this.countDrop(input.priority);
      this.log.warn({ topic: input.topic, bytes }, 'outbox: message larger than max_bytes dropped');
      return 'dropped';
    }
    if (input.retain) {
      for (const e of this.entries.values()) {
        if (e.retain && !e.sending && e.topic === input.topic) this.remove(e, 'superseded');
      }
    }
    if (!this.makeRoom(bytes, RANK[input.priority])) {
      this.countDrop(input.priority);
      this.log.warn({ topic: input.topic, priority: input.priority }, 'outbox full: new message dropped');
      return 'dropped';
    }
    const slot: Slot = { ...input, seq: this.nextSeq++, createdAt: this.now(), bytes, sending: false, removed: false, persisted: Promise.resolve() };
    this.add(slot);
    if (this.opts.dir) {
      const dir = this.opts.dir;
      slot.persisted = this.writeChain = this.writeChain.then(() => (slot.removed ? undefined : this.write(dir, slot)));
    }
    this.pump();
    await slot.persisted;
    return 'queued';
  }

  /** Starts delivering through `sender`, oldest first. */
  attach(sender: OutboxSender): void {
    this.generation++;
    this.sender = sender;
    this.inFlight = 0;
    this.stalled = false;
    for (const e of this.entries.values()) e.sending = false;
    this.pump();
  }

  /** Stops delivering; messages in flight are sent again after the next attach(). */
  detach(): void {
    this.generation++;
    this.sender = undefined;
    this.inFlight = 0;
    for (const e of this.entries.values()) e.sending = false;
  }

  /** Resolves true once the outbox is empty, false after timeoutMs. */
  whenEmpty(timeoutMs: number): Promise<boolean> {
    if (this.entries.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.emptyWaiters = this.emptyWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      this.emptyWaiters.push(done);
    });
  }

  /** Detaches and waits for pending file writes and removals. */
  async close(): Promise<void> {
    this.detach();
    await this.writeChain;
  }

  private pump(): void {
    const sender = this.sender;
    if (!sender || this.stalled) return;
    const gen = this.generation;
    const now = this.now();
    for (const e of this.entries.values()) {
      if (this.inFlight >= this.window) break;
      if (e.sending) continue;
      if (e.expiryS && now - e.createdAt >= e.expiryS * 1000) {
        this.remove(e, 'expired');
        continue;
      }
      e.sending = true;
      this.inFlight++;
      const settle = (err?: unknown) => {
        if (gen !== this.generation) return; // from a connection that is gone
        e.sending = false;
        this.inFlight--;
        if (err === undefined) {
          this.remove(e, 'delivered');
        } else if (err instanceof PermanentSendError) {
          this.log.error({ topic: e.topic, err: err.message }, 'outbox: broker refused message; dropped');
          this.remove(e, 'rejected');
        } else {
          // The connection is failing: wait for the next attach() rather than retry in a loop.
          this.stalled = true;
          return;
        }
        this.pump();
      };
      sender(e).then(() => settle(), (err: unknown) => settle(err ?? new Error('send failed')));
    }
  }

  private add(slot: Slot): void {
    this.entries.set(slot.seq, slot);
    this.bytes += slot.bytes;
  }

  private remove(e: Slot, why: 'delivered' | 'expired' | 'superseded' | 'rejected' | 'dropped'): void {
    if (e.removed) return;
    e.removed = true;
    this.entries.delete(e.seq);
    this.bytes -= e.bytes;
    if (why === 'dropped') this.countDrop(e.priority);
    else this.counters[why]++;
    const dir = this.opts.dir;
    // Unlink after the write (if any) finished, so a late write cannot resurrect the file.
    if (dir) {
      this.writeChain = this.writeChain.then(() => fsp.unlink(path.join(dir, fileName(e.seq))).catch(() => undefined));
    }
    if (this.entries.size === 0) {
      const waiters = this.emptyWaiters;
      this.emptyWaiters = [];
      for (const w of waiters) w();
    }
  }

  private countDrop(priority: OutboxPriority): void {
    this.counters.dropped++;
    this.droppedByPriority[priority]++;
  }

  /** Drops queued messages until `bytes` more fit; false when the newcomer (rank) should go instead. */
  private makeRoom(bytes: number, rank: number): boolean {
    while (this.entries.size + 1 > this.opts.maxMessages || this.bytes + bytes > this.opts.maxBytes) {
      const victim = this.lowest();
      if (!victim || RANK[victim.priority] > rank) return false;
      this.log.warn({ topic: victim.topic, priority: victim.priority }, 'outbox full: oldest lowest-priority message dropped');
      this.remove(victim, 'dropped');
    }
    return true;
  }

  /** The oldest message of the lowest priority that is not being sent. */
  private lowest(): Slot | undefined {
    let best: Slot | undefined;
    for (const e of this.entries.values()) {
      if (e.sending) continue;
      if (!best || RANK[e.priority] < RANK[best.priority]) best = e; // Map order is seq order: first wins ties
    }
    return best;
  }

  private async write(dir: string, e: Slot): Promise<void> {
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
      // Disk full or read-only: the message stays queued in memory; only a restart would lose it.
      this.counters.persistErrors++;
      this.log.error({ err: (err as Error).message, dir }, 'outbox: could not persist message');
      await fsp.unlink(tmp).catch(() => undefined);
    }
  }

  private async load(dir: string): Promise<void> {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const names = (await fsp.readdir(dir)).sort();
    const loaded: Slot[] = [];
    for (const name of names) {
      const full = path.join(dir, name);
      if (name.endsWith('.tmp')) {
        await fsp.unlink(full).catch(() => undefined);
        continue;
      }
      const m = FILE.exec(name);
      if (!m) continue;
      const slot = await readMessage(full, Number(m[1])).catch((err: Error) => {
        this.log.warn({ file: full, err: err.message }, 'outbox: unreadable message file removed');
        return undefined;
      });
      if (slot) loaded.push(slot);
      else await fsp.unlink(full).catch(() => undefined);
    }
    for (const slot of loaded) {
      this.nextSeq = Math.max(this.nextSeq, slot.seq + 1);
      // Caps may have shrunk since the files were written: apply the same drop order.
      if (slot.bytes > this.opts.maxBytes || !this.makeRoom(slot.bytes, RANK[slot.priority])) {
        this.countDrop(slot.priority);
        await fsp.unlink(path.join(dir, fileName(slot.seq))).catch(() => undefined);
        continue;
      }
      this.add(slot);
    }
    if (loaded.length) this.log.info({ messages: this.entries.size, bytes: this.bytes }, 'outbox: loaded messages from an earlier run');
  }
}

async function readMessage(file: string, seq: number): Promise<Slot> {
  const buf = await fsp.readFile(file);
  const nl = buf.indexOf(0x0a);
  if (nl < 0) throw new Error('no header');
  const h = JSON.parse(buf.subarray(0, nl).toString('utf8')) as Record<string, unknown>;
  if (h.v !== 1 || h.seq !== seq || typeof h.topic !== 'string' || typeof h.retain !== 'boolean' || typeof h.created_at !== 'number') {
    throw new Error('bad header');
  }
  const priority = PRIORITIES.includes(h.priority as OutboxPriority) ? (h.priority as OutboxPriority) : 'other';
  const payload = Buffer.from(buf.subarray(nl + 1));
  const correlationData = typeof h.correlation_data === 'string' ? Buffer.from(h.correlation_data, 'base64') : undefined;
  return {
    seq,
    topic: h.topic,
    payload,
    retain: h.retain,
    priority,
    createdAt: h.created_at,
    expiryS: typeof h.expiry_s === 'number' ? h.expiry_s : undefined,
    contentType: typeof h.content_type === 'string' ? h.content_type : undefined,
    correlationData,
    bytes: payload.byteLength + Buffer.byteLength(h.topic) + (correlationData?.byteLength ?? 0),
    sending: false,
    removed: false,
    persisted: Promise.resolve(),
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
