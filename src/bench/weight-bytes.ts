/**
 * Weight bytes read per decoded token, from a package's decoder graph and PLE file (not from a guess):
 *
 *   bytes/token = matmul + lmHead + pleRow
 *     matmul  = every initializer consumed by a MatMulNBits / MatMulInteger / MatMul / Gemm node (packed
 *               weights, scales, zero points; float weights in a float package), the LM head excepted
 *     lmHead  = the LM head's initializers (names starting `lm_head`; tied: the same bytes as the embedding
 *               table, which the embedding Gather only touches one row of)
 *     pleRow  = one row of the PLE file (its row stride: packed values, scales, zero points, padding)
 *   Not counted: the embedding gather (Gather / GatherBlockQuantized tables: one row per token) and the small
 *   initializers of other nodes (norm weights, shape constants: `smallBytes`, well under 1% at E2B scale).
 * Initializers that share external bytes (same file, offset, length) count once.
 */
import { open, readFile } from 'node:fs/promises';
import onnxProto from 'onnx-proto';
import { decodeHeader, PLE_DATA_OFFSET } from '../model/ple/format.js';
import type { MatMulShape } from './kernels.js';

const { onnx } = onnxProto;

export interface WeightBytes {
  matmulBytes: number;
  lmHeadBytes: number;
  pleRowBytes: number;
  /** matmulBytes + lmHeadBytes + pleRowBytes. */
  perToken: number;
  /** Initializers of other nodes, reported but not in perToken. */
  smallBytes: number;
  /** Tables read by gathers (one row per token), not in perToken. */
  gatherTableBytes: number;
  matmulNodes: number;
}

const MATMUL_OPS = new Set(['MatMulNBits', 'MatMulInteger', 'MatMul', 'Gemm']);
const GATHER_OPS = new Set(['Gather', 'GatherBlockQuantized']);

/** Bytes per element by ONNX data type (float, uint8, int8, uint16, int16, int32, int64, bool, f16, double, ...). */
const ELEMENT_BYTES: Record<number, number> = {
  1: 4,
  2: 1,
  3: 1,
  4: 2,
  5: 2,
  6: 4,
  7: 8,
  9: 1,
  10: 2,
  11: 8,
  12: 4,
  13: 8,
  16: 2,
};

interface Init {
  bytes: number;
  /** Identity of the bytes: external file range, or the initializer name for embedded data. */
  key: string;
}

function describe(t: onnxProto.onnx.ITensorProto): Init {
  const ext = new Map((t.externalData ?? []).map((e) => [e.key ?? '', e.value ?? '']));
  if (t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL) {
    return {
      bytes: Number(ext.get('length') ?? 0),
      key: `${ext.get('location')}@${ext.get('offset') ?? 0}+${ext.get('length')}`,
    };
  }
  const raw = t.rawData?.length ?? 0;
  const count = (t.dims ?? []).reduce<number>((a, d) => a * Number(d), 1);
  return { bytes: raw > 0 ? raw : count * (ELEMENT_BYTES[t.dataType ?? 0] ?? 0), key: `embedded:${t.name}` };
}

/** The decoder graph names its LM head's weights lm_head.* (decoder-graph.ts), tied or not. */
function isLmHeadWeight(initializer: string): boolean {
  return initializer.startsWith('lm_head');
}

/** Sums the decoder graph's weight bytes by the rule above. */
export async function graphWeightBytes(onnxPath: string): Promise<Omit<WeightBytes, 'pleRowBytes' | 'perToken'>> {
  const model = onnx.ModelProto.decode(await readFile(onnxPath));
  const graph = model.graph!;
  const inits = new Map<string, Init>();
  for (const t of graph.initializer ?? []) inits.set(t.name ?? '', describe(t));
  const counted = new Set<string>();
  const gathered = new Set<string>();
  let matmulBytes = 0;
  let lmHeadBytes = 0;
  let smallBytes = 0;
  let gatherTableBytes = 0;
  let matmulNodes = 0;
  const nodes = graph.node ?? [];
  // Gathers first, so a table shared with the LM head is not mistaken for "only gathered".
  for (const n of nodes) {
    if (!GATHER_OPS.has(n.opType ?? '')) continue;
    const table = inits.get(n.input?.[0] ?? '');
    if (table && !gathered.has(table.key)) {
      gathered.add(table.key);
      gatherTableBytes += table.bytes;
    }
  }
  for (const n of nodes) {
    const op = n.opType ?? '';
    if (GATHER_OPS.has(op)) continue;
    if (MATMUL_OPS.has(op)) matmulNodes++;
    for (const name of n.input ?? []) {
      const init = inits.get(name);
      if (!init || counted.has(init.key)) continue;
      counted.add(init.key);
      if (isLmHeadWeight(name)) lmHeadBytes += init.bytes;
      else if (MATMUL_OPS.has(op)) matmulBytes += init.bytes;
      else smallBytes += init.bytes;
    }
  }
  return { matmulBytes, lmHeadBytes, smallBytes, gatherTableBytes, matmulNodes };
}

/**
 * Node name -> the name of its first initializer input minus the quantisation suffix (e.g.
 * `model.language_model.layers.3.mlp.down_proj.weight`), for naming the matmuls in a profile.
 */
export async function nodeWeightNames(onnxPath: string): Promise<Map<string, string>> {
  const graph = onnx.ModelProto.decode(await readFile(onnxPath)).graph!;
  const inits = new Set((graph.initializer ?? []).map((t) => t.name ?? ''));
  const out = new Map<string, string>();
  for (const n of graph.node ?? []) {
    const w = (n.input ?? []).find((i) => inits.has(i) && !i.startsWith('const_'));
    if (w && n.name) out.set(n.name, w.replace(/\.(qweight|wT)$/, ''));
  }
  return out;
}

/** One row of the PLE file: its header's row stride. */
export async function pleRowBytes(plePath: string): Promise<number> {
  const fh = await open(plePath, 'r');
  try {
    const buf = Buffer.alloc(PLE_DATA_OFFSET);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return decodeHeader(buf.subarray(0, bytesRead), plePath).rowStride;
  } finally {
    await fh.close();
  }
}

export async function weightBytesPerToken(decoderOnnx: string, pleFile: string): Promise<WeightBytes> {
  const g = await graphWeightBytes(decoderOnnx);
  const row = await pleRowBytes(pleFile);
  return { ...g, pleRowBytes: row, perToken: g.matmulBytes + g.lmHeadBytes + row };
}

/** The decoder's MatMulNBits nodes in graph order, as kernels.ts times them; the LM head (`lm_head*` weight) apart. */
export async function matMulNBitsShapes(
  decoderOnnx: string,
): Promise<{ linears: MatMulShape[]; lmHead: MatMulShape | null }> {
  const graph = onnx.ModelProto.decode(await readFile(decoderOnnx)).graph!;
  const linears: MatMulShape[] = [];
  let lmHead: MatMulShape | null = null;
  for (const n of graph.node ?? []) {
    if (n.opType !== 'MatMulNBits') continue;
    const attr = (name: string, fallback?: number): number => {
      const a = (n.attribute ?? []).find((x) => x.name === name);
      if (!a) {
        if (fallback === undefined) throw new Error(`${decoderOnnx}: MatMulNBits ${n.name} has no ${name}`);
        return fallback;
      }
      return Number(a.i ?? 0);
    };
    const shape: MatMulShape = {
      k: attr('K'),
      n: attr('N'),
      bits: attr('bits', 4),
      blockSize: attr('block_size'),
      accuracyLevel: attr('accuracy_level', 0),
    };
    if (isLmHeadWeight(n.input?.[1] ?? '')) lmHead = shape;
    else linears.push(shape);
  }
  return { linears, lmHead };
}
