/**
 * Rewrites a model's external-data file so that every tensor, and every prepacked blob ONNX Runtime recorded
 * beside one, starts at a multiple of `alignment` bytes.
 *
 * Why: when ORT saves prepacked weights (session.save_external_prepacked_constant_initializers) it appends each
 * blob wherever the file ends, and some MLAS packed layouts place their parts at addresses aligned from the
 * buffer's own address. A blob mapped back at an odd offset is then read with its parts shifted: on x86-64 the
 * 2-bit MatMulNBits of small matrices returned NaN (ORT 1.30). Page-aligned blobs map back exactly as they were packed.
 *
 * ORT writes a prepacked blob as an external-data entry `prepacked_<i>` = `<key>|<offset>;<length>;<more>`
 * (several `|`-separated blobs possible) on the initializer it was packed from, offsets into the same file.
 */
import { open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type TensorProto = onnxProto.onnx.TensorProto;
type Entry = onnxProto.onnx.IStringStringEntryProto;

interface Region {
  offset: number;
  length: number;
  /** Where it lands in the rewritten file. */
  moved?: number;
}

export interface RealignResult {
  regions: number;
  bytes: number;
}

const COPY_CHUNK = 16 * 2 ** 20;

export async function realignExternalData(modelPath: string, alignment = 4096): Promise<RealignResult> {
  const model = onnx.ModelProto.decode(await readFile(modelPath));
  const tensors = externalTensors(model.graph!);
  if (tensors.length === 0) return { regions: 0, bytes: 0 };

  const locations = new Set(tensors.map((t) => field(t.externalData!, 'location')));
  if (locations.size !== 1)
    throw new Error(`${modelPath}: external data spread over ${locations.size} files; expected one`);
  const location = [...locations][0]!;
  const dataPath = join(dirname(modelPath), location);

  // Every byte range the model points at, once (a blob may be shared).
  const regions = new Map<string, Region>();
  const region = (offset: number, length: number): Region => {
    const key = `${offset}:${length}`;
    let r = regions.get(key);
    if (!r) regions.set(key, (r = { offset, length }));
    return r;
  };
  const patches: Array<() => void> = [];
  for (const t of tensors) {
    const ed = t.externalData!;
    const offsetEntry = ed.find((e) => e.key === 'offset');
    const length = Number(field(ed, 'length'));
    const r = region(Number(offsetEntry?.value ?? 0), length);
    patches.push(() => {
      if (offsetEntry) offsetEntry.value = String(r.moved);
      else ed.push({ key: 'offset', value: String(r.moved) });
    });
    for (const e of ed.filter((x) => x.key?.startsWith('prepacked_'))) patches.push(prepackedPatch(e, region));
  }

  const ordered = [...regions.values()].sort((a, b) => a.offset - b.offset || a.length - b.length);
  const tmp = `${dataPath}.realign-${process.pid}`;
  const src = await open(dataPath, 'r');
  const dst = await open(tmp, 'w');
  let pos = 0;
  try {
    const buf = Buffer.allocUnsafe(COPY_CHUNK);
    for (const r of ordered) {
      r.moved = Math.ceil(pos / alignment) * alignment;
      for (let done = 0; done < r.length; ) {
        const n = Math.min(COPY_CHUNK, r.length - done);
        const { bytesRead } = await src.read(buf, 0, n, r.offset + done);
        if (bytesRead !== n) throw new Error(`${dataPath}: ends inside the range ${r.offset}+${r.length}`);
        await dst.write(buf, 0, n, r.moved + done);
        done += n;
      }
      pos = r.moved + r.length;
    }
    await dst.truncate(pos);
  } catch (e) {
    await dst.close();
    await rm(tmp, { force: true });
    throw e;
  } finally {
    await src.close();
  }
  await dst.close();
  for (const p of patches) p();
  await rename(tmp, dataPath);
  await writeFile(modelPath, onnx.ModelProto.encode(model).finish());
  return { regions: ordered.length, bytes: pos };
}

/** `<key>|<offset>;<length>;<more>[|...]`: each blob becomes a region; the patch rewrites the offsets. */
function prepackedPatch(e: Entry, region: (offset: number, length: number) => Region): () => void {
  const [key, ...blobs] = (e.value ?? '').split('|');
  const parsed = blobs.map((b) => {
    const [o, l, ...more] = b.split(';');
    if (!/^\d+$/.test(o ?? '') || !/^\d+$/.test(l ?? ''))
      throw new Error(`unrecognised prepacked entry ${e.key}=${e.value}`);
    return { r: region(Number(o), Number(l)), length: l!, more };
  });
  return () => {
    e.value = [key, ...parsed.map((p) => [String(p.r.moved), p.length, ...p.more].join(';'))].join('|');
  };
}

function externalTensors(graph: onnxProto.onnx.IGraphProto): TensorProto[] {
  const out: TensorProto[] = [];
  for (const t of graph.initializer ?? []) {
    if (t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL || (t.externalData?.length ?? 0) > 0)
      out.push(t as TensorProto);
  }
  for (const n of graph.node ?? []) {
    for (const a of n.attribute ?? []) {
      if (a.t?.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL || a.g || a.graphs?.length) {
        throw new Error(`node ${n.name}: external data in attributes or subgraphs is not handled`);
      }
    }
  }
  return out;
}

function field(entries: Entry[], key: string): string {
  const v = entries.find((e) => e.key === key)?.value;
  if (v === undefined || v === null) throw new Error(`external data entry lacks "${key}"`);
  return v;
}
