/**
 * How fast ONNX Runtime's MatMulNBits kernel alone runs the decoder's own matmuls at one token (M = 1): every
 * MatMulNBits node of the package's decoder graph, in graph order, with its K, N, bits, block size and accuracy
 * level, random bytes of the same size, on the engine's thread count. Nothing else runs between them, so
 *   ceiling tok/s = 1 / (time of the linears + time of the LM head)
 * is the decode rate of a decoder that did nothing but its matmuls. The exact shapes matter: E2B's 276 linears
 * include 94 small ones (k/v and the per-layer-input projections) that read far fewer bytes per second than
 * the big MLP matrices, so a chain of MLP shapes with as many bytes would promise a ceiling no graph can reach.
 *
 * Rounds alternate with a caller's step (the bench's own decode runs): a shared machine's slow spells then hit
 * decode and ceiling alike, and the share is taken per round.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { createCachedSession } from '../engine/prepacked-cache.js';
import { DEFAULT_TUNING } from '../engine/session.js';
import { GraphBuilder } from '../onnx/graph.js';
import { median } from '../common/stats.js';

export interface KernelShape {
  bits: number;
  blockSize: number;
  accuracyLevel: number;
}

/** One MatMulNBits node of a decoder graph. */
export interface MatMulShape extends KernelShape {
  k: number;
  n: number;
}

export interface KernelOptions {
  threads: number;
  /** The decoder's linears in graph order (its LM head excepted). */
  linears: MatMulShape[];
  /** The LM head's MatMulNBits (null: none in the graph). */
  lmHead: MatMulShape | null;
  /** Alternating rounds (default 5). */
  rounds?: number;
  /** Timed runs of each chain per round; the round takes their median (default 5). */
  runsPerRound?: number;
  /** Runs before each round's timed runs: the caller's own measurement, alternating with the kernels. */
  between?: (round: number) => Promise<void>;
  /**
   * Also time the chains with their weights mapped from a prepacked file, as the engine's decoder has them with
   * model.prepacked_cache (file-backed pages, slower to stream than the heap's).
   */
  alsoPrepackedFile?: boolean;
}

export interface KernelTiming {
  /** Nodes timed and the weight bytes they read per run. */
  nodes: number;
  bytes: number;
  /** Median over rounds of each round's median run, ms. */
  ms: number;
  gbps: number;
}

export interface KernelResult {
  threads: number;
  /** The most common linear shape (the report's label); `nodes` counts every linear. */
  linear: KernelShape & KernelTiming;
  lmHead: (KernelShape & KernelTiming) | null;
  /** Per round: the linears' and the LM head's median run, ms (lmHeadMs 0 without a head). */
  rounds: Array<{ linearMs: number; lmHeadMs: number }>;
  /** The same chains with their weights mapped from a prepacked file, in the same rounds (alsoPrepackedFile). */
  prepackedFile: { linearMs: number; lmHeadMs: number; rounds: Array<{ linearMs: number; lmHeadMs: number }> } | null;
}

/** Bytes MatMulNBits reads for one weight: packed blocks, float scales, packed zero points. */
export function matMulBytes(s: MatMulShape): number {
  const nb = Math.ceil(s.k / s.blockSize);
  return s.n * nb * ((s.blockSize * s.bits) / 8) + s.n * nb * 4 + s.n * Math.ceil((nb * s.bits) / 8);
}

/** Random packed bytes and small scales: the kernel's speed does not depend on the values. */
function addMatMulNBits(g: GraphBuilder, name: string, input: string, s: MatMulShape, rnd: () => number): string {
  const nb = Math.ceil(s.k / s.blockSize);
  const data = new Uint8Array(s.n * nb * ((s.blockSize * s.bits) / 8));
  for (let i = 0; i < data.length; i++) data[i] = (rnd() * 256) | 0;
  const zpBytes = s.n * Math.ceil((nb * s.bits) / 8);
  const inputs = [
    input,
    g.initializer(`${name}.qweight`, 'uint8', [s.n, nb, (s.blockSize * s.bits) / 8], data),
    g.initializer(`${name}.scales`, 'float32', [s.n * nb], new Float32Array(s.n * nb).fill(1e-3)),
    g.initializer(
      `${name}.zero_points`,
      'uint8',
      [zpBytes],
      new Uint8Array(zpBytes).fill(s.bits === 2 ? 0xaa : s.bits === 4 ? 0x88 : 0x80),
    ),
  ];
  const attrs = { K: s.k, N: s.n, bits: s.bits, block_size: s.blockSize, accuracy_level: s.accuracyLevel };
  return g.node('MatMulNBits', inputs, 1, attrs, 'com.microsoft', name)[0]!;
}

/** Where a chain's packed weights live: ORT's heap, or mapped from the prepacked file cache as the engine's are. */
export type KernelPlacement = 'heap' | 'prepacked-file';

/**
 * One graph running `shapes` in order, written to `dir`. Each node reads the previous output where the widths
 * chain (as most of a decoder's do) and a constant row where they do not, so every node runs once per run, in
 * order. Returns the model's path and the width of its input.
 */
async function writeChain(dir: string, name: string, shapes: MatMulShape[]): Promise<{ path: string; k: number }> {
  let seed = 12345;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const g = new GraphBuilder({ name, externalData: { path: join(dir, `${name}.onnx.data`) } });
  const k0 = shapes[0]!.k;
  let x = g.input('x', 'float32', [1, k0]);
  let width = k0;
  for (const [i, s] of shapes.entries()) {
    const row = (): Float32Array => Float32Array.from({ length: s.k }, () => rnd() - 0.5);
    const input = s.k === width ? x : g.initializer(`row${i}`, 'float32', [1, s.k], row(), { external: false });
    x = addMatMulNBits(g, `m${i}`, input, s, rnd);
    width = s.n;
  }
  g.output(x, 'float32', [1, width]);
  return { path: (await g.save(dir, `${name}.onnx`)).modelPath, k: k0 };
}

/** A session on a written chain, with its weights placed as asked, and a timer of its median run. */
async function openChain(chain: { path: string; k: number }, threads: number, placement: KernelPlacement, dir: string) {
  // The engine's session options; the same file cache mechanism as the engine's decoder for 'prepacked-file'.
  const { session } = await createCachedSession(
    { modelPath: chain.path, checksum: `bench-kernels-${basename(chain.path)}` },
    { ...DEFAULT_TUNING, threads },
    placement === 'prepacked-file' ? { dir: join(dir, 'prepacked') } : undefined,
  );
  const x = Float32Array.from({ length: chain.k }, (_, i) => Math.sin(i) * 0.5);
  const feed = { x: new ort.Tensor('float32', x, [1, chain.k]) };
  for (let i = 0; i < 3; i++) await session.run(feed);
  const time = async (runs: number): Promise<number> => {
    const ms: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await session.run(feed);
      ms.push(performance.now() - t0);
    }
    return median(ms);
  };
  return { session, time };
}

/** The most common (bits, block, level) of the linears, for the report's label. */
function commonShape(shapes: MatMulShape[]): KernelShape {
  const counts = new Map<string, { shape: KernelShape; n: number }>();
  for (const s of shapes) {
    const key = `${s.bits}/${s.blockSize}/${s.accuracyLevel}`;
    const c = counts.get(key) ?? {
      shape: { bits: s.bits, blockSize: s.blockSize, accuracyLevel: s.accuracyLevel },
      n: 0,
    };
    c.n++;
    counts.set(key, c);
  }
  return [...counts.values()].sort((a, b) => b.n - a.n)[0]!.shape;
}

export async function measureKernels(o: KernelOptions): Promise<KernelResult> {
  if (o.linears.length === 0) throw new Error('measureKernels: the decoder has no MatMulNBits linears');
  const dir = await mkdtemp(join(tmpdir(), 'perch-kernels-'));
  const rounds = o.rounds ?? 5;
  const runs = o.runsPerRound ?? 5;
  type Chain = Awaited<ReturnType<typeof openChain>>;
  const sets: Chain[][] = [];
  const time = async (chains: Chain[]) => ({
    linearMs: await chains[0]!.time(runs),
    lmHeadMs: chains[1] ? await chains[1].time(runs) : 0,
  });
  try {
    // Each chain is written once; a session per placement opens it.
    const written = [await writeChain(dir, 'linears', o.linears)];
    if (o.lmHead) written.push(await writeChain(dir, 'lm_head', [o.lmHead]));
    const placements: KernelPlacement[] = o.alsoPrepackedFile ? ['heap', 'prepacked-file'] : ['heap'];
    for (const placement of placements) {
      const chains: Chain[] = [];
      sets.push(chains);
      for (const w of written) chains.push(await openChain(w, o.threads, placement, dir));
    }
    const perRound: KernelResult['rounds'] = [];
    const filePerRound: KernelResult['rounds'] = [];
    for (let r = 0; r < rounds; r++) {
      await o.between?.(r);
      perRound.push(await time(sets[0]!));
      if (sets[1]) filePerRound.push(await time(sets[1]));
    }
    const timing = (shapes: MatMulShape[], ms: number): KernelTiming => {
      const bytes = shapes.reduce((a, s) => a + matMulBytes(s), 0);
      return { nodes: shapes.length, bytes, ms, gbps: bytes / ms / 1e6 };
    };
    return {
      threads: o.threads,
      linear: { ...commonShape(o.linears), ...timing(o.linears, median(perRound.map((x) => x.linearMs))) },
      lmHead: o.lmHead
        ? {
            bits: o.lmHead.bits,
            blockSize: o.lmHead.blockSize,
            accuracyLevel: o.lmHead.accuracyLevel,
            ...timing([o.lmHead], median(perRound.map((x) => x.lmHeadMs))),
          }
        : null,
      rounds: perRound,
      prepackedFile: sets[1]
        ? {
            linearMs: median(filePerRound.map((x) => x.linearMs)),
            lmHeadMs: median(filePerRound.map((x) => x.lmHeadMs)),
            rounds: filePerRound,
          }
        : null,
    };
  } finally {
    for (const c of sets.flat()) await c.session.release();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Decode tok/s of one round if the decoder did nothing but its MatMulNBits calls. */
export function roundCeilingTokPerS(r: KernelResult['rounds'][number]): number {
  return 1000 / (r.linearMs + r.lmHeadMs);
}
