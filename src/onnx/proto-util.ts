/** Type, attribute and tensor helpers shared by the graph writer. */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

export type TensorType =
  | 'float32'
  | 'float16'
  | 'bfloat16'
  | 'float64'
  | 'int64'
  | 'int32'
  | 'int16'
  | 'int8'
  | 'uint64'
  | 'uint32'
  | 'uint16'
  | 'uint8'
  | 'bool';

/** A dimension: a number, or a symbolic name such as 'batch'. */
export type Dim = number | string;

export type TensorData =
  | Float32Array
  | Float64Array
  | Uint16Array
  | Int16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array
  | Int8Array
  | Uint8Array;

const DT = onnx.TensorProto.DataType;

export const DataType: Record<TensorType, onnxProto.onnx.TensorProto.DataType> = {
  float32: DT.FLOAT,
  float16: DT.FLOAT16,
  bfloat16: DT.BFLOAT16,
  float64: DT.DOUBLE,
  int64: DT.INT64,
  int32: DT.INT32,
  int16: DT.INT16,
  int8: DT.INT8,
  uint64: DT.UINT64,
  uint32: DT.UINT32,
  uint16: DT.UINT16,
  uint8: DT.UINT8,
  bool: DT.BOOL,
};

export const ElementBytes: Record<TensorType, number> = {
  float32: 4,
  float16: 2,
  bfloat16: 2,
  float64: 8,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint64: 8,
  uint32: 4,
  uint16: 2,
  uint8: 1,
  bool: 1,
};

/** A typed attribute value. Floats need this wrapper: JS cannot tell 2.0 from 2. */
export type Attr =
  | { readonly kind: 'float'; readonly value: number }
  | { readonly kind: 'floats'; readonly value: readonly number[] }
  | { readonly kind: 'int'; readonly value: number }
  | { readonly kind: 'ints'; readonly value: readonly number[] }
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'tensor'; readonly type: TensorType; readonly dims: readonly number[]; readonly data: TensorData };

/** Plain number → INT (must be an integer), number[] → INTS, string → STRING; anything else via attr*(). */
export type AttrInput = Attr | number | readonly number[] | string;

export const attrFloat = (value: number): Attr => ({ kind: 'float', value });
export const attrFloats = (value: readonly number[]): Attr => ({ kind: 'floats', value });
export const attrInt = (value: number): Attr => ({ kind: 'int', value });
export const attrInts = (value: readonly number[]): Attr => ({ kind: 'ints', value });
export const attrString = (value: string): Attr => ({ kind: 'string', value });
export const attrTensor = (type: TensorType, dims: readonly number[], data: TensorData): Attr => ({
  kind: 'tensor',
  type,
  dims,
  data,
});

function checkInt(v: number, where: string): number {
  if (!Number.isSafeInteger(v)) throw new Error(`${where}: ${v} is not an integer (use attrFloat for floats)`);
  return v;
}

export function encodeAttr(name: string, input: AttrInput, nodeName: string): onnxProto.onnx.AttributeProto {
  const where = `node ${nodeName} attribute ${name}`;
  const a: Attr =
    typeof input === 'number'
      ? attrInt(input)
      : typeof input === 'string'
        ? attrString(input)
        : Array.isArray(input)
          ? attrInts(input as readonly number[])
          : (input as Attr);
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'float':
      return new onnx.AttributeProto({ name, type: T.FLOAT, f: a.value });
    case 'floats':
      return new onnx.AttributeProto({ name, type: T.FLOATS, floats: [...a.value] });
    case 'int':
      return new onnx.AttributeProto({ name, type: T.INT, i: checkInt(a.value, where) });
    case 'ints':
      return new onnx.AttributeProto({ name, type: T.INTS, ints: a.value.map((v) => checkInt(v, where)) });
    case 'string':
      return new onnx.AttributeProto({ name, type: T.STRING, s: new TextEncoder().encode(a.value) });
    case 'tensor': {
      const bytes = tensorBytes(a.data);
      checkTensorBytes(where, a.type, a.dims, bytes.byteLength);
      const t = new onnx.TensorProto({ name, dataType: DataType[a.type], dims: [...a.dims], rawData: bytes.slice() });
      return new onnx.AttributeProto({ name, type: T.TENSOR, t });
    }
  }
}

/** A little-endian byte view of a typed array (no copy). */
export function tensorBytes(data: TensorData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

export function checkTensorBytes(name: string, type: TensorType, dims: readonly number[], byteLength: number): void {
  let count = 1;
  for (const d of dims) {
    if (!Number.isSafeInteger(d) || d < 0) throw new Error(`${name}: bad dimension ${d}`);
    count *= d;
  }
  const want = count * ElementBytes[type];
  if (want !== byteLength)
    throw new Error(`${name}: ${type}[${dims.join(',')}] needs ${want} bytes, got ${byteLength}`);
}

export function valueInfo(name: string, type: TensorType, dims?: readonly Dim[]): onnxProto.onnx.ValueInfoProto {
  const shape = dims
    ? new onnx.TensorShapeProto({
        dim: dims.map((d) =>
          typeof d === 'number'
            ? new onnx.TensorShapeProto.Dimension({ dimValue: d })
            : new onnx.TensorShapeProto.Dimension({ dimParam: d }),
        ),
      })
    : undefined;
  const tensorType = new onnx.TypeProto.Tensor({ elemType: DataType[type], ...(shape ? { shape } : {}) });
  return new onnx.ValueInfoProto({ name, type: new onnx.TypeProto({ tensorType }) });
}
