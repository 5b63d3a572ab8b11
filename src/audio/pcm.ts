/**
 * Raw PCM from the network to what the model hears: 16-bit little-endian samples, any channel count (averaged
 * to mono), any rate between 8 and 48 kHz (linearly resampled to 16 kHz, carried across chunks so a stream cut
 * anywhere gives the same samples as one piece). Home Assistant sends 16 kHz mono already: then this copies.
 */
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';

export interface PcmFormat {
  rate: number;
  /** Bytes per sample. */
  width: number;
  channels: number;
}

/** A format this converter takes, or a sentence saying what is wrong with it. */
export function checkPcmFormat(f: { rate?: unknown; width?: unknown; channels?: unknown }): PcmFormat | string {
  const int = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);
  if (!int(f.rate) || f.rate < 8000 || f.rate > 48000)
    return `rate must be 8000 to 48000 Hz, got ${JSON.stringify(f.rate)}`;
  if (f.width !== 2) return `width must be 2 (16-bit PCM), got ${JSON.stringify(f.width)}`;
  if (!int(f.channels) || f.channels < 1 || f.channels > 8)
    return `channels must be 1 to 8, got ${JSON.stringify(f.channels)}`;
  return { rate: f.rate, width: 2, channels: f.channels };
}

/** Converts chunk after chunk of one stream to 16 kHz mono int16. */
export class PcmConverter {
  private readonly step: number;
  /** Input samples (mono) seen before the current chunk. */
  private consumed = 0;
  /** Output samples made so far. */
  private produced = 0;
  /** The last mono input sample of the previous chunk. */
  private last = 0;
  /** A byte of an odd-length chunk, or a partial frame, carried to the next chunk. */
  private carry: Buffer = Buffer.alloc(0);

  constructor(readonly format: PcmFormat) {
    this.step = format.rate / AUDIO_SAMPLE_RATE;
  }

  push(bytes: Buffer): Int16Array {
    const frameBytes = 2 * this.format.channels;
    const all = this.carry.length ? Buffer.concat([this.carry, bytes]) : bytes;
    const frames = Math.floor(all.length / frameBytes);
    this.carry = Buffer.from(all.subarray(frames * frameBytes));
    const mono = new Int16Array(frames);
    const ch = this.format.channels;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < ch; c++) sum += all.readInt16LE((i * ch + c) * 2);
      mono[i] = Math.round(sum / ch);
    }
    if (this.format.rate === AUDIO_SAMPLE_RATE) return mono;
    return this.resample(mono);
  }

  private resample(input: Int16Array): Int16Array {
    if (input.length === 0) return input;
    const total = this.consumed + input.length;
    const out: number[] = [];
    for (;;) {
      const p = this.produced * this.step;
      const i = Math.floor(p);
      // Needs input i and i + 1; i may be the previous chunk's last sample.
      if (i + 1 > total - 1) break;
      const a = i < this.consumed ? this.last : input[i - this.consumed]!;
      const b = input[i + 1 - this.consumed]!;
      out.push(Math.round(a + (b - a) * (p - i)));
      this.produced++;
    }
    this.last = input[input.length - 1]!;
    this.consumed = total;
    return Int16Array.from(out);
  }
}
