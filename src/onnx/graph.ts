/**
 * A small ONNX graph writer over `onnx-proto` (protobufjs). Weights go to ONE external-data file next to
 * the .onnx, page-aligned so ONNX Runtime can map them; only metadata stays in memory.
 *
 * Two ways to place external data:
 *  - streaming: `new GraphBuilder({ externalData: { path, alignment } })`: each external initializer's bytes
 *    are appended to that file when added (use this for full-size models);
 *  - deferred: no `externalData` option; external initializers are kept in memory and written by `save()`
 *    to `opts.externalDataFile` (fine for tests and small graphs).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import onnxProto from 'onnx-proto';
import {
  ExternalDataFile,
  type ExternalChunkWriter,
  type ExternalDataOptions,
  type ExternalRef,
} from './external-data.js';
import {
  type AttrInput,
  type Dim,
  type TensorData,
  type TensorType,
  DataType,
  checkTensorBytes,
  encodeAttr,
  tensorBytes,
  valueInfo,
} from './proto-util.js';

const { onnx } = onnxProto;

export { attrFloat, attrFloats, attrInt, attrInts, attrString, attrTensor } from './proto-util.js';
export type { Attr, AttrInput, Dim, TensorData, TensorType } from './proto-util.js';
export { ExternalDataFile, type ExternalChunkWriter, type ExternalRef } from './external-data.js';

export interface GraphBuilderOptions {
  name?: string;
  /** Stream external initializers into this file as they are added. It must be in the directory passed to save(). */
  externalData?: { path: string } & ExternalDataOptions;
  /** Initializers at least this many bytes go to external data by default (default 1024). */
  externalThreshold?: number;
  /** Opset imports; default '' 21 and 'com.microsoft' 1. */
  opsets?: Record<string, number>;
  /** ONNX IR version written in the model (default 10, matching opset 21). */
  irVersion?: number;
  producerName?: string;
}

export interface InitializerOptions {
  /** Force external (true) or embedded (false); default: by size threshold. */
  external?: boolean;
}

export interface SaveOptions {
  /** Deferred mode only: file name (in `dir`) for external initializers. */
  externalDataFile?: string;
  /** Deferred mode only: alignment of large tensors in that file (default 65536). */
  alignment?: number;
}

export interface SaveResult {
  modelPath: string;
  dataPath: string | null;
  modelBytes: number;
  dataBytes: number;
}

interface PendingExternal {
  proto: onnxProto.onnx.TensorProto;
  bytes: Uint8Array;
}

export class GraphBuilder {
  private readonly graph: onnxProto.onnx.GraphProto;
  private readonly used = new Set<string>();
  private readonly refs = new Map<string, ExternalRef>();
  private readonly pending: PendingExternal[] = [];
  private readonly metadata: Record<string, string> = {};
  private readonly data: ExternalDataFile | null;
  private readonly threshold: number;
  private readonly opsets: Record<string, number>;
  private readonly irVersion: number;
  private readonly producerName: string;
  private nodeCount = 0;

  constructor(opts: GraphBuilderOptions = {}) {
    this.graph = new onnx.GraphProto({ name: opts.name ?? 'graph' });
    this.data = opts.externalData ? new ExternalDataFile(opts.externalData.path, opts.externalData) : null;
    this.threshold = opts.externalThreshold ?? 1024;
    this.opsets = opts.opsets ?? { '': 21, 'com.microsoft': 1 };
    this.irVersion = opts.irVersion ?? 10;
    this.producerName = opts.producerName ?? 'perch';
  }

  /** Returns `prefix` if unused, else `prefix_1`, `prefix_2`, ...; reserves the result. */
  uniqueName(prefix: string): string {
    let name = prefix;
    for (let i = 1; this.used.has(name); i++) name = `${prefix}_${i}`;
    this.used.add(name);
    return name;
  }

  input(name: string, type: TensorType, dims: Dim[]): string {
    this.claim(name);
    this.graph.input.push(valueInfo(name, type, dims));
    return name;
  }

  /**
   * Renames a node's output everywhere it is used, so it can be a graph output without an Identity copy
   * (a node ORT runs, and an output buffer it copies, every run).
   */
  renameNodeOutput(from: string, to: string): void {
    const producer = this.graph.node.find((n) => n.output?.includes(from));
    if (!producer) throw new Error(`renameNodeOutput: no node produces ${from}`);
    this.claim(to);
    for (const n of this.graph.node) {
      n.output = (n.output ?? []).map((o) => (o === from ? to : o));
      n.input = (n.input ?? []).map((i) => (i === from ? to : i));
    }
  }

  /** Declares a graph output (the name must be produced by a node or be an input/initializer). */
  output(name: string, type: TensorType, dims?: Dim[]): string {
    this.graph.output.push(valueInfo(name, type, dims));
    return name;
  }

  /**
   * Adds a constant tensor. `data` holds the raw little-endian values (Uint16Array for float16/bfloat16,
   * Uint8Array for bool and packed quantised bytes). Returns the (unique) name actually used.
   */
  initializer(name: string, type: TensorType, dims: number[], data: TensorData, opts: InitializerOptions = {}): string {
    const bytes = tensorBytes(data);
    checkTensorBytes(name, type, dims, bytes.byteLength);
    const unique = this.uniqueName(name);
    const external = opts.external ?? bytes.byteLength >= this.threshold;
    const proto = new onnx.TensorProto({ name: unique, dataType: DataType[type], dims });
    if (!external) {
      // Copy: the caller may reuse its buffer after this call.
      proto.rawData = bytes.slice();
      this.graph.initializer.push(proto);
    } else if (this.data) {
      this.setExternal(proto, this.data.append(bytes));
    } else {
      this.pending.push({ proto, bytes: bytes.slice() });
      this.graph.initializer.push(proto);
    }
    return unique;
  }

  /**
   * Adds an initializer whose bytes are an already-written range of the external-data file (streaming
   * mode): e.g. the tied embedding table used both as GatherBlockQuantized data and as MatMulNBits B.
   */
  initializerFromRef(name: string, type: TensorType, dims: number[], ref: ExternalRef): string {
    if (!this.data)
      throw new Error('initializerFromRef needs a streaming external-data file (GraphBuilder externalData option)');
    checkTensorBytes(name, type, dims, ref.length);
    const unique = this.uniqueName(name);
    this.setExternal(new onnx.TensorProto({ name: unique, dataType: DataType[type], dims }), ref);
    return unique;
  }

  /** The external byte range of a streamed initializer, to share it with another initializer. */
  externalRef(name: string): ExternalRef | undefined {
    return this.refs.get(name);
  }

  /** Raw access to the streaming external-data file (append bytes now, reference them later). */
  get externalData(): ExternalDataFile {
    if (!this.data) throw new Error('GraphBuilder has no streaming external-data file');
    return this.data;
  }

  /** Starts writing one large tensor in chunks; finish() gives the ref for initializerFromRef(). */
  beginExternal(expectedLength: number): ExternalChunkWriter {
    return this.externalData.begin(expectedLength);
  }

  /**
   * Adds a node. `outputs` is a count (names are generated) or explicit names; an input name '' marks an
   * omitted optional input. Plain numbers in `attrs` are INT (non-integers throw: use attrFloat).
   * Returns the output names.
   */
  node(
    opType: string,
    inputs: string[],
    outputs: number | string[] = 1,
    attrs: Record<string, AttrInput> = {},
    domain = '',
    name?: string,
  ): string[] {
    const nodeName = this.uniqueName(name ?? `${opType}_${this.nodeCount}`);
    this.nodeCount++;
    const outNames =
      typeof outputs === 'number'
        ? Array.from({ length: outputs }, (_, i) => this.uniqueName(`${nodeName}/out${i}`))
        : outputs.map((o) => (o === '' ? o : this.claim(o)));
    if (domain !== '' && !(domain in this.opsets))
      throw new Error(`node ${nodeName}: domain '${domain}' has no opset import`);
    const attribute = Object.entries(attrs).map(([k, v]) => encodeAttr(k, v, nodeName));
    this.graph.node.push(
      new onnx.NodeProto({ name: nodeName, opType, domain, input: inputs, output: outNames, attribute }),
    );
    return outNames;
  }

  /** Convenience for single-output nodes. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrInput> = {}, domain = ''): string {
    return this.node(opType, inputs, 1, attrs, domain)[0]!;
  }

  /** Model-level metadata_props (e.g. format version, quantisation policy). */
  setMetadata(key: string, value: string): void {
    this.metadata[key] = value;
  }

  /** A small embedded int64 constant (shapes, axes); returns its unique name. */
  constInt64(prefix: string, values: readonly number[], dims: number[] = [values.length]): string {
    return this.initializer(prefix, 'int64', dims, BigInt64Array.from(values.map((v) => BigInt(v))), {
      external: false,
    });
  }

  /** A small embedded float32 constant; returns its unique name. */
  constFloat32(prefix: string, values: readonly number[], dims: number[] = [values.length]): string {
    return this.initializer(prefix, 'float32', dims, Float32Array.from(values), { external: false });
  }

  /** The encoded model, for graphs without external data (load with InferenceSession.create(bytes)). */
  toBytes(): Uint8Array {
    if (this.data || this.pending.length > 0) throw new Error('graph has external data: use save()');
    return this.encode();
  }

  private encode(): Uint8Array {
    const model = new onnx.ModelProto({
      irVersion: this.irVersion,
      producerName: this.producerName,
      graph: this.graph,
      opsetImport: Object.entries(this.opsets).map(
        ([domain, version]) => new onnx.OperatorSetIdProto({ domain, version }),
      ),
      metadataProps: Object.entries(this.metadata).map(
        ([key, value]) => new onnx.StringStringEntryProto({ key, value }),
      ),
    });
    return onnx.ModelProto.encode(model).finish();
  }

  /**
   * Writes `dir/onnxFileName` and closes the external-data file. In streaming mode the data file must
   * already be in `dir` (ORT resolves `location` relative to the model's directory).
   */
  async save(dir: string, onnxFileName: string, opts: SaveOptions = {}): Promise<SaveResult> {
    const absDir = path.resolve(dir);
    await fs.promises.mkdir(absDir, { recursive: true });
    let file = this.data;
    if (file) {
      if (path.dirname(file.path) !== absDir) throw new Error(`external data ${file.path} is not in ${absDir}`);
    } else if (this.pending.length > 0) {
      if (!opts.externalDataFile) throw new Error('save(): external initializers need opts.externalDataFile');
      file = new ExternalDataFile(path.join(absDir, opts.externalDataFile), { alignment: opts.alignment });
      for (const p of this.pending) this.setExternal(p.proto, file.append(p.bytes), false);
      this.pending.length = 0;
    }
    if (file) {
      const location = path.basename(file.path);
      for (const t of this.graph.initializer) {
        for (const e of t.externalData ?? []) if (e.key === 'location') e.value = location;
      }
      file.close();
    }
    const bytes = this.encode();
    const modelPath = path.join(absDir, onnxFileName);
    await fs.promises.writeFile(modelPath, bytes);
    return { modelPath, dataPath: file?.path ?? null, modelBytes: bytes.byteLength, dataBytes: file?.byteLength ?? 0 };
  }

  /** Closes the external-data file without writing a model (error paths). */
  discard(): void {
    if (this.data && !this.data.closed) this.data.close(true);
  }

  private setExternal(proto: onnxProto.onnx.TensorProto, ref: ExternalRef, push = true): void {
    proto.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
    proto.rawData = new Uint8Array(0);
    // 'location' is filled in at save() time, once the file name relative to the model is known.
    proto.externalData = [
      new onnx.StringStringEntryProto({ key: 'location', value: '' }),
      new onnx.StringStringEntryProto({ key: 'offset', value: String(ref.offset) }),
      new onnx.StringStringEntryProto({ key: 'length', value: String(ref.length) }),
    ];
    this.refs.set(proto.name, ref);
    if (push) this.graph.initializer.push(proto);
  }

  private claim(name: string): string {
    if (this.used.has(name)) throw new Error(`name '${name}' is already used in graph ${this.graph.name}`);
    this.used.add(name);
    return name;
  }
}
