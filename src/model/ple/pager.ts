/**
 * Reads PLE rows from disk on demand: one positional read per missing row, issued concurrently for a prompt,
 * with a byte-bounded LRU of the quantised rows. Caching quantised bytes (not floats) fits ~7x more rows in
 * the same budget; dequantising a row costs microseconds. Nothing is memory-mapped, so the table's size never
 * shows up in RSS (the kernel's page cache may hold it, which is reclaimable and not ours).
 */
import { readSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import {
  decodeHeader,
  dequantiseRow,
  expectedFileBytes,
  PleFileError,
  PLE_DATA_OFFSET,
  type PleHeader,
} from './format.js';

export interface PleExpectation {
  rows?: number;
  cols?: number;
  numLayers?: number;
  layerDim?: number;
}

export interface PlePagerOptions {
  /** Cache budget in bytes (the config gives model.ple_cache_mb; multiply by 1 MiB). 0 disables the cache. */
  cacheBytes: number;
  /** Most positional reads in flight at once (default 16). */
  concurrency?: number;
  /** Values the header must carry (from the model config); a mismatch refuses the file. */
  expect?: PleExpectation;
}

export interface PlePagerStats {
  hits: number;
  misses: number;
  reads: number;
  residentBytes: number;
  cachedRows: number;
  budgetBytes: number;
  readLatencyMs: { p50: number; p95: number; mean: number; samples: number };
}

const LATENCY_SAMPLES = 4096;

export class PlePager {
  private readonly cache = new Map<number, Uint8Array>();
  /** Row buffers evicted from the cache, reused by later reads so steady-state paging allocates nothing. */
  private readonly spare: Uint8Array[] = [];
  private readonly active = new Set<Promise<Float32Array>>();
  private resident = 0;
  private hits = 0;
  private misses = 0;
  private reads = 0;
  private latencySum = 0;
  private latencyCount = 0;
  private readonly latencies = new Float64Array(LATENCY_SAMPLES);
  private closed = false;

  private constructor(
    readonly path: string,
    readonly header: PleHeader,
    private readonly fh: FileHandle,
    private readonly budget: number,
    private readonly concurrency: number,
  ) {}

  /** Opens and validates the file: header, expected shape, and that every row is present. */
  static async open(path: string, opts: PlePagerOptions): Promise<PlePager> {
    const fh = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
      throw new PleFileError(path, e.code === 'ENOENT' ? 'missing' : e.message);
    });
    try {
      const head = Buffer.alloc(PLE_DATA_OFFSET);
      const { bytesRead } = await fh.read(head, 0, head.length, 0);
      const header = decodeHeader(head.subarray(0, bytesRead), path);
      checkExpectation(path, header, opts.expect ?? {});
      const size = (await fh.stat()).size;
      const want = expectedFileBytes(header);
      if (size < want) throw new PleFileError(path, `truncated: expected ${want} bytes, got ${size}`);
      if (size > want) throw new PleFileError(path, `size mismatch: expected ${want} bytes, got ${size}`);
      return new PlePager(path, header, fh, Math.max(0, opts.cacheBytes), Math.max(1, opts.concurrency ?? 16));
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get cols(): number {
    return this.header.cols;
  }

  /** Dequantised raw rows for `ids`, row-major float32 [ids.length, cols]; repeated ids are read once. */
  rowsFor(ids: readonly number[]): Promise<Float32Array> {
    if (this.closed) return Promise.reject(new Error(`${this.path}: pager is closed`));
    const { rows } = this.header;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= rows)
        return Promise.reject(new RangeError(`PLE row ${id} out of range [0, ${rows})`));
    }
    // Tracked so close() waits for reads in flight instead of closing the file under them.
    const p = this.load(ids);
    this.active.add(p);
    const done = () => this.active.delete(p);
    p.then(done, done);
    return p;
  }

  private async load(ids: readonly number[]): Promise<Float32Array> {
    const { cols } = this.header;
    const out = new Float32Array(ids.length * cols);
    // Each row is dequantised as soon as its bytes are at hand (hits synchronously, misses right after their
    // read), so no row buffer is referenced later: evicted buffers can then be recycled for new reads.
    const firstAt = new Map<number, number>();
    const missing: number[] = [];
    ids.forEach((id, i) => {
      if (firstAt.has(id)) return;
      firstAt.set(id, i);
      const hit = this.cache.get(id);
      if (hit) {
        this.hits++;
        // Re-insert to mark as most recently used (Map keeps insertion order).
        this.cache.delete(id);
        this.cache.set(id, hit);
        dequantiseRow(this.header, hit, 0, out, i * cols);
      } else {
        this.misses++;
        missing.push(id);
      }
    });
    const place = (id: number, buf: Uint8Array): void => {
      dequantiseRow(this.header, buf, 0, out, firstAt.get(id)! * cols);
      this.remember(id, buf);
    };
    if (missing.length === 1) {
      // One row is a decode step, on the critical path of every token: an asynchronous read's trip through
      // libuv's thread pool cost 0.2-1 ms a step here, a synchronous one 8 us from the page cache (a cold read
      // from an SD card holds the event loop for that one read instead).
      place(missing[0]!, this.readRowSync(missing[0]!));
      missing.length = 0;
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < missing.length) {
        const id = missing[next++]!;
        place(id, await this.readRow(id));
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, missing.length) }, worker));
    ids.forEach((id, i) => {
      const first = firstAt.get(id)!;
      if (first !== i) out.copyWithin(i * cols, first * cols, (first + 1) * cols);
    });
    return out;
  }

  stats(): PlePagerStats {
    const n = Math.min(this.latencyCount, LATENCY_SAMPLES);
    const sorted = Array.from(this.latencies.subarray(0, n)).sort((a, b) => a - b);
    const pct = (p: number) => (n ? sorted[Math.min(n - 1, Math.floor(p * n))]! : 0);
    return {
      hits: this.hits,
      misses: this.misses,
      reads: this.reads,
      residentBytes: this.resident,
      cachedRows: this.cache.size,
      budgetBytes: this.budget,
      readLatencyMs: {
        p50: pct(0.5),
        p95: pct(0.95),
        mean: this.latencyCount ? this.latencySum / this.latencyCount : 0,
        samples: this.latencyCount,
      },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled(this.active);
    this.cache.clear();
    this.spare.length = 0;
    this.resident = 0;
    await this.fh.close();
  }

  private async readRow(id: number): Promise<Uint8Array> {
    const { buf, position, t0 } = this.startRead(id);
    const { bytesRead } = await this.fh.read(buf, 0, buf.byteLength, position);
    return this.finishRead(id, buf, bytesRead, t0);
  }

  private readRowSync(id: number): Uint8Array {
    const { buf, position, t0 } = this.startRead(id);
    return this.finishRead(id, buf, readSync(this.fh.fd, buf, 0, buf.byteLength, position), t0);
  }

  /** Own buffer per row (not a pool slice) so a cached row retains exactly rowStride bytes. */
  private startRead(id: number): { buf: Uint8Array; position: number; t0: bigint } {
    const { rowStride, dataOffset } = this.header;
    const buf = this.spare.pop() ?? new Uint8Array(rowStride);
    return { buf, position: dataOffset + id * rowStride, t0: process.hrtime.bigint() };
  }

  private finishRead(id: number, buf: Uint8Array, bytesRead: number, t0: bigint): Uint8Array {
    this.recordLatency(Number(process.hrtime.bigint() - t0) / 1e6);
    this.reads++;
    if (bytesRead !== buf.byteLength)
      throw new PleFileError(this.path, `truncated: row ${id} read ${bytesRead} of ${buf.byteLength} bytes`);
    return buf;
  }

  /** Caches a freshly read row (evicting least recently used rows), or recycles its buffer. */
  private remember(id: number, buf: Uint8Array): void {
    if (buf.byteLength > this.budget || this.cache.has(id)) {
      this.recycle(buf);
      return;
    }
    for (const [oldId, old] of this.cache) {
      if (this.resident + buf.byteLength <= this.budget) break;
      this.cache.delete(oldId);
      this.resident -= old.byteLength;
      this.recycle(old);
    }
    this.cache.set(id, buf);
    this.resident += buf.byteLength;
  }

  private recycle(buf: Uint8Array): void {
    if (this.spare.length < 2 * this.concurrency) this.spare.push(buf);
  }

  private recordLatency(ms: number): void {
    this.latencies[this.latencyCount % LATENCY_SAMPLES] = ms;
    this.latencyCount++;
    this.latencySum += ms;
  }
}

function checkExpectation(path: string, h: PleHeader, want: PleExpectation): void {
  const pairs: Array<[keyof PleExpectation, number]> = [
    ['rows', h.rows],
    ['cols', h.cols],
    ['numLayers', h.numLayers],
    ['layerDim', h.layerDim],
  ];
  for (const [key, got] of pairs) {
    const expected = want[key];
    if (expected !== undefined && expected !== got)
      throw new PleFileError(path, `${key} is ${got}, the model config expects ${expected}`);
  }
}
