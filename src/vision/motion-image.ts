/**
 * Pixel operations of the motion detector on small single-channel images. Plain loops over typed
 * arrays the caller owns, so a frame allocates nothing.
 */

/** Separable box blur of `src` into `dst` (`tmp` is scratch); radius 0 copies. */
export function boxBlur(src: Uint8Array, dst: Float32Array, tmp: Float32Array, w: number, h: number, r: number): void {
  if (r <= 0) {
    for (let i = 0; i < src.length; i++) dst[i] = src[i];
    return;
  }
  // Rows: window clipped at the edges, averaged over the pixels actually inside.
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let x = 0; x < w; x++) {
      const a = Math.max(0, x - r);
      const b = Math.min(w - 1, x + r);
      let s = 0;
      for (let k = a; k <= b; k++) s += src[row + k];
      tmp[row + x] = s / (b - a + 1);
    }
  }
  for (let y = 0; y < h; y++) {
    const a = Math.max(0, y - r);
    const b = Math.min(h - 1, y + r);
    const n = b - a + 1;
    for (let x = 0; x < w; x++) {
      let s = 0;
      for (let k = a; k <= b; k++) s += tmp[k * w + x];
      dst[y * w + x] = s / n;
    }
  }
}

/** Binary dilation with a (2r+1)^2 square, in place on `mask` (`tmp` is scratch). */
export function dilate(mask: Uint8Array, tmp: Uint8Array, w: number, h: number, r: number): void {
  if (r <= 0) return;
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let x = 0; x < w; x++) {
      let v = 0;
      const b = Math.min(w - 1, x + r);
      for (let k = Math.max(0, x - r); k <= b && !v; k++) v = mask[row + k];
      tmp[row + x] = v;
    }
  }
  for (let y = 0; y < h; y++) {
    const b = Math.min(h - 1, y + r);
    for (let x = 0; x < w; x++) {
      let v = 0;
      for (let k = Math.max(0, y - r); k <= b && !v; k++) v = tmp[k * w + x];
      mask[y * w + x] = v;
    }
  }
}

export interface Blob {
  label: number;
  /** Pixel bounds, inclusive. */
  x0: number;
  y0: number;
  x1: number;
  y1: number;
  /** Pixels in the blob. */
  area: number;
}

/**
 * 8-connected components of `mask` (non-zero pixels). Writes 1-based labels into `labels` (0: none)
 * and returns every blob; `stack` must hold w*h entries.
 */
export function components(mask: Uint8Array, labels: Int32Array, stack: Int32Array, w: number, h: number): Blob[] {
  labels.fill(0);
  const blobs: Blob[] = [];
  for (let start = 0; start < w * h; start++) {
    if (!mask[start] || labels[start]) continue;
    const label = blobs.length + 1;
    const blob: Blob = { label, x0: w, y0: h, x1: -1, y1: -1, area: 0 };
    let top = 0;
    stack[top++] = start;
    labels[start] = label;
    while (top > 0) {
      const i = stack[--top];
      const x = i % w;
      const y = (i - x) / w;
      blob.area++;
      if (x < blob.x0) blob.x0 = x;
      if (x > blob.x1) blob.x1 = x;
      if (y < blob.y0) blob.y0 = y;
      if (y > blob.y1) blob.y1 = y;
      for (let dy = -1; dy <= 1; dy++) {
        const ny = y + dy;
        if (ny < 0 || ny >= h) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx;
          if (nx < 0 || nx >= w) continue;
          const j = ny * w + nx;
          if (mask[j] && !labels[j]) {
            labels[j] = label;
            stack[top++] = j;
          }
        }
      }
    }
    blobs.push(blob);
  }
  return blobs;
}

/** Even-odd point-in-polygon test; polygon corners in the same units as the point. */
export function insidePolygon(px: number, py: number, poly: readonly (readonly [number, number])[]): boolean {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i];
    const [xj, yj] = poly[j];
    if (yi > py !== yj > py && px < ((xj - xi) * (py - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/** Rasterises normalised (0..1) polygons at pixel centres: 1 where any polygon covers the pixel. */
export function rasterise(
  polys: readonly (readonly (readonly [number, number])[])[],
  w: number,
  h: number,
): Uint8Array {
  const out = new Uint8Array(w * h);
  for (const poly of polys) {
    for (let y = 0; y < h; y++) {
      const ny = (y + 0.5) / h;
      for (let x = 0; x < w; x++) {
        if (!out[y * w + x] && insidePolygon((x + 0.5) / w, ny, poly)) out[y * w + x] = 1;
      }
    }
  }
  return out;
}
