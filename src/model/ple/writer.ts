/**
 * Streams a PLE table to its file chunk by chunk: the table (E2B: ~9.4 GB as float32) is never whole in
 * memory; at most one chunk of float rows plus its quantised bytes is.
 */
import { createHash } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { encodeHeader, makeHeader, quantiseRows, type PleHeader, type PleLayout } from './format.js';

/** Produces rows [start, start + count) as row-major float32 [count, cols]. */
export type RowProducer = (start: number, count: number) => Promise<Float32Array>;

export interface PleWriteOptions {
  /** Float bytes per chunk handed to the producer (default 16 MiB). */
  chunkBytes?: number;
  onProgress?: (rowsDone: number, rows: number) => void;
}

export interface PleWriteResult {
  header: PleHeader;
  bytes: number;
  sha256: string;
}

export async function writePleFile(
  path: string,
  layout: PleLayout,
  produce: RowProducer,
  opts: PleWriteOptions = {},
): Promise<PleWriteResult> {
  const header = makeHeader(layout);
  const chunkRows = Math.max(1, Math.floor((opts.chunkBytes ?? 16 * 1024 * 1024) / (layout.cols * 4)));
  const out = new Uint8Array(chunkRows * header.rowStride);
  const hash = createHash('sha256');
  // Written under a temporary name and renamed at the end, so a crash never leaves a plausible-looking file.
  const partial = `${path}.partial`;
  const fh = await open(partial, 'w');
  let pos = 0;
  try {
    const head = encodeHeader(header);
    await fh.write(head, 0, head.length, pos);
    hash.update(head);
    pos += head.length;
    for (let start = 0; start < layout.rows; start += chunkRows) {
      const count = Math.min(chunkRows, layout.rows - start);
      const values = await produce(start, count);
      if (values.length !== count * layout.cols) {
        throw new Error(
          `PLE producer returned ${values.length} values for rows ${start}..${start + count}, expected ${count * layout.cols}`,
        );
      }
      quantiseRows(header, values, count, out);
      const slice = out.subarray(0, count * header.rowStride);
      await fh.write(slice, 0, slice.length, pos);
      hash.update(slice);
      pos += slice.length;
      opts.onProgress?.(start + count, layout.rows);
    }
    await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(partial, { force: true });
    throw e;
  }
  await fh.close();
  await rename(partial, path);
  return { header, bytes: pos, sha256: hash.digest('hex') };
}
