/** Shared helpers for the vision encoder tests: synthetic patch inputs and real ORT runs of the graph. */
import * as ort from 'onnxruntime-node';
import { seededRandom } from '../src/model/gemma4/weights.js';

export interface PatchInput {
  pixelValues: Float32Array;
  positionIds: Int32Array;
  rows: number;
}

/** A patch grid (row-major, as preprocess.ts emits it) with random pixels, padded with (-1, -1) rows to `total`. */
export function gridInput(
  patchRows: number,
  patchCols: number,
  dim: number,
  seed: number,
  total = patchRows * patchCols,
): PatchInput {
  const valid = patchRows * patchCols;
  if (total < valid) throw new Error('total < valid patches');
  const rand = seededRandom(seed);
  const pixelValues = new Float32Array(total * dim);
  for (let i = 0; i < valid * dim; i++) pixelValues[i] = rand();
  const positionIds = new Int32Array(total * 2).fill(-1);
  for (let y = 0; y < patchRows; y++) {
    for (let x = 0; x < patchCols; x++) {
      positionIds[2 * (y * patchCols + x)] = x;
      positionIds[2 * (y * patchCols + x) + 1] = y;
    }
  }
  return { pixelValues, positionIds, rows: total };
}

/** Runs the encoder graph on a batch of equally long inputs; returns image_embeds and its dims. */
export async function runVision(
  session: ort.InferenceSession,
  batch: PatchInput[],
  dim: number,
): Promise<{ data: Float32Array; dims: readonly number[] }> {
  const rows = batch[0]!.rows;
  if (batch.some((b) => b.rows !== rows)) throw new Error('batch rows differ');
  const pv = new Float32Array(batch.length * rows * dim);
  const pos = new BigInt64Array(batch.length * rows * 2);
  batch.forEach((b, i) => {
    pv.set(b.pixelValues, i * rows * dim);
    b.positionIds.forEach((v, j) => (pos[i * rows * 2 + j] = BigInt(v)));
  });
  const out = await session.run({
    pixel_values: new ort.Tensor('float32', pv, [batch.length, rows, dim]),
    position_ids: new ort.Tensor('int64', pos, [batch.length, rows, 2]),
  });
  const t = out.image_embeds!;
  return { data: t.data as Float32Array, dims: t.dims };
}
