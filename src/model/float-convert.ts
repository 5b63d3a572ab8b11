/** bfloat16 / float16 <-> float32 conversion on raw little-endian uint16 words. */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

let f16Table: Float32Array | null = null;

/** All 65536 half-precision values as float32 (256 KiB, built once on first use). */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const man = h & 0x3ff;
    if (exp === 0) t[h] = sign * man * 2 ** -24;
    else if (exp === 31) t[h] = man ? NaN : sign * Infinity;
    else t[h] = sign * (1 + man / 1024) * 2 ** (exp - 15);
  }
  f16Table = t;
  return t;
}

export function bf16ToF32(
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
  dstOffset = 0,
): Float32Array {
  const out = new Uint32Array(dst.buffer, dst.byteOffset + dstOffset * 4, src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  return dst;
}

export function f16ToF32(
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
  dstOffset = 0,
): Float32Array {
  const t = halfTable();
  for (let i = 0; i < src.length; i++) dst[dstOffset + i] = t[src[i]!]!;
  return dst;
}

/** float32 → bfloat16, round to nearest even (NaN stays NaN). */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const u = bits[i]!;
    if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) out[i] = (u >>> 16) | 0x40;
    else out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** float32 → IEEE half, round to nearest even, overflow to ±Inf. */
export function f32ToF16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f32[0] = src[i]!;
    const u = u32[0]!;
    const sign = (u >>> 16) & 0x8000;
    const exp = (u >>> 23) & 0xff;
    const man = u & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (man ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
    } else if (e <= 0) {
      // Subnormal half (or zero): shift the full mantissa, round to nearest even.
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      const m = man | 0x800000;
      const shift = 14 - e;
      let h = m >>> shift;
      const rem = m & ((1 << shift) - 1);
      const half = 1 << (shift - 1);
      if (rem > half || (rem === half && h & 1)) h++;
      out[i] = sign | h;
    } else {
      let h = (e << 10) | (man >>> 13);
      const rem = man & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // may carry into the exponent: still correct
      out[i] = sign | h;
    }
  }
  return out;
}
