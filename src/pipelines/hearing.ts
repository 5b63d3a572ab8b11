/**
 * Hearing, the part that needs no model: the audio source runs through the voice-activity segmenter, which
 * publishes speech ON/OFF and the sound level for automations, and cuts utterances. Transcripts of those
 * utterances need the audio encoder; until the engine has one, utterances are counted and logged only.
 */
import { Segmenter } from '../audio/segmenter.js';
import type { PerchConfig } from '../config/schema.js';
import { silentLogger, type Logger } from '../log.js';
import type { MqttConnection } from '../mqtt/connection.js';
import type { AudioSource } from '../sources/types.js';

export class HearingPipeline {
  private segmenter: Segmenter | undefined;
  private detach: (() => void) | undefined;
  private speaking = false;
  private readonly log: Logger;

  constructor(
    private readonly conn: MqttConnection,
    private readonly source: AudioSource,
    private readonly settings: PerchConfig['audio']['segmenter'],
    logger: Logger = silentLogger,
  ) {
    this.log = logger.child({ module: 'hearing' });
  }

  async start(): Promise<void> {
    const seg = await Segmenter.create(this.settings, { logger: this.log });
    seg.on('activity', (a) => {
      this.speaking = a.speaking;
      void this.republishState();
    });
    seg.on('level', (l) => void this.conn.publish(this.conn.topics.soundLevel, l.dbfs.toFixed(1), { qos: 0, retain: true }));
    seg.on('utterance', (u) => {
      this.log.info({ id: u.id, start_ms: u.startMs, end_ms: u.endMs }, 'utterance (no transcript: this build has no audio encoder yet)');
    });
    seg.on('error', (err: unknown) => this.log.error({ err: String(err) }, 'voice activity detection failed'));
    this.segmenter = seg;
    this.detach = seg.attach(this.source);
  }

  republishState(): Promise<unknown> {
    return this.conn.publish(this.conn.topics.speech, this.speaking ? 'ON' : 'OFF', { qos: 1, retain: true });
  }

  /** Listening switched off: the utterance in progress ends, speech goes OFF. */
  async pause(): Promise<void> {
    await this.segmenter?.flush();
    this.speaking = false;
    await this.republishState();
  }

  async stop(): Promise<void> {
    this.detach?.();
    await this.pause();
    await this.segmenter?.close();
  }

  stats(): { speaking: boolean; utterances: number; dropped_short: number; dropped_backlog_ms: number } {
    const s = this.segmenter?.stats();
    return { speaking: this.speaking, utterances: s?.utterances ?? 0, dropped_short: s?.droppedShort ?? 0, dropped_backlog_ms: Math.round(s?.droppedBacklogMs ?? 0) };
  }
}
