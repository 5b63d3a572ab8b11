/**
 * Takes the JPEG retained on a topic (an ask request's `image_topic`, e.g. another camera's snapshot):
 * subscribes briefly, keeps the first message, unsubscribes. Bounded in time and size.
 */
import type { ErrorCode } from './messages.js';
import type { IncomingMessage, MqttConnection } from './connection.js';
import { topicNameProblem } from '../common/mqtt-strings.js';

/** How long a request waits for the retained message. */
export const RETAINED_IMAGE_TIMEOUT_MS = 2000;

export class RetainedImageError extends Error {
  constructor(
    readonly code: Extract<ErrorCode, 'invalid_request' | 'payload_too_large'>,
    message: string,
  ) {
    super(message);
    this.name = 'RetainedImageError';
  }
}

type Conn = Pick<MqttConnection, 'subscribe'>;

/**
 * Concurrent takes of one topic share one subscription: a second broker subscribe of a filter the connection
 * already holds would not redeliver the retained message.
 */
const inFlight = new WeakMap<Conn, Map<string, Promise<IncomingMessage | undefined>>>();

function firstMessage(conn: Conn, topic: string, timeoutMs: number): Promise<IncomingMessage | undefined> {
  let perConn = inFlight.get(conn);
  if (!perConn) inFlight.set(conn, (perConn = new Map()));
  const running = perConn.get(topic);
  if (running) return running;
  const p = new Promise<IncomingMessage | undefined>((resolve) => {
    let unsubscribe: (() => void) | undefined;
    const finish = (m: IncomingMessage | undefined): void => {
      clearTimeout(timer);
      unsubscribe?.();
      unsubscribe = undefined;
      resolve(m);
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    // acceptOversized: a too-large image is answered with payload_too_large rather than a timeout.
    unsubscribe = conn.subscribe(topic, (m) => finish(m), { qos: 0, owner: 'retained-image', acceptOversized: true });
  });
  perConn.set(topic, p);
  const map = perConn;
  void p.finally(() => map.delete(topic));
  return p;
}

/** The JPEG bytes on `topic`; throws RetainedImageError (invalid_request, payload_too_large) otherwise. */
export async function takeRetainedJpeg(
  conn: Conn,
  topic: string,
  o: { maxBytes: number; timeoutMs?: number },
): Promise<Buffer> {
  // The request schema checks this too; a filter the broker refuses would cost the connection.
  const problem = topicNameProblem(topic);
  if (problem) throw new RetainedImageError('invalid_request', `image_topic: ${problem}`);
  const timeoutMs = o.timeoutMs ?? RETAINED_IMAGE_TIMEOUT_MS;
  const m = await firstMessage(conn, topic, timeoutMs);
  if (!m)
    throw new RetainedImageError('invalid_request', `image_topic: nothing arrived on ${topic} within ${timeoutMs} ms`);
  if (m.oversized || m.payload.byteLength > o.maxBytes) {
    throw new RetainedImageError(
      'payload_too_large',
      `image_topic: ${m.payload.byteLength} bytes exceeds the limit of ${o.maxBytes} bytes`,
    );
  }
  const p = m.payload;
  if (p.byteLength < 4 || p[0] !== 0xff || p[1] !== 0xd8 || p[2] !== 0xff) {
    throw new RetainedImageError('invalid_request', `image_topic: the payload on ${topic} is not a JPEG`);
  }
  return p;
}
