import { describe, expect, it } from 'vitest';
import sharp from 'sharp';
import {
  ImagePreprocessError,
  SOFT_TOKEN_BUDGETS,
  preprocessImage,
  preprocessRgb,
  targetSize,
} from '../src/vision/preprocess.js';
import { axisWeights, resizeBicubicAA } from '../src/vision/resample.js';

const f255 = (v: number): number => Math.fround(v * Math.fround(1 / 255));

/** The documented rule, written independently: largest multiples of 48 under the ideal scaled size. */
function expectedSize(h: number, w: number, budget: number): [number, number] {
  const maxPatches = budget * 9;
  const scale = Math.sqrt((maxPatches * 256) / (h * w));
  let th = 0;
  while (th + 48 <= scale * h) th += 48;
  let tw = 0;
  while (tw + 48 <= scale * w) tw += 48;
  const cap = (maxPatches / 9) * 48;
  if (th === 0) return [48, Math.min(Math.floor(w / h) * 48, cap)];
  if (tw === 0) return [Math.min(Math.floor(h / w) * 48, cap), 48];
  return [th, tw];
}

async function png(
  width: number,
  height: number,
  fill: (x: number, y: number) => [number, number, number],
): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) raw.set(fill(x, y), (y * width + x) * 3);
  }
  return sharp(raw, { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}

describe('targetSize', () => {
  it('matches hand-computed sizes', () => {
    // 1280x720 at 280: factor sqrt(0.7); 602.4 -> 576, 1070.9 -> 1056.
    expect(targetSize(720, 1280, 280 * 9)).toEqual({ height: 576, width: 1056 });
    // 768x768 at 280 stays 768x768 (48x48 patches, 256 soft tokens).
    expect(targetSize(768, 768, 280 * 9)).toEqual({ height: 768, width: 768 });
    // Extremely wide: one row of pooled cells, capped at budget cells.
    expect(targetSize(1, 10000, 70 * 9)).toEqual({ height: 48, width: 3360 });
  });

  it('follows the documented rule for many aspect ratios and every budget', () => {
    const shapes: [number, number][] = [
      [720, 1280],
      [1080, 1920],
      [480, 640],
      [640, 480],
      [1944, 2592],
      [100, 100],
      [10, 10],
      [300, 4000],
      [4000, 300],
      [1, 500],
      [500, 2],
      [333, 777],
    ];
    for (const budget of SOFT_TOKEN_BUDGETS) {
      for (const [h, w] of shapes) {
        const got = targetSize(h, w, budget * 9);
        const [eh, ew] = expectedSize(h, w, budget);
        expect([got.height, got.width], `${h}x${w} @${budget}`).toEqual([eh, ew]);
        expect(got.height % 48).toBe(0);
        expect(got.width % 48).toBe(0);
        expect((got.height / 16) * (got.width / 16)).toBeLessThanOrEqual(budget * 9);
      }
    }
  });
});

describe('resizeBicubicAA', () => {
  it('uses antialiased Keys cubic weights (a = -0.5), widened by the downscale factor', () => {
    // 4 -> 2: output 0 is centred at 1.0 with support 4; taps at distances (j - 1 + 0.5) / 2.
    const w = axisWeights(4, 2);
    const raw = [0.8671875, 0.8671875, 0.2265625, -0.0703125];
    const total = raw.reduce((a, b) => a + b, 0);
    expect(w.start[0]).toBe(0);
    expect(w.count[0]).toBe(4);
    for (let j = 0; j < 4; j++) expect(w.weights[j]).toBeCloseTo(raw[j]! / total, 7);
    const out = resizeBicubicAA(Uint8Array.from([0, 100, 200, 255]), 4, 1, 1, 2, 1);
    expect(out[0]).toBe(Math.round((100 * 0.8671875 + 200 * 0.2265625 - 255 * 0.0703125) / total));
  });

  it('enlarges with the plain kernel (support 2), clamping overshoot', () => {
    // 2 -> 4: output 0 centred at 0.25 reads inputs 0, 1 at distances 0.25, 1.25; output 1 at 0.75 reads 0.75, 0.25.
    const out = resizeBicubicAA(Uint8Array.from([0, 200]), 2, 1, 1, 4, 1);
    expect(out[0]).toBe(0); // 200 * -0.0703125 / 0.796875 < 0
    expect(out[1]).toBe(Math.round((200 * 0.2265625) / (0.8671875 + 0.2265625)));
    expect(out[3]).toBe(Math.round((200 * 0.8671875) / 0.796875)); // overshoot to 218, within 0..255
  });

  it('gives the same result in the torch and pillow fixed-point flavours up to one level', () => {
    const src = Uint8Array.from({ length: 97 * 61 * 3 }, (_, i) => (i * 2654435761) % 251);
    const a = resizeBicubicAA(src, 97, 61, 3, 40, 130, 'torch');
    const b = resizeBicubicAA(src, 97, 61, 3, 40, 130, 'pillow');
    expect(a.every((v, i) => Math.abs(v - b[i]!) <= 1)).toBe(true);
  });

  it('keeps a constant image constant when shrinking and when enlarging', () => {
    const src = new Uint8Array(37 * 23 * 3).fill(77);
    for (const [w, h] of [
      [10, 7],
      [100, 61],
    ] as const) {
      const out = resizeBicubicAA(src, 37, 23, 3, w, h);
      expect(out.length).toBe(w * h * 3);
      expect(out.every((v) => v === 77)).toBe(true);
    }
  });
});

describe('preprocessImage', () => {
  it('gives the exact rescaled value in every patch of a solid-colour image', async () => {
    const img = await png(640, 480, () => [200, 13, 255]);
    const r = await preprocessImage(img, { tokenBudget: 140 });
    const [eh, ew] = expectedSize(480, 640, 140);
    expect([r.height, r.width]).toEqual([eh, ew]);
    expect(r.numPatches).toBe((eh / 16) * (ew / 16));
    expect(r.pixelValues.length).toBe(r.numPatches * 768);
    const want = [f255(200), f255(13), f255(255)];
    expect(want[2]).toBe(1);
    for (let i = 0; i < r.pixelValues.length; i++) {
      if (r.pixelValues[i] !== want[i % 3]) throw new Error(`value ${i}: ${r.pixelValues[i]}`);
    }
  });

  it('lays patches out row-major with pixel rows, then columns, then RGB inside each patch', async () => {
    // 384x384 needs no resize at budget 70, so every value is known exactly.
    const fill = (x: number, y: number): [number, number, number] => [x % 256, y % 256, (x * 7 + y * 3) % 256];
    const r = await preprocessImage(await png(384, 384, fill), { tokenBudget: 70 });
    expect([r.height, r.width, r.patchRows, r.patchCols, r.numSoftTokens]).toEqual([384, 384, 24, 24, 64]);
    for (const [py, px] of [
      [0, 0],
      [0, 1],
      [1, 0],
      [5, 17],
      [23, 23],
    ] as const) {
      const p = py * 24 + px;
      for (const [dy, dx] of [
        [0, 0],
        [0, 15],
        [15, 0],
        [7, 9],
      ] as const) {
        const rgb = fill(px * 16 + dx, py * 16 + dy);
        for (let c = 0; c < 3; c++) {
          expect(r.pixelValues[p * 768 + (dy * 16 + dx) * 3 + c]).toBe(f255(rgb[c]!));
        }
      }
    }
  });

  it('feeds the resized pixels into the patches when the size changes', async () => {
    const fill = (x: number, y: number): [number, number, number] => [(x * 3) % 256, (y * 5) % 256, 128];
    const raw = new Uint8Array(500 * 300 * 3);
    for (let y = 0; y < 300; y++) for (let x = 0; x < 500; x++) raw.set(fill(x, y), (y * 500 + x) * 3);
    const r = await preprocessImage(await png(500, 300, fill), { tokenBudget: 70 });
    const [eh, ew] = expectedSize(300, 500, 70);
    const resized = resizeBicubicAA(raw, 500, 300, 3, ew, eh);
    for (const [py, px, dy, dx] of [
      [0, 0, 0, 0],
      [1, 2, 3, 4],
      [r.patchRows - 1, r.patchCols - 1, 15, 15],
    ] as const) {
      const p = py * r.patchCols + px;
      const src = ((py * 16 + dy) * ew + px * 16 + dx) * 3;
      for (let c = 0; c < 3; c++) expect(r.pixelValues[p * 768 + (dy * 16 + dx) * 3 + c]).toBe(f255(resized[src + c]!));
    }
  });

  it('gives (column, row) position ids covering the grid in row-major order', async () => {
    const r = await preprocessImage(await png(1280, 720, () => [1, 2, 3]), { tokenBudget: 280 });
    expect([r.patchRows, r.patchCols, r.numSoftTokens]).toEqual([36, 66, 264]);
    for (let p = 0; p < r.numPatches; p++) {
      expect([r.positionIds[2 * p], r.positionIds[2 * p + 1]]).toEqual([p % 66, Math.floor(p / 66)]);
    }
  });

  it('pads to max_patches with zero pixels and (-1, -1) positions when asked', async () => {
    const r = await preprocessImage(await png(1280, 720, () => [255, 255, 255]), { tokenBudget: 70, pad: true });
    expect(r.numPatches).toBe(630);
    expect(r.validPatches).toBe(r.patchRows * r.patchCols);
    expect(r.validPatches).toBeLessThan(630);
    expect(r.pixelValues[(r.validPatches - 1) * 768]).toBe(1);
    for (let p = r.validPatches; p < 630; p++) {
      expect([r.positionIds[2 * p], r.positionIds[2 * p + 1]]).toEqual([-1, -1]);
      expect(r.pixelValues.subarray(p * 768, (p + 1) * 768).every((v) => v === 0)).toBe(true);
    }
  });

  it('reads camera JPEGs and sizes them for every budget', async () => {
    const jpeg = await sharp({ create: { width: 1280, height: 720, channels: 3, background: '#336699' } })
      .jpeg()
      .toBuffer();
    for (const budget of SOFT_TOKEN_BUDGETS) {
      const r = await preprocessImage(jpeg, { tokenBudget: budget });
      const [eh, ew] = expectedSize(720, 1280, budget);
      expect([r.height, r.width]).toEqual([eh, ew]);
      expect(r.numSoftTokens).toBe((eh / 48) * (ew / 48));
      expect(r.numSoftTokens).toBeLessThanOrEqual(budget);
    }
  });

  it('rejects corrupt input, empty input and unknown budgets with ImagePreprocessError', async () => {
    const jpeg = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#808080' } })
      .jpeg()
      .toBuffer();
    await expect(preprocessImage(Buffer.from('not an image at all'))).rejects.toBeInstanceOf(ImagePreprocessError);
    await expect(preprocessImage(jpeg.subarray(0, jpeg.length / 2))).rejects.toBeInstanceOf(ImagePreprocessError);
    await expect(preprocessImage(Buffer.alloc(0))).rejects.toBeInstanceOf(ImagePreprocessError);
    await expect(preprocessImage(jpeg, { tokenBudget: 100 as 70 })).rejects.toThrow(/token budget/);
    expect(() => preprocessRgb(new Uint8Array(5), 2, 2)).toThrow(ImagePreprocessError);
  });
});
