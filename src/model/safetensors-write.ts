/**
 * Safetensors writing. The header needs every tensor's offsets up front, which shapes give us, so big
 * tensors can be streamed chunk by chunk after it (SafetensorsWriter); writeSafetensors() is the small,
 * all-in-memory convenience built on it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { f32ToBf16, f32ToF16 } from './float-convert.js';
import { DTYPE_BYTES, type SafetensorsDtype } from './safetensors.js';

export interface TensorSpec {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
}

/**
 * A tensor with its values: raw bytes of the stored dtype (any typed array), or a Float32Array that is
 * converted when dtype is BF16/F16.
 */
export interface TensorToWrite extends TensorSpec {
  data: Float32Array | Uint16Array | Int8Array | Uint8Array | Int32Array | BigInt64Array | Float64Array | Int16Array;
}

function byteSize(s: TensorSpec): number {
  return s.shape.reduce((a, d) => a * d, 1) * DTYPE_BYTES[s.dtype];
}

/** The stored bytes of a tensor, converting float32 input to BF16/F16 when needed. */
export function encodeTensor(t: TensorToWrite): Uint8Array {
  let data: TensorToWrite['data'] = t.data;
  if (data instanceof Float32Array && t.dtype === 'BF16') data = f32ToBf16(data);
  else if (data instanceof Float32Array && t.dtype === 'F16') data = f32ToF16(data);
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (bytes.byteLength !== byteSize(t)) {
    throw new Error(
      `tensor ${t.name}: ${t.dtype}[${t.shape.join(',')}] needs ${byteSize(t)} bytes, got ${bytes.byteLength}`,
    );
  }
  return bytes;
}

/** Streams tensors into one file in the order of `specs`; each tensor's bytes may come in several chunks. */
export class SafetensorsWriter {
  private fd: number | null;
  private pos: number;
  private readonly ends: number[] = [];
  private current = 0;

  private constructor(
    readonly file: string,
    private readonly specs: readonly TensorSpec[],
    fd: number,
    dataStart: number,
  ) {
    this.fd = fd;
    this.pos = dataStart;
    let off = dataStart;
    for (const s of specs) this.ends.push((off += byteSize(s)));
    this.skipFull();
  }

  static create(file: string, specs: readonly TensorSpec[], metadata?: Record<string, string>): SafetensorsWriter {
    const header: Record<string, unknown> = {};
    if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
    const seen = new Set<string>();
    let off = 0;
    for (const s of specs) {
      if (seen.has(s.name) || s.name === '__metadata__')
        throw new Error(`${file}: duplicate or reserved tensor name ${s.name}`);
      seen.add(s.name);
      const size = byteSize(s);
      header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [off, off + size] };
      off += size;
    }
    let json = JSON.stringify(header);
    // Pad with spaces so the data starts 8-byte aligned, as the reference implementation does.
    json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
    const headerBytes = Buffer.from(json, 'utf8');
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(headerBytes.byteLength));
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    const fd = fs.openSync(file, 'w');
    fs.writeSync(fd, prefix, 0, 8, 0);
    fs.writeSync(fd, headerBytes, 0, headerBytes.byteLength, 8);
    return new SafetensorsWriter(path.resolve(file), specs, fd, 8 + headerBytes.byteLength);
  }

  /** Appends bytes to the current tensor (moves to the next once it is full). */
  writeChunk(bytes: Uint8Array): void {
    if (this.fd === null) throw new Error(`${this.file}: writer is closed`);
    if (this.current >= this.specs.length || this.pos + bytes.byteLength > this.ends[this.current]!) {
      const name = this.specs[this.current]?.name ?? '(none left)';
      throw new Error(`${this.file}: chunk of ${bytes.byteLength} bytes overflows tensor ${name}`);
    }
    let off = 0;
    while (off < bytes.byteLength) off += fs.writeSync(this.fd, bytes, off, bytes.byteLength - off, this.pos + off);
    this.pos += bytes.byteLength;
    this.skipFull();
  }

  /** Moves past tensors that are complete (including zero-size ones). */
  private skipFull(): void {
    while (this.current < this.specs.length && this.pos === this.ends[this.current]) this.current++;
  }

  /** Writes a whole tensor (the next in order), converting float32 to BF16/F16 as its spec says. */
  writeTensor(t: TensorToWrite): void {
    const bytes = encodeTensor(t);
    // Zero-size tensors take no bytes: the cursor has already moved past them.
    if (bytes.byteLength === 0 && this.specs.some((s) => s.name === t.name)) return;
    const spec = this.specs[this.current];
    if (!spec || spec.name !== t.name)
      throw new Error(`${this.file}: expected tensor ${spec?.name ?? '(none)'}, got ${t.name}`);
    this.writeChunk(bytes);
  }

  /** Closes the file; throws if any tensor is incomplete. */
  close(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    fs.closeSync(fd);
    if (this.current < this.specs.length)
      throw new Error(`${this.file}: closed before tensor ${this.specs[this.current]!.name} was complete`);
  }
}

export function writeSafetensors(
  file: string,
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): void {
  const w = SafetensorsWriter.create(file, tensors, metadata);
  try {
    for (const t of tensors) w.writeTensor(t);
  } finally {
    w.close();
  }
}

/**
 * Splits tensors into shards of at most `maxShardBytes` (a larger tensor gets a shard of its own), named
 * model-0000i-of-0000n.safetensors, and writes model.safetensors.index.json. Returns the shard file names.
 */
export function writeShardedCheckpoint(
  dir: string,
  tensors: readonly TensorToWrite[],
  maxShardBytes: number,
): string[] {
  const groups: TensorToWrite[][] = [];
  let size = 0;
  for (const t of tensors) {
    const b = byteSize(t);
    if (groups.length === 0 || size + b > maxShardBytes) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1]!.push(t);
    size += b;
  }
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = groups.map((_, i) => `model-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  let total = 0;
  groups.forEach((g, i) => {
    writeSafetensors(path.join(dir, names[i]!), g, { format: 'pt' });
    for (const t of g) {
      weightMap[t.name] = names[i]!;
      total += byteSize(t);
    }
  });
  fs.writeFileSync(
    path.join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
  return names;
}
