/**
 * Request/reply routing: where the answer to a request goes and how it is tagged.
 *
 * Order of preference:
 *  1. MQTT 5 `responseTopic` property (with `correlationData` echoed back unchanged);
 *  2. JSON `reply_to` in the request (MQTT 3.1.1 clients), the answer carries the request's `id`;
 *  3. `<root>/answer`.
 * Reply topics are refused when they hold wildcards, are too long, or point into Perch's own command
 * space: a reply to `<root>/ask` would loop and one to `<root>/listening/set` would be a command.
 */
import { publishTopicProblem, type PerchTopics } from './topics.js';

/** Largest correlationData Perch echoes back. */
export const MAX_CORRELATION_BYTES = 1024;

export interface ReplyRoute {
  /** The request id (given or generated); every reply, stream chunk and error carries it. */
  id: string;
  /** Topic of the final answer (or error reply). */
  topic: string;
  /** MQTT 5 correlation data to echo on every reply, stream chunk included. */
  correlationData?: Buffer;
  via: 'response_topic' | 'reply_to' | 'default';
}

export interface RequestProperties {
  responseTopic?: string;
  correlationData?: Buffer;
}

export type RouteResult = { ok: true; route: ReplyRoute } | { ok: false; message: string };

/** Why `topic` may not receive replies, or undefined when it may. */
export function replyTopicProblem(topic: string, topics: Pick<PerchTopics, 'root' | 'answer'>): string | undefined {
  const problem = publishTopicProblem(topic);
  if (problem) return problem;
  const own = `${topics.root}/`;
  const underAnswer = topic === topics.answer || topic.startsWith(`${topics.answer}/`);
  if ((topic === topics.root || topic.startsWith(own)) && !underAnswer) {
    return `replies inside ${own} are only allowed under ${topics.answer}`;
  }
  return undefined;
}

/** Decides where the reply to request `id` goes. */
export function replyRouteFor(
  id: string,
  replyTo: string | undefined,
  props: RequestProperties,
  topics: Pick<PerchTopics, 'root' | 'answer'>,
): RouteResult {
  if (props.responseTopic !== undefined) {
    const problem = replyTopicProblem(props.responseTopic, topics);
    if (problem) return { ok: false, message: `responseTopic: ${problem}` };
    if (props.correlationData && props.correlationData.byteLength > MAX_CORRELATION_BYTES) {
      return { ok: false, message: `correlationData: longer than ${MAX_CORRELATION_BYTES} bytes` };
    }
    return { ok: true, route: { id, topic: props.responseTopic, correlationData: props.correlationData, via: 'response_topic' } };
  }
  if (replyTo !== undefined) {
    const problem = replyTopicProblem(replyTo, topics);
    if (problem) return { ok: false, message: `reply_to: ${problem}` };
    return { ok: true, route: { id, topic: replyTo, via: 'reply_to' } };
  }
  return { ok: true, route: { id, topic: topics.answer, via: 'default' } };
}
