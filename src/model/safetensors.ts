/**
 * Safetensors checkpoints: reading (single file or sharded with model.safetensors.index.json) via positional
 * reads, never a whole-file load, and writing (in memory for small tensors, streamed for big ones).
 * Format: u64 little-endian header length, JSON header {name: {dtype, shape, data_offsets}, __metadata__},
 * then the data; offsets are relative to the end of the header.
 */
import * as buffer from 'node:buffer';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bf16ToF32, f16ToF32 } from './float-convert.js';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'I8' | 'U8' | 'I16' | 'U16' | 'I32' | 'I64' | 'F64' | 'BOOL';

export const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  I8: 1,
  U8: 1,
  I16: 2,
  U16: 2,
  I32: 4,
  I64: 8,
  F64: 8,
  BOOL: 1,
};

export interface TensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute path of the shard holding it. */
  file: string;
  /** Absolute byte offset in that file. */
  offset: number;
  byteLength: number;
}

/** Largest header we accept: real ones are well under 10 MB. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** Conversions run in chunks of this many bytes so memory stays near the output size. */
const CHUNK_BYTES = 8 * 1024 * 1024;
/** Largest float32 result of one read: what a single typed array can hold. */
const MAX_READ_BYTES = Math.min(buffer.constants.MAX_LENGTH, 2 ** 32 - 1);

export class SafetensorsError extends Error {}

interface ParsedFile {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

/** Parses one file's header (reads only the header bytes). */
export async function readSafetensorsHeader(file: string): Promise<ParsedFile> {
  const abs = path.resolve(file);
  const fh = await fs.promises.open(abs, 'r');
  try {
    const size = (await fh.stat()).size;
    const fail = (why: string): never => {
      throw new SafetensorsError(`${abs}: not a valid safetensors file: ${why}`);
    };
    if (size < 8) fail(`file is ${size} bytes, shorter than the 8-byte header length`);
    const lenBuf = await readExactly(fh, abs, 8, 0);
    const headerLen = Number(new DataView(lenBuf.buffer, lenBuf.byteOffset, 8).getBigUint64(0, true));
    if (headerLen > MAX_HEADER_BYTES) fail(`header length ${headerLen} exceeds ${MAX_HEADER_BYTES}`);
    if (8 + headerLen > size)
      fail(`header length ${headerLen} runs past the end of the ${size}-byte file (truncated?)`);
    const headerBytes = await readExactly(fh, abs, headerLen, 8);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
    } catch (e) {
      fail(`header is not JSON (${(e as Error).message})`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header is not a JSON object');
    const dataStart = 8 + headerLen;
    const dataLen = size - dataStart;
    const tensors = new Map<string, TensorInfo>();
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof raw !== 'object' || raw === null) fail('__metadata__ is not an object');
        metadata = Object.fromEntries(Object.entries(raw as Record<string, unknown>).map(([k, v]) => [k, String(v)]));
        continue;
      }
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const dtype = e?.dtype;
      if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES))
        fail(`tensor ${name}: unsupported dtype ${String(dtype)}`);
      const shape = e.shape;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        fail(`tensor ${name}: bad shape`);
      const offs = e.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0)) {
        fail(`tensor ${name}: bad data_offsets`);
      }
      const [begin, end] = offs as [number, number];
      const want = (shape as number[]).reduce((a, d) => a * d, 1) * DTYPE_BYTES[dtype as SafetensorsDtype];
      if (end - begin !== want) fail(`tensor ${name}: data_offsets span ${end - begin} bytes, shape needs ${want}`);
      if (end > dataLen) fail(`tensor ${name} ends at ${end}, past the ${dataLen} data bytes (truncated?)`);
      tensors.set(name, {
        dtype: dtype as SafetensorsDtype,
        shape: shape as number[],
        file: abs,
        offset: dataStart + begin,
        byteLength: want,
      });
    }
    return { tensors, metadata };
  } finally {
    await fh.close();
  }
}

async function readExactly(
  fh: fs.promises.FileHandle,
  file: string,
  length: number,
  position: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const buf = into ?? new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) throw new SafetensorsError(`${file}: unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
  return buf;
}

/** Shard file names from an index must be plain names in the checkpoint directory. */
function safeShardName(dir: string, name: unknown): string {
  if (typeof name !== 'string' || name === '' || name !== path.basename(name) || name === '..' || name.includes('\\')) {
    throw new SafetensorsError(`${dir}: index names an invalid shard file ${JSON.stringify(name)}`);
  }
  return name;
}

export class SafetensorsCheckpoint {
  private readonly handles = new Map<string, Promise<fs.promises.FileHandle>>();

  private constructor(
    readonly dir: string,
    private readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
  ) {}

  /** Opens a directory (index.json or model.safetensors) or a single .safetensors file. */
  static async open(dirOrFile: string): Promise<SafetensorsCheckpoint> {
    const abs = path.resolve(dirOrFile);
    const st = await fs.promises.stat(abs);
    if (st.isFile()) {
      const p = await readSafetensorsHeader(abs);
      return new SafetensorsCheckpoint(path.dirname(abs), p.tensors, p.metadata);
    }
    const indexPath = path.join(abs, 'model.safetensors.index.json');
    if (!fs.existsSync(indexPath)) {
      const single = path.join(abs, 'model.safetensors');
      if (!fs.existsSync(single))
        throw new SafetensorsError(`${abs}: neither model.safetensors.index.json nor model.safetensors found`);
      const p = await readSafetensorsHeader(single);
      return new SafetensorsCheckpoint(abs, p.tensors, p.metadata);
    }
    let index: { weight_map?: Record<string, unknown>; metadata?: Record<string, unknown> };
    try {
      index = JSON.parse(await fs.promises.readFile(indexPath, 'utf8')) as typeof index;
    } catch (e) {
      throw new SafetensorsError(`${indexPath}: not valid JSON (${(e as Error).message})`);
    }
    if (!index.weight_map || typeof index.weight_map !== 'object')
      throw new SafetensorsError(`${indexPath}: no weight_map`);
    const shardNames = new Set(Object.values(index.weight_map).map((n) => safeShardName(abs, n)));
    const tensors = new Map<string, TensorInfo>();
    const metadata: Record<string, string> = {};
    for (const shard of [...shardNames].sort()) {
      const p = await readSafetensorsHeader(path.join(abs, shard));
      Object.assign(metadata, p.metadata);
      for (const [name, info] of p.tensors) tensors.set(name, info);
    }
    for (const [name, shard] of Object.entries(index.weight_map)) {
      const t = tensors.get(name);
      if (!t) throw new SafetensorsError(`${indexPath}: tensor ${name} is not in ${String(shard)}`);
      if (path.basename(t.file) !== shard)
        throw new SafetensorsError(`${indexPath}: tensor ${name} found in ${t.file}, index says ${String(shard)}`);
    }
    for (const [k, v] of Object.entries(index.metadata ?? {})) metadata[k] = String(v);
    return new SafetensorsCheckpoint(abs, tensors, metadata);
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(`${this.dir}: no tensor named ${name}`);
    return t;
  }

  /** Reads the whole tensor as float32 (F32/F16/BF16/I8/U8 values converted). */
  async read(name: string): Promise<Float32Array> {
    const t = this.info(name);
    return this.readConverted(t, t.offset, t.byteLength / DTYPE_BYTES[t.dtype]);
  }

  /** Rows [start, start+count) along the first axis, as float32; reads only those bytes. */
  async readRows(name: string, start: number, count: number): Promise<Float32Array> {
    const t = this.info(name);
    if (t.shape.length === 0) throw new SafetensorsError(`${t.file}: ${name} is a scalar, it has no rows`);
    const rows = t.shape[0]!;
    if (
      !Number.isSafeInteger(start) ||
      !Number.isSafeInteger(count) ||
      start < 0 ||
      count < 0 ||
      start + count > rows
    ) {
      throw new SafetensorsError(
        `${t.file}: rows [${start}, ${start + count}) out of range for ${name} with ${rows} rows`,
      );
    }
    const rowElems = t.shape.slice(1).reduce((a, d) => a * d, 1);
    const eb = DTYPE_BYTES[t.dtype];
    return this.readConverted(t, t.offset + start * rowElems * eb, count * rowElems);
  }

  /** Raw bytes of a tensor (any dtype), optionally a sub-range. */
  async readRaw(name: string, byteStart = 0, byteLength?: number): Promise<Uint8Array> {
    const t = this.info(name);
    const len = byteLength ?? t.byteLength - byteStart;
    if (byteStart < 0 || len < 0 || byteStart + len > t.byteLength)
      throw new SafetensorsError(`${t.file}: byte range out of bounds for ${name}`);
    return readExactly(await this.handle(t.file), t.file, len, t.offset + byteStart);
  }

  async close(): Promise<void> {
    const hs = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(hs.map(async (h) => (await h).close()));
  }

  private handle(file: string): Promise<fs.promises.FileHandle> {
    let h = this.handles.get(file);
    if (!h) {
      h = fs.promises.open(file, 'r');
      this.handles.set(file, h);
    }
    return h;
  }

  private async readConverted(t: TensorInfo, position: number, elems: number): Promise<Float32Array> {
    const eb = DTYPE_BYTES[t.dtype];
    if (elems * 4 > MAX_READ_BYTES) {
      throw new SafetensorsError(
        `${t.file}: ${elems} values are too many for one float32 array: read it in row chunks with readRows()`,
      );
    }
    const fh = await this.handle(t.file);
    const out = new Float32Array(elems);
    if (t.dtype === 'F32') {
      await readExactly(fh, t.file, elems * 4, position, new Uint8Array(out.buffer));
      return out;
    }
    const chunkElems = Math.max(1, Math.floor(CHUNK_BYTES / eb));
    const buf = new Uint8Array(Math.min(elems, chunkElems) * eb);
    for (let done = 0; done < elems; done += chunkElems) {
      const n = Math.min(chunkElems, elems - done);
      const bytes = await readExactly(fh, t.file, n * eb, position + done * eb, buf.subarray(0, n * eb));
      convertInto(t.dtype, bytes, n, out, done, t.file);
    }
    return out;
  }
}

function convertInto(
  dtype: SafetensorsDtype,
  bytes: Uint8Array,
  n: number,
  out: Float32Array,
  at: number,
  file: string,
): void {
  switch (dtype) {
    case 'BF16':
      bf16ToF32(new Uint16Array(bytes.buffer, bytes.byteOffset, n), out, at);
      return;
    case 'F16':
      f16ToF32(new Uint16Array(bytes.buffer, bytes.byteOffset, n), out, at);
      return;
    case 'I8':
      out.set(new Int8Array(bytes.buffer, bytes.byteOffset, n), at);
      return;
    case 'U8':
    case 'BOOL':
      out.set(bytes.subarray(0, n), at);
      return;
    default:
      throw new SafetensorsError(`${file}: reading ${dtype} as float32 is not supported (use readRaw)`);
  }
}

export { writeSafetensors, SafetensorsWriter, writeShardedCheckpoint } from './safetensors-write.js';
export type { TensorToWrite, TensorSpec } from './safetensors-write.js';
