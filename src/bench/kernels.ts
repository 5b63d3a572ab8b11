/**
 * How fast ONNX Runtime's MatMulNBits kernel alone reads weights on this machine, at one token (M = 1), with
 * the package's bits, block size and accuracy level and the engine's thread count. With the decoder's weight
 * bytes this gives the decode ceiling of the kernels themselves, whatever the graph around them does:
 *   ceiling tok/s = 1 / (linear bytes / linear GB/s + LM head bytes / LM head GB/s).
 * When that ceiling is below the memory-bandwidth limit, decode is compute-bound inside ORT's kernels
 * (x86's 2-bit path, for one), and only a faster kernel moves it.
 *
 * Linears: up/down projections of the model's MLP shapes chained (x -> up -> down -> up ...), random bytes, as
 * many bytes in all as the decoder's linears. LM head: one [vocab, hidden] MatMulNBits.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../onnx/graph.js';

export interface KernelShape {
  bits: number;
  blockSize: number;
  accuracyLevel: number;
}

export interface KernelOptions {
  threads: number;
  hidden: number;
  intermediate: number;
  vocab: number;
  linear: KernelShape;
  /** The tied LM head's quantisation (null: no quantised head to measure). */
  lmHead: KernelShape | null;
  /**
   * Weight bytes of the linear chain: give the decoder's own (WeightBytes.matmulBytes), so the chain meets the
   * caches as decode does (this machine kind has a 480 MiB L3: a 100 MB chain reads 26 GB/s, 530 MB 17).
   */
  linearBytes: number;
  /** Timed runs; the median is reported (default 15). */
  runs?: number;
}

export interface KernelResult {
  threads: number;
  linear: KernelShape & { bytes: number; ms: number; gbps: number };
  lmHead: (KernelShape & { bytes: number; ms: number; gbps: number }) | null;
}

/** Random packed bytes and small scales: the kernel's speed does not depend on the values. */
function addMatMulNBits(
  g: GraphBuilder,
  name: string,
  input: string,
  n: number,
  k: number,
  s: KernelShape,
  rnd: () => number,
  counted: { bytes: number },
): string {
  const nb = Math.ceil(k / s.blockSize);
  const data = new Uint8Array(n * nb * ((s.blockSize * s.bits) / 8));
  for (let i = 0; i < data.length; i++) data[i] = (rnd() * 256) | 0;
  const scales = new Float32Array(n * nb).fill(1e-3);
  const zpBytes = n * Math.ceil((nb * s.bits) / 8);
  const inputs = [
    input,
    g.initializer(`${name}.qweight`, 'uint8', [n, nb, (s.blockSize * s.bits) / 8], data),
    g.initializer(`${name}.scales`, 'float32', [n * nb], scales),
    g.initializer(
      `${name}.zero_points`,
      'uint8',
      [zpBytes],
      new Uint8Array(zpBytes).fill(s.bits === 2 ? 0xaa : s.bits === 4 ? 0x88 : 0x80),
    ),
  ];
  counted.bytes += data.byteLength + scales.byteLength + zpBytes;
  return g.node(
    'MatMulNBits',
    inputs,
    1,
    { K: k, N: n, bits: s.bits, block_size: s.blockSize, accuracy_level: s.accuracyLevel },
    'com.microsoft',
    name,
  )[0]!;
}

/** Builds, loads and times one graph; bytes: the weight bytes its MatMulNBits nodes read per run. */
async function timeGraph(
  dir: string,
  name: string,
  build: (g: GraphBuilder, rnd: () => number, counted: { bytes: number }) => { input: string; k: number },
  threads: number,
  runs: number,
): Promise<{ bytes: number; ms: number }> {
  let seed = 12345;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const g = new GraphBuilder({ name, externalData: { path: join(dir, `${name}.onnx.data`) } });
  const counted = { bytes: 0 };
  const { input, k } = build(g, rnd, counted);
  const saved = await g.save(dir, `${name}.onnx`);
  const session = await ort.InferenceSession.create(saved.modelPath, {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });
  try {
    const x = new ort.Tensor(
      'float32',
      Float32Array.from({ length: k }, () => rnd() - 0.5),
      [1, k],
    );
    for (let i = 0; i < 3; i++) await session.run({ [input]: x });
    const ms: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await session.run({ [input]: x });
      ms.push(performance.now() - t0);
    }
    ms.sort((a, b) => a - b);
    return { bytes: counted.bytes, ms: ms[ms.length >> 1]! };
  } finally {
    await session.release();
  }
}

/** Up/down pairs whose weights add up to at least linearBytes (two at least). */
export function chainPairs(o: Pick<KernelOptions, 'hidden' | 'intermediate' | 'linear' | 'linearBytes'>): number {
  const matrix = (n: number, k: number): number => {
    const nb = Math.ceil(k / o.linear.blockSize);
    return n * nb * ((o.linear.blockSize * o.linear.bits) / 8 + 4) + n * Math.ceil((nb * o.linear.bits) / 8);
  };
  const pair = matrix(o.intermediate, o.hidden) + matrix(o.hidden, o.intermediate);
  return Math.max(2, Math.ceil(o.linearBytes / pair));
}

export async function measureKernels(o: KernelOptions): Promise<KernelResult> {
  const dir = await mkdtemp(join(tmpdir(), 'perch-kernels-'));
  const runs = o.runs ?? 15;
  try {
    const lin = await timeGraph(
      dir,
      'linears',
      (g, rnd, counted) => {
        let x = g.input('x', 'float32', [1, o.hidden]);
        for (let i = 0; i < chainPairs(o); i++) {
          x = addMatMulNBits(g, `up${i}`, x, o.intermediate, o.hidden, o.linear, rnd, counted);
          x = addMatMulNBits(g, `down${i}`, x, o.hidden, o.intermediate, o.linear, rnd, counted);
        }
        g.output(x, 'float32', [1, o.hidden]);
        return { input: 'x', k: o.hidden };
      },
      o.threads,
      runs,
    );
    let head: KernelResult['lmHead'] = null;
    if (o.lmHead) {
      const shape = o.lmHead;
      const h = await timeGraph(
        dir,
        'lm_head',
        (g, rnd, counted) => {
          const x = g.input('x', 'float32', [1, o.hidden]);
          g.output(addMatMulNBits(g, 'lm_head', x, o.vocab, o.hidden, shape, rnd, counted), 'float32', [1, o.vocab]);
          return { input: 'x', k: o.hidden };
        },
        o.threads,
        runs,
      );
      head = { ...shape, ...h, gbps: h.bytes / h.ms / 1e6 };
    }
    return { threads: o.threads, linear: { ...o.linear, ...lin, gbps: lin.bytes / lin.ms / 1e6 }, lmHead: head };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Decode tok/s if the decoder did nothing but its MatMulNBits calls at the measured kernel speeds. */
export function kernelCeilingTokPerS(k: KernelResult, matmulBytes: number, lmHeadBytes: number): number {
  const headGbps = k.lmHead?.gbps ?? k.linear.gbps;
  const seconds = matmulBytes / (k.linear.gbps * 1e9) + lmHeadBytes / (headGbps * 1e9);
  return 1 / seconds;
}
