/**
 * The controller: builds Perch's modules from the config into one ordered list and runs them with one
 * lifecycle (src/daemon/module.ts). start() brings them up in order (model, embedded broker, discovery,
 * switches, questions, the MQTT connection, seeing, hearing, sources, motion, jobs, health, stats), each on
 * its own; stop() drains the job queue within daemon.drain_timeout_ms, then takes the started modules down in
 * reverse: stats and health first, the pipelines and sources end, MQTT says `offline`, the model closes last.
 * Every listener a module adds is removed by owner on stop.
 */
import type { PerchConfig } from '../config/schema.js';
import type { AnswerEngine } from '../engine/types.js';
import { silentLogger, type Logger } from '../common/log.js';
import { MqttConnection } from '../mqtt/connection.js';
import { CameraPublisher } from '../mqtt/camera-publisher.js';
import { HearingPublisher } from '../mqtt/hearing-publisher.js';
import { type DaemonModule, type ModuleState, defineModule } from './module.js';
import { DiscoveryPublisher, discoveryOptionsFromConfig } from '../mqtt/discovery.js';
import { errorMessage } from '../mqtt/errors.js';
import { actionConfirmSchema, encode, isoNow, type ErrorMessage, type StatsMessage } from '../mqtt/messages.js';
import { Actions } from '../pipelines/actions.js';
import { AskPipeline } from '../pipelines/ask.js';
import { HearingPipeline } from '../pipelines/hearing.js';
import { MotionPipeline } from '../pipelines/motion.js';
import { LatestFrames, SeeingPipeline } from '../pipelines/seeing.js';
import { AudioMeter, SnapshotPublisher, SourceGroup } from '../pipelines/sources.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { perchVersion } from '../common/version.js';
import { HttpServer } from '../http/server.js';
import { WyomingServer } from '../wyoming/server.js';
import { createAudioSource, createFrameSource } from '../sources/index.js';
import type { FrameSource } from '../sources/types.js';
import { EmbeddedBroker } from './embedded-broker.js';
import { HealthTracker } from './health.js';
import { ModelManager } from './model.js';
import { VAD_STAGE, watchStages } from './stages.js';
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';
import { DEFAULT_IMAGE_TOKENS } from '../model/gemma4/contract.js';

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
  private readonly log: Logger;
  private readonly model: ModelManager;
  private readonly health: HealthTracker;
  private readonly listening: SourceGroup;
  private readonly watching: SourceGroup;
  private readonly motion: MotionPipeline;
  private readonly hearing: HearingPipeline | undefined;
  private readonly actions: Actions | undefined;
  /** In start order; stopped in reverse. */
  private readonly modules: DaemonModule[];
  private readonly states = new Map<string, ModuleState>();
  private readonly started: DaemonModule[] = [];
  /** Set once the sources are up: before that, the switch states would say OFF. */
  private sourcesStarted = false;
  private readonly startedAt = Date.now();
  private starting: Promise<void> | undefined;
  /** Errors reported before the MQTT connection started (published once it has). */
  private earlyReports: ErrorMessage[] | undefined = [];
  private stopped: Promise<void> | undefined;

  constructor(private readonly o: ControllerOptions) {
    const { config } = o;
    this.log = o.logger ?? silentLogger;
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
    // Allow-listed actions (config actions.allowed): offered to the model in MQTT questions, spoken questions
    // and Wyoming turns.
    this.actions = config.actions.allowed.length
      ? new Actions({
          settings: config.actions,
          bus: this.conn,
          recordTopic: this.conn.topics.action,
          logger: this.log.child({ module: 'actions' }),
        })
      : undefined;
    const cameras = config.cameras.filter((c) => c.enabled);
    const audio =
      config.audio.enabled && config.audio.source ? createAudioSource(config.audio.source, this.log) : undefined;
    this.hearing = audio
      ? new HearingPipeline(new HearingPublisher(this.conn), audio, config.audio.segmenter, this.log, {
          scheduler: this.scheduler,
          // Asked per utterance: the model loads in the background after start.
          transcriber: () => this.model.speech(),
          maxTokens: config.audio.transcript_max_tokens,
          streaming: config.audio.stream,
          followUpS: config.audio.follow_up_s,
          talkWindowS: config.audio.talk_window_s,
          ...(config.audio.language ? { language: config.audio.language } : {}),
          ...(config.audio.wake_phrase ? { wakePhrase: config.audio.wake_phrase } : {}),
          vadHealth: { error: (err) => this.health.error(VAD_STAGE, err), ok: () => this.health.ok(VAD_STAGE) },
          ...(this.actions ? { actions: { actions: this.actions, engine: () => this.model.engine } } : {}),
        })
      : undefined;
    const frameSources: FrameSource[] = cameras.map((c) => createFrameSource(c.name, c.source, this.log));
    // The switches pause the sources first, then the consumers end what was in progress.
    this.listening = new SourceGroup('listening', audio ? [audio] : [], this.log, {
      paused: async () => void (await this.hearing?.pause()),
    });
    this.watching = new SourceGroup('watching', frameSources, this.log, {
      paused: () => this.motion.pause(),
      resuming: () => this.motion.resume(),
    });
    const cameraOut = new CameraPublisher(this.conn);
    const seeing = new SeeingPipeline({
      out: cameraOut,
      scheduler: this.scheduler,
      engine: this.model.engine,
      cameras,
      captionDeadlineMs: config.scheduler.caption_deadline_ms,
      logger: this.log,
    });
    // Events go out through the seeing pipeline, which adds captions.
    this.motion = new MotionPipeline(cameraOut, this.log, (u, msg) => seeing.onMotion(u, msg));
    const frames = new LatestFrames();
    const snapshots = new SnapshotPublisher(cameraOut, cameras);
    cameras.forEach((c, i) => {
      snapshots.attach(frameSources[i]!);
      frames.attach(frameSources[i]!);
      this.motion.attach(c, frameSources[i]!);
    });
    const ask = new AskPipeline({
      conn: this.conn,
      scheduler: this.scheduler,
      engine: this.model.engine,
      maxPayloadBytes: config.mqtt.max_payload_bytes,
      cameras: cameras.map((c) => c.name),
      latestFrame: (name) => frames.latest(name),
      imageTokens: (name) => cameras.find((c) => c.name === name)?.image_tokens ?? DEFAULT_IMAGE_TOKENS,
      ...(this.actions ? { actions: this.actions } : {}),
      logger: this.log,
    });
    const meter = audio ? new AudioMeter(audio) : undefined;

    this.modules = [
      defineModule('model', {
        start: async () => {
          await this.model.start();
          this.log.warn(ENCODER_GAP);
        },
        stop: () => this.model.stop(),
        stats: () => {
          const engine = this.model.engine.status();
          return {
            engine: {
              state: engine.state,
              detail: engine.detail.slice(0, 500),
              ...(engine.randomWeights ? { random_weights: true } : {}),
              ...this.model.stats(),
            },
          };
        },
      }),
      ...(config.embedded_broker.enabled ? [this.brokerModule()] : []),
      ...(config.homeassistant.enabled ? [this.discoveryModule()] : []),
      this.switchesModule(),
      // Subscriptions are made before the connection starts: requests queued for a persistent session arrive
      // at once on connect.
      defineModule('ask', {
        start: () => ask.start(),
        stop: () => ask.stop(),
        ...(this.actions ? { stats: () => ({ actions: { on: this.actions!.on, ...this.actions!.counts } }) } : {}),
      }),
      ...(config.http.enabled ? [this.httpModule()] : []),
      ...(config.wyoming.enabled ? [this.wyomingModule()] : []),
      defineModule('mqtt', {
        start: async () => {
          await this.conn.start();
          const early = this.earlyReports ?? [];
          this.earlyReports = undefined;
          for (const e of early) void this.conn.publishError(e);
        },
        stop: () => this.conn.stop({ offline: true, drainMs: 2000 }),
        stats: () => ({ mqtt: mqttStats(this.conn.stats()) }),
      }),
      // Event ends held for their captions: the drained scheduler refuses new jobs, so they settle at once.
      defineModule('seeing', {
        start: () => undefined,
        stop: () => seeing.stop(),
        stats: () => ({ captions: seeing.stats() }),
      }),
      ...(this.hearing && meter ? [this.hearingModule(this.hearing, meter)] : []),
      defineModule('sources', {
        start: async () => {
          await Promise.all([this.listening.start(), this.watching.start()]);
          this.sourcesStarted = true;
          await this.publishSwitchStates();
        },
        stop: async () => {
          snapshots.detach();
          frames.detach();
          meter?.detach();
          await Promise.all([this.listening.stop(), this.watching.stop()]);
        },
        stats: () => ({ sources: this.sourceStats() }),
      }),
      defineModule('motion', {
        start: () => this.motion.start(),
        stop: () => this.motion.stop(),
        connected: () => void this.motion.republishStates(),
        stats: () => ({ motion: motionStats(this.motion) }),
      }),
      // The queue itself is drained by stop() before any module stops.
      defineModule('jobs', {
        start: () => undefined,
        stop: () => undefined,
        stats: () => ({ queues: this.scheduler.stats().depth_by_kind }),
      }),
      this.healthModule(frameSources),
      this.statsModule(),
    ];
  }

  /** The HTTP API: its requests are `http` jobs in the one scheduler. */
  private httpModule(): DaemonModule {
    const { config } = this.o;
    const server = new HttpServer({
      settings: config.http,
      engine: () => this.model.engine,
      scheduler: this.scheduler,
      version: perchVersion(),
      contextTokens: config.model.context_tokens,
      logger: this.log,
    });
    return defineModule('http', {
      start: () => server.start(),
      stop: () => server.stop(),
      stats: () => server.stats(),
    });
  }

  /** The Wyoming server: Home Assistant's speech to text and conversation agent, `answer` jobs in the one scheduler. */
  private wyomingModule(): DaemonModule {
    const { config } = this.o;
    const server = new WyomingServer({
      settings: config.wyoming,
      deviceId: config.device.id,
      speech: () => this.model.speech(),
      engine: () => this.model.engine,
      scheduler: this.scheduler,
      version: perchVersion(),
      transcriptMaxTokens: config.audio.transcript_max_tokens,
      ...(this.actions ? { actions: this.actions } : {}),
      logger: this.log,
    });
    return defineModule('wyoming', {
      start: async () => void (await server.start()),
      stop: () => server.stop(),
      stats: () => server.stats(),
    });
  }

  /** Starts every module in order; one that fails is reported and the others run. */
  start(): Promise<void> {
    this.starting ??= this.startModules();
    return this.starting;
  }

  private async startModules(): Promise<void> {
    const { config } = this.o;
    this.conn.on('connected', this.onConnected);
    for (const m of this.modules) {
      // A stop that came during start: no further module starts.
      if (this.stopped) return;
      this.states.set(m.name, 'starting');
      try {
        await m.start();
        this.started.push(m);
        this.states.set(m.name, 'running');
        // Connected before this module was up: it has state to say now.
        if (this.conn.connected) m.connected?.();
      } catch (err) {
        this.states.set(m.name, 'failed');
        const message = `module ${m.name} failed to start (Perch runs without it): ${(err as Error).message ?? String(err)}`;
        this.log.error({ module: m.name, err }, message);
        this.reportError(this.conn.topics.stats, message);
      }
    }
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
    const parts: Partial<StatsMessage> = {};
    for (const m of this.modules) Object.assign(parts, m.stats?.());
    return {
      v: 1,
      ts: isoNow(),
      uptime_s: Math.round((Date.now() - this.startedAt) / 1000),
      version: this.o.version,
      memory: { rss: mem.rss, heap_used: mem.heapUsed, heap_total: mem.heapTotal },
      // The model, mqtt, jobs and sources modules are always in the list: these are always set.
      engine: parts.engine!,
      queues: parts.queues!,
      mqtt: parts.mqtt!,
      sources: parts.sources!,
      ...parts,
      modules: Object.fromEntries(this.states),
    };
  }

  private brokerModule(): DaemonModule {
    const broker = new EmbeddedBroker({
      settings: this.o.config.embedded_broker,
      maxPayloadBytes: this.o.config.mqtt.max_payload_bytes,
      logger: this.log,
    });
    return defineModule('broker', {
      start: async () => {
        const at = await broker.start();
        this.log.info(`embedded MQTT broker listening on ${at.host}:${at.port}`);
      },
      stop: () => broker.stop(),
    });
  }

  private discoveryModule(): DaemonModule {
    const { config } = this.o;
    const discovery = new DiscoveryPublisher({
      discovery: discoveryOptionsFromConfig(config, { swVersion: this.o.version }),
      haStatusTopic: config.homeassistant.status_topic,
      stateDir: config.daemon.state_dir,
      publish: (topic, payload, opts) => this.conn.publish(topic, payload, opts),
      logger: this.log,
    });
    const owner = 'discovery';
    return defineModule(owner, {
      start: () => {
        for (const topic of discovery.subscriptions)
          this.conn.subscribe(topic, (msg) => void discovery.handleMessage(msg.topic, msg.payload), { qos: 1, owner });
      },
      stop: () => this.conn.removeOwner(owner),
      connected: () =>
        void discovery.start().catch((err: unknown) => this.log.error({ err }, 'discovery publish failed')),
    });
  }

  /** The Listening and Watching switches: `<root>/listening/set` and `<root>/watching/set`, ON or OFF. */
  private switchesModule(): DaemonModule {
    const owner = 'switches';
    const t = this.conn.topics;
    return defineModule(owner, {
      start: () => {
        this.conn.subscribe(t.listeningSet, (msg) => void this.onSwitch(this.listening, msg.payload), {
          qos: 1,
          owner,
        });
        this.conn.subscribe(t.watchingSet, (msg) => void this.onSwitch(this.watching, msg.payload), { qos: 1, owner });
        if (this.actions) {
          this.conn.subscribe(t.actionsSet, (msg) => void this.onActionsSwitch(msg.payload), { qos: 1, owner });
          this.conn.subscribe(t.actionConfirm, (msg) => void this.onActionConfirm(msg.payload), { qos: 1, owner });
        }
      },
      stop: () => this.conn.removeOwner(owner),
      connected: () => {
        if (this.sourcesStarted) void this.publishSwitchStates();
        if (this.actions) void this.publishActionsState();
      },
    });
  }

  private hearingModule(hearing: HearingPipeline, meter: AudioMeter): DaemonModule {
    return defineModule('hearing', {
      start: () => hearing.start(),
      stop: () => hearing.stop(),
      connected: () => void hearing.republishState(),
      stats: () => ({ audio: { ...hearing.stats(), seconds: Math.round(meter.samples / AUDIO_SAMPLE_RATE) } }),
    });
  }

  /** Stages that keep failing are restarted (src/daemon/stages.ts). */
  private healthModule(frameSources: readonly FrameSource[]): DaemonModule {
    let unwatch: (() => void) | undefined;
    return defineModule('health', {
      start: () => {
        unwatch = watchStages({
          health: this.health,
          topics: this.conn.topics,
          model: this.model,
          hearing: this.hearing,
          motion: this.motion,
          watching: this.watching,
          frameSources,
        });
      },
      stop: () => {
        unwatch?.();
        this.health.close();
      },
      stats: () => ({ health: this.health.stats() }),
    });
  }

  /** `<root>/stats`, retained, every daemon.stats_interval_s and on each (re)connect. */
  private statsModule(): DaemonModule {
    let timer: NodeJS.Timeout | undefined;
    return defineModule('stats', {
      start: () => {
        timer = setInterval(() => void this.publishStats(), this.o.config.daemon.stats_interval_s * 1000);
        timer.unref();
      },
      stop: () => clearInterval(timer),
      connected: () => void this.publishStats(),
    });
  }

  private sourceStats(): StatsMessage['sources'] {
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
    return sources;
  }

  /**
   * A failure worth a consumer's attention (a module that did not start, a failing stage, an unusable model
   * package) on `<root>/errors`; kept until the MQTT connection has started when it comes before.
   */
  private reportError(topic: string, message: string): void {
    const e = errorMessage({ code: 'internal', message, topic });
    if (this.earlyReports) this.earlyReports.push(e);
    else void this.conn.publishError(e);
  }

  private readonly onConnected = (): void => {
    for (const m of this.started) m.connected?.();
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

  /** Home Assistant's Actions switch: ON offers the declared actions to the model, OFF refuses every call. */
  private async onActionsSwitch(payload: Buffer): Promise<void> {
    const value = payload.toString('utf8').trim().toUpperCase();
    if (!this.actions || (value !== 'ON' && value !== 'OFF')) {
      this.log.warn({ payload: payload.toString('utf8').slice(0, 40) }, 'actions switch command must be ON or OFF');
      return;
    }
    this.actions.on = value === 'ON';
    this.log.info({ on: this.actions.on }, 'actions switched');
    await this.publishActionsState();
    await this.publishStats();
  }

  /** <root>/action/confirm: a yes or a no to a call waiting for it; the outcome is said on <root>/action. */
  private async onActionConfirm(payload: Buffer): Promise<void> {
    const topic = this.conn.topics.actionConfirm;
    let body: unknown;
    try {
      body = JSON.parse(payload.toString('utf8'));
    } catch {
      body = undefined;
    }
    const parsed = actionConfirmSchema.safeParse(body);
    if (!parsed.success) {
      await this.conn.publishError({
        code: 'invalid_request',
        message: 'an action confirmation is JSON {"confirmation": "<name from <root>/action>", "confirm": true|false}',
        topic,
      });
      return;
    }
    const rec = await this.actions?.confirm(parsed.data.confirmation, parsed.data.confirm);
    if (!rec)
      await this.conn.publishError({
        code: 'invalid_request',
        message: `no action waits for confirmation ${JSON.stringify(parsed.data.confirmation)} (unknown, done, or past actions.confirm_timeout_s)`,
        topic,
      });
  }

  private async publishActionsState(): Promise<void> {
    if (!this.actions) return;
    await this.conn.publish(this.conn.topics.actions, this.actions.on ? 'ON' : 'OFF', { qos: 1, retain: true });
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

  /**
   * Waits for a start in progress (it starts no further module), drains the job queue (what runs finishes,
   * nothing new starts), then stops the started modules in reverse order, each on its own: one that fails
   * does not keep the rest up.
   */
  private async doStop(reason: string): Promise<void> {
    this.log.info({ reason }, 'stopping');
    await this.starting;
    const drained = await this.scheduler.drain(this.o.config.daemon.drain_timeout_ms);
    this.log.info(drained, 'job queue drained');
    for (const m of [...this.started].reverse()) {
      this.states.set(m.name, 'stopping');
      try {
        await m.stop();
      } catch (err) {
        this.log.error({ module: m.name, err }, `module ${m.name} did not stop cleanly`);
      }
      this.states.set(m.name, 'stopped');
    }
    this.conn.off('connected', this.onConnected);
    this.log.info('stopped');
  }
}

function mqttStats(m: ReturnType<MqttConnection['stats']>): StatsMessage['mqtt'] {
  return {
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
  };
}

function motionStats(motion: MotionPipeline): StatsMessage['motion'] {
  return Object.fromEntries(
    Object.entries(motion.stats()).map(([name, st]) => [
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
  );
}

function hostOf(url: string): string {
  return new URL(url).hostname;
}

function portOf(url: string): string {
  const u = new URL(url);
  return u.port || (u.protocol === 'mqtts:' ? '8883' : '1883');
}
