/**
 * `<root>/errors` messages, built in one place: every module that reports a failure (a request refused, a
 * transcript that could not be made, a result the broker refused, a module that did not start) says it
 * through MqttConnection.publishError with an ErrorReport.
 */
import { type ErrorCode, type ErrorMessage, isoNow } from './messages.js';

const MAX_ERROR_CHARS = 2000;
const MAX_ERROR_TOPIC_CHARS = 1024;

export interface ErrorReport {
  /** The request or result the failure belongs to, when there is one. */
  id?: string;
  code: ErrorCode;
  /** One sentence a person can act on (cut at 2,000 characters). */
  message: string;
  /** The topic the failure is about (the request's, or the one the result was for). */
  topic: string;
}

export function errorMessage(r: ErrorReport, now: number = Date.now()): ErrorMessage {
  return {
    v: 1,
    ts: isoNow(now),
    ...(r.id ? { id: r.id } : {}),
    code: r.code,
    message: r.message.slice(0, MAX_ERROR_CHARS) || r.code,
    topic: r.topic.slice(0, MAX_ERROR_TOPIC_CHARS) || '(empty topic)',
  };
}
