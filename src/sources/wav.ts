/** A WAV file as an audio source: converted once to 16 kHz mono, then delivered in 50 ms chunks. */
import { open } from 'node:fs/promises';
import type { Logger } from '../common/log.js';
import type { AudioSourceSettings } from '../config/schema.js';
import { AudioSourceBase } from './base.js';
import type { AudioSource } from './types.js';
import { wavTo16kMono, WavFormatError } from './wav-decode.js';
import { AUDIO_SAMPLE_RATE } from './types.js';

export type WavSourceSettings = Extract<AudioSourceSettings, { type: 'wav' }>;

export const CHUNK_SAMPLES = 800; // 50 ms at 16 kHz
const CHUNK_MS = (CHUNK_SAMPLES / AUDIO_SAMPLE_RATE) * 1000;
/** Larger files are refused rather than read into memory (about 40 min of 48 kHz stereo 16-bit). */
export const MAX_WAV_BYTES = 512 * 1024 * 1024;

export class WavSource extends AudioSourceBase implements AudioSource {
  private samples?: Int16Array;
  private timer?: NodeJS.Timeout | NodeJS.Immediate;
  private running = false;
  private position = 0;
  /** Samples sent in this run, for pacing. */
  private deliveredSamples = 0;

  constructor(
    private readonly settings: WavSourceSettings,
    logger: Logger,
    name = 'audio',
  ) {
    super(name, 'wav', logger);
  }

  /** Rejects (and reports 'failed') when the file is missing, too big, or not a supported WAV. */
  protected async open(): Promise<void> {
    try {
      const file = await readBounded(this.settings.path, MAX_WAV_BYTES);
      const { info, samples } = wavTo16kMono(file);
      this.log.info({ path: this.settings.path, ...info }, 'WAV file loaded');
      this.samples = samples;
    } catch (err) {
      const message = `${this.settings.path}: ${(err as Error).message}`;
      this.setState({ status: 'failed', lastError: message });
      throw new WavFormatError(message);
    }
    // Each run plays the file from its start; stream time runs on (AudioSourceBase).
    this.running = true;
    this.position = 0;
    this.deliveredSamples = 0;
    this.setState({ status: 'running' });
    this.schedule(Date.now());
  }

  protected async close(): Promise<void> {
    this.running = false;
    this.clearTimer();
  }

  private clearTimer(): void {
    if (this.timer) {
      clearTimeout(this.timer as NodeJS.Timeout);
      clearImmediate(this.timer as NodeJS.Immediate);
      this.timer = undefined;
    }
  }

  /** Real time: chunk i is due at t0 + i*50 ms, so timer lateness does not accumulate as drift. */
  private schedule(t0: number): void {
    if (!this.running) return;
    if (!this.settings.realtime) {
      this.timer = setImmediate(() => this.tick(t0));
      return;
    }
    const due = t0 + (this.deliveredSamples / CHUNK_SAMPLES) * CHUNK_MS;
    this.timer = setTimeout(() => this.tick(t0), Math.max(0, due - Date.now()));
  }

  private tick(t0: number): void {
    const samples = this.samples;
    if (!this.running || !samples) return;
    if (this.position >= samples.length) {
      if (!this.settings.loop || samples.length === 0) {
        this.running = false;
        this.setState({ status: 'ended' });
        this.emit('end');
        return;
      }
      this.position = 0;
    }
    const end = Math.min(samples.length, this.position + CHUNK_SAMPLES);
    const chunk = samples.slice(this.position, end);
    this.position = end;
    this.deliveredSamples += chunk.length;
    this.emitAudio(chunk);
    this.schedule(t0);
  }
}

async function readBounded(path: string, max: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const stat = await fh.stat();
    if (!stat.isFile()) throw new WavFormatError('not a regular file');
    const size = stat.size;
    if (size > max) throw new RangeError(`file too large (${size} bytes, at most ${max})`);
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}
