/**
 * Stream time of an audio source: one timeline for the source's whole life. Within a run it counts the
 * samples delivered; when the source opens again (resumed after a pause, started after a stop) it goes on
 * after a gap as long as the source was quiet, at least MIN_GAP_MS. So stream time never goes backwards,
 * and a consumer that checks continuity (the segmenter tolerates 100 ms of jitter) sees the break and
 * starts afresh instead of joining audio from before the pause to audio after it.
 */
import { AUDIO_SAMPLE_RATE } from './types.js';

const RATE = AUDIO_SAMPLE_RATE;
/** Clearly above any consumer's jitter tolerance. */
export const MIN_GAP_MS = 1000;

export class StreamClock {
  /** Sample index of the next sample. */
  private next = 0;
  /** Wall-clock ms of the last chunk; undefined before the first. */
  private lastAt: number | undefined;
  private gapPending = false;

  /** The source opens (again): the next chunk starts after a gap, unless nothing was delivered yet. */
  reopen(): void {
    this.gapPending = this.lastAt !== undefined;
  }

  /** Stream time (ms) of a chunk of `samples` samples delivered now; advances the clock past it. */
  take(samples: number, now = Date.now()): number {
    if (this.gapPending && this.lastAt !== undefined) {
      const gapMs = Math.max(MIN_GAP_MS, now - this.lastAt);
      this.next += Math.round((gapMs * RATE) / 1000);
      this.gapPending = false;
    }
    const at = this.next;
    this.next += samples;
    this.lastAt = now;
    return (at * 1000) / RATE;
  }
}
