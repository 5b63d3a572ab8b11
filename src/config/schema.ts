/**
 * The one schema for Perch's settings. Everything else derives from it: validation of the YAML file,
 * environment overrides (see env.ts), the TypeScript types the modules receive, and the documented
 * example config (config/perch.example.yaml) and docs/config.md (see docs.ts).
 *
 * Every key carries a description: the generator refuses keys without one.
 */
import { z } from 'zod';
import { segmenterSettingsSchema } from './segmenter-settings.js';
import { motionSettingsSchema } from './motion-settings.js';
import { compileStructured } from '../common/structured-output.js';
import {
  DEFAULT_IMAGE_TOKENS,
  EARLY_IMAGE_TOKENS,
  SOFT_TOKEN_BUDGETS,
  type TokenBudget,
} from '../model/gemma4/contract.js';
import { mqttStringProblem, topicFilterProblem } from '../common/mqtt-strings.js';

/** What a camera is asked when it has no prompt of its own. */
export const DEFAULT_CAPTION_PROMPT =
  'Describe briefly what is happening in this camera image: who or what is there and what they are doing. One or two sentences; only say what is visible.';

const id = z
  .string()
  .regex(
    /^[a-z0-9][a-z0-9_-]{0,62}$/,
    'lowercase letters, digits, "_" or "-", at most 63, starting with a letter or digit',
  );
// MQTT's string rules too (no control characters, noncharacters ...): the broker drops a client that sends them.
const topicRoot = z
  .string()
  .min(1)
  .refine(
    (t) => !/[#+]/.test(t) && !t.startsWith('/') && !t.endsWith('/') && !mqttStringProblem(t),
    'a topic without wildcards, control characters or Unicode noncharacters, and without leading or trailing "/"',
  );
const topicFilter = z
  .string()
  .refine(
    (t) => !topicFilterProblem(t),
    'a valid MQTT topic filter (no control characters or Unicode noncharacters; + and # as whole levels)',
  );
// meta.path: relative values resolve against the config file's directory (load.ts).
const filePath = z.string().min(1).meta({ path: true });

export const logSettings = z
  .object({
    level: z
      .enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal'])
      .default('info')
      .describe('Lowest level written to the log (stdout, which journald collects).'),
    format: z
      .enum(['json', 'pretty'])
      .default('json')
      .describe('json: one JSON object per line (journald, log shippers); pretty: readable lines for a terminal.'),
  })
  .describe('Logging.');

export const tlsSettings = z
  .object({
    ca: filePath
      .optional()
      .meta({ examples: ['/etc/perch/ca.pem'] })
      .describe('PEM file with the CA certificate(s) that signed the broker certificate.'),
    cert: filePath
      .optional()
      .meta({ examples: ['/etc/perch/client.pem'] })
      .describe('PEM client certificate, for brokers that authenticate clients by certificate.'),
    key: filePath
      .optional()
      .meta({ examples: ['/etc/perch/client.key'] })
      .describe('PEM private key of the client certificate.'),
    reject_unauthorized: z
      .boolean()
      .default(true)
      .describe('Refuse brokers whose certificate does not verify. Only switch off for testing.'),
  })
  .describe('TLS options; used when the url starts with mqtts://.');

export const mqttSettings = z
  .object({
    url: z
      .string()
      .regex(/^(mqtts?|wss?):\/\/[^\s]+$/, 'mqtt://host[:port], mqtts://host[:port], ws:// or wss://')
      .default('mqtt://127.0.0.1:1883')
      .describe('Broker URL.'),
    protocol: z
      .enum(['auto', '5', '3.1.1'])
      .default('auto')
      .describe('MQTT protocol version. auto tries MQTT 5 and falls back to 3.1.1 when the broker refuses it.'),
    client_id: z.string().min(1).max(128).optional().describe('Client id; default perch-<device id>.'),
    username: z.string().optional().describe('Username for the broker.'),
    password: z
      .string()
      .optional()
      .describe('Password for the broker. Prefer the PERCH_MQTT_PASSWORD environment variable over writing it here.'),
    tls: tlsSettings.prefault({}),
    root_topic: topicRoot.optional().describe('Root of every Perch topic; default perch/<device id>.'),
    keepalive_s: z
      .number()
      .int()
      .min(5)
      .max(3600)
      .default(30)
      .describe('Keep-alive interval in seconds; the broker publishes the last will after 1.5x this without traffic.'),
    reconnect_min_ms: z
      .number()
      .int()
      .min(100)
      .default(1000)
      .describe('First reconnect delay after the connection drops; doubles on every failure.'),
    reconnect_max_ms: z.number().int().min(1000).default(60000).describe('Longest reconnect delay.'),
    max_payload_bytes: z
      .number()
      .int()
      .min(1024)
      .max(16 * 1024 * 1024)
      .default(1024 * 1024)
      .describe('Largest accepted incoming payload; bigger requests are answered with an error and ignored.'),
    message_expiry_s: z
      .number()
      .int()
      .min(0)
      .default(3600)
      .describe('MQTT 5 message expiry for answers and results, so stale ones die after an outage (0: never expire).'),
    outbox: z
      .object({
        max_messages: z
          .number()
          .int()
          .min(10)
          .default(5000)
          .describe(
            'Most final results held while the broker is unreachable. When full, the oldest lowest-priority message is dropped first (and counted in stats).',
          ),
        max_bytes: z
          .number()
          .int()
          .min(64 * 1024)
          .default(64 * 1024 * 1024)
          .describe('Most bytes held while the broker is unreachable (snapshots count too).'),
      })
      .prefault({})
      .describe(
        'Outgoing queue for QoS 1 results, persisted under state_dir so a restart during an outage loses nothing.',
      ),
  })
  .describe('Connection to the MQTT broker.');

export const embeddedBrokerSettings = z
  .object({
    enabled: z
      .boolean()
      .default(false)
      .describe('Run a small MQTT broker (aedes) inside Perch, for trying it without Mosquitto.'),
    host: z.string().default('127.0.0.1').describe('Address the embedded broker listens on.'),
    port: z
      .number()
      .int()
      .min(1)
      .max(65535)
      .default(1884)
      .describe('Port of the embedded broker (1884, so it does not clash with a local Mosquitto on 1883).'),
  })
  .describe('Embedded broker.');

export const httpSettings = z
  .object({
    enabled: z
      .boolean()
      .default(false)
      .describe(
        'Serve the model over HTTP: the OpenAI chat API, the llama.cpp server endpoints Frigate reads and the Ollama API Home Assistant uses (docs/http.md).',
      ),
    listen: z
      .string()
      .min(1)
      .max(255)
      .default('127.0.0.1')
      .describe('Address the HTTP server listens on; 0.0.0.0 (or ::) for every interface, then set a token.'),
    port: z
      .number()
      .int()
      .min(1)
      .max(65535)
      .default(8484)
      .describe("Port of the HTTP server (8484: clear of llama.cpp's 8080 and Ollama's 11434)."),
    token: z
      .string()
      .min(8)
      .max(512)
      .optional()
      .describe('A bearer token every request must carry (Authorization: Bearer <token>). Default: none.'),
    model_name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'letters, digits, dot, underscore and dash, up to 63')
      .default('perch')
      .describe('The model name the APIs list and accept (Ollama clients may add ":latest").'),
    max_body_bytes: z
      .number()
      .int()
      .min(1024)
      .max(64 * 1024 * 1024)
      .default(16 * 1024 * 1024)
      .describe('Largest request body (images come base64-encoded in it); larger is refused with 413.'),
    cors_origins: z
      .array(z.string().regex(/^https?:\/\/[^\s/]+$/, 'an origin such as http://host:port'))
      .max(32)
      .default([])
      .describe('Browser origins allowed to call the API (CORS); none by default.'),
  })
  .describe('HTTP API for other model clients (off by default).');

/** Languages Home Assistant may pick for a Wyoming pipeline by default: Gemma 4 hears and speaks many more. */
export const DEFAULT_WYOMING_LANGUAGES = [
  'en',
  'de',
  'fr',
  'es',
  'it',
  'nl',
  'pt',
  'pl',
  'sv',
  'da',
  'nb',
  'fi',
  'cs',
  'ru',
  'uk',
  'tr',
  'ar',
  'hi',
  'ja',
  'ko',
  'zh',
];

export const wyomingSettings = z
  .object({
    enabled: z
      .boolean()
      .default(false)
      .describe(
        "Serve speech to text and a conversation agent over the Wyoming protocol, for Home Assistant's Assist pipelines and voice satellites (docs/wyoming.md).",
      ),
    listen: z
      .string()
      .min(1)
      .max(255)
      .default('127.0.0.1')
      .describe(
        'Address the Wyoming server listens on; 0.0.0.0 (or ::) for Home Assistant on another machine. The protocol has no authentication: listen only where you trust the network.',
      ),
    port: z
      .number()
      .int()
      .min(1)
      .max(65535)
      .default(10300)
      .describe('Port of the Wyoming server (10300, the convention for speech to text).'),
    zeroconf: z
      .boolean()
      .default(true)
      .describe(
        'Advertise the server over mDNS (_wyoming._tcp), so Home Assistant discovers it; not when it listens on loopback only.',
      ),
    name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$/, 'letters, digits, space, dot, underscore and dash, up to 63')
      .optional()
      .describe('The mDNS instance name (unique on the network). Default: perch-<device.id>.'),
    languages: z
      .array(z.string().regex(/^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$/, 'a language code such as en or pt-BR'))
      .min(1)
      .max(200)
      .default(DEFAULT_WYOMING_LANGUAGES)
      .describe('Language codes offered to Home Assistant (it accepts only these for a pipeline).'),
    max_clients: z
      .number()
      .int()
      .min(1)
      .max(64)
      .default(8)
      .describe(
        'Connections served at once (Home Assistant opens one per utterance or turn); more are refused with an error.',
      ),
    idle_timeout_s: z
      .number()
      .min(1)
      .max(3600)
      .default(30)
      .describe('A client that sends nothing for this long while it has no answer pending is disconnected.'),
    max_chunk_bytes: z
      .number()
      .int()
      .min(1024)
      .max(4 * 1024 * 1024)
      .default(256 * 1024)
      .describe(
        'Largest event payload (an audio chunk) or data block; a larger one ends the connection with an error.',
      ),
  })
  .describe('Wyoming server for Home Assistant voice (off by default).');

/** An action's name, as the model calls it. */
export const ACTION_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** `{name}` placeholders of action templates: a parameter's value goes there. */
export const ACTION_PLACEHOLDER = /\{([A-Za-z_][A-Za-z0-9_]{0,63})\}/g;

export const actionSettings = z
  .object({
    name: z
      .string()
      .regex(ACTION_NAME, 'letters, digits and underscore, starting with a letter')
      .describe('The function name the model calls, e.g. set_light.'),
    description: z.string().min(1).max(1000).describe('What it does, in words the model reads.'),
    parameters: z
      .record(z.string(), z.unknown())
      .refine((p) => p.type === 'object', 'a JSON schema of an object (type: object)')
      .default({ type: 'object', properties: {} })
      .describe('JSON schema of the arguments; calls are decoded under it and validated against it.'),
    topic: z
      .string()
      .min(1)
      .max(512)
      .refine((t) => !/[+#]/.test(t.replace(ACTION_PLACEHOLDER, 'x')), 'no MQTT wildcards (+, #)')
      .describe(
        'Topic to publish to; {param} placeholders take argument values (letters, digits, space, dot, dash, underscore only), e.g. zigbee2mqtt/{device}/set.',
      ),
    payload: z
      .union([z.string().max(4096), z.record(z.string(), z.unknown())])
      .describe(
        'What to publish: an object (sent as JSON; a string "{param}" becomes the value itself, other placeholders its text) or a string with placeholders.',
      ),
    reply_topic: z
      .string()
      .min(1)
      .max(512)
      .refine((t) => !/[+#]/.test(t.replace(ACTION_PLACEHOLDER, 'x')), 'no MQTT wildcards (+, #)')
      .optional()
      .describe(
        "A topic to wait on for the result (e.g. zigbee2mqtt/{device}, the device's state); its first message after publishing is the result.",
      ),
    confirm: z
      .boolean()
      .default(false)
      .describe(
        'Ask before acting: the call waits until the user says yes (the next turn of a Wyoming conversation, or <root>/action/confirm); the model is told to ask.',
      ),
  })
  .strict();

export const actionsSettings = z
  .object({
    enabled: z
      .boolean()
      .default(true)
      .describe('Whether the declared actions are offered to the model (Home Assistant has a switch for it).'),
    max_per_minute: z
      .number()
      .int()
      .min(1)
      .max(600)
      .default(6)
      .describe('Most actions carried out in any minute; more calls are refused and the model is told so.'),
    reply_timeout_ms: z
      .number()
      .int()
      .min(100)
      .max(60_000)
      .default(5000)
      .describe('How long to wait on an action reply_topic for its result.'),
    confirm_timeout_s: z
      .number()
      .int()
      .min(5)
      .max(3600)
      .default(60)
      .describe('How long a call of a confirm action waits for the yes; after that it is dropped.'),
    allowed: z
      .array(actionSettings)
      .max(32)
      .default([])
      .superRefine((list, ctx) => {
        const seen = new Set<string>();
        list.forEach((a, i) => {
          if (seen.has(a.name))
            ctx.addIssue({ code: 'custom', message: `duplicate action name ${a.name}`, path: [i, 'name'] });
          seen.add(a.name);
          const props = (a.parameters.properties ?? {}) as Record<string, unknown>;
          for (const [where, text] of [
            ['topic', a.topic],
            ['reply_topic', a.reply_topic ?? ''],
            ['payload', JSON.stringify(a.payload)],
          ] as const) {
            for (const m of text.matchAll(ACTION_PLACEHOLDER))
              if (!(m[1]! in props))
                ctx.addIssue({ code: 'custom', message: `{${m[1]}} is not one of the parameters`, path: [i, where] });
          }
        });
      })
      .describe('Actions the model may take: each a Gemma 4 tool; a call is validated, then published to its topic.'),
  })
  .describe('Allow-listed actions: what the model may do by publishing MQTT messages (none by default).');

export const homeAssistantSettings = z
  .object({
    enabled: z.boolean().default(true).describe('Publish Home Assistant MQTT discovery for one Perch device.'),
    discovery_prefix: topicRoot.default('homeassistant').describe('Home Assistant discovery prefix.'),
    status_topic: topicFilter
      .default('homeassistant/status')
      .describe('Topic where Home Assistant announces online; discovery is republished then.'),
  })
  .describe('Home Assistant MQTT discovery.');

export const modelSettings = z
  .object({
    dir: filePath
      .default('/var/lib/perch/models/gemma4-e2b')
      .describe('Model package directory (made by perch model convert, pull or synth).'),
    threads: z
      .number()
      .int()
      .min(1)
      .max(64)
      .default(4)
      .describe('ONNX Runtime intra-op threads (the Pi 5 has 4 cores).'),
    context_tokens: z
      .number()
      .int()
      .min(128)
      .max(131072)
      .default(4096)
      .describe('Largest context (prompt and answer) the full-attention layers keep.'),
    ple_cache_mb: z
      .number()
      .int()
      .min(1)
      .default(64)
      .describe('Memory budget of the per-layer-embedding row cache, in MiB.'),
    memory_budget_mb: z
      .number()
      .int()
      .min(64)
      .optional()
      .describe('Refuse to load a package whose resident need exceeds this many MiB.'),
    prepacked_cache: z
      .boolean()
      .default(true)
      .describe(
        'Keep the weights ONNX Runtime repacks for this CPU in a file cache, memory-mapped instead of copied into memory (for E2B about 700 MiB less anonymous memory, for about 5% slower decode on x86). The first start on a machine packs and writes them once.',
      ),
    cache_dir: filePath
      .optional()
      .describe(
        'Where prepacked_cache keeps its files (about 2.3 times the decoder on disk). Default: model-cache under daemon.state_dir.',
      ),
    system_prompt: z
      .string()
      .max(16384)
      .default('You are Perch, a helpful assistant running offline on a small board. Answer briefly.')
      .describe('System prompt of every conversation.'),
    max_answer_tokens: z
      .number()
      .int()
      .min(1)
      .max(8192)
      .default(256)
      .describe('Default largest number of tokens in an answer.'),
  })
  .describe('The on-device model.');

export const schedulerSettings = z
  .object({
    max_queued: z
      .number()
      .int()
      .min(1)
      .max(10000)
      .default(32)
      .describe('Most jobs waiting for the model; a new job beyond this is refused with a busy error.'),
    answer_deadline_ms: z
      .number()
      .int()
      .min(100)
      .default(120000)
      .describe('An answer not started within this time is dropped with a deadline error.'),
    transcript_deadline_ms: z
      .number()
      .int()
      .min(100)
      .default(60000)
      .describe('A transcript not started within this time is dropped with a deadline error.'),
    http_deadline_ms: z
      .number()
      .int()
      .min(100)
      .default(60000)
      .describe('A request of the HTTP API not started within this time is answered 503 with Retry-After.'),
    caption_deadline_ms: z
      .number()
      .int()
      .min(100)
      .default(30000)
      .describe('A caption not started within this time is published without a caption, saying why.'),
  })
  .describe('One model, many producers: the job queue in front of it.');

const backoff = {
  restart_min_ms: z
    .number()
    .int()
    .min(50)
    .default(1000)
    .describe('First restart delay when the source process dies; doubles on every failure in a row.'),
  restart_max_ms: z.number().int().min(100).default(60000).describe('Longest restart delay.'),
};

export const audioSourceSettings = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('microphone').describe('A microphone through arecord (ALSA), 16 kHz mono S16LE.'),
    device: z.string().default('default').describe('ALSA device, e.g. plughw:1,0 (see arecord -L).'),
    recorder: z.enum(['arecord', 'sox', 'rec']).default('arecord').describe('Recorder program.'),
    ...backoff,
  }),
  z.object({
    type: z.literal('wav').describe('A WAV file (any rate or channel count is converted to 16 kHz mono).'),
    path: filePath.meta({ examples: ['/var/lib/perch/speech.wav'] }).describe('WAV file to read.'),
    realtime: z
      .boolean()
      .default(true)
      .describe('Deliver audio at its real pace (true) or as fast as possible (false).'),
    loop: z.boolean().default(false).describe('Start again at the end of the file.'),
    ...backoff,
  }),
]);

export const audioSettings = z
  .object({
    enabled: z.boolean().default(false).describe('Listen to an audio source.'),
    source: audioSourceSettings.optional().describe('Where audio comes from.'),
    segmenter: segmenterSettingsSchema.prefault({}).describe('Voice activity detection and utterance cutting.'),
    language: z
      .string()
      .min(1)
      .max(40)
      .optional()
      .describe(
        'Spoken language, e.g. English; default: the model finds it. Goes into the transcription instruction and the transcript message.',
      ),
    wake_phrase: z
      .string()
      .min(1)
      .max(100)
      .optional()
      .describe(
        'A transcript containing this phrase (case and punctuation ignored, whole words), e.g. "hey perch", is a question: the model answers from the audio itself; transcript and answer share one id. Default: none.',
      ),
    transcript_max_tokens: z.number().int().min(1).max(1024).default(256).describe('Most tokens in one transcript.'),
    stream: z
      .boolean()
      .default(true)
      .describe(
        'Hear speech while it is spoken: the audio is encoded and prefilled as it arrives, so the transcript is ready soon after the speaker stops. Off: each utterance is heard whole once it has ended.',
      ),
    follow_up_s: z
      .number()
      .min(0)
      .max(120)
      .default(8)
      .describe(
        'After an answer to a spoken question, utterances starting within this many seconds are questions too, without the wake phrase, continuing the conversation. 0: off.',
      ),
    talk_window_s: z
      .number()
      .min(1)
      .max(120)
      .default(10)
      .describe(
        'A push-to-talk message on <root>/audio/talk makes the next utterance starting within this many seconds a question.',
      ),
  })
  .describe('Hearing: microphone or file to transcripts and spoken questions.');

export const cameraSourceSettings = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('ffmpeg').describe('A V4L2 device or an RTSP/HTTP stream through ffmpeg, decoded to JPEG frames.'),
    input: z
      .string()
      .min(1)
      .meta({ examples: ['/dev/video0', 'rtsp://192.168.1.20:554/stream1'] })
      .describe('/dev/videoN or an rtsp:// / http:// URL.'),
    fps: z.number().min(0.05).max(30).default(1).describe('Frames per second taken from the stream.'),
    width: z
      .number()
      .int()
      .min(16)
      .max(4096)
      .optional()
      .describe('Scale frames to this width (height keeps the aspect ratio).'),
    rtsp_transport: z.enum(['tcp', 'udp']).default('tcp').describe('RTSP transport.'),
    ...backoff,
  }),
  z.object({
    type: z.literal('rpicam').describe('A Raspberry Pi camera through rpicam-vid, MJPEG.'),
    camera: z.number().int().min(0).default(0).describe('Camera index.'),
    width: z.number().int().min(16).max(4608).default(1280).describe('Frame width.'),
    height: z.number().int().min(16).max(2592).default(720).describe('Frame height.'),
    fps: z.number().min(0.05).max(60).default(1).describe('Frames per second.'),
    ...backoff,
  }),
  z.object({
    type: z.literal('http').describe('A camera snapshot URL polled at an interval.'),
    url: z
      .string()
      .url()
      .meta({ examples: ['http://192.168.1.21/snapshot.jpg'] })
      .describe('URL returning one JPEG.'),
    interval_ms: z.number().int().min(100).default(1000).describe('Polling interval.'),
    timeout_ms: z.number().int().min(100).default(5000).describe('Request timeout.'),
    ...backoff,
  }),
  z.object({
    type: z.literal('directory').describe('JPEG/PNG files from a directory, in name order.'),
    path: filePath.meta({ examples: ['/var/lib/perch/frames'] }).describe('Directory of images.'),
    interval_ms: z.number().int().min(0).default(1000).describe('Delay between images.'),
    loop: z.boolean().default(true).describe('Start again after the last image.'),
    ...backoff,
  }),
]);

export const cameraSettings = z.object({
  name: id
    .meta({ examples: ['door', 'driveway', 'garden', 'frames'] })
    .describe('Camera name, used in topics and entity ids.'),
  enabled: z.boolean().default(true).describe('Watch this camera.'),
  source: cameraSourceSettings.describe('Where frames come from.'),
  captions: z
    .boolean()
    .default(true)
    .describe(
      'Caption motion events with the model: an early caption when an event starts, a final one from its best frame when it ends.',
    ),
  prompt: z
    .string()
    .trim()
    .min(1)
    .max(4096)
    .default(DEFAULT_CAPTION_PROMPT)
    .describe(
      'Caption prompt for this camera: say what matters here (e.g. "Is anyone at the door? Describe them and any parcel.").',
    ),
  caption_max_tokens: z.number().int().min(8).max(512).default(64).describe('Longest caption, in tokens.'),
  structured: z
    .record(z.string(), z.unknown())
    .optional()
    .superRefine((schema, ctx) => {
      if (schema === undefined) return;
      try {
        compileStructured(schema);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: `not a usable JSON schema: ${(err as Error).message}` });
      }
    })
    .describe(
      'Structured captions: a JSON schema of an object, e.g. {type: object, properties: {people: {type: integer}, summary: {type: string}, concern: {enum: [low, medium, high]}}, required: [people, summary]}. The model writes JSON matching it under a token mask made from the schema, so it is valid on the first pass; the caption message carries the validated object as data, or error_code invalid_output after the retries (a reply cut off by caption_max_tokens). Default: plain text captions.',
    ),
  structured_retries: z
    .number()
    .int()
    .min(0)
    .max(5)
    .default(2)
    .describe(
      'With structured: how many times an invalid reply is asked again before the caption fails with invalid_output.',
    ),
  motion: motionSettingsSchema
    .prefault({})
    .describe('Motion detection: starts camera events (and, with the model, captions).'),
  snapshot_interval_s: z
    .number()
    .min(0)
    .max(86400)
    .default(10)
    .describe('Publish the newest frame as the retained snapshot at most this often, in seconds (0: every frame).'),
  image_tokens: z
    .union(
      SOFT_TOKEN_BUDGETS.map((b) => z.literal(b)) as [
        z.ZodLiteral<TokenBudget>,
        z.ZodLiteral<TokenBudget>,
        ...z.ZodLiteral<TokenBudget>[],
      ],
    )
    .default(DEFAULT_IMAGE_TOKENS)
    .describe('Image token budget of the final caption: more tokens, more detail, slower.'),
  early_image_tokens: z
    .union(
      SOFT_TOKEN_BUDGETS.map((b) => z.literal(b)) as [
        z.ZodLiteral<TokenBudget>,
        z.ZodLiteral<TokenBudget>,
        ...z.ZodLiteral<TokenBudget>[],
      ],
    )
    .default(EARLY_IMAGE_TOKENS)
    .describe(
      'Image token budget of the early caption, made when an event starts: fewer tokens, a caption seconds sooner. Never more than image_tokens.',
    ),
});

export const daemonSettings = z
  .object({
    state_dir: filePath
      .default('/var/lib/perch')
      .describe('Writable directory for the persisted outbox and other state.'),
    drain_timeout_ms: z
      .number()
      .int()
      .min(0)
      .default(10000)
      .describe('On SIGTERM, how long in-flight work may finish before Perch exits anyway.'),
    stats_interval_s: z
      .number()
      .int()
      .min(1)
      .default(30)
      .describe('How often the retained stats message is refreshed.'),
  })
  .describe('The service itself.');

export const perchConfigSchema = z
  .object({
    device: z
      .object({
        id: id.default('perch').describe('Device id: topic root perch/<id>, Home Assistant identifiers.'),
        name: z.string().min(1).max(64).default('Perch').describe('Human name shown in Home Assistant.'),
      })
      .prefault({})
      .describe('This board.'),
    log: logSettings.prefault({}),
    daemon: daemonSettings.prefault({}),
    mqtt: mqttSettings.prefault({}),
    embedded_broker: embeddedBrokerSettings.prefault({}),
    http: httpSettings.prefault({}),
    wyoming: wyomingSettings.prefault({}),
    actions: actionsSettings.prefault({}),
    homeassistant: homeAssistantSettings.prefault({}),
    model: modelSettings.prefault({}),
    scheduler: schedulerSettings.prefault({}),
    audio: audioSettings.prefault({}),
    cameras: z.array(cameraSettings).default([]).describe('Cameras to watch.'),
  })
  .strict();

export type PerchConfig = z.output<typeof perchConfigSchema>;
export type PerchConfigInput = z.input<typeof perchConfigSchema>;
export type MqttSettings = PerchConfig['mqtt'];
export type HttpSettings = PerchConfig['http'];
export type WyomingSettings = PerchConfig['wyoming'];
export type ActionsSettings = PerchConfig['actions'];
export type ActionSettings = ActionsSettings['allowed'][number];
export type AudioSourceSettings = z.output<typeof audioSourceSettings>;
export type CameraSourceSettings = z.output<typeof cameraSourceSettings>;
export type CameraSettings = PerchConfig['cameras'][number];
