/**
 * The JSON message contract of Perch's MQTT interface (docs/mqtt.md shows an example of each; a test
 * validates every example against these schemas). Outgoing messages are built by Perch and checked in
 * tests; incoming ones (ask, ask/cancel) go through parseRequest, which never throws.
 */
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { topicNameProblem } from '../common/mqtt-strings.js';
import { ACTION_NAME } from '../config/schema.js';
import type { PerchTopics } from './topics.js';

export const SCHEMA_VERSION = 1 as const;

/** Largest question text, in characters. */
export const MAX_QUESTION_CHARS = 4000;
/** Default bound of a decoded request image; the whole payload is bounded by mqtt.max_payload_bytes too. */
export const DEFAULT_MAX_IMAGE_BYTES = 4 * 1024 * 1024;

const version = z.literal(SCHEMA_VERSION);
const messageId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces');
/** ISO 8601 in UTC with a Z suffix, as produced by Date.prototype.toISOString. */
const isoUtc = z.iso.datetime();
const ms = z.number().nonnegative();
const cameraName = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'a configured camera name');

/** Where time went, in milliseconds; `total` always, stages (queue, prefill, decode, ...) when known. */
export const latencySchema = z.object({ total: ms }).catchall(ms);

export const errorCodes = [
  'invalid_json', // payload is not JSON
  'invalid_request', // JSON that does not match the schema (the message names the field)
  'payload_too_large', // payload over mqtt.max_payload_bytes, or an image over its bound
  'unknown_topic', // a request arrived on a topic Perch does not serve
  'unknown_camera', // the request names a camera that is not configured
  'busy', // the job queue is full
  'deadline', // the job did not start in time
  'cancelled', // cancelled by ask/cancel or shutdown
  'unavailable', // the model or a source is not available
  'invalid_output', // a structured caption did not match the camera's schema after its retries
  'undeliverable', // the broker refused a result; it was set aside in the dead-letter folder
  'internal', // a bug or an unexpected failure
] as const;
export const errorCodeSchema = z.enum(errorCodes);
export type ErrorCode = z.infer<typeof errorCodeSchema>;

const errorBody = z.strictObject({ code: errorCodeSchema, message: z.string().min(1).max(2000) });

export const transcriptSchema = z.strictObject({
  v: version,
  id: messageId,
  ts: isoUtc,
  text: z.string().max(100_000),
  /** Start of the speech segment (wall clock of the stream time the VAD found speech begin). */
  started_at: isoUtc,
  /** End of the speech segment; first_token and total latencies count from here. */
  ended_at: isoUtc,
  /** Length of the audio transcribed (speech plus pre- and post-roll). */
  audio_ms: ms,
  /** Of audio_ms, the part encoded and prefilled while the person was still speaking (audio.stream). */
  heard_while_speaking_ms: ms.optional(),
  /** Source name (the audio source type). */
  source: z.string().min(1).max(64),
  language: z.string().min(2).max(16).optional(),
  /** Speech longer than audio.segmenter.max_utterance_ms comes in parts; all parts share `group`. */
  part: z
    .strictObject({
      group: messageId,
      part: z.number().int().positive(),
      /** Number of parts, on the last part only. */
      of: z.number().int().positive().optional(),
      last: z.boolean(),
      /** This part's first overlap_ms repeat the end of the previous part. */
      overlap_ms: ms,
    })
    .optional(),
  /** A long utterance's whole transcript, stitched from its parts' (these ids, in order); id is the group. */
  stitched_from: z.array(messageId).min(1).max(1000).optional(),
  /** The wake phrase was heard (Home Assistant's `wake` event): the answer follows on `answer`, same id. */
  wake: z.boolean().optional(),
  /** Why the utterance is a question (wake phrase, push-to-talk, follow-up): the answer follows, same id. */
  question: z.enum(['wake', 'talk', 'follow_up']).optional(),
  /** Output of a synthetic package (random weights): not a real transcript. */
  random_weights: z.boolean().optional(),
  latency_ms: latencySchema,
});

export const transcriptPartialSchema = z.strictObject({
  v: version,
  id: messageId,
  ts: isoUtc,
  seq: z.number().int().nonnegative(),
  /** New text since the previous partial. */
  delta: z.string().max(10_000),
  /** All text of this segment so far. */
  text: z.string().max(100_000),
});

export const captionSchema = z.strictObject({
  v: version,
  id: messageId,
  ts: isoUtc,
  camera: cameraName,
  /** null when no caption was made; `reason` says why (e.g. deadline). */
  text: z.string().max(20_000).nullable(),
  reason: z.string().max(500).optional(),
  /** With a null text: the error code of the failed attempt (deadline, busy, unavailable, ...). */
  error_code: errorCodeSchema.optional(),
  /** Structured captions (camera `structured`): the validated object; `text` is the JSON it was read from. */
  data: z.record(z.string(), z.unknown()).optional(),
  /** Structured captions: replies the model made for this caption (1 + retries at most). */
  attempts: z.number().int().positive().optional(),
  /** The model package has random weights (synthetic): the caption is meaningless. */
  random_weights: z.literal(true).optional(),
  /** When the frame was taken. */
  frame_ts: isoUtc,
  /** Which point of the event the frame is from: new (early caption) or end (the event's best frame). */
  stage: z.enum(['new', 'end']).optional(),
  /** Retained topic where the described JPEG was published with this caption. */
  snapshot_topic: z.string().min(1).max(1024).optional(),
  width: z.number().int().positive().optional(),
  height: z.number().int().positive().optional(),
  image_tokens: z.number().int().positive().optional(),
  /** Id of the camera event this caption belongs to, if any. */
  event_id: messageId.optional(),
  latency_ms: latencySchema,
});

const unit = z.number().min(0).max(1);

export const cameraEventSchema = z.strictObject({
  v: version,
  /** One id for the new, update and end messages of one event. */
  id: messageId,
  ts: isoUtc,
  camera: cameraName,
  type: z.enum(['new', 'update', 'end']),
  started_at: isoUtc,
  ended_at: isoUtc.optional(),
  /** Latest caption of the event, if any. */
  caption: z.string().max(20_000).optional(),
  /** Why the latest caption of this event could not be made (model busy past the deadline, unavailable, ...). */
  caption_error: errorBody.optional(),
  /** Share of the frame that changed, 0..1. */
  motion: z.number().min(0).max(1).optional(),
  frames: z.number().int().nonnegative().optional(),
  /** Union of the moving areas in the latest moving frame, normalised 0..1 from the top left. */
  box: z.strictObject({ x: unit, y: unit, w: unit, h: unit }).optional(),
  /** Zones (from the camera's motion settings) that saw motion during the event. */
  zones: z.array(z.string().min(1).max(64)).max(64).optional(),
});

/** Fields of an ask request (before limits that depend on settings are applied). */
export const askRequestSchema = z
  .strictObject({
    v: version.optional(),
    /** Ties the answer, stream chunks and errors to the request; Perch makes one when missing. */
    id: messageId.optional(),
    text: z.string().min(1).max(MAX_QUESTION_CHARS),
    /** Ask about the latest frame of this camera. */
    camera: cameraName.optional(),
    /** Base64 JPEG to ask about (no data: prefix). */
    image: z
      .string()
      .max(22_369_624)
      .regex(/^[A-Za-z0-9+/]+={0,2}$/, 'base64')
      .refine((s) => s.startsWith('/9j/'), 'a JPEG image (base64 of bytes FF D8 FF)')
      .optional(),
    /** Ask about the JPEG retained on this topic (e.g. another camera's snapshot); taken within 2 s. */
    image_topic: z
      .string()
      .min(1)
      .max(1024)
      .superRefine((t, ctx) => {
        // A topic the broker refuses would get Perch disconnected when it subscribes.
        const problem = topicNameProblem(t) ?? (t.startsWith('$') ? 'topics starting with $ are reserved' : undefined);
        if (problem) ctx.addIssue({ code: 'custom', message: problem });
      })
      .optional(),
    max_tokens: z.number().int().min(1).max(8192).optional(),
    seed: z.number().int().min(0).max(0xffffffff).optional(),
    temperature: z.number().min(0).max(2).optional(),
    thinking: z.boolean().optional(),
    /** With actions declared: auto (the model decides), required (it must call one), none (not offered), or {name}. */
    tool_choice: z
      .union([
        z.enum(['auto', 'required', 'none']),
        z.strictObject({ name: z.string().regex(ACTION_NAME, 'an action name') }),
      ])
      .optional(),
    /** Reply topic for MQTT 3.1.1 clients (MQTT 5 clients use the responseTopic property). */
    reply_to: z.string().min(1).max(512).optional(),
  })
  .refine((r) => [r.camera, r.image, r.image_topic].filter((x) => x !== undefined).length <= 1, {
    message: 'give one of camera, image or image_topic, not both',
    path: ['image'],
  });

export const askCancelSchema = z.strictObject({
  v: version.optional(),
  id: messageId,
});

/** One action the model called, done or refused (<root>/action, and in the answer's actions). */
export const actionRecordSchema = z.strictObject({
  name: z.string().max(128),
  arguments: z.record(z.string(), z.unknown()),
  status: z.enum(['done', 'refused', 'awaiting_confirmation', 'cancelled']),
  /** For awaiting_confirmation: what <root>/action/confirm names to carry it out. */
  confirmation: z.string().max(64).optional(),
  topic: z.string().max(1024).optional(),
  result: z.unknown().optional(),
  reason: z.string().max(1000).optional(),
});

export const actionMessageSchema = actionRecordSchema.extend({ v: version, id: messageId, ts: isoUtc });

/** <root>/action/confirm: yes (or no) to a call that waits for confirmation. */
export const actionConfirmSchema = z.strictObject({
  v: version.optional(),
  confirmation: z.string().min(1).max(64),
  confirm: z.boolean(),
});

export const answerSchema = z.strictObject({
  v: version,
  id: messageId,
  ts: isoUtc,
  text: z.string().max(200_000),
  /** stop: the model ended; length: max_tokens reached; cancelled: ask/cancel or shutdown. */
  finish_reason: z.enum(['stop', 'length', 'cancelled']),
  /** The model's reasoning, when the request asked for thinking. */
  thinking: z.string().max(200_000).optional(),
  camera: cameraName.optional(),
  tokens: z.strictObject({ prompt: z.number().int().nonnegative(), completion: z.number().int().nonnegative() }),
  latency_ms: latencySchema,
  /** The model package has random weights (synthetic): the text is meaningless. */
  random_weights: z.literal(true).optional(),
  /** Actions the model called on the way to this answer (each also said on <root>/action). */
  actions: z.array(actionRecordSchema).max(16).optional(),
});

/** Reply to a request that failed; sent where the answer would have gone. */
export const answerErrorSchema = z.strictObject({
  v: version,
  id: messageId.optional(),
  ts: isoUtc,
  error: errorBody,
});

export const answerStreamSchema = z.strictObject({
  v: version,
  id: messageId,
  ts: isoUtc,
  seq: z.number().int().nonnegative(),
  delta: z.string().max(10_000),
  done: z.boolean(),
});

export const errorMessageSchema = z.strictObject({
  v: version,
  ts: isoUtc,
  /** Id of the request, when it could be read. */
  id: messageId.optional(),
  code: errorCodeSchema,
  message: z.string().min(1).max(2000),
  /** Topic the failed request arrived on (or the pipeline topic the failure concerns). */
  topic: z.string().min(1).max(1024),
});

const count = z.number().int().nonnegative();
export const statsSchema = z.strictObject({
  v: version,
  ts: isoUtc,
  uptime_s: ms,
  version: z.string().max(64).optional(),
  memory: z.strictObject({ rss: count, heap_used: count, heap_total: count }),
  engine: z
    .object({ state: z.string().min(1).max(64) })
    .catchall(z.union([z.string(), z.number(), z.boolean(), z.null()])),
  /** Jobs waiting, per scheduler job kind: every kind, no other keys (docs examples must not drift). */
  queues: z.strictObject({ answer: count, transcript: count, http: count, caption: count }),
  mqtt: z.strictObject({
    connected: z.boolean(),
    protocol: z.enum(['5', '3.1.1']).nullable(),
    reconnects: count,
    published: count,
    received: count,
    rejected: count,
    /** dead_letters: results the broker refused, set aside under <state_dir>/dead-letter. */
    outbox: z.strictObject({
      depth: count,
      bytes: count,
      dropped: count,
      expired: count,
      dead_letters: count.optional(),
    }),
  }),
  /** Per source, keyed `audio/<name>` or `camera/<name>`. */
  sources: z.record(
    z.string().regex(/^(audio|camera)\/[A-Za-z0-9_-]{1,64}$/, 'audio/<name> or camera/<name>'),
    z.strictObject({
      status: z.enum(['starting', 'running', 'restarting', 'paused', 'stopping', 'stopped', 'failed', 'ended']),
      restarts: count,
      last_error: z.string().optional(),
    }),
  ),
  /** The HTTP API (http.enabled): requests, generations, errors and those refused as busy or unavailable. */
  http: z.strictObject({ requests: count, generations: count, errors: count, rejected: count }).optional(),
  actions: z.strictObject({ on: z.boolean(), done: count, refused: count }).optional(),
  wyoming: z
    .strictObject({
      clients: count,
      connections: count,
      transcripts: count,
      turns: count,
      errors: count,
      refused: count,
    })
    .optional(),
  /** Hearing: voice activity and what the audio source delivered. */
  audio: z
    .strictObject({
      speaking: z.boolean(),
      utterances: count,
      dropped_short: count,
      dropped_backlog_ms: count,
      seconds: count,
      transcripts: count.optional(),
      transcripts_failed: count.optional(),
      questions: count.optional(),
    })
    .optional(),
  /** Motion detection per camera. */
  motion: z
    .record(
      z.string(),
      z.strictObject({
        on: z.boolean(),
        events: count,
        frames: count,
        dropped: count,
        decode_errors: count,
        avg_frame_ms: z.number().nonnegative(),
      }),
    )
    .optional(),
  /** Captions per camera: made, failed (deadline, busy, unavailable, error), and the last failure. */
  captions: z
    .record(z.string(), z.strictObject({ made: count, failed: count, last_error: z.string().max(500).optional() }))
    .optional(),
  /** Each daemon module's lifecycle state (src/daemon/module.ts): a module that failed to start is `failed`. */
  modules: z
    .record(
      z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/),
      z.enum(['starting', 'running', 'failed', 'stopping', 'stopped']),
    )
    .optional(),
  /** Health per stage (audio/vad, model/..._encoder, camera/<name>/decoder): see src/daemon/health.ts. */
  health: z
    .record(
      z.string(),
      z.strictObject({
        state: z.enum(['ok', 'failing', 'restarting']),
        error_count: count,
        restarts: count,
        last_error: z.string().max(500).optional(),
        last_error_at: isoUtc.optional(),
      }),
    )
    .optional(),
});

export type Latency = z.infer<typeof latencySchema>;
export type TranscriptMessage = z.infer<typeof transcriptSchema>;
export type TranscriptPartialMessage = z.infer<typeof transcriptPartialSchema>;
export type CaptionMessage = z.infer<typeof captionSchema>;
export type CameraEventMessage = z.infer<typeof cameraEventSchema>;
export type AskRequestMessage = z.infer<typeof askRequestSchema>;
export type AskCancelMessage = z.infer<typeof askCancelSchema>;
export type AnswerMessage = z.infer<typeof answerSchema>;
export type AnswerErrorMessage = z.infer<typeof answerErrorSchema>;
export type AnswerStreamMessage = z.infer<typeof answerStreamSchema>;
export type ErrorMessage = z.infer<typeof errorMessageSchema>;
export type StatsMessage = z.infer<typeof statsSchema>;

/** Every JSON schema by example name, as used by the `<!-- example: NAME -->` markers in docs/mqtt.md. */
export const messageSchemas = {
  transcript: transcriptSchema,
  transcript_partial: transcriptPartialSchema,
  caption: captionSchema,
  camera_event: cameraEventSchema,
  ask_request: askRequestSchema,
  ask_cancel: askCancelSchema,
  answer: answerSchema,
  answer_error: answerErrorSchema,
  answer_stream: answerStreamSchema,
  action: actionMessageSchema,
  error: errorMessageSchema,
  stats: statsSchema,
} as const;
export type MessageName = keyof typeof messageSchemas;

/** Now, in the contract's time format. */
export function isoNow(now: number = Date.now()): string {
  return new Date(now).toISOString();
}

/** Serializes an outgoing message. */
export function encode(message: object): Buffer {
  return Buffer.from(JSON.stringify(message));
}

// ---------------------------------------------------------------------------------------------------
// Incoming requests

export interface RequestLimits {
  /** mqtt.max_payload_bytes */
  maxPayloadBytes: number;
  /** Largest decoded image; DEFAULT_MAX_IMAGE_BYTES when absent. */
  maxImageBytes?: number;
  /** Configured camera names; when given, other names are refused with unknown_camera. */
  cameras?: readonly string[];
}

/** An ask request after validation; `id` is always set (taken from the request or generated). */
export type AskRequest = AskRequestMessage & { id: string };

export type ParsedRequest =
  | { ok: true; kind: 'ask'; request: AskRequest }
  | { ok: true; kind: 'cancel'; cancel: AskCancelMessage }
  | {
      ok: false;
      error: { code: ErrorCode; message: string };
      /** The request's id and reply_to when they could be read, so the error can still be replied to. */
      id?: string;
      replyTo?: string;
    };

/** Validates a request payload. Checks size before parsing; never throws. */
export function parseRequest(
  topic: string,
  payload: Buffer,
  limits: RequestLimits & { topics: Pick<PerchTopics, 'ask' | 'askCancel' | 'askText'> },
): ParsedRequest {
  const t = limits.topics;
  const kind = topic === t.ask ? 'ask' : topic === t.askCancel ? 'cancel' : topic === t.askText ? 'text' : undefined;
  if (!kind) return fail('unknown_topic', `no requests are served on ${topic}`);
  if (payload.byteLength > limits.maxPayloadBytes) {
    return fail(
      'payload_too_large',
      `payload of ${payload.byteLength} bytes exceeds the limit of ${limits.maxPayloadBytes} bytes`,
    );
  }
  if (kind === 'text') {
    // The whole payload is the question; the answer goes to <root>/answer.
    const text = payload.toString('utf8').trim();
    if (text.length === 0 || text.length > MAX_QUESTION_CHARS)
      return fail('invalid_request', `text: between 1 and ${MAX_QUESTION_CHARS} characters`);
    return { ok: true, kind: 'ask', request: { text, id: randomUUID() } };
  }
  let json: unknown;
  try {
    json = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    return fail('invalid_json', `payload is not valid JSON: ${(err as Error).message.slice(0, 300)}`);
  }
  const hints = readHints(json);
  if (kind === 'cancel') {
    const r = askCancelSchema.safeParse(json);
    return r.success ? { ok: true, kind, cancel: r.data } : fail('invalid_request', describeIssues(r.error), hints);
  }
  const r = askRequestSchema.safeParse(json);
  if (!r.success) return fail('invalid_request', describeIssues(r.error), hints);
  const req = r.data;
  if (req.image !== undefined) {
    const maxImage = limits.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES;
    const decoded =
      Math.floor((req.image.length * 3) / 4) - (req.image.endsWith('==') ? 2 : req.image.endsWith('=') ? 1 : 0);
    if (decoded > maxImage)
      return fail('payload_too_large', `image: ${decoded} bytes exceeds the limit of ${maxImage} bytes`, hints);
  }
  if (req.camera !== undefined && limits.cameras && !limits.cameras.includes(req.camera)) {
    return fail(
      'unknown_camera',
      `camera: no camera named ${JSON.stringify(req.camera)} (configured: ${limits.cameras.join(', ') || 'none'})`,
      hints,
    );
  }
  return { ok: true, kind, request: { ...req, id: req.id ?? randomUUID() } };
}

function fail(code: ErrorCode, message: string, hints: { id?: string; replyTo?: string } = {}): ParsedRequest {
  return { ok: false, error: { code, message }, ...hints };
}

/** Reads id and reply_to from an invalid request when they themselves are valid. */
function readHints(json: unknown): { id?: string; replyTo?: string } {
  if (typeof json !== 'object' || json === null) return {};
  const o = json as Record<string, unknown>;
  const hints: { id?: string; replyTo?: string } = {};
  if (messageId.safeParse(o.id).success) hints.id = o.id as string;
  if (typeof o.reply_to === 'string' && o.reply_to.length > 0 && o.reply_to.length <= 512) hints.replyTo = o.reply_to;
  return hints;
}

/** Most characters of a request's own text (a field name, a path) quoted in an error: the rest is its size. */
const QUOTE_CHARS = 64;

/** Quotes text from a request, cut short: a hostile field name of a megabyte must not become a megabyte log line. */
function quoted(text: string): string {
  return text.length <= QUOTE_CHARS
    ? JSON.stringify(text)
    : `${JSON.stringify(text.slice(0, QUOTE_CHARS))}… (${text.length} characters)`;
}

/** One line naming each bad field: `text: Too small ...; unknown field "foo"`. */
export function describeIssues(error: z.ZodError): string {
  const parts = error.issues.slice(0, 5).map((issue) => {
    if (issue.code === 'unrecognized_keys')
      return `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.slice(0, 5).map(quoted).join(', ')}`;
    const path = issue.path.map(String).join('.');
    return path
      ? `${path.length > QUOTE_CHARS ? quoted(path) : path}: ${issue.message.slice(0, 300)}`
      : issue.message.slice(0, 300);
  });
  if (error.issues.length > 5) parts.push(`and ${error.issues.length - 5} more`);
  return parts.join('; ');
}
