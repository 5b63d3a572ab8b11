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
 *
 * Dead letters: a message the broker refuses must not hold back everything behind it. One refused with a
 * PUBACK reason code is set aside at once. One the broker answers by dropping the connection (Mosquitto
 * does that for a malformed topic, or a packet over its size limit) is found by its strikes: the oldest
 * unacknowledged message when a connection is lost soon after it was sent gets a strike, and from then on
 * goes out alone, so the next losses can only be its fault. At MAX_STRIKES it is set aside: moved to
 * the dead-letter folder, counted, and reported through onDeadLetter.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { silentLogger, type Logger } from '../common/log.js';
import { MESSAGE_FILE, PRIORITIES, fileName, readMessage, writeMessage, type OutboxPriority } from './outbox-store.js';

export type { OutboxPriority } from './outbox-store.js';
const RANK: Record<OutboxPriority, number> = { answer: 3, transcript: 2, caption: 1, event: 1, other: 0 };

/** Connection losses attributed to one message before it is set aside. */
export const MAX_STRIKES = 3;
/** A loss counts against a message only this soon after it was sent (a broker refusing it acts at once). */
export const STRIKE_WINDOW_MS = 5000;

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
  /** Epoch ms of the latest send. */
  sentAt: number;
  /** Connection losses while it was the oldest message in flight (see MAX_STRIKES). */
  strikes: number;
}

/** A message set aside, and why. */
export interface DeadLetter {
  entry: OutboxEntry;
  reason: string;
  /** Its file in the dead-letter folder, when there is one. */
  file?: string;
}

/** Sends one message; resolves on PUBACK. Rejects with `permanent: true` when a retry cannot help. */
export type OutboxSender = (entry: OutboxEntry) => Promise<void>;
export class PermanentSendError extends Error {
  readonly permanent = true;
}

export interface OutboxOptions {
  /** Directory for the message files; absent: memory only (lost on restart). */
  dir?: string;
  /** Directory for messages the broker refused; absent: they are only logged and counted. */
  deadLetterDir?: string;
  /** Told about every message set aside (after its dead-letter file is written). */
  onDeadLetter?: (d: DeadLetter) => void;
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
  /** Set aside as dead letters: refused by reason code, or by dropping the connection MAX_STRIKES times. */
  deadLettered: number;
  delivered: number;
  persistErrors: number;
}

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
  private readonly counters = {
    dropped: 0,
    expired: 0,
    superseded: 0,
    rejected: 0,
    deadLettered: 0,
    delivered: 0,
    persistErrors: 0,
  };
  private readonly droppedByPriority = Object.fromEntries(PRIORITIES.map((p) => [p, 0])) as Record<
    OutboxPriority,
    number
  >;

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
    return {
      depth: this.entries.size,
      bytes: this.bytes,
      ...this.counters,
      droppedByPriority: { ...this.droppedByPriority },
    };
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
    const slot: Slot = {
      ...input,
      seq: this.nextSeq++,
      createdAt: this.now(),
      bytes,
      sending: false,
      removed: false,
      persisted: Promise.resolve(),
      sentAt: 0,
      strikes: 0,
    };
    this.add(slot);
    if (this.opts.dir) {
      const dir = this.opts.dir;
      slot.persisted = this.writeChain = this.writeChain.then(async () => {
        if (!slot.removed) await this.write(dir, slot);
      });
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

  /**
   * The connection was lost (not closed by Perch): a strike for the oldest message in flight if it was
   * sent within STRIKE_WINDOW_MS, and it is set aside at MAX_STRIKES. Then detaches.
   */
  connectionLost(): void {
    const head = [...this.entries.values()].find((e) => e.sending);
    if (head && this.now() - head.sentAt <= STRIKE_WINDOW_MS) {
      head.strikes++;
      this.log.warn(
        { topic: head.topic, seq: head.seq, strikes: head.strikes },
        'outbox: connection lost right after sending this message',
      );
      if (head.strikes >= MAX_STRIKES)
        this.deadLetter(
          head,
          `the broker dropped the connection each of the ${head.strikes} times this message was sent`,
        );
    }
    this.detach();
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
      // A suspect (a message with strikes) travels alone, so a lost connection is its fault or no one's.
      if (e.sending) {
        if (e.strikes > 0) break;
        continue;
      }
      if (e.expiryS && now - e.createdAt >= e.expiryS * 1000) {
        this.remove(e, 'expired');
        continue;
      }
      if (e.strikes > 0 && this.inFlight > 0) break;
      e.sending = true;
      e.sentAt = now;
      this.inFlight++;
      const settle = (err?: unknown) => {
        if (gen !== this.generation) return; // from a connection that is gone
        e.sending = false;
        this.inFlight--;
        if (err === undefined) {
          this.remove(e, 'delivered');
        } else if (err instanceof PermanentSendError) {
          this.counters.rejected++;
          this.deadLetter(e, `the broker refused it: ${err.message}`);
        } else {
          // The connection is failing: wait for the next attach() rather than retry in a loop.
          this.stalled = true;
          return;
        }
        this.pump();
      };
      sender(e).then(
        () => settle(),
        (err: unknown) => settle(err ?? new Error('send failed')),
      );
      if (e.strikes > 0) break;
    }
  }

  private add(slot: Slot): void {
    this.entries.set(slot.seq, slot);
    this.bytes += slot.bytes;
  }

  /** Sets `e` aside: out of the queue, into the dead-letter folder (when there is one), reported. */
  private deadLetter(e: Slot, reason: string): void {
    this.log.error({ topic: e.topic, seq: e.seq, reason }, 'outbox: message set aside as a dead letter');
    const deadDir = this.opts.deadLetterDir;
    const report = (file?: string) => this.opts.onDeadLetter?.({ entry: e, reason, ...(file ? { file } : {}) });
    if (deadDir) {
      // On the write chain before remove() queues the unlink: a crash in between leaves both copies, never none.
      this.writeChain = this.writeChain.then(async () => {
        await fsp.mkdir(deadDir, { recursive: true, mode: 0o700 }).catch(() => undefined);
        const ok = await this.write(deadDir, e, { dead_letter: { reason, at: new Date(this.now()).toISOString() } });
        report(ok ? path.join(deadDir, fileName(e.seq)) : undefined);
      });
    } else {
      queueMicrotask(() => report());
    }
    this.remove(e, 'deadLettered');
  }

  private remove(e: Slot, why: 'delivered' | 'expired' | 'superseded' | 'deadLettered' | 'dropped'): void {
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
      this.log.warn(
        { topic: victim.topic, priority: victim.priority },
        'outbox full: oldest lowest-priority message dropped',
      );
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

  /** Writes `e` to `dir`; on failure the message stays in memory and the error is counted. */
  private async write(dir: string, e: Slot, extra: Record<string, unknown> = {}): Promise<boolean> {
    try {
      await writeMessage(dir, e, extra);
      return true;
    } catch (err) {
      // Disk full or read-only: the message stays queued in memory; only a restart would lose it.
      this.counters.persistErrors++;
      this.log.error({ err: (err as Error).message, dir }, 'outbox: could not persist message');
      return false;
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
      const m = MESSAGE_FILE.exec(name);
      if (!m) continue;
      const stored = await readMessage(full, Number(m[1])).catch((err: Error) => {
        this.log.warn({ file: full, err: err.message }, 'outbox: unreadable message file removed');
        return undefined;
      });
      if (stored) {
        const bytes =
          stored.payload.byteLength + Buffer.byteLength(stored.topic) + (stored.correlationData?.byteLength ?? 0);
        loaded.push({
          ...stored,
          bytes,
          sending: false,
          removed: false,
          persisted: Promise.resolve(),
          sentAt: 0,
          strikes: 0,
        });
      } else await fsp.unlink(full).catch(() => undefined);
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
    if (loaded.length)
      this.log.info({ messages: this.entries.size, bytes: this.bytes }, 'outbox: loaded messages from an earlier run');
  }
}
