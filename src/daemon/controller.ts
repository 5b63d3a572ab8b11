/**
 * The controller: builds Perch's modules from the config and runs them with one lifecycle.
 * start() brings them up in dependency order (embedded broker, MQTT, discovery, switches, requests,
 * sources, stats); stop() drains in-flight work within daemon.drain_timeout_ms, stops sources, says
 * `offline` and closes, in reverse order. Every listener a module adds is removed by owner on stop.
 */
import type { PerchConfig } from '../config/schema.js';
import type { AnswerEngine } from '../engine/types.js';
import { silentLogger, type Logger } from '../common/log.js';
import { MqttConnection } from '../mqtt/connection.js';
import { DiscoveryPublisher, discoveryOptionsFromConfig } from '../mqtt/discovery.js';
import { encode, isoNow, type ErrorMessage, type StatsMessage } from '../mqtt/messages.js';
import { AskPipeline } from '../pipelines/ask.js';
import { HearingPipeline } from '../pipelines/hearing.js';
import { MotionPipeline } from '../pipelines/motion.js';
import { LatestFrames, SeeingPipeline } from '../pipelines/seeing.js';
import { AudioMeter, SnapshotPublisher, SourceGroup } from '../pipelines/sources.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { createAudioSource, createFrameSource } from '../sources/index.js';
import type { FrameSource } from '../sources/types.js';
import { EmbeddedBroker } from './embedded-broker.js';
import { HealthTracker } from './health.js';
import { ModelManager } from './model.js';
import { VAD_STAGE, watchStages } from './stages.js';
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';
import { DEFAULT_IMAGE_TOKENS } from '../model/gemma4/contract.js';

const OWNER = 'controller';

export interface ControllerOptions {
  config: PerchConfig;
  version: string;
  logger?: Logger;
  /** The model engine; default: one that answers `unavailable`, naming why. */
  engine?: AnswerEngine;
}

/** What this build cannot do yet, said plainly at start whatever the model. */
export const ENCODER_GAP =
  'transcripts need a package with an audio encoder, captions and questions about images one with a vision encoder; the engine status says what this one has';

export class Controller {
  readonly scheduler: Scheduler;
  readonly conn: MqttConnection;
  /** Set once start() has brought the sources up: before that, the switch states would say OFF. */
  private sourcesStarted = false;
  private readonly log: Logger;
  private readonly model: ModelManager;
  private readonly health: HealthTracker;
  private stopStages: (() => void) | undefined;
  private readonly frameSources: FrameSource[];
  private readonly broker: EmbeddedBroker | undefined;
  private readonly discovery: DiscoveryPublisher | undefined;
  private ask: AskPipeline | undefined;
  private readonly listening: SourceGroup;
  private readonly watching: SourceGroup;
  private readonly snapshots: SnapshotPublisher;
  private readonly motion: MotionPipeline;
  private seeing: SeeingPipeline | undefined;
  private readonly frames = new LatestFrames();
  private readonly meter: AudioMeter | undefined;
  private readonly hearing: HearingPipeline | undefined;
  private readonly startedAt = Date.now();
  private statsTimer: NodeJS.Timeout | undefined;
  private stopped: Promise<void> | undefined;

  constructor(private readonly o: ControllerOptions) {
    const { config } = o;
    this.log = o.logger ?? silentLogger;
    if (config.embedded_broker.enabled) {
      this.broker = new EmbeddedBroker({
        settings: config.embedded_broker,
        maxPayloadBytes: config.mqtt.max_payload_bytes,
        logger: this.log,
      });
    }
    this.conn = new MqttConnection({
      settings: config.mqtt,
      deviceId: config.device.id,
      stateDir: config.daemon.state_dir,
      logger: this.log,
      homeAssistant: config.homeassistant,
    });
    this.scheduler = new Scheduler(config.scheduler, this.log);
    this.health = new HealthTracker({
      logger: this.log,
      report: (_stage, topic, message) => this.reportError(topic, message),
      onChange: () => void this.publishStats(),
    });
    this.model = new ModelManager({
      config,
      scheduler: this.scheduler,
      ...(o.engine ? { engine: o.engine } : {}),
      health: this.health,
      report: (message) => this.reportError(this.conn.topics.answer, message),
      onChange: () => void this.publishStats(),
      logger: this.log,
    });
    const cameras = config.cameras.filter((c) => c.enabled);

    const audio =
      config.audio.enabled && config.audio.source ? createAudioSource(config.audio.source, this.log) : undefined;
    this.meter = audio ? new AudioMeter(audio) : undefined;
    this.hearing = audio
      ? new HearingPipeline(this.conn, audio, config.audio.segmenter, this.log, {
          scheduler: this.scheduler,
          // Asked per utterance: the model loads in the background after start.
          transcriber: () => this.model.speech(),
          maxTokens: config.audio.transcript_max_tokens,
          followUpS: config.audio.follow_up_s,
          talkWindowS: config.audio.talk_window_s,
          ...(config.audio.language ? { language: config.audio.language } : {}),
          ...(config.audio.wake_phrase ? { wakePhrase: config.audio.wake_phrase } : {}),
          vadHealth: { error: (err) => this.health.error(VAD_STAGE, err), ok: () => this.health.ok(VAD_STAGE) },
        })
      : undefined;
    // The switches pause the sources first, then the consumers end what was in progress.
    this.listening = new SourceGroup('listening', audio ? [audio] : [], this.log, {
      paused: async () => void (await this.hearing?.pause()),
    });
    const frameSources: FrameSource[] = cameras.map((c) => createFrameSource(c.name, c.source, this.log));
    this.frameSources = frameSources;
    this.watching = new SourceGroup('watching', frameSources, this.log, {
      paused: () => this.motion.pause(),
      resuming: () => this.motion.resume(),
    });
    this.snapshots = new SnapshotPublisher(this.conn, cameras);
    // Events go out through the seeing pipeline (it adds captions); it exists once the engine does (start()).
    this.motion = new MotionPipeline(this.conn, this.log, (u, msg) => this.seeing?.onMotion(u, msg));
    cameras.forEach((c, i) => {
      this.snapshots.attach(frameSources[i]!);
      this.frames.attach(frameSources[i]!);
      this.motion.attach(c, frameSources[i]!);
    });

    if (config.homeassistant.enabled) {
      this.discovery = new DiscoveryPublisher({
        discovery: discoveryOptionsFromConfig(config, { swVersion: o.version }),
        haStatusTopic: config.homeassistant.status_topic,
        stateDir: config.daemon.state_dir,
        publish: (topic, payload, opts) => this.conn.publish(topic, payload, opts),
        logger: this.log,
      });
    }
  }

  async start(): Promise<void> {
    const { config } = this.o;
    await this.model.start();
    this.log.warn(ENCODER_GAP);
    const cameras = config.cameras.filter((c) => c.enabled);
    this.ask = new AskPipeline({
      conn: this.conn,
      scheduler: this.scheduler,
      engine: this.model.engine,
      maxPayloadBytes: config.mqtt.max_payload_bytes,
      cameras: cameras.map((c) => c.name),
      latestFrame: (name) => this.frames.latest(name),
      imageTokens: (name) => cameras.find((c) => c.name === name)?.image_tokens ?? DEFAULT_IMAGE_TOKENS,
      logger: this.log,
    });
    this.seeing = new SeeingPipeline({
      conn: this.conn,
      scheduler: this.scheduler,
      engine: this.model.engine,
      cameras,
      captionDeadlineMs: config.scheduler.caption_deadline_ms,
      logger: this.log,
    });
    if (this.broker) {
      const at = await this.broker.start();
      this.log.info(`embedded MQTT broker listening on ${at.host}:${at.port}`);
    }
    this.conn.on('connected', this.onConnected);
    if (this.discovery) {
      for (const topic of this.discovery.subscriptions) {
        this.conn.subscribe(topic, (msg) => void this.discovery?.handleMessage(msg.topic, msg.payload), {
          qos: 1,
          owner: OWNER,
        });
      }
    }
    this.conn.subscribe(this.conn.topics.listeningSet, (msg) => void this.onSwitch(this.listening, msg.payload), {
      qos: 1,
      owner: OWNER,
    });
    this.conn.subscribe(this.conn.topics.watchingSet, (msg) => void this.onSwitch(this.watching, msg.payload), {
      qos: 1,
      owner: OWNER,
    });
    this.ask.start();
    await this.conn.start();
    await this.hearing?.start();
    await Promise.all([this.listening.start(), this.watching.start()]);
    // The switches say what is applied: only now that the sources have started (a connect before this skips them).
    this.sourcesStarted = true;
    await this.publishSwitchStates();
    this.motion.start();
    this.stopStages = watchStages({
      health: this.health,
      topics: this.conn.topics,
      model: this.model,
      hearing: this.hearing,
      motion: this.motion,
      watching: this.watching,
      frameSources: this.frameSources,
    });
    this.statsTimer = setInterval(() => void this.publishStats(), config.daemon.stats_interval_s * 1000);
    this.statsTimer.unref();
    this.log.info(
      { root: this.conn.topics.root, broker: config.mqtt.url },
      `Perch is running; watch it with: mosquitto_sub -h ${hostOf(config.mqtt.url)} -p ${portOf(config.mqtt.url)} -v -t '${this.conn.topics.root}/#' -t '${config.homeassistant.discovery_prefix}/#'`,
    );
  }

  /** Idempotent: a second call waits for the first. */
  stop(reason = 'stop'): Promise<void> {
    this.stopped ??= this.doStop(reason);
    return this.stopped;
  }

  stats(): StatsMessage {
    const mem = process.memoryUsage();
    const m = this.conn.stats();
    const sources: StatsMessage['sources'] = {};
    for (const [group, prefix] of [
      [this.listening, 'audio/'],
      [this.watching, 'camera/'],
    ] as const) {
      for (const [name, st] of Object.entries(group.states())) {
        sources[prefix + name] = {
          status: st.status,
          restarts: st.restarts,
          ...(st.lastError ? { last_error: st.lastError.slice(0, 500) } : {}),
        };
      }
    }
    const engine = this.model.engine.status();
    return {
      v: 1,
      ts: isoNow(),
      uptime_s: Math.round((Date.now() - this.startedAt) / 1000),
      version: this.o.version,
      memory: { rss: mem.rss, heap_used: mem.heapUsed, heap_total: mem.heapTotal },
      engine: {
        state: engine.state,
        detail: engine.detail.slice(0, 500),
        ...(engine.randomWeights ? { random_weights: true } : {}),
        ...this.model.stats(),
      },
      ...(this.hearing && this.meter
        ? { audio: { ...this.hearing.stats(), seconds: Math.round(this.meter.samples / AUDIO_SAMPLE_RATE) } }
        : {}),
      queues: this.scheduler.stats().depth_by_kind,
      mqtt: {
        connected: m.connected,
        protocol: m.protocol,
        reconnects: m.reconnects,
        published: m.published,
        received: m.received,
        rejected: m.rejected,
        outbox: {
          depth: m.outbox.depth,
          bytes: m.outbox.bytes,
          dropped: m.outbox.dropped,
          expired: m.outbox.expired,
          dead_letters: m.outbox.deadLettered,
        },
      },
      sources,
      motion: Object.fromEntries(
        Object.entries(this.motion.stats()).map(([name, st]) => [
          name,
          {
            on: st.motionOn,
            events: st.events,
            frames: st.frames,
            dropped: st.dropped,
            decode_errors: st.decodeErrors,
            avg_frame_ms: Math.round(st.avgFrameMs * 100) / 100,
          },
        ]),
      ),
      ...(this.seeing ? { captions: this.seeing.stats() } : {}),
      health: this.health.stats(),
    };
  }

  /** A failure worth a consumer's attention (a failing stage, an unusable model package) on `<root>/errors`. */
  private reportError(topic: string, message: string): void {
    const e: ErrorMessage = { v: 1, ts: isoNow(), code: 'internal', message: message.slice(0, 2000), topic };
    void this.conn.publish(this.conn.topics.errors, encode(e), {
      final: true,
      qos: 1,
      contentType: 'application/json',
    });
  }

  private readonly onConnected = (): void => {
    if (this.sourcesStarted) void this.publishSwitchStates();
    void this.motion.republishStates();
    void this.hearing?.republishState();
    void this.discovery?.start().catch((err: unknown) => this.log.error({ err }, 'discovery publish failed'));
    void this.publishStats();
  };

  private async onSwitch(group: SourceGroup, payload: Buffer): Promise<void> {
    const value = payload.toString('utf8').trim().toUpperCase();
    if (value !== 'ON' && value !== 'OFF') {
      this.log.warn(
        { group: group.name, payload: payload.toString('utf8').slice(0, 40) },
        'switch command must be ON or OFF',
      );
      return;
    }
    await group.setPaused(value === 'OFF');
    await this.publishSwitchStates();
    await this.publishStats();
  }

  private async publishSwitchStates(): Promise<void> {
    const t = this.conn.topics;
    await Promise.all([
      this.conn.publish(t.listening, this.listening.active ? 'ON' : 'OFF', { qos: 1, retain: true }),
      this.conn.publish(t.watching, this.watching.active ? 'ON' : 'OFF', { qos: 1, retain: true }),
    ]);
  }

  private async publishStats(): Promise<void> {
    await this.conn.publish(this.conn.topics.stats, encode(this.stats()), {
      qos: 0,
      retain: true,
      contentType: 'application/json',
    });
  }

  private async doStop(reason: string): Promise<void> {
    this.log.info({ reason }, 'stopping');
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.stopStages?.();
    this.health.close();
    const drained = await this.scheduler.drain(this.o.config.daemon.drain_timeout_ms);
    this.log.info(drained, 'job queue drained');
    this.ask?.stop();
    this.snapshots.detach();
    this.frames.detach();
    await this.motion.stop();
    // Event ends held for their captions: the drained scheduler refuses new jobs, so they settle at once.
    await this.seeing?.stop();
    this.meter?.detach();
    await Promise.all([this.listening.stop(), this.watching.stop()]);
    await this.hearing?.stop();
    this.conn.removeOwner(OWNER);
    this.conn.off('connected', this.onConnected);
    await this.conn.stop({ offline: true, drainMs: 2000 });
    await this.model.stop();
    await this.broker?.stop();
    this.log.info('stopped');
  }
}

function hostOf(url: string): string {
  return new URL(url).hostname;
}

function portOf(url: string): string {
  const u = new URL(url);
  return u.port || (u.protocol === 'mqtts:' ? '8883' : '1883');
}
