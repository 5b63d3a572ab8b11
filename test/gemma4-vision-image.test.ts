import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patchDim, tinyVisionConfig } from '../src/model/gemma4/vision-config.js';
import { writeVisionEncoderModel } from '../src/model/gemma4/vision-graph.js';
import { VisionReference } from '../src/model/gemma4/vision-reference.js';
import { syntheticVisionWeightSource } from '../src/model/gemma4/vision-weights.js';
import { type PreprocessedImage, preprocessImage, preprocessRgb } from '../src/vision/preprocess.js';
import { relErr } from './gemma4-helpers.js';
import { runVision } from './gemma4-vision-helpers.js';

const cfg = tinyVisionConfig();
const D = patchDim(cfg);
const T = cfg.textHiddenSize;
let dir: string;
let session: ort.InferenceSession;
let ref: VisionReference;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma4-vision-image-'));
  const out = await writeVisionEncoderModel(dir, cfg, syntheticVisionWeightSource(cfg, 5));
  session = await ort.InferenceSession.create(out.modelPath, { intraOpNumThreads: 1 });
  ref = await VisionReference.load(cfg, syntheticVisionWeightSource(cfg, 5));
});
afterAll(async () => {
  await session?.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

function drawn(width: number, height: number, sunX: number): Promise<Buffer> {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">
    <rect width="100%" height="100%" fill="#3a7bd5"/>
    <rect y="${height * 0.6}" width="100%" height="${height * 0.4}" fill="#2e8b57"/>
    <circle cx="${sunX}" cy="${height * 0.25}" r="${height * 0.12}" fill="#ffd700"/>
    <polygon points="${width * 0.2},${height * 0.6} ${width * 0.35},${height * 0.3} ${width * 0.5},${height * 0.6}" fill="#8b4513"/>
  </svg>`;
  return sharp(Buffer.from(svg)).png().toBuffer();
}

async function encodeImage(img: PreprocessedImage): Promise<{ got: Float32Array; dims: readonly number[] }> {
  const r = await runVision(
    session,
    [{ pixelValues: img.pixelValues, positionIds: img.positionIds, rows: img.numPatches }],
    D,
  );
  return { got: r.data, dims: r.dims };
}

describe('gemma4 vision encoder end to end from a drawn image (tiny config)', () => {
  it('PNG -> preprocessImage -> graph: numSoftTokens rows that match the reference', async () => {
    const png = await drawn(300, 200, 220);
    const img = await preprocessImage(png, { tokenBudget: 70 });
    expect(img.numPatches).toBe(img.validPatches);
    const { got, dims } = await encodeImage(img);
    expect(dims).toEqual([1, img.numSoftTokens, T]);
    const want = ref.encode(img.pixelValues, img.positionIds);
    expect(want.softTokens).toBe(img.numSoftTokens);
    const err = relErr(got, want.embeds);
    console.log(
      `vision e2e ${img.width}x${img.height} (${img.patchCols}x${img.patchRows} patches, ${img.numSoftTokens} soft tokens): rel err ${err.toExponential(2)}`,
    );
    expect(err).toBeLessThanOrEqual(1e-4);
    // A different picture gives different soft tokens.
    const other = await encodeImage(await preprocessImage(await drawn(300, 200, 60), { tokenBudget: 70 }));
    expect(relErr(other.got, got)).toBeGreaterThan(1e-3);
  });

  it('padded to max_patches (pad: true), the first numSoftTokens rows equal the unpadded run and the rest are zero', async () => {
    const png = await drawn(160, 400, 80);
    const plain = await preprocessImage(png, { tokenBudget: 70 });
    const padded = await preprocessImage(png, { tokenBudget: 70, pad: true });
    expect(padded.numPatches).toBe(70 * 9);
    expect(padded.numSoftTokens).toBe(plain.numSoftTokens);
    const a = await encodeImage(plain);
    const b = await encodeImage(padded);
    expect(b.dims).toEqual([1, 70, T]);
    const n = plain.numSoftTokens * T;
    expect(relErr(b.got.subarray(0, n), a.got)).toBeLessThanOrEqual(1e-5);
    expect(b.got.subarray(n).every((v) => v === 0)).toBe(true);
    const want = ref.encode(padded.pixelValues, padded.positionIds);
    expect(want.softTokens).toBe(plain.numSoftTokens);
    expect(relErr(b.got, want.embeds)).toBeLessThanOrEqual(1e-4);
  });

  it.each([
    [640, 480],
    [480, 640],
    [1000, 100],
    [48, 48],
  ])('soft-token count equals preprocess numSoftTokens for a %dx%d image', async (w, h) => {
    const rgb = new Uint8Array(w * h * 3).map((_, i) => (i * 31) % 256);
    const img = preprocessRgb(rgb, w, h, { tokenBudget: 70 });
    const { dims } = await encodeImage(img);
    expect(dims).toEqual([1, img.numSoftTokens, T]);
    expect(img.numSoftTokens).toBe((img.patchRows / 3) * (img.patchCols / 3));
  });
});
