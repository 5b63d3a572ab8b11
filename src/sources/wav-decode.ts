/**
 * WAV (RIFF) parsing and conversion to what the hearing pipeline wants: 16 kHz mono signed 16-bit.
 * Supports integer PCM of 8, 16, 24 and 32 bits and 32/64-bit float, plain or WAVE_FORMAT_EXTENSIBLE.
 */
import { AUDIO_SAMPLE_RATE } from './types.js';

export class WavFormatError extends Error {
  override name = 'WavFormatError';
}

export interface WavInfo {
  format: 'int' | 'float';
  channels: number;
  sampleRate: number;
  bitsPerSample: number;
  frames: number;
}

const WAVE_FORMAT_PCM = 1;
const WAVE_FORMAT_IEEE_FLOAT = 3;
const WAVE_FORMAT_EXTENSIBLE = 0xfffe;

/** Parses the RIFF structure and returns the format and the sample data, downmixed to mono float in [-1, 1]. */
export function decodeWav(file: Buffer): { info: WavInfo; mono: Float32Array } {
  if (file.length < 12 || file.toString('latin1', 0, 4) !== 'RIFF' || file.toString('latin1', 8, 12) !== 'WAVE') {
    const head = file.toString('latin1', 0, 4);
    throw new WavFormatError(
      head === 'RF64' ? 'RF64 WAV files are not supported' : 'not a WAV file (no RIFF/WAVE header)',
    );
  }
  let fmt: Omit<WavInfo, 'frames'> | undefined;
  let blockAlign = 0;
  let data: Buffer | undefined;
  let off = 12;
  while (off + 8 <= file.length) {
    const id = file.toString('latin1', off, off + 4);
    let size = file.readUInt32LE(off + 4);
    const body = off + 8;
    // Streamed WAVs leave the data size at 0 or 0xFFFFFFFF: take what the file holds.
    if (body + size > file.length) {
      if (id !== 'data')
        throw new WavFormatError(`corrupt WAV file: chunk "${printable(id)}" runs past the end of the file`);
      size = file.length - body;
    }
    if (id === 'fmt ') {
      if (size < 16) throw new WavFormatError('corrupt WAV file: fmt chunk too short');
      let tag = file.readUInt16LE(body);
      const channels = file.readUInt16LE(body + 2);
      const sampleRate = file.readUInt32LE(body + 4);
      blockAlign = file.readUInt16LE(body + 12);
      const bitsPerSample = file.readUInt16LE(body + 14);
      if (tag === WAVE_FORMAT_EXTENSIBLE) {
        if (size < 40) throw new WavFormatError('corrupt WAV file: extensible fmt chunk too short');
        tag = file.readUInt16LE(body + 24); // first two bytes of the sub-format GUID
      }
      if (tag !== WAVE_FORMAT_PCM && tag !== WAVE_FORMAT_IEEE_FLOAT) {
        throw new WavFormatError(`unsupported WAV encoding (format tag ${tag}); use PCM or float`);
      }
      const format = tag === WAVE_FORMAT_PCM ? 'int' : 'float';
      const okBits = format === 'int' ? [8, 16, 24, 32] : [32, 64];
      if (!okBits.includes(bitsPerSample))
        throw new WavFormatError(`unsupported WAV sample size: ${bitsPerSample}-bit ${format}`);
      if (channels < 1 || channels > 64) throw new WavFormatError(`unsupported WAV channel count: ${channels}`);
      if (sampleRate < 1000 || sampleRate > 768_000)
        throw new WavFormatError(`unsupported WAV sample rate: ${sampleRate}`);
      if (blockAlign !== channels * (bitsPerSample / 8))
        throw new WavFormatError('corrupt WAV file: block size does not match the format');
      fmt = { format, channels, sampleRate, bitsPerSample };
    } else if (id === 'data') {
      data = file.subarray(body, body + size);
      if (fmt) break;
    }
    off = body + size + (size & 1); // chunks are padded to an even length
  }
  if (!fmt) throw new WavFormatError('corrupt WAV file: no fmt chunk');
  if (!data) throw new WavFormatError('corrupt WAV file: no data chunk');
  const frames = Math.floor(data.length / blockAlign);
  return { info: { ...fmt, frames }, mono: downmix(data, fmt, frames) };
}

function downmix(data: Buffer, fmt: Omit<WavInfo, 'frames'>, frames: number): Float32Array {
  const { channels, bitsPerSample, format } = fmt;
  const bytes = bitsPerSample / 8;
  const read = sampleReader(data, format, bitsPerSample);
  const out = new Float32Array(frames);
  const scale = 1 / channels;
  for (let f = 0, p = 0; f < frames; f++) {
    let sum = 0;
    for (let c = 0; c < channels; c++, p += bytes) sum += read(p);
    out[f] = sum * scale;
  }
  return out;
}

function sampleReader(d: Buffer, format: 'int' | 'float', bits: number): (at: number) => number {
  if (format === 'float') return bits === 32 ? (p) => d.readFloatLE(p) : (p) => d.readDoubleLE(p);
  switch (bits) {
    case 8:
      return (p) => (d[p]! - 128) / 128; // 8-bit WAV is unsigned
    case 16:
      return (p) => d.readInt16LE(p) / 32768;
    case 24:
      return (p) => d.readIntLE(p, 3) / 8388608;
    default:
      return (p) => d.readInt32LE(p) / 2147483648;
  }
}

/**
 * Band-limited resampling by windowed-sinc interpolation (Blackman window, 16 zero crossings per side),
 * with the cut-off lowered to the target Nyquist when downsampling so nothing aliases.
 */
export function resample(input: Float32Array, fromRate: number, toRate: number): Float32Array {
  if (fromRate === toRate) return input;
  const ratio = toRate / fromRate;
  const cutoff = Math.min(1, ratio) * 0.95; // a little below Nyquist leaves room for the transition band
  const zeroCrossings = 16;
  const halfWidth = zeroCrossings / cutoff; // kernel half-width in input samples
  const table = kernelTable(zeroCrossings);
  const outLen = Math.floor(input.length * ratio);
  const out = new Float32Array(outLen);
  const step = 1 / ratio;
  for (let n = 0; n < outLen; n++) {
    const t = n * step;
    const first = Math.max(0, Math.ceil(t - halfWidth));
    const last = Math.min(input.length - 1, Math.floor(t + halfWidth));
    let acc = 0;
    let norm = 0;
    for (let k = first; k <= last; k++) {
      const w = table.at(Math.abs(t - k) * cutoff);
      acc += input[k]! * w;
      norm += w;
    }
    // Normalising by the kernel sum keeps DC gain at 1, also near the edges.
    out[n] = norm > 0 ? acc / norm : 0;
  }
  return out;
}

interface KernelTable {
  at(x: number): number;
}

const kernelCache = new Map<number, KernelTable>();

/** sinc(x) * Blackman(x / zc), sampled finely and read with linear interpolation (Math.sin per tap is slow). */
function kernelTable(zc: number): KernelTable {
  const cached = kernelCache.get(zc);
  if (cached) return cached;
  const perUnit = 512;
  const values = new Float32Array(zc * perUnit + 2);
  for (let i = 0; i < values.length; i++) {
    const x = i / perUnit;
    if (x >= zc) continue;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const w = 0.42 + 0.5 * Math.cos((Math.PI * x) / zc) + 0.08 * Math.cos((2 * Math.PI * x) / zc);
    values[i] = sinc * w;
  }
  const table: KernelTable = {
    at(x: number): number {
      const pos = x * perUnit;
      const i = Math.floor(pos);
      if (i >= values.length - 1) return 0;
      const frac = pos - i;
      return values[i]! + (values[i + 1]! - values[i]!) * frac;
    },
  };
  kernelCache.set(zc, table);
  return table;
}

/** Float [-1, 1] to signed 16-bit with clipping. */
export function floatToInt16(input: Float32Array): Int16Array {
  const out = new Int16Array(input.length);
  for (let i = 0; i < input.length; i++) {
    const v = Math.round(input[i]! * 32768);
    out[i] = v > 32767 ? 32767 : v < -32768 ? -32768 : v;
  }
  return out;
}

/** Whole-file conversion to 16 kHz mono S16. */
export function wavTo16kMono(file: Buffer): { info: WavInfo; samples: Int16Array } {
  const { info, mono } = decodeWav(file);
  return { info, samples: floatToInt16(resample(mono, info.sampleRate, AUDIO_SAMPLE_RATE)) };
}

function printable(id: string): string {
  return id.replace(/[^\x20-\x7e]/g, '?');
}
