/**
 * Whether ONNX Runtime's MatMulNBits at accuracy_level 4 really rounds its activations to int8 on this machine.
 *
 * accuracy_level 4 only asks for int8 activations: MLAS runs them where it has an int8 ("CompInt8") kernel for
 * that bit width and block size, which needs integer dot-product instructions (x86-64: AVX2 or better; arm64:
 * the ARMv8.2 dot-product extension, `asimddp` in /proc/cpuinfo, or I8MM). Elsewhere, e.g. the Pi 4's
 * Cortex-A72 or an AVX-only x86, it silently computes in float32 as at accuracy_level 0. Kernel coverage
 * differs between ORT versions and between bit widths, so rather than keep a table of CPU flags in step with
 * MLAS, this asks ORT: one MatMulNBits node over an activation row whose int8 rounding moves the result by
 * about 2x, run with the session defaults the engine uses (pre-packing on: without it MLAS also falls back
 * to float activations).
 */
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { dequantizeMatMulNBits, matMulNBitsDims, quantizeMatMulNBits, type QuantBits } from '../model/quant.js';
import { GraphBuilder } from '../onnx/graph.js';

const cache = new Map<string, Promise<boolean>>();

export function ortRunsInt8Activations(bits: QuantBits, blockSize: number): Promise<boolean> {
  const key = `${bits}/${blockSize}`;
  let p = cache.get(key);
  if (!p) {
    p = probe(bits, blockSize);
    cache.set(key, p);
  }
  return p;
}

async function probe(bits: QuantBits, blockSize: number): Promise<boolean> {
  const k = blockSize;
  const n = 8;
  // Positive weights so nothing cancels; one quantisation block per row.
  const w = Float32Array.from({ length: n * k }, (_, i) => 0.5 + ((i * 37) % 11) / 22);
  const q = quantizeMatMulNBits(w, n, k, { bits, blockSize, method: 'rtn' });
  // One large activation sets the int8 scale (1/127); the rest, 0.004, are about half a step and round to a
  // whole step (0.0079): the int8 result is nearly twice the float one.
  const a = Float32Array.from({ length: k }, (_, i) => (i === 0 ? 1 : 0.004));
  const g = new GraphBuilder();
  const d = matMulNBitsDims(q);
  g.input('A', 'float32', [1, k]);
  const b = g.initializer('B', 'uint8', d.data, q.data, { external: false });
  const s = g.initializer('scales', 'float32', d.scales, q.scales, { external: false });
  const z = g.initializer('zp', 'uint8', d.zeroPoints, q.zeroPoints, { external: false });
  g.node(
    'MatMulNBits',
    ['A', b, s, z],
    ['Y'],
    { K: k, N: n, bits, block_size: blockSize, accuracy_level: 4 },
    'com.microsoft',
  );
  g.output('Y', 'float32', [1, n]);
  const session = await ort.InferenceSession.create(g.toBytes(), { intraOpNumThreads: 1 });
  let y: Float32Array;
  try {
    y = (await session.run({ A: new ort.Tensor('float32', a, [1, k]) })).Y!.data as Float32Array;
  } finally {
    await session.release();
  }
  const deq = dequantizeMatMulNBits(q);
  let maxRel = 0;
  for (let j = 0; j < n; j++) {
    let want = 0;
    for (let t = 0; t < k; t++) want += a[t]! * deq[j * k + t]!;
    maxRel = Math.max(maxRel, Math.abs(y[j]! - want) / Math.abs(want));
  }
  // Float activations differ from the float64 sum by rounding only (~1e-7); int8 ones by tens of percent.
  return maxRel > 1e-3;
}

/** The CPU's feature flags from /proc/cpuinfo (x86 `flags`, arm64 `Features`), for logs; empty where unknown. */
export function cpuFeatureFlags(): string[] {
  try {
    const m = /^(?:flags|Features)\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    return m ? m[1]!.trim().split(/\s+/) : [];
  } catch {
    return [];
  }
}
