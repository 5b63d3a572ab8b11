/**
 * The per-layer-embedding (PLE) file: the [vocab, num_layers * ple_dim] table in its own row-addressable,
 * block-quantised file, so the engine reads one row (one token's per-layer vectors) with one positional read
 * instead of keeping ~9.4 GB of float32 (or ~1.3 GB quantised) resident.
 *
 * Layout (all little-endian):
 *   [0, HEADER_BYTES)       header (see PleHeader), zero padded
 *   [dataOffset, ...)       rows * rowStride bytes; row r starts at dataOffset + r * rowStride
 * One row:
 *   packed values  ceil(cols * bits / 8) bytes, value i at bit (i * bits) of the row, low bits first
 *   scales         nBlocks f16 (nBlocks = ceil(cols / blockSize))
 *   zero points    nBlocks u8
 *   padding        to rowStride (a multiple of ROW_ALIGN)
 * value = (q - zeroPoint) * scale, per block (scale type 1: asymmetric, zero exactly representable).
 */
import { f16BitsToF32, f32ToF16Bits } from './f16.js';

export const PLE_MAGIC = 'PERCHPLE';
export const PLE_VERSION = 1;
/** Header region size: data starts page-aligned so the rows could also be memory-mapped. */
export const PLE_DATA_OFFSET = 4096;
const HEADER_USED_BYTES = 64;
const ROW_ALIGN = 16;

/** Scale encodings; only one so far. */
export const SCALE_F16_ZP_U8 = 1;

export type PleBits = 2 | 4 | 8;

export interface PleLayout {
  rows: number;
  cols: number;
  bits: PleBits;
  blockSize: number;
  /** Decoder layers and per-layer width (cols = numLayers * layerDim); for consistency checks only. */
  numLayers: number;
  layerDim: number;
}

export interface PleHeader extends PleLayout {
  version: number;
  scaleType: number;
  rowStride: number;
  dataOffset: number;
}

/** An error that names the file it is about, so verify/load messages say which file is wrong. */
export class PleFileError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'PleFileError';
  }
}

export function blocksPerRow(cols: number, blockSize: number): number {
  return Math.ceil(cols / blockSize);
}

export function packedBytesPerRow(cols: number, bits: number): number {
  return Math.ceil((cols * bits) / 8);
}

export function rowStrideFor(cols: number, bits: number, blockSize: number): number {
  const nb = blocksPerRow(cols, blockSize);
  const raw = packedBytesPerRow(cols, bits) + nb * 2 + nb;
  return Math.ceil(raw / ROW_ALIGN) * ROW_ALIGN;
}

export function validateLayout(l: PleLayout): void {
  const int = (n: number) => Number.isInteger(n) && n > 0;
  if (!int(l.rows) || !int(l.cols))
    throw new Error(`PLE table shape must be positive integers, got [${l.rows}, ${l.cols}]`);
  if (l.bits !== 2 && l.bits !== 4 && l.bits !== 8)
    throw new Error(`PLE bits must be 2, 4 or 8, got ${String(l.bits)}`);
  if (!int(l.blockSize) || l.blockSize % 8 !== 0)
    throw new Error(`PLE block size must be a positive multiple of 8, got ${l.blockSize}`);
  if (l.numLayers * l.layerDim !== l.cols)
    throw new Error(`PLE cols ${l.cols} != num_layers ${l.numLayers} x layer dim ${l.layerDim}`);
}

export function makeHeader(l: PleLayout): PleHeader {
  validateLayout(l);
  return {
    ...l,
    version: PLE_VERSION,
    scaleType: SCALE_F16_ZP_U8,
    rowStride: rowStrideFor(l.cols, l.bits, l.blockSize),
    dataOffset: PLE_DATA_OFFSET,
  };
}

export function expectedFileBytes(h: PleHeader): number {
  return h.dataOffset + h.rows * h.rowStride;
}

export function encodeHeader(h: PleHeader): Buffer {
  const b = Buffer.alloc(h.dataOffset);
  b.write(PLE_MAGIC, 0, 'latin1');
  b.writeUInt32LE(h.version, 8);
  b.writeUInt32LE(HEADER_USED_BYTES, 12);
  b.writeUInt32LE(h.rows, 16);
  b.writeUInt32LE(h.cols, 20);
  b.writeUInt32LE(h.bits, 24);
  b.writeUInt32LE(h.blockSize, 28);
  b.writeUInt32LE(h.scaleType, 32);
  b.writeUInt32LE(h.rowStride, 36);
  b.writeBigUInt64LE(BigInt(h.dataOffset), 40);
  b.writeUInt32LE(h.numLayers, 48);
  b.writeUInt32LE(h.layerDim, 52);
  return b;
}

/** Parses and checks a header; `file` only names the file in errors. */
export function decodeHeader(buf: Buffer, file: string): PleHeader {
  if (buf.length < HEADER_USED_BYTES) throw new PleFileError(file, `too short for a PLE header (${buf.length} bytes)`);
  if (buf.toString('latin1', 0, 8) !== PLE_MAGIC) throw new PleFileError(file, 'not a PLE file (bad magic)');
  const version = buf.readUInt32LE(8);
  if (version !== PLE_VERSION)
    throw new PleFileError(file, `unsupported PLE format version ${version} (this Perch reads ${PLE_VERSION})`);
  const h: PleHeader = {
    version,
    rows: buf.readUInt32LE(16),
    cols: buf.readUInt32LE(20),
    bits: buf.readUInt32LE(24) as PleBits,
    blockSize: buf.readUInt32LE(28),
    scaleType: buf.readUInt32LE(32),
    rowStride: buf.readUInt32LE(36),
    dataOffset: Number(buf.readBigUInt64LE(40)),
    numLayers: buf.readUInt32LE(48),
    layerDim: buf.readUInt32LE(52),
  };
  try {
    validateLayout(h);
  } catch (e) {
    throw new PleFileError(file, `bad header: ${(e as Error).message}`);
  }
  if (h.scaleType !== SCALE_F16_ZP_U8) throw new PleFileError(file, `unknown scale type ${h.scaleType}`);
  if (h.rowStride !== rowStrideFor(h.cols, h.bits, h.blockSize))
    throw new PleFileError(file, `bad header: row stride ${h.rowStride} does not match the layout`);
  if (h.dataOffset < HEADER_USED_BYTES) throw new PleFileError(file, `bad header: data offset ${h.dataOffset}`);
  return h;
}

/**
 * Quantises `count` rows of `values` (row-major [count, cols]) into `out` (count * rowStride bytes, starting
 * at byte `outOffset`). RTN with the block range widened to include zero, so zero stays exact.
 */
export function quantiseRows(
  h: PleLayout & { rowStride: number },
  values: Float32Array,
  count: number,
  out: Uint8Array,
  outOffset = 0,
): void {
  const { cols, bits, blockSize } = h;
  const qmax = (1 << bits) - 1;
  const nb = blocksPerRow(cols, blockSize);
  const packed = packedBytesPerRow(cols, bits);
  const perByte = 8 / bits;
  for (let r = 0; r < count; r++) {
    const rowIn = r * cols;
    const rowOut = outOffset + r * h.rowStride;
    out.fill(0, rowOut, rowOut + h.rowStride);
    for (let b = 0; b < nb; b++) {
      const start = b * blockSize;
      const end = Math.min(cols, start + blockSize);
      let lo = 0;
      let hi = 0;
      for (let i = start; i < end; i++) {
        const v = values[rowIn + i]!;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const scaleBits = f32ToF16Bits((hi - lo) / qmax);
      // Quantise with the scale as stored, so the decoder sees exactly the scale the rounding used.
      const scale = f16BitsToF32(scaleBits);
      const zp = scale > 0 ? Math.min(qmax, Math.max(0, Math.round(-lo / scale))) : 0;
      const inv = scale > 0 ? 1 / scale : 0;
      let byte = rowOut + (start * bits) / 8;
      for (let i = start; i < end; byte++) {
        let packedByte = 0;
        for (let k = 0; k < perByte && i < end; k++, i++) {
          let q = Math.round(values[rowIn + i]! * inv) + zp;
          q = q < 0 ? 0 : q > qmax ? qmax : q;
          packedByte |= q << (k * bits);
        }
        out[byte] = packedByte;
      }
      const so = rowOut + packed + b * 2;
      out[so] = scaleBits & 0xff;
      out[so + 1] = scaleBits >>> 8;
      out[rowOut + packed + nb * 2 + b] = zp;
    }
  }
}

/** Dequantises one stored row (bytes at `src[srcOffset..]`) into `dst[dstOffset..dstOffset+cols)`. */
export function dequantiseRow(
  h: PleLayout,
  src: Uint8Array,
  srcOffset: number,
  dst: Float32Array,
  dstOffset: number,
): void {
  const { cols, bits, blockSize } = h;
  const nb = blocksPerRow(cols, blockSize);
  const packed = packedBytesPerRow(cols, bits);
  const mask = (1 << bits) - 1;
  const perByte = 8 / bits;
  for (let b = 0; b < nb; b++) {
    const so = srcOffset + packed + b * 2;
    const scale = f16BitsToF32(src[so]! | (src[so + 1]! << 8));
    const zp = src[srcOffset + packed + nb * 2 + b]!;
    const start = b * blockSize;
    const end = Math.min(cols, start + blockSize);
    // Blocks start on a byte boundary (blockSize is a multiple of 8), so walk bytes, not values.
    let byte = srcOffset + (start * bits) / 8;
    let o = dstOffset + start;
    const oEnd = dstOffset + end;
    while (o < oEnd) {
      let v = src[byte++]!;
      for (let k = 0; k < perByte && o < oEnd; k++) {
        dst[o++] = ((v & mask) - zp) * scale;
        v >>>= bits;
      }
    }
  }
}
