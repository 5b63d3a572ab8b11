/**
 * Sound level for automations: RMS over fixed windows of the stream, in dBFS, reported only when it moved
 * enough or a heartbeat interval passed (so a quiet room does not publish once a second).
 * dBFS here is 20 log10(rms / 32768) of the 16-bit samples: a full-scale square wave is 0 dBFS, a sine of
 * peak amplitude A (as a fraction of full scale) reads 20 log10(A / sqrt 2), e.g. -3.01 dBFS at full scale.
 */
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';

/** Reported for digital silence instead of -Infinity (JSON cannot carry it). */
export const LEVEL_FLOOR_DBFS = -120;

export interface SoundLevel {
  /** RMS level of the window, dBFS (>= LEVEL_FLOOR_DBFS). */
  dbfs: number;
  /** RMS as a fraction of full scale. */
  rms: number;
  /** Stream time of the window's end. */
  atMs: number;
  windowMs: number;
}

export function dbfsOf(rms: number): number {
  return rms > 0 ? Math.max(LEVEL_FLOOR_DBFS, 20 * Math.log10(rms)) : LEVEL_FLOOR_DBFS;
}

export class LevelMeter {
  private readonly windowSamples: number;
  private sumSquares = 0;
  private count = 0;
  private last: SoundLevel | undefined;

  constructor(
    private readonly opts: { windowMs: number; minChangeDb: number; maxIntervalMs: number; sampleRate?: number },
  ) {
    this.windowSamples = Math.max(1, Math.round((opts.windowMs * (opts.sampleRate ?? AUDIO_SAMPLE_RATE)) / 1000));
  }

  /**
   * Feeds samples whose first one is at stream sample `startSample`; returns the levels to report
   * (usually none, at most one per completed window).
   */
  push(samples: Int16Array, startSample: number): SoundLevel[] {
    const out: SoundLevel[] = [];
    const rate = this.opts.sampleRate ?? AUDIO_SAMPLE_RATE;
    for (let i = 0; i < samples.length; i++) {
      const v = samples[i]! / 32768;
      this.sumSquares += v * v;
      if (++this.count === this.windowSamples) {
        const rms = Math.sqrt(this.sumSquares / this.count);
        const level: SoundLevel = {
          dbfs: dbfsOf(rms),
          rms,
          atMs: ((startSample + i + 1) * 1000) / rate,
          windowMs: this.opts.windowMs,
        };
        this.sumSquares = 0;
        this.count = 0;
        const prev = this.last;
        if (
          !prev ||
          Math.abs(level.dbfs - prev.dbfs) >= this.opts.minChangeDb ||
          level.atMs - prev.atMs >= this.opts.maxIntervalMs
        ) {
          this.last = level;
          out.push(level);
        }
      }
    }
    return out;
  }

  /** Drops the partial window (after a gap in the stream). */
  reset(): void {
    this.sumSquares = 0;
    this.count = 0;
  }
}
