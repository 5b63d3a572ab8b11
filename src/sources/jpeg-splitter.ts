/**
 * Cuts an MJPEG byte stream (ffmpeg image2pipe, rpicam-vid --codec mjpeg) into whole JPEG frames.
 *
 * It walks the marker segments rather than searching for the first FF D9, so an EXIF thumbnail (a whole
 * JPEG inside APP1) does not end the frame early. Inside entropy-coded data FF is always followed by 00
 * (stuffing) or a restart marker, so the next real marker is found by a plain scan. Frames larger than
 * maxFrameBytes are dropped without being buffered further.
 */

export interface JpegSplitterOptions {
  maxFrameBytes: number;
  onFrame: (jpeg: Buffer) => void;
  /** Called when bytes are thrown away: an oversized or corrupt frame. */
  onDiscard?: (reason: string) => void;
}

type Phase = 'seek' | 'segments' | 'entropy';

export class JpegSplitter {
  private buf: Buffer;
  private len = 0;
  /** Parse position inside buf; in 'segments' it may point past len while a segment is still arriving. */
  private pos = 0;
  private phase: Phase = 'seek';
  /** Dropping the rest of an oversized frame until the next SOI. */
  private skipping = false;

  constructor(private readonly opts: JpegSplitterOptions) {
    this.buf = Buffer.alloc(Math.min(256 * 1024, opts.maxFrameBytes + 2));
  }

  /** Drops any partial frame (after the producer restarted). */
  reset(): void {
    this.len = 0;
    this.pos = 0;
    this.phase = 'seek';
    this.skipping = false;
  }

  push(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.skipping) {
        // Stuffing guarantees FF D8 cannot occur inside entropy data, so the next SOI starts a new frame.
        if (this.len === 1 && chunk[offset] === 0xd8) {
          // The FF kept from the previous chunk and this D8 form the next SOI.
          this.skipping = false;
          continue;
        }
        this.len = 0;
        const soi = findSoi(chunk, offset);
        if (soi < 0) {
          // Keep a trailing FF: it may be the first half of the next SOI.
          if (chunk[chunk.length - 1] === 0xff) this.append(chunk.subarray(chunk.length - 1));
          return;
        }
        this.skipping = false;
        offset = soi;
      }
      // Copy at most what keeps the buffer within the bound (plus room to see the marker ending it).
      const room = this.opts.maxFrameBytes + 2 - this.len;
      const take = Math.min(room, chunk.length - offset);
      this.append(chunk.subarray(offset, offset + take));
      offset += take;
      this.parse();
      if (this.phase !== 'seek' && this.len >= this.opts.maxFrameBytes + 2) {
        this.opts.onDiscard?.(`frame larger than ${this.opts.maxFrameBytes} bytes dropped`);
        this.reset();
        this.skipping = true;
      }
    }
  }

  private append(data: Buffer): void {
    if (this.len + data.length > this.buf.length) {
      const bigger = Buffer.alloc(Math.max(this.buf.length * 2, this.len + data.length));
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    data.copy(this.buf, this.len);
    this.len += data.length;
  }

  /** Removes the first n bytes of the buffer. */
  private consume(n: number): void {
    this.buf.copy(this.buf, 0, n, this.len);
    this.len -= n;
    this.pos = Math.max(0, this.pos - n);
  }

  private parse(): void {
    const b = this.buf;
    for (;;) {
      if (this.phase === 'seek') {
        const soi = findSoi(b.subarray(0, this.len), 0);
        if (soi < 0) {
          // Garbage: keep only a trailing FF that may begin an SOI.
          this.consume(this.len > 0 && b[this.len - 1] === 0xff ? this.len - 1 : this.len);
          return;
        }
        this.consume(soi);
        this.pos = 2;
        this.phase = 'segments';
      }
      if (this.phase === 'segments') {
        if (this.pos + 2 > this.len) return;
        if (b[this.pos] !== 0xff) {
          this.corrupt('marker expected');
          return;
        }
        const marker = b[this.pos + 1]!;
        if (marker === 0xff) {
          this.pos += 1; // fill byte
          continue;
        }
        if (marker === 0xd9) {
          this.finishFrame(this.pos + 2);
          continue;
        }
        if (marker === 0xd8) {
          this.corrupt('SOI inside a frame');
          continue;
        }
        if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
          this.pos += 2;
          continue;
        }
        if (this.pos + 4 > this.len) return;
        const segLen = b.readUInt16BE(this.pos + 2);
        if (segLen < 2) {
          this.corrupt('bad segment length');
          return;
        }
        this.pos += 2 + segLen;
        if (marker === 0xda) this.phase = 'entropy';
        if (this.pos > this.len) return; // the segment body is still arriving
        continue;
      }
      // Entropy-coded data: find the next FF that is neither stuffing nor a restart marker.
      if (this.pos > this.len) return;
      let i = b.indexOf(0xff, this.pos);
      for (;;) {
        if (i < 0 || i >= this.len) {
          this.pos = this.len;
          return;
        }
        if (i + 1 >= this.len) {
          this.pos = i; // wait for the byte after FF
          return;
        }
        const next = b[i + 1]!;
        if (next === 0x00 || (next >= 0xd0 && next <= 0xd7)) i = b.indexOf(0xff, i + 2);
        else if (next === 0xff) i = i + 1;
        else break;
      }
      this.pos = i;
      this.phase = 'segments';
    }
  }

  private finishFrame(end: number): void {
    this.opts.onFrame(Buffer.from(this.buf.subarray(0, end)));
    this.consume(end);
    this.pos = 0;
    this.phase = 'seek';
  }

  /** Drops the broken frame and resynchronises on the next SOI after its start. */
  private corrupt(reason: string): void {
    this.opts.onDiscard?.(`corrupt JPEG data dropped (${reason})`);
    this.consume(Math.min(2, this.len));
    this.pos = 0;
    this.phase = 'seek';
  }
}

function findSoi(b: Buffer, from: number): number {
  let i = b.indexOf(0xff, from);
  while (i >= 0 && i + 1 < b.length) {
    if (b[i + 1] === 0xd8) return i;
    i = b.indexOf(0xff, i + 1);
  }
  return -1;
}
