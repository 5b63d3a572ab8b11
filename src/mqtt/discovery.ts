/**
 * Home Assistant MQTT discovery for one Perch device, as one retained device-discovery message
 * (`<prefix>/device/<id>/config` with `dev`, `o` and `cmps`; Home Assistant 2024.11 and later).
 *
 * Entities: transcripts and answers as `event` entities plus "last ..." sensors (state capped at 255 characters,
 * the full message as attributes), per camera a caption sensor, a snapshot `image`, a motion `binary_sensor` and
 * an event entity; a `text` entity "Ask" (Home Assistant publishes its raw text to `<root>/ask/text`), switches
 * Listening and Watching, diagnostic sensors from the stats message, and a Problem `binary_sensor` (device class
 * problem) that is ON while a stage in the stats' `health` is failing or restarting or a module failed to start. Availability follows `<root>/status`.
 *
 * Stale entities: the ids of the components last published are kept in a state file. A component that is no
 * longer configured (a camera taken out of the config) is published once more as `{ "p": <platform> }` only,
 * which is Home Assistant's documented way to remove one component of a device. Such tombstones stay in the
 * retained message until Home Assistant announces itself online (it has read the retained message by then), so an
 * instance that was down during the change still removes them. removeAll() publishes an empty retained payload,
 * which removes the whole device.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { arch, platform } from 'node:os';
import { join } from 'node:path';
import type { PerchConfig } from '../config/schema.js';
import { silentLogger, type Logger } from '../common/log.js';
import { defaultRootTopic, topicsFor } from './topics.js';

/** The one thing discovery needs from the MQTT connection. */
export type PublishFn = (
  topic: string,
  payload: string | Buffer,
  opts: { qos: 0 | 1 | 2; retain: boolean },
) => Promise<unknown>;

export interface DiscoveryOptions {
  deviceId: string;
  deviceName: string;
  /** Root of Perch's topics (mqtt.root_topic or perch/<device id>). */
  rootTopic: string;
  /** homeassistant.discovery_prefix */
  discoveryPrefix: string;
  /** Names of the enabled cameras. */
  cameras: readonly string[];
  /** Whether the audio pipeline is enabled (transcript entities and the Listening switch). */
  audio: boolean;
  /** Whether the HTTP API is enabled (its request counter). */
  http?: boolean;
  /** Whether actions are declared (the Actions switch and the last action). */
  actions?: boolean;
  swVersion: string;
  /** Board name for the model string, e.g. "Raspberry Pi 5 Model B Rev 1.0". */
  board: string;
}

export interface HaComponent {
  /** Platform: sensor, event, image, ... */
  p: string;
  [option: string]: unknown;
}

export interface DiscoveryPayload {
  dev: { ids: string[]; name: string; mf: string; mdl: string; sw: string };
  o: { name: string; sw: string };
  availability: Array<{ topic: string; payload_available: string; payload_not_available: string }>;
  qos: number;
  cmps: Record<string, HaComponent>;
}

export interface DiscoveryMessage {
  topic: string;
  payload: DiscoveryPayload;
}

/** Longest state Home Assistant accepts. */
const MAX_STATE = 255;
const STATE_FILE = 'homeassistant-discovery.json';

/** Home Assistant's topic id and device identifier; prefixed so `perch` alone cannot clash with other products. */
export function haDeviceId(deviceId: string): string {
  return `perch_${deviceId}`;
}

export function discoveryTopic(discoveryPrefix: string, deviceId: string): string {
  return `${discoveryPrefix}/device/${haDeviceId(deviceId)}/config`;
}

/** Topic of the Ask text entity: Home Assistant publishes the typed text raw, not JSON. */
export function askTextTopic(rootTopic: string): string {
  return `${rootTopic}/ask/text`;
}

/** The discovery options a config gives; swVersion and board come from the caller. */
export function discoveryOptionsFromConfig(
  config: Pick<PerchConfig, 'device' | 'mqtt' | 'homeassistant' | 'cameras' | 'audio'> &
    Partial<Pick<PerchConfig, 'http' | 'actions'>>,
  extra: { swVersion: string; board?: string },
): DiscoveryOptions {
  return {
    deviceId: config.device.id,
    deviceName: config.device.name,
    rootTopic: config.mqtt.root_topic ?? defaultRootTopic(config.device.id),
    discoveryPrefix: config.homeassistant.discovery_prefix,
    cameras: config.cameras.filter((c) => c.enabled).map((c) => c.name),
    audio: config.audio.enabled,
    http: config.http?.enabled ?? false,
    actions: (config.actions?.allowed.length ?? 0) > 0,
    swVersion: extra.swVersion,
    board: extra.board ?? detectBoard(),
  };
}

/** The board's model from the device tree (Raspberry Pi OS), else the OS and architecture. */
export function detectBoard(modelFile = '/proc/device-tree/model'): string {
  try {
    const raw = readFileSync(modelFile).subarray(0, 128).toString('utf8');
    const model = raw
      .replace(/\0/g, '')
      .replace(/[^\x20-\x7e]/g, '')
      .trim();
    if (model) return model;
  } catch {
    // Not a device-tree board: fall through.
  }
  return `${platform()} ${arch()}`;
}

// Templates run inside Home Assistant (Jinja). `.get()` avoids undefined-variable warnings for missing fields.
const truncated = (field: string) => `{{ ((value_json.get('${field}') or '') | string)[:${MAX_STATE}] }}`;
/** Keeps every field of the message as event attributes and adds the event_type Home Assistant requires. */
const asEvent = (eventType: string) => `{{ dict(value_json, event_type=${eventType}) | tojson }}`;

export function buildDiscovery(opts: DiscoveryOptions): DiscoveryMessage {
  const t = topicsFor(opts.rootTopic);
  const dev = haDeviceId(opts.deviceId);
  const cmps: Record<string, HaComponent> = {};
  // unique_id is stable across renames; default_entity_id only suggests the entity id on first discovery.
  const add = (cid: string, p: string, name: string, options: Record<string, unknown>) => {
    const objectId = `${dev}_${cid}`.replace(/-/g, '_');
    cmps[cid] = { p, name, unique_id: `${dev}_${cid}`, default_entity_id: `${p}.${objectId}`, ...options };
  };

  if (opts.audio) {
    add('transcript', 'event', 'Transcript', {
      state_topic: t.transcript,
      event_types: ['transcript', 'wake'],
      value_template: asEvent(`'wake' if value_json.get('wake') else 'transcript'`),
      icon: 'mdi:microphone-message',
    });
    add('last_transcript', 'sensor', 'Last transcript', {
      state_topic: t.transcript,
      value_template: truncated('text'),
      json_attributes_topic: t.transcript,
      icon: 'mdi:text-box-outline',
    });
    add('speech', 'binary_sensor', 'Speech', {
      state_topic: t.speech,
      payload_on: 'ON',
      payload_off: 'OFF',
      device_class: 'sound',
      icon: 'mdi:account-voice',
    });
    add('sound_level', 'sensor', 'Sound level', {
      state_topic: t.soundLevel,
      unit_of_measurement: 'dBFS',
      state_class: 'measurement',
      icon: 'mdi:volume-high',
    });
    add('talk', 'button', 'Talk', { command_topic: t.talk, payload_press: 'PRESS', icon: 'mdi:account-voice' });
    add('listening', 'switch', 'Listening', {
      command_topic: t.listeningSet,
      state_topic: t.listening,
      payload_on: 'ON',
      payload_off: 'OFF',
      icon: 'mdi:microphone',
    });
  }

  if (opts.actions) {
    add('actions', 'switch', 'Actions', {
      command_topic: t.actionsSet,
      state_topic: t.actions,
      payload_on: 'ON',
      payload_off: 'OFF',
      icon: 'mdi:gesture-tap-button',
    });
    add('last_action', 'sensor', 'Last action', {
      state_topic: t.action,
      value_template: `{{ ((value_json.get('name') or '') ~ ': ' ~ (value_json.get('status') or ''))[:${MAX_STATE}] }}`,
      json_attributes_topic: t.action,
      icon: 'mdi:lightning-bolt-outline',
    });
  }

  add('answer', 'event', 'Answer', {
    state_topic: t.answer,
    event_types: ['answer', 'error'],
    value_template: asEvent(`'error' if value_json.get('error') else 'answer'`),
    icon: 'mdi:robot-outline',
  });
  add('last_answer', 'sensor', 'Last answer', {
    state_topic: t.answer,
    value_template: truncated('text'),
    json_attributes_topic: t.answer,
    icon: 'mdi:message-reply-text-outline',
  });
  add('ask', 'text', 'Ask', {
    command_topic: askTextTopic(opts.rootTopic),
    min: 1,
    max: MAX_STATE,
    mode: 'text',
    icon: 'mdi:chat-question-outline',
  });

  if (opts.cameras.length > 0) {
    add('watching', 'switch', 'Watching', {
      command_topic: t.watchingSet,
      state_topic: t.watching,
      payload_on: 'ON',
      payload_off: 'OFF',
      icon: 'mdi:cctv',
    });
  }
  for (const cam of opts.cameras) {
    const c = t.camera(cam);
    add(`cam_${cam}_caption`, 'sensor', `${cam} caption`, {
      state_topic: c.caption,
      value_template: truncated('text'),
      json_attributes_topic: c.caption,
      icon: 'mdi:image-text',
    });
    add(`cam_${cam}_snapshot`, 'image', `${cam} snapshot`, { image_topic: c.snapshot, content_type: 'image/jpeg' });
    add(`cam_${cam}_motion`, 'binary_sensor', `${cam} motion`, {
      state_topic: c.motion,
      payload_on: 'ON',
      payload_off: 'OFF',
      device_class: 'motion',
    });
    add(`cam_${cam}_event`, 'event', `${cam} event`, {
      state_topic: c.event,
      event_types: ['new', 'update', 'end'],
      value_template: asEvent(`value_json.get('type')`),
      device_class: 'motion',
    });
  }

  add('status', 'sensor', 'Status', {
    state_topic: t.stats,
    value_template: `{% set e = value_json.get('engine') %}{{ ((e.get('state') if e is mapping else e) or 'unknown') | string }}`,
    json_attributes_topic: t.stats,
    entity_category: 'diagnostic',
    icon: 'mdi:state-machine',
  });
  add('queue', 'sensor', 'Queue depth', {
    state_topic: t.stats,
    value_template: `{{ (value_json.get('queues') or {}).values() | sum }}`,
    state_class: 'measurement',
    unit_of_measurement: 'jobs',
    entity_category: 'diagnostic',
    icon: 'mdi:tray-full',
  });
  if (opts.http) {
    add('http_requests', 'sensor', 'HTTP requests', {
      state_topic: t.stats,
      value_template: `{{ (value_json.get('http') or {}).get('requests', 0) }}`,
      json_attributes_topic: t.stats,
      json_attributes_template: `{{ (value_json.get('http') or {}) | tojson }}`,
      state_class: 'total_increasing',
      entity_category: 'diagnostic',
      icon: 'mdi:api',
    });
  }
  // ON while any stage of the stats' `health` is not ok (failing, or being restarted) or a module failed to start;
  // the stages and the failed modules as attributes.
  const failedModules = `((value_json.get('modules') or {}) | dictsort | selectattr('1', 'eq', 'failed') | map(attribute='0') | list)`;
  add('problem', 'binary_sensor', 'Problem', {
    state_topic: t.stats,
    value_template: `{{ 'ON' if ((value_json.get('health') or {}).values() | selectattr('state', 'ne', 'ok') | list | count) + (${failedModules} | count) > 0 else 'OFF' }}`,
    payload_on: 'ON',
    payload_off: 'OFF',
    json_attributes_topic: t.stats,
    json_attributes_template: `{{ dict(value_json.get('health') or {}, failed_modules=${failedModules}) | tojson }}`,
    device_class: 'problem',
    entity_category: 'diagnostic',
  });

  return {
    topic: discoveryTopic(opts.discoveryPrefix, opts.deviceId),
    payload: {
      dev: { ids: [dev], name: opts.deviceName, mf: 'Perch', mdl: `Gemma 4 E2B on ${opts.board}`, sw: opts.swVersion },
      o: { name: 'Perch', sw: opts.swVersion },
      availability: [{ topic: t.status, payload_available: 'online', payload_not_available: 'offline' }],
      // Home Assistant subscribes to state topics and publishes commands with QoS 1.
      qos: 1,
      cmps,
    },
  };
}

/** What the state file remembers between runs: component id → platform. */
interface DiscoveryState {
  v: 1;
  topic: string;
  components: Record<string, string>;
  tombstones: Record<string, string>;
}

async function loadState(stateDir: string, log: Logger): Promise<DiscoveryState | undefined> {
  let text: string;
  try {
    text = await readFile(join(stateDir, STATE_FILE), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const s = JSON.parse(text) as Partial<DiscoveryState>;
    if (s.v !== 1 || typeof s.topic !== 'string' || !isStringMap(s.components) || !isStringMap(s.tombstones))
      throw new Error('unexpected shape');
    return s as DiscoveryState;
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'ignoring unreadable Home Assistant discovery state file');
    return undefined;
  }
}

function isStringMap(v: unknown): v is Record<string, string> {
  return (
    typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string')
  );
}

async function saveState(stateDir: string, state: DiscoveryState): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  const file = join(stateDir, STATE_FILE);
  // Write then rename, so a crash never leaves a half-written file.
  await writeFile(`${file}.tmp`, JSON.stringify(state, null, 2) + '\n');
  await rename(`${file}.tmp`, file);
}

export interface DiscoveryPublisherOptions {
  discovery: DiscoveryOptions;
  /** homeassistant.status_topic */
  haStatusTopic: string;
  /** daemon.state_dir */
  stateDir: string;
  publish: PublishFn;
  logger?: Logger;
}

export class DiscoveryPublisher {
  private opts: DiscoveryOptions;
  private readonly log: Logger;
  /** Publishes run one after another, so a birth message during start() cannot interleave with it. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: DiscoveryPublisherOptions) {
    this.opts = o.discovery;
    this.log = o.logger ?? silentLogger;
  }

  /** Topics the caller must subscribe to and forward to handleMessage(). */
  get subscriptions(): string[] {
    return [this.o.haStatusTopic];
  }

  /** Publishes the retained discovery message, removing components that are no longer configured. */
  start(): Promise<void> {
    return this.serial(() => this.publishDiscovery(false));
  }

  /** New options (config reload): republishes, removing what went away. */
  update(discovery: DiscoveryOptions): Promise<void> {
    return this.serial(async () => {
      this.opts = discovery;
      await this.publishDiscovery(false);
    });
  }

  /** Forwarded messages; returns true when the message was Home Assistant's status (online: republish). */
  async handleMessage(topic: string, payload: Buffer | string): Promise<boolean> {
    if (topic !== this.o.haStatusTopic) return false;
    const text = (typeof payload === 'string' ? payload : payload.subarray(0, 64).toString('utf8')).trim();
    if (text === 'online') {
      this.log.info('Home Assistant is online: republishing discovery');
      await this.serial(() => this.publishDiscovery(true));
    }
    return true;
  }

  /** Removes the whole device from Home Assistant (perch ha remove). */
  removeAll(): Promise<void> {
    return this.serial(async () => {
      await haRemove(this.o.publish, {
        discoveryPrefix: this.opts.discoveryPrefix,
        deviceId: this.opts.deviceId,
        stateDir: this.o.stateDir,
        logger: this.log,
      });
    });
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const run = this.chain.then(fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async publishDiscovery(haJustStarted: boolean): Promise<void> {
    const msg = buildDiscovery(this.opts);
    const prev = await loadState(this.o.stateDir, this.log);
    const current: Record<string, string> = {};
    for (const [cid, c] of Object.entries(msg.payload.cmps)) current[cid] = c.p;

    const tombstones: Record<string, string> = {};
    if (prev && !haJustStarted) {
      // Only components of this same device topic can be removed this way.
      const old = prev.topic === msg.topic ? { ...prev.tombstones, ...prev.components } : {};
      for (const [cid, p] of Object.entries(old)) if (!(cid in current)) tombstones[cid] = p;
    }
    if (prev && prev.topic !== msg.topic) {
      // Device id or prefix changed: the old device would linger in Home Assistant.
      this.log.info(
        { topic: prev.topic },
        'removing the Home Assistant device published under the old discovery topic',
      );
      await this.o.publish(prev.topic, '', { qos: 1, retain: true });
    }
    for (const [cid, p] of Object.entries(tombstones)) msg.payload.cmps[cid] = { p };

    await this.o.publish(msg.topic, JSON.stringify(msg.payload), { qos: 1, retain: true });
    await saveState(this.o.stateDir, { v: 1, topic: msg.topic, components: current, tombstones });
    const removed = Object.keys(tombstones);
    this.log.info(
      { topic: msg.topic, components: Object.keys(current).length, removed },
      'published Home Assistant discovery',
    );
  }
}

/**
 * Removes Perch's device from Home Assistant: an empty retained payload on its discovery topic (and on the topic
 * remembered in the state file, should the device id have changed since), then forgets the state file.
 */
export async function haRemove(
  publish: PublishFn,
  opts: { discoveryPrefix: string; deviceId: string; stateDir: string; logger?: Logger },
): Promise<string[]> {
  const log = opts.logger ?? silentLogger;
  const topics = new Set([discoveryTopic(opts.discoveryPrefix, opts.deviceId)]);
  const prev = await loadState(opts.stateDir, log);
  if (prev) topics.add(prev.topic);
  for (const topic of topics) await publish(topic, '', { qos: 1, retain: true });
  await rm(join(opts.stateDir, STATE_FILE), { force: true });
  log.info({ topics: [...topics] }, 'removed the Home Assistant device');
  return [...topics];
}
