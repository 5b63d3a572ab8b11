/**
 * Guest side of `npm run bench:arm -- --kernels`: the work of one MatMulNBits node at one token (M = 1) per
 * weight, for each bits / block size / accuracy level asked, on the emulated core. This is what picks a
 * profile's per-matrix choices on a CPU (models/README.md has the table): the decoder's per-token work is
 * almost all these nodes.
 *
 * Each shape is one [K -> N] node with random packed bytes (the kernels' work does not depend on the values),
 * run once to warm up, then `runs` times between two readings of the counting plugin.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Ops } from '../model/gemma4/graph-ops.js';
import { quantizeInt8Channels } from '../model/quant.js';
import { GraphBuilder } from '../onnx/graph.js';

/**
 * A MatMulNBits shape; the pi4 profile's int8-channels linear as the decoder graph builds it (`int8-rows`:
 * per-row int8 activations, MatMulInteger); or DynamicQuantizeMatMul over int8 / uint8 weights with
 * per-column scales (one activation scale per call: measured, not used).
 */
export type KernelCase =
  | { op: 'nbits'; bits: 2 | 4 | 8; blockSize: number; accuracyLevel: number }
  | { op: 'int8-rows' }
  | { op: 'dqmm'; weights: 's8' | 'u8' };

export const kernelCaseLabel = (c: KernelCase): string =>
  c.op === 'dqmm'
    ? `dqmm-${c.weights}`
    : c.op === 'int8-rows'
      ? 'int8-rows'
      : `q${c.bits}-b${c.blockSize}-acc${c.accuracyLevel}`;

/** `q4-b64-acc1`, `int8-rows` or `dqmm-s8` -> the case; null if it is not one. */
export function parseKernelCase(s: string): KernelCase | null {
  if (s === 'int8-rows') return { op: 'int8-rows' };
  if (s === 'dqmm-s8' || s === 'dqmm-u8') return { op: 'dqmm', weights: s === 'dqmm-s8' ? 's8' : 'u8' };
  const m = /^q([248])-b(\d+)-acc([0-4])$/.exec(s);
  if (!m) return null;
  const blockSize = Number(m[2]);
  if (blockSize < 16 || blockSize > 256 || (blockSize & (blockSize - 1)) !== 0) return null;
  return { op: 'nbits', bits: Number(m[1]) as 2 | 4 | 8, blockSize, accuracyLevel: Number(m[3]) };
}

export async function countKernels(
  cases: readonly KernelCase[],
  k: number,
  n: number,
  runs: number,
  mark: (label: string) => void,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'perch-arm-kernels-'));
  let seed = 12345;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  try {
    for (const c of cases) {
      const label = kernelCaseLabel(c);
      const g = new GraphBuilder({ name: label, externalData: { path: join(dir, `${label}.onnx.data`) } });
      const x = g.input('x', 'float32', [1, k]);
      let y: string;
      if (c.op === 'int8-rows') {
        const w = Float32Array.from({ length: n * k }, () => rnd() - 0.5);
        y = new Ops(g, { fusedNorm: false, onnxGelu: false }).int8Linear(x, 'mm', quantizeInt8Channels(w, n, k));
      } else if (c.op === 'dqmm') {
        const w = Uint8Array.from({ length: k * n }, () => (rnd() * 256) | 0);
        const inputs = [
          x,
          c.weights === 's8'
            ? g.initializer('w', 'int8', [k, n], new Int8Array(w.buffer))
            : g.initializer('w', 'uint8', [k, n], w),
          g.initializer('scales', 'float32', [n], new Float32Array(n).fill(1e-3)),
          c.weights === 's8'
            ? g.initializer('zero_points', 'int8', [n], new Int8Array(n))
            : g.initializer('zero_points', 'uint8', [n], new Uint8Array(n).fill(128)),
        ];
        y = g.node('DynamicQuantizeMatMul', inputs, 1, {}, 'com.microsoft', 'mm')[0]!;
      } else {
        const nb = Math.ceil(k / c.blockSize);
        const data = Uint8Array.from({ length: n * nb * ((c.blockSize * c.bits) / 8) }, () => (rnd() * 256) | 0);
        const zpBytes = n * Math.ceil((nb * c.bits) / 8);
        const inputs = [
          x,
          g.initializer('w', 'uint8', [n, nb, (c.blockSize * c.bits) / 8], data),
          g.initializer('scales', 'float32', [n * nb], new Float32Array(n * nb).fill(1e-3)),
          g.initializer(
            'zero_points',
            'uint8',
            [zpBytes],
            new Uint8Array(zpBytes).fill(c.bits === 2 ? 0xaa : c.bits === 4 ? 0x88 : 0x80),
          ),
        ];
        y = g.node(
          'MatMulNBits',
          inputs,
          1,
          { K: k, N: n, bits: c.bits, block_size: c.blockSize, accuracy_level: c.accuracyLevel },
          'com.microsoft',
          'mm',
        )[0]!;
      }
      g.output(y, 'float32', [1, n]);
      const saved = await g.save(dir, `${label}.onnx`);
      const session = await ort.InferenceSession.create(saved.modelPath, {
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
        executionMode: 'sequential',
      });
      try {
        const feed = {
          x: new ort.Tensor(
            'float32',
            Float32Array.from({ length: k }, () => rnd() - 0.5),
            [1, k],
          ),
        };
        await session.run(feed);
        mark(`${label}-begin`);
        for (let i = 0; i < runs; i++) await session.run(feed);
        mark(`${label}-end`);
      } finally {
        await session.release();
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
