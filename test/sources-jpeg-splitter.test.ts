import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { JpegSplitter } from '../src/sources/jpeg-splitter.js';
import { image } from './fixtures/media.js';

let frames: Buffer[] = [];

beforeAll(async () => {
  // The middle one is progressive: several scans, each with its own SOS and entropy data.
  const progressive = await sharp({ create: { width: 200, height: 100, channels: 3, background: '#3a7' } })
    .composite([{ input: await image(200, 'png', 80, 40), left: 30, top: 20 }])
    .jpeg({ progressive: true })
    .toBuffer();
  frames = await Promise.all([image(10, 'jpeg', 160, 120), progressive, image(240, 'jpeg', 90, 90)]);
});

function split(stream: Buffer, chunkSize: number, maxFrameBytes = 1 << 20): { out: Buffer[]; discards: string[] } {
  const out: Buffer[] = [];
  const discards: string[] = [];
  const s = new JpegSplitter({ maxFrameBytes, onFrame: (f) => out.push(f), onDiscard: (r) => discards.push(r) });
  for (let i = 0; i < stream.length; i += chunkSize) s.push(stream.subarray(i, i + chunkSize));
  return { out, discards };
}

/** A frame carrying an EXIF-style APP1 segment that holds a whole JPEG (thumbnail) with its own SOI/EOI. */
function withThumbnail(frame: Buffer, thumb: Buffer): Buffer {
  const payload = Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), thumb]);
  const seg = Buffer.alloc(4);
  seg.writeUInt16BE(0xffe1, 0);
  seg.writeUInt16BE(payload.length + 2, 2);
  return Buffer.concat([frame.subarray(0, 2), seg, payload, frame.subarray(2)]);
}

describe('JpegSplitter', () => {
  it('cuts a stream into the exact frames whatever the chunk boundaries, skipping garbage', async () => {
    const garbage = Buffer.from('noise\xff\x00\xffjunk', 'latin1');
    const stream = Buffer.concat([garbage, frames[0]!, frames[1]!, garbage, frames[2]!]);
    for (const size of [1, 2, 3, 7, 64, 1000, stream.length]) {
      const { out, discards } = split(stream, size);
      expect(out.length, `chunk size ${size}`).toBe(3);
      out.forEach((f, i) => expect(f.equals(frames[i]!)).toBe(true));
      expect(discards).toEqual([]);
    }
    const meta = await sharp(split(stream, 5).out[1]!).metadata();
    expect([meta.width, meta.height]).toEqual([200, 100]);
  });

  it('does not end a frame at the EOI of an embedded thumbnail', () => {
    const big = withThumbnail(frames[0]!, frames[2]!);
    for (const size of [1, 13, big.length]) {
      const { out } = split(Buffer.concat([big, frames[1]!]), size);
      expect(out.length).toBe(2);
      expect(out[0]!.equals(big)).toBe(true);
      expect(out[1]!.equals(frames[1]!)).toBe(true);
    }
  });

  it('drops frames over the size bound and keeps the following ones', () => {
    const max = Math.max(frames[0]!.length, frames[2]!.length) + 10;
    const huge = withThumbnail(frames[1]!, Buffer.alloc(max * 3, 0x11));
    for (const size of [1, 500, 100_000]) {
      const { out, discards } = split(Buffer.concat([frames[0]!, huge, frames[2]!]), size, max);
      expect(out.map((f) => f.length)).toEqual([frames[0]!.length, frames[2]!.length]);
      expect(discards.length).toBe(1);
      expect(discards[0]).toMatch(/larger than/);
    }
  });

  it('drops a truncated frame and resynchronises on the next SOI', () => {
    const cut = frames[0]!.subarray(0, Math.floor(frames[0]!.length * 0.7));
    for (const size of [1, 100, 100_000]) {
      const { out, discards } = split(Buffer.concat([cut, frames[1]!, frames[2]!]), size);
      expect(out.length).toBe(2);
      expect(out[0]!.equals(frames[1]!)).toBe(true);
      expect(out[1]!.equals(frames[2]!)).toBe(true);
      expect(discards.length).toBe(1);
    }
  });

  it('reset() forgets a partial frame', () => {
    const out: Buffer[] = [];
    const s = new JpegSplitter({ maxFrameBytes: 1 << 20, onFrame: (f) => out.push(f) });
    s.push(frames[0]!.subarray(0, 300));
    s.reset();
    s.push(frames[1]!);
    expect(out.length).toBe(1);
    expect(out[0]!.equals(frames[1]!)).toBe(true);
  });
});
