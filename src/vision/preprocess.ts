/**
 * Gemma 4's image processor, in TypeScript. Facts confirmed in Hugging Face transformers
 * (src/transformers/models/gemma4/):
 *
 * image_processing_gemma4.py (torchvision backend, the default) and image_processing_pil_gemma4.py:
 * - Defaults: patch_size 16, pooling_kernel_size 3, max_soft_tokens 280, which must be one of
 *   70/140/280/560/1120. max_patches = max_soft_tokens * pooling_kernel_size^2.
 * - Convert to RGB; resize keeping the aspect ratio (`get_aspect_ratio_preserving_size`, reproduced in
 *   `targetSize` below): both sides are multiples of patch*pooling = 48 and at most max_patches patches;
 *   the resize is skipped when the size already matches. Filter: BICUBIC, antialias=True (resample.ts).
 * - Rescale by 1/255; do_normalize is False (mean 0, std 1): values stay in [0, 1]. The model itself maps
 *   them to [-1, 1] (`2 * (pixel_values - 0.5)` in Gemma4VisionPatchEmbedder, modeling_gemma4.py), so
 *   the vision encoder's graph must contain that step, not this module.
 * - Patchify (`convert_image_to_patches`, from SigLIP2): (C, H, W) -> (pH*pW, 16*16*C); patches in
 *   row-major order, and inside a patch pixel rows, then pixel columns, then channels (R, G, B).
 * - Position ids: meshgrid(arange(pW), arange(pH), indexing="xy") stacked as (x, y), i.e. per patch
 *   [column, row], row-major. Padding (pad_along_first_dim) extends to max_patches with zero pixels and
 *   position (-1, -1).
 * - num_soft_tokens = num_patches / pooling_kernel_size^2. Pooling (Gemma4VisionPooler) averages each
 *   3x3 block of patches: soft token index = (x / 3) + (pW / 3) * (y / 3), so soft tokens are row-major too.
 * processing_gemma4.py: the prompt gets boi + image_token * num_soft_tokens + eoi per image.
 */
import sharp from 'sharp';
import { type ResizeFlavour, resizeBicubicAA } from './resample.js';
import { DEFAULT_IMAGE_TOKENS, SOFT_TOKEN_BUDGETS, type TokenBudget } from '../model/gemma4/contract.js';

export { DEFAULT_IMAGE_TOKENS, SOFT_TOKEN_BUDGETS, type TokenBudget } from '../model/gemma4/contract.js';

export interface GridOptions {
  /** Pixels per patch side (vision_config.patch_size). */
  patchSize?: number;
  /** Patches per pooled soft token side (vision_config.pooling_kernel_size). */
  poolingKernelSize?: number;
}

export interface PreprocessOptions extends GridOptions {
  tokenBudget?: TokenBudget;
  /** Pad to max_patches with zero pixels and position (-1, -1), as transformers does. Default false. */
  pad?: boolean;
  /** Refuse larger inputs (pixels) before decoding them. Default 40 MP. */
  maxInputPixels?: number;
  /**
   * Whose resize to reproduce: 'torch' (default; transformers' default Gemma4ImageProcessor, torchvision
   * backend) or 'pillow' (Gemma4ImageProcessorPil). They differ by a level or two on some pixels.
   */
  resizeFlavour?: ResizeFlavour;
}

export interface PreprocessedImage {
  /** [numPatches, 3 * patchSize^2] in [0, 1]. */
  pixelValues: Float32Array;
  /** [numPatches, 2]: (x = patch column, y = patch row); (-1, -1) for padding. */
  positionIds: Int32Array;
  /** Rows of pixelValues/positionIds (validPatches, or max_patches when padded). */
  numPatches: number;
  /** Patches that hold image data (patchRows * patchCols). */
  validPatches: number;
  patchRows: number;
  patchCols: number;
  numSoftTokens: number;
  /** Resized image size. */
  height: number;
  width: number;
}

export class ImagePreprocessError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImagePreprocessError';
  }
}

/** Resized (height, width) for an image: transformers' `get_aspect_ratio_preserving_size`. */
export function targetSize(
  height: number,
  width: number,
  maxPatches: number,
  opts: GridOptions = {},
): { height: number; width: number } {
  const patch = opts.patchSize ?? 16;
  const pool = opts.poolingKernelSize ?? 3;
  const targetPx = maxPatches * patch * patch;
  const factor = Math.sqrt(targetPx / (height * width));
  const sideMult = pool * patch;
  let th = Math.floor((factor * height) / sideMult) * sideMult;
  let tw = Math.floor((factor * width) / sideMult) * sideMult;
  if (th === 0 && tw === 0) {
    throw new ImagePreprocessError(`cannot resize ${height}x${width} to a 0x0 image`);
  }
  // Very elongated images: one side rounds to 0; keep one row (or column) of pooled cells.
  const maxSide = Math.floor(maxPatches / (pool * pool)) * sideMult;
  if (th === 0) {
    th = sideMult;
    tw = Math.min(Math.floor(width / height) * sideMult, maxSide);
  } else if (tw === 0) {
    tw = sideMult;
    th = Math.min(Math.floor(height / width) * sideMult, maxSide);
  }
  if (th * tw > targetPx) {
    throw new ImagePreprocessError(`resizing ${height}x${width} to ${th}x${tw} exceeds ${maxPatches} patches`);
  }
  return { height: th, width: tw };
}

function checkBudget(budget: number): asserts budget is TokenBudget {
  if (!(SOFT_TOKEN_BUDGETS as readonly number[]).includes(budget)) {
    throw new ImagePreprocessError(`token budget must be one of ${SOFT_TOKEN_BUDGETS.join(', ')}, got ${budget}`);
  }
}

/** Preprocesses decoded RGB (interleaved, 3 bytes per pixel). Synchronous; used by preprocessImage. */
export function preprocessRgb(
  rgb: Uint8Array,
  width: number,
  height: number,
  opts: PreprocessOptions = {},
): PreprocessedImage {
  const budget = opts.tokenBudget ?? DEFAULT_IMAGE_TOKENS;
  checkBudget(budget);
  if (rgb.length !== width * height * 3) {
    throw new ImagePreprocessError(
      `expected ${width * height * 3} RGB bytes for ${width}x${height}, got ${rgb.length}`,
    );
  }
  const patch = opts.patchSize ?? 16;
  const pool = opts.poolingKernelSize ?? 3;
  const maxPatches = budget * pool * pool;
  const size = targetSize(height, width, maxPatches, opts);
  const img = resizeBicubicAA(rgb, width, height, 3, size.width, size.height, opts.resizeFlavour ?? 'torch');

  const pRows = size.height / patch;
  const pCols = size.width / patch;
  const valid = pRows * pCols;
  const rows = opts.pad ? Math.max(maxPatches, valid) : valid;
  const dim = 3 * patch * patch;
  const pixelValues = new Float32Array(rows * dim);
  const positionIds = new Int32Array(rows * 2).fill(-1);
  // torch: uint8 tensor * (1/255) computes in float32 with the factor rounded to float32.
  const lut = new Float32Array(256);
  const f = Math.fround(1 / 255);
  for (let v = 0; v < 256; v++) lut[v] = Math.fround(v * f);

  const stride = size.width * 3;
  for (let py = 0; py < pRows; py++) {
    for (let px = 0; px < pCols; px++) {
      const p = py * pCols + px;
      positionIds[p * 2] = px;
      positionIds[p * 2 + 1] = py;
      let o = p * dim;
      for (let dy = 0; dy < patch; dy++) {
        let s = (py * patch + dy) * stride + px * patch * 3;
        for (let k = 0; k < patch * 3; k++) pixelValues[o++] = lut[img[s++]];
      }
    }
  }
  return {
    pixelValues,
    positionIds,
    numPatches: rows,
    validPatches: valid,
    patchRows: pRows,
    patchCols: pCols,
    numSoftTokens: valid / (pool * pool),
    height: size.height,
    width: size.width,
  };
}

/** Decodes a JPEG/PNG (any format sharp reads) and preprocesses it for the Gemma 4 vision encoder. */
export async function preprocessImage(image: Buffer, opts: PreprocessOptions = {}): Promise<PreprocessedImage> {
  checkBudget(opts.tokenBudget ?? DEFAULT_IMAGE_TOKENS);
  if (!Buffer.isBuffer(image) || image.length === 0) throw new ImagePreprocessError('empty image');
  let decoded: { data: Buffer; info: { width: number; height: number; channels: number } };
  try {
    decoded = await sharp(image, { limitInputPixels: opts.maxInputPixels ?? 40_000_000, failOn: 'error' })
      // EXIF orientation applied, as transformers' load_image does (exif_transpose).
      .rotate()
      .toColourspace('srgb')
      // PIL convert("RGB") drops alpha rather than compositing.
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    // libvips repeats its complaint for every pass over a broken file: each distinct line once, on one line.
    const lines = (err as Error).message.split('\n').map((l) => l.trim());
    const reason = [...new Set(lines.filter(Boolean))].join('; ');
    throw new ImagePreprocessError(`cannot decode image: ${reason}`, { cause: err });
  }
  const { width, height, channels } = decoded.info;
  if (channels !== 3) throw new ImagePreprocessError(`decoded image has ${channels} channels, expected 3`);
  const rgb = new Uint8Array(decoded.data.buffer, decoded.data.byteOffset, decoded.data.length);
  return preprocessRgb(rgb, width, height, opts);
}
