/**
 * Memory bandwidth with the engine's thread count, so decode speed can be put against the machine's limit
 * (design/benchmarks.md: decoding reads every weight once, so read-only bandwidth is the ceiling).
 *
 *  - read: an ONNX Runtime graph ReduceMax([rows, cols] -> [rows]) over a float tensor held in JS memory,
 *    intraOpNumThreads = threads. ORT's reduce kernels are Eigen-vectorised and split rows across its pool,
 *    so this streams memory with the same runtime and thread pool the decoder uses. GB/s = bytes / s.
 *    Cross-checked by `threads` worker threads running a tiny hand-assembled WebAssembly SIMD load loop;
 *    the faster of the two is reported (both are plain load loops; a gap between them means one is not
 *    memory-bound).
 *  - copy: `threads` worker threads each Buffer.copy (memmove) their own half of the data. Each worker owns
 *    plain (non-shared) buffers: V8 copies SharedArrayBuffer contents with relaxed atomics, not libc memcpy.
 *    GB/s counts each byte once (bytes copied / s) although memcpy reads and writes it.
 * Both take the best of several repetitions after a warm-up (first touch faults pages in).
 * Page size matters (on this VM kind, 2 threads: ~36 GB/s read on transparent huge pages, ~22-27 on 4 KiB
 * pages): JS buffers come from glibc malloc, which uses huge pages only under
 * GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (THP mode madvise); bench's child-process runner sets it.
 */
import { Worker } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../onnx/graph.js';

export interface BandwidthOptions {
  /** Bytes streamed per repetition (default 1 GiB). Copy moves this many bytes from one buffer to another. */
  bytes?: number;
  threads: number;
  /** Timed repetitions; the best is reported (default 5). */
  reps?: number;
}

export interface BandwidthResult {
  threads: number;
  bytes: number;
  reps: number;
  /** Best read-only streaming bandwidth, GB/s (1e9 bytes/s): the faster of the two readers. */
  readGBps: number;
  readByMethod: { ort: number; wasm: number };
  /** Best memcpy bandwidth, GB/s, each byte counted once. */
  copyGBps: number;
  method: { read: string; copy: string };
  /** Page size the measuring process asked for (set by bench's child-process runner). */
  pages?: 'huge' | '4k';
}

export const DEFAULT_BANDWIDTH_BYTES = 1 << 30;

const now = (): number => Number(process.hrtime.bigint()) / 1e9;

/** A [rows, cols] -> [rows] ReduceMax graph; cols is symbolic so one session serves any buffer size. */
function reduceGraph(rows: number): Uint8Array {
  const b = new GraphBuilder({ name: 'bench_read_bandwidth', opsets: { '': 21 } });
  b.input('x', 'float32', [rows, 'cols']);
  const axes = b.constInt64('axes', [1]);
  b.node('ReduceMax', ['x', axes], ['y'], { keepdims: 0 });
  b.output('y', 'float32', [rows]);
  return b.toBytes();
}

export async function measureReadBandwidth(opts: BandwidthOptions): Promise<number> {
  const reps = opts.reps ?? 5;
  // Many more rows than threads so ORT's row partitioning balances; each row is still long (>= 64 KiB at 1 GiB).
  const rows = 1024;
  const cols = Math.max(16, Math.floor((opts.bytes ?? DEFAULT_BANDWIDTH_BYTES) / 4 / rows));
  const data = new Float32Array(rows * cols);
  // Written, not left zeroed: untouched calloc pages all map the kernel's single zero page and read from cache.
  for (let i = 0; i < data.length; i += 1024) data[i] = i & 0xff;
  data.fill(1.5, 1);
  const session = await ort.InferenceSession.create(reduceGraph(rows), {
    intraOpNumThreads: opts.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  try {
    const x = new ort.Tensor('float32', data, [rows, cols]);
    let best = Infinity;
    for (let r = 0; r <= reps; r++) {
      const t0 = now();
      const out = await session.run({ x });
      const dt = now() - t0;
      out.y?.dispose();
      if (r > 0) best = Math.min(best, dt); // r == 0 is the warm-up
    }
    return data.byteLength / best / 1e9;
  } finally {
    await session.release();
  }
}

/**
 * Worker bodies (plain JS, evaluated: no TypeScript loader needed in a worker). Each allocates and fills its
 * own data, runs `step()` once as a warm-up, then once per generation. Control words in a shared
 * Int32Array: [0] generation (negative: exit), [1] workers done, [2] workers ready.
 */
const WORKER_LOOP = `
const c = new Int32Array(workerData.control);
step();
Atomics.add(c, 2, 1);
let gen = 0;
for (;;) {
  Atomics.wait(c, 0, gen);
  gen = Atomics.load(c, 0);
  if (gen < 0) break;
  step();
  Atomics.add(c, 1, 1);
  Atomics.notify(c, 1);
}
`;

const COPY_WORKER = `
const { workerData } = require('node:worker_threads');
const src = Buffer.allocUnsafeSlow(workerData.bytes);
const dst = Buffer.allocUnsafeSlow(workerData.bytes);
src.fill(7);
const step = () => src.copy(dst, 0, 0, src.length);
${WORKER_LOOP}`;

const WASM_READ_WORKER = `
const { workerData } = require('node:worker_threads');
const mem = new WebAssembly.Memory({ initial: workerData.bytes / 65536 });
new Uint8Array(mem.buffer).fill(3);
const read = new WebAssembly.Instance(new WebAssembly.Module(workerData.module), { e: { m: mem } }).exports.f;
let sink = 0;
const step = () => { sink ^= read(0, workerData.bytes); };
${WORKER_LOOP}`;

/**
 * A hand-assembled WebAssembly module: (import "e" "m" (memory 1)) and
 *   func f(p: i32, end: i32) -> i32: while (p < end) { a..d ^= v128.load(p + 0/16/32/48); p += 64 }
 *   return lane 0 of a ^ b ^ c ^ d
 * Four independent 128-bit accumulators keep the loop load-bound (XOR has one-cycle latency).
 */
export function wasmReadModule(): Uint8Array {
  const local = { p: 0, end: 1 };
  const loadXor = (acc: number, offset: number): number[] => [
    0x20,
    acc,
    0x20,
    local.p,
    0xfd,
    0x00,
    4,
    offset,
    0xfd,
    0x51,
    0x21,
    acc,
  ];
  const body = [
    0x01,
    0x04,
    0x7b, // locals: 4 x v128 (indices 2..5)
    0x02,
    0x40,
    0x03,
    0x40, // block, loop
    0x20,
    local.p,
    0x20,
    local.end,
    0x4f,
    0x0d,
    0x01, // br_if 1 (p >= end)
    ...loadXor(2, 0),
    ...loadXor(3, 16),
    ...loadXor(4, 32),
    ...loadXor(5, 48),
    0x20,
    local.p,
    0x41,
    0xc0,
    0x00,
    0x6a,
    0x21,
    local.p, // p += 64
    0x0c,
    0x00,
    0x0b,
    0x0b, // br 0, end loop, end block
    0x20,
    2,
    0x20,
    3,
    0xfd,
    0x51,
    0x20,
    4,
    0xfd,
    0x51,
    0x20,
    5,
    0xfd,
    0x51,
    0xfd,
    0x1b,
    0x00, // xor all, extract lane 0
    0x0b,
  ];
  const code = [1, body.length, ...body];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00, // magic, version 1
    0x01,
    0x07,
    0x01,
    0x60,
    0x02,
    0x7f,
    0x7f,
    0x01,
    0x7f, // type: (i32, i32) -> i32
    0x02,
    0x08,
    0x01,
    0x01,
    0x65,
    0x01,
    0x6d,
    0x02,
    0x00,
    0x01, // import "e" "m" memory min 1
    0x03,
    0x02,
    0x01,
    0x00, // one function of type 0
    0x07,
    0x05,
    0x01,
    0x01,
    0x66,
    0x00,
    0x00, // export "f"
    0x0a,
    code.length,
    ...code,
  ]);
}

/** Blocks the calling thread until c[i] >= target (Atomics.wait is allowed on Node's main thread). */
function waitAtLeast(c: Int32Array, i: number, target: number): void {
  for (let v = Atomics.load(c, i); v < target; v = Atomics.load(c, i)) Atomics.wait(c, i, v, 1000);
}

/** Runs `source` in n workers, each over `per` bytes; returns the best wall time of all n finishing a step. */
async function timeWorkers(
  source: string,
  n: number,
  per: number,
  reps: number,
  extra: Record<string, unknown> = {},
): Promise<number> {
  const control = new SharedArrayBuffer(16);
  const c = new Int32Array(control);
  const workers = Array.from(
    { length: n },
    () => new Worker(source, { eval: true, workerData: { bytes: per, control, ...extra } }),
  );
  const failed = new Promise<never>((_, reject) => workers.forEach((w) => w.once('error', reject)));
  try {
    // Waiting for "ready" without blocking the event loop, so a worker error can surface.
    await Promise.race([
      failed,
      new Promise<void>((resolve) => {
        const poll = (): void => (Atomics.load(c, 2) >= n ? resolve() : void setTimeout(poll, 5));
        poll();
      }),
    ]);
    let best = Infinity;
    for (let r = 1; r <= reps; r++) {
      Atomics.store(c, 1, 0);
      const t0 = now();
      Atomics.store(c, 0, r);
      Atomics.notify(c, 0);
      waitAtLeast(c, 1, n);
      best = Math.min(best, now() - t0);
    }
    return best;
  } finally {
    Atomics.store(c, 0, -1);
    Atomics.notify(c, 0);
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/** Per-thread share of `bytes`, rounded down to whole 64 KiB pages (the wasm page size). */
function perThread(bytes: number, n: number): number {
  return Math.max(65536, Math.floor(bytes / n / 65536) * 65536);
}

export async function measureCopyBandwidth(opts: BandwidthOptions): Promise<number> {
  const per = perThread(opts.bytes ?? DEFAULT_BANDWIDTH_BYTES, opts.threads);
  const best = await timeWorkers(COPY_WORKER, opts.threads, per, opts.reps ?? 5);
  return (per * opts.threads) / best / 1e9;
}

/** Read-only bandwidth from `threads` workers running 128-bit SIMD loads over their own wasm memory. */
export async function measureWasmReadBandwidth(opts: BandwidthOptions): Promise<number> {
  const per = perThread(opts.bytes ?? DEFAULT_BANDWIDTH_BYTES, opts.threads);
  const best = await timeWorkers(WASM_READ_WORKER, opts.threads, per, opts.reps ?? 5, { module: wasmReadModule() });
  return (per * opts.threads) / best / 1e9;
}

export async function measureBandwidth(opts: BandwidthOptions): Promise<BandwidthResult> {
  const bytes = opts.bytes ?? DEFAULT_BANDWIDTH_BYTES;
  const reps = opts.reps ?? 5;
  const o = { ...opts, bytes, reps };
  const ortRead = await measureReadBandwidth(o);
  const wasmRead = await measureWasmReadBandwidth(o);
  const copyGBps = await measureCopyBandwidth(o);
  const mib = (bytes / 2 ** 20).toFixed(0);
  return {
    threads: opts.threads,
    bytes,
    reps,
    // Both readers are load loops; the faster one is the closer to the memory's limit.
    readGBps: Math.max(ortRead, wasmRead),
    readByMethod: { ort: ortRead, wasm: wasmRead },
    copyGBps,
    method: {
      read: `best of ONNX Runtime ReduceMax (intraOpNumThreads ${opts.threads}) and ${opts.threads} worker(s) of WebAssembly SIMD loads over ${mib} MiB, best of ${reps} each`,
      copy: `${opts.threads} worker thread(s) Buffer.copy of ${mib} MiB in total, best of ${reps}`,
    },
  };
}
