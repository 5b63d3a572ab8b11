/**
 * MQTT's own rules for strings, topic names and filters (MQTT 5 sections 1.5.4 and 4.7), with no dependency on
 * the rest of Perch: the config schema checks configured topics with the same rules the MQTT edge applies to
 * topics that arrive from the network.
 */

/** Longest topic Perch publishes to or accepts as a reply address (MQTT allows 65535 bytes). */
export const MAX_TOPIC_BYTES = 512;

/** MQTT topic filter matching (`+` one level, `#` the rest, `$` topics only by explicit filters). */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith('$') && !filter.startsWith('$')) return false;
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const part = f[i];
    if (part === '#') return true;
    if (i >= t.length) return false;
    if (part !== '+' && part !== t[i]) return false;
  }
  return f.length === t.length;
}

/** MQTT strings (topics included) are length-prefixed with two bytes. */
export const MQTT_MAX_STRING_BYTES = 65_535;

/**
 * Code points an MQTT string must not hold (MQTT 5 section 1.5.4): U+0000, which the spec forbids, and
 * those it says should not appear and a receiver may treat as malformed: control characters
 * U+0001..U+001F and U+007F..U+009F and Unicode noncharacters (U+FDD0..U+FDEF and the last two code
 * points of every plane). Mosquitto 2.0 disconnects a client for any of them, in topics, filters and
 * string properties alike (tried on MQTT 5 and 3.1.1), which is why none may reach the broker.
 */
const PLANE_NONCHARACTERS = Array.from(
  { length: 17 },
  (_, plane) => `\\u{${plane.toString(16)}fffe}-\\u{${plane.toString(16)}ffff}`,
).join('');
const FORBIDDEN_CODE_POINTS = new RegExp(`[\\u0000-\\u001f\\u007f-\\u009f\\ufdd0-\\ufdef${PLANE_NONCHARACTERS}]`, 'u');
/** With the u flag a surrogate class matches only unpaired halves. */
const LONE_SURROGATE = /[\ud800-\udfff]/u;

/**
 * Why `s` cannot travel as an MQTT UTF-8 string, or undefined when it can: lone surrogates (not
 * well-formed UTF-8; Node would silently send U+FFFD instead, a different topic), forbidden code
 * points, more than 65535 bytes.
 */
export function mqttStringProblem(s: string): string | undefined {
  if (LONE_SURROGATE.test(s)) return 'not well-formed Unicode (a lone surrogate)';
  const bad = FORBIDDEN_CODE_POINTS.exec(s);
  if (bad)
    return `the character U+${bad[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')} is not allowed in MQTT strings`;
  if (Buffer.byteLength(s) > MQTT_MAX_STRING_BYTES) return `longer than ${MQTT_MAX_STRING_BYTES} bytes`;
  return undefined;
}

/** Why `topic` is not a valid MQTT topic name (what a PUBLISH may carry), or undefined. */
export function topicNameProblem(topic: string): string | undefined {
  if (topic.length === 0) return 'empty topic';
  if (/[#+]/.test(topic)) return 'wildcards (+ or #) are not allowed';
  return mqttStringProblem(topic);
}

/** Why `filter` is not a valid MQTT topic filter (what a SUBSCRIBE may carry), or undefined. */
export function topicFilterProblem(filter: string): string | undefined {
  if (filter.length === 0) return 'empty topic filter';
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]!;
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1))
      return '"#" must be a whole level and the last one';
    if (level.includes('+') && level !== '+') return '"+" must be a whole level';
  }
  return mqttStringProblem(filter);
}

/** Why a topic cannot be published to, or undefined when it can. */
export function publishTopicProblem(topic: string): string | undefined {
  const problem = topicNameProblem(topic);
  if (problem) return problem;
  if (topic.startsWith('$')) return 'topics starting with $ are reserved';
  if (Buffer.byteLength(topic) > MAX_TOPIC_BYTES) return `topic longer than ${MAX_TOPIC_BYTES} bytes`;
  return undefined;
}
