/**
 * Request/reply routing: where the answer to a request goes and how it is tagged.
 *
 * Order of preference:
 *  1. MQTT 5 `responseTopic` property (with `correlationData` echoed back unchanged);
 *  2. JSON `reply_to` in the request (MQTT 3.1.1 clients), the answer carries the request's `id`;
 *  3. `<root>/answer`.
 * Reply topics are refused when they are not valid MQTT topic names (the broker would drop the
 * connection on every try), hold wildcards, are too long, or point where a reply would do harm: into
 * Perch's own command space (a reply to `<root>/ask` would loop, one to `<root>/listening/set` would be
 * a command), into another Perch's root, or into Home Assistant's discovery prefix or status topic.
 */
import { publishTopicProblem } from '../common/mqtt-strings.js';
import type { PerchTopics } from './topics.js';

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

/** Topics outside Perch's root that replies must not reach. */
export interface ReservedTopics {
  /** homeassistant.discovery_prefix: a reply there could create or delete entities. */
  haDiscoveryPrefix: string;
  /** homeassistant.status_topic: a reply there would look like Home Assistant (re)starting. */
  haStatusTopic: string;
}

/** Home Assistant's defaults, for callers that do not pass the configured ones. */
export const DEFAULT_RESERVED_TOPICS: ReservedTopics = {
  haDiscoveryPrefix: 'homeassistant',
  haStatusTopic: 'homeassistant/status',
};

/** `topic` is `tree` or lies below it. */
const within = (topic: string, tree: string): boolean => topic === tree || topic.startsWith(`${tree}/`);

/**
 * The base of Perch roots: the root's parent (`perch` for the default root `perch/<device.id>`), below
 * which every Perch on the broker has its root. Undefined for a one-level root, which has no siblings.
 */
export function perchBase(root: string): string | undefined {
  const slash = root.lastIndexOf('/');
  return slash > 0 ? root.slice(0, slash) : undefined;
}

/** Why `topic` may not receive replies, or undefined when it may. */
export function replyTopicProblem(
  topic: string,
  topics: Pick<PerchTopics, 'root' | 'answer'>,
  reserved: ReservedTopics = DEFAULT_RESERVED_TOPICS,
): string | undefined {
  const problem = publishTopicProblem(topic);
  if (problem) return problem;
  if (within(topic, topics.answer)) return undefined;
  if (within(topic, topics.root)) return `replies inside ${topics.root}/ are only allowed under ${topics.answer}`;
  const base = perchBase(topics.root);
  if (base !== undefined && topic.startsWith(`${base}/`))
    return `replies below ${base}/ (where Perch roots live) are only allowed under ${topics.answer}`;
  if (within(topic, reserved.haDiscoveryPrefix))
    return `replies into Home Assistant's discovery prefix ${reserved.haDiscoveryPrefix}/ are not allowed`;
  if (topic === reserved.haStatusTopic) return "replies to Home Assistant's status topic are not allowed";
  return undefined;
}

/** Decides where the reply to request `id` goes. */
export function replyRouteFor(
  id: string,
  replyTo: string | undefined,
  props: RequestProperties,
  topics: Pick<PerchTopics, 'root' | 'answer'>,
  reserved: ReservedTopics = DEFAULT_RESERVED_TOPICS,
): RouteResult {
  if (props.responseTopic !== undefined) {
    const problem = replyTopicProblem(props.responseTopic, topics, reserved);
    if (problem) return { ok: false, message: `responseTopic: ${problem}` };
    if (props.correlationData && props.correlationData.byteLength > MAX_CORRELATION_BYTES) {
      return { ok: false, message: `correlationData: longer than ${MAX_CORRELATION_BYTES} bytes` };
    }
    return {
      ok: true,
      route: { id, topic: props.responseTopic, correlationData: props.correlationData, via: 'response_topic' },
    };
  }
  if (replyTo !== undefined) {
    const problem = replyTopicProblem(replyTo, topics, reserved);
    if (problem) return { ok: false, message: `reply_to: ${problem}` };
    return { ok: true, route: { id, topic: replyTo, via: 'reply_to' } };
  }
  return { ok: true, route: { id, topic: topics.answer, via: 'default' } };
}
