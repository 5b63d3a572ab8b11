/**
 * Append-only writer for an ONNX external-data file. Tensor bytes go to disk as soon as they are added so a
 * multi-GB model never sits in one buffer; only offsets stay in memory. Large tensors start on an `alignment`
 * boundary so ORT can memory-map them (Pi 5 kernels use 16 KiB pages, hence the 64 KiB default).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** A byte range of the external-data file; two initializers may share one (tied embedding / LM head). */
export interface ExternalRef {
  offset: number;
  length: number;
}

export interface ExternalDataOptions {
  /** Boundary for tensors of at least `alignment` bytes (default 65536). */
  alignment?: number;
  /** Boundary for smaller tensors (default 64). */
  smallAlignment?: number;
}

/** Incremental writer for one tensor whose bytes arrive in chunks (e.g. quantised row by row). */
export interface ExternalChunkWriter {
  write(bytes: Uint8Array): void;
  /** Closes this tensor's range and returns it. */
  finish(): ExternalRef;
}

export class ExternalDataFile {
  readonly path: string;
  readonly alignment: number;
  readonly smallAlignment: number;
  private fd: number | null;
  private size = 0;
  private openChunk = false;

  constructor(filePath: string, opts: ExternalDataOptions = {}) {
    this.path = path.resolve(filePath);
    this.alignment = opts.alignment ?? 65536;
    this.smallAlignment = opts.smallAlignment ?? 64;
    for (const a of [this.alignment, this.smallAlignment]) {
      if (!Number.isInteger(a) || a < 1 || (a & (a - 1)) !== 0) throw new Error(`alignment ${a} is not a power of two`);
    }
    fs.mkdirSync(path.dirname(this.path), { recursive: true });
    this.fd = fs.openSync(this.path, 'w');
  }

  /** Bytes written so far (including padding). */
  get byteLength(): number {
    return this.size;
  }

  /** Appends one tensor's bytes, aligned; returns where they landed. */
  append(bytes: Uint8Array): ExternalRef {
    const w = this.begin(bytes.byteLength);
    w.write(bytes);
    return w.finish();
  }

  /**
   * Starts a tensor written in chunks. `expectedLength` picks the alignment class (large tensors get the
   * page-sized boundary); pass the final size when known.
   */
  begin(expectedLength: number): ExternalChunkWriter {
    const fd = this.requireOpen();
    if (this.openChunk) throw new Error(`${this.path}: another tensor is still being written`);
    const align = expectedLength >= this.alignment ? this.alignment : this.smallAlignment;
    const start = Math.ceil(this.size / align) * align;
    if (start > this.size) {
      fs.writeSync(fd, new Uint8Array(start - this.size), 0, start - this.size, this.size);
      this.size = start;
    }
    this.openChunk = true;
    let done = false;
    return {
      write: (bytes: Uint8Array) => {
        if (done) throw new Error(`${this.path}: chunk writer already finished`);
        let off = 0;
        while (off < bytes.byteLength) {
          off += fs.writeSync(fd, bytes, off, bytes.byteLength - off, this.size + off);
        }
        this.size += bytes.byteLength;
      },
      finish: () => {
        if (done) throw new Error(`${this.path}: chunk writer already finished`);
        done = true;
        this.openChunk = false;
        return { offset: start, length: this.size - start };
      },
    };
  }

  /** Flushes and closes the file; further appends throw. `force` closes even mid-tensor (error paths). */
  close(force = false): void {
    if (this.fd === null) return;
    if (this.openChunk && !force) throw new Error(`${this.path}: closed while a tensor was still being written`);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.fd = null;
  }

  get closed(): boolean {
    return this.fd === null;
  }

  private requireOpen(): number {
    if (this.fd === null) throw new Error(`${this.path}: external-data file is closed`);
    return this.fd;
  }
}
