/**
 * What the hearing pipeline says over MQTT, in one place (as AskEndpoint is for questions): the speech and
 * sound-level states, transcripts and their partials, spoken answers and their stream, push-to-talk
 * requests, and the errors of each. The pipeline decides; this owns the topics, message shapes and delivery.
 */
import type { IncomingMessage, MqttConnection } from './connection.js';
import {
  type AnswerMessage,
  type AnswerStreamMessage,
  type ErrorCode,
  type TranscriptMessage,
  type TranscriptPartialMessage,
  encode,
  isoNow,
} from './messages.js';

const JSON_TYPE = 'application/json';
/** Longest streamed piece of text, and longest text a message carries. */
const MAX_DELTA = 10_000;
export const MAX_TEXT = 100_000;
const OWNER = 'hearing';

export class HearingPublisher {
  constructor(private readonly conn: MqttConnection) {}

  /** Push-to-talk presses (`<root>/audio/talk`), oversized ones included so they can be answered. */
  onTalk(handler: (msg: IncomingMessage) => void): void {
    this.conn.removeOwner(OWNER);
    this.conn.subscribe(this.conn.topics.talk, handler, { owner: OWNER, acceptOversized: true });
  }

  stop(): void {
    this.conn.removeOwner(OWNER);
  }

  soundLevel(dbfs: number): void {
    void this.conn.publish(this.conn.topics.soundLevel, dbfs.toFixed(1), { qos: 0, retain: true });
  }

  speech(speaking: boolean): Promise<unknown> {
    return this.conn.publish(this.conn.topics.speech, speaking ? 'ON' : 'OFF', { qos: 1, retain: true });
  }

  transcriptPartial(id: string, seq: number, delta: string, text: string): void {
    const m: TranscriptPartialMessage = { v: 1, id, ts: isoNow(), seq, delta: delta.slice(0, MAX_DELTA), text };
    void this.conn.publish(this.conn.topics.transcriptPartial, encode(m), { qos: 0, contentType: JSON_TYPE });
  }

  transcript(msg: TranscriptMessage): Promise<unknown> {
    return this.conn.publish(this.conn.topics.transcript, encode(msg), {
      final: true,
      qos: 1,
      priority: 'transcript',
      contentType: JSON_TYPE,
    });
  }

  answerChunk(id: string, seq: number, delta: string, done: boolean): void {
    const m: AnswerStreamMessage = { v: 1, id, ts: isoNow(), seq, delta: delta.slice(0, MAX_DELTA), done };
    void this.conn.publish(this.conn.topics.answerStream, encode(m), { qos: 0, contentType: JSON_TYPE });
  }

  answer(msg: AnswerMessage): Promise<unknown> {
    return this.conn.publish(this.conn.topics.answer, encode(msg), {
      final: true,
      qos: 1,
      priority: 'answer',
      contentType: JSON_TYPE,
    });
  }

  /** A push-to-talk press that cannot be used. */
  talkRefused(code: ErrorCode, reason: string): Promise<unknown> {
    return this.conn.publishError(
      { code, message: `push-to-talk ignored: ${reason}`, topic: this.conn.topics.talk },
      'answer',
    );
  }

  transcriptFailed(id: string, code: ErrorCode, reason: string): Promise<unknown> {
    const topic = this.conn.topics.transcript;
    return this.conn.publishError({ id, code, message: `no transcript: ${reason}`, topic }, 'transcript');
  }

  answerFailed(id: string, code: ErrorCode, reason: string): Promise<unknown> {
    const topic = this.conn.topics.answer;
    return this.conn.publishError(
      { id, code, message: `no answer to the spoken question: ${reason}`, topic },
      'answer',
    );
  }
}
