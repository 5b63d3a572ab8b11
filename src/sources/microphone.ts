/**
 * A microphone through arecord, sox or rec, 16 kHz mono S16LE raw PCM on the recorder's stdout.
 *
 * node-record-lpcm16 supplies the recorder argument sets, but its Recording class is not used: it spawns
 * once with no restart, reports a dead recorder as a string 'error' on the stream (which crashes Node when
 * nobody listens), drops stderr, and kills with SIGTERM only. Our supervisor runs the same command instead.
 */
import { createRequire } from 'node:module';
import type { Logger } from '../common/log.js';
import type { AudioSourceSettings } from '../config/schema.js';
import { AudioSourceBase } from './base.js';
import { ProcessSupervisor } from './supervisor.js';
import type { AudioSource } from './types.js';
import { CHUNK_SAMPLES } from './wav.js';
import { AUDIO_SAMPLE_RATE } from './types.js';

export type MicrophoneSettings = Extract<AudioSourceSettings, { type: 'microphone' }>;

interface RecorderOptions {
  sampleRate: number;
  channels: number;
  audioType: string;
  device?: string;
  endOnSilence: boolean;
  threshold: number;
  silence: string;
}
type RecorderFn = (options: RecorderOptions) => {
  cmd: string;
  args: Array<string | number>;
  spawnOptions?: { env?: NodeJS.ProcessEnv };
};

const require = createRequire(import.meta.url);

/** The recorder's command line, from node-record-lpcm16's argument sets, with every value a string. */
export function recorderCommand(settings: MicrophoneSettings): {
  command: string;
  args: string[];
  env: NodeJS.ProcessEnv;
} {
  const recorder = require(`node-record-lpcm16/recorders/${settings.recorder}.js`) as RecorderFn;
  const { cmd, args, spawnOptions } = recorder({
    sampleRate: AUDIO_SAMPLE_RATE,
    channels: 1,
    audioType: 'raw', // no WAV header in the stream
    device: settings.device,
    endOnSilence: false,
    threshold: 0.5,
    silence: '1.0',
  });
  // arecord takes -D; sox gets AUDIODEV from the argument set; rec has no device option, so AUDIODEV too.
  const env: NodeJS.ProcessEnv = { ...process.env, ...spawnOptions?.env };
  if (settings.recorder === 'rec') env.AUDIODEV = settings.device;
  return { command: cmd, args: args.map(String), env };
}

export class MicrophoneSource extends AudioSourceBase implements AudioSource {
  private pending = Buffer.alloc(0);

  constructor(
    private readonly settings: MicrophoneSettings,
    logger: Logger,
    name = 'audio',
  ) {
    super(name, 'microphone', logger);
  }

  protected async open(): Promise<void> {
    const { command, args, env } = recorderCommand(this.settings);
    this.pending = Buffer.alloc(0);
    const sup = new ProcessSupervisor({
      command,
      args,
      env,
      restartMinMs: this.settings.restart_min_ms,
      restartMaxMs: this.settings.restart_max_ms,
      // A live recorder writes 32 kB/s; silence for 5 s means a wedged device.
      stallTimeoutMs: 5000,
      logger: this.log,
    });
    sup.on('stdout', (data: Buffer) => this.onData(data));
    sup.on('spawn', () => {
      this.pending = Buffer.alloc(0); // a restarted recorder starts on a sample boundary
    });
    this.superviseProcess(sup);
  }

  protected close(): Promise<void> {
    return this.stopProcess();
  }

  private onData(data: Buffer): void {
    const bytes = CHUNK_SAMPLES * 2;
    let buf = this.pending.length ? Buffer.concat([this.pending, data]) : data;
    while (buf.length >= bytes) {
      // Copy into an aligned Int16Array; node Buffers may start at odd offsets in their pool.
      const samples = new Int16Array(CHUNK_SAMPLES);
      for (let i = 0; i < CHUNK_SAMPLES; i++) samples[i] = buf.readInt16LE(i * 2);
      buf = buf.subarray(bytes);
      // A restarted recorder goes on in stream time; a reopened source leaves a gap (AudioSourceBase).
      this.emitAudio(samples);
    }
    this.pending = Buffer.from(buf);
  }
}
