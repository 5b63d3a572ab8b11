/**
 * The vision encoder at run time: an ONNX Runtime session on a package's vision_encoder.onnx (written by
 * src/model/gemma4/vision-graph.ts) fed by the Gemma 4 image preprocessor. One JPEG in, its soft-token rows
 * out: [numSoftTokens, text hidden] row-major, ready to replace the image placeholders of a prompt.
 *
 * The patch size comes from the graph's pixel_values width (3 * patch^2) and the output width is the text
 * hidden size, so a mismatched encoder is refused at load, not at the first image.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { PACKAGE_FILES } from '../model/package/manifest.js';
import { DEFAULT_IMAGE_TOKENS, type TokenBudget, preprocessImage } from '../vision/preprocess.js';
import { type PrepackedCacheOptions, createCachedSession } from './prepacked-cache.js';
import { DEFAULT_TUNING, type SessionTuning } from './session.js';

/** Gemma 4's pooling: 3x3 patches per soft token (the graph's metadata says so too). */
const POOLING_KERNEL = 3;

export class VisionEncoderMissingError extends Error {
  override readonly name = 'VisionEncoderMissingError';
}

export interface VisionLoadOptions {
  /** ORT intra-op threads (model.threads). */
  threads: number;
  tuning?: Partial<Omit<SessionTuning, 'threads'>>;
  /** Map ORT's packed weights from this per-machine cache (checksum: the package's vision files, packageChecksum). */
  prepacked?: { cache: PrepackedCacheOptions; checksum: string };
}

export interface VisionEncodeResult {
  /** [numSoftTokens, hidden] row-major. */
  embeddings: Float32Array;
  numSoftTokens: number;
  hidden: number;
  /** Size the image was resized to before patching. */
  width: number;
  height: number;
  timings: { preprocessMs: number; encodeMs: number };
}

/** The encoder file of a package directory (or the file itself), or null when there is none. */
export function visionEncoderPath(dirOrFile: string): string | null {
  if (existsSync(dirOrFile) && statSync(dirOrFile).isFile()) return dirOrFile;
  const file = path.join(dirOrFile, PACKAGE_FILES.visionGraph);
  return existsSync(file) ? file : null;
}

export class VisionEncoder {
  private queue: Promise<unknown> = Promise.resolve();
  private released = false;

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly file: string,
    readonly patchSize: number,
    readonly hidden: number,
  ) {}

  /** Opens the encoder of a package directory (or a .onnx file); VisionEncoderMissingError when absent. */
  static async load(dirOrFile: string, opts: VisionLoadOptions): Promise<VisionEncoder> {
    const file = visionEncoderPath(dirOrFile);
    if (!file)
      throw new VisionEncoderMissingError(
        `this package has no vision encoder (${path.join(dirOrFile, PACKAGE_FILES.visionGraph)} is missing): questions about images and captions are unavailable`,
      );
    const tuning = { ...DEFAULT_TUNING, ...opts.tuning, threads: opts.threads };
    const { session } = await createCachedSession(
      { modelPath: file, checksum: opts.prepacked?.checksum ?? '' },
      tuning,
      opts.prepacked?.cache,
    );
    try {
      const pv = tensorMeta(session.inputMetadata, 'pixel_values');
      const out = tensorMeta(session.outputMetadata, 'image_embeds');
      if (!pv || !out || !session.inputNames.includes('position_ids')) {
        throw new Error(`${file} is not a vision encoder (expected pixel_values, position_ids -> image_embeds)`);
      }
      const dim = pv.shape[2];
      const hidden = out.shape[2];
      const patch = typeof dim === 'number' ? Math.round(Math.sqrt(dim / 3)) : NaN;
      if (!Number.isInteger(patch) || patch * patch * 3 !== dim)
        throw new Error(`${file}: pixel_values width ${String(dim)} is not 3 * patch^2`);
      if (typeof hidden !== 'number' || hidden < 1) throw new Error(`${file}: image_embeds has no fixed width`);
      return new VisionEncoder(session, file, patch, hidden);
    } catch (err) {
      await session.release();
      throw err;
    }
  }

  /**
   * Preprocesses and encodes one image (JPEG, PNG, anything sharp reads). Undecodable input rejects with
   * ImagePreprocessError (from preprocess.ts). Calls run one at a time.
   */
  encode(image: Buffer, opts: { tokenBudget?: TokenBudget } = {}): Promise<VisionEncodeResult> {
    const run = this.queue.then(() => this.run(image, opts.tokenBudget ?? DEFAULT_IMAGE_TOKENS));
    this.queue = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.queue;
    await this.session.release();
  }

  private async run(image: Buffer, tokenBudget: TokenBudget): Promise<VisionEncodeResult> {
    if (this.released) throw new Error('vision encoder is closed');
    const t0 = performance.now();
    const pre = await preprocessImage(image, {
      tokenBudget,
      patchSize: this.patchSize,
      poolingKernelSize: POOLING_KERNEL,
    });
    const t1 = performance.now();
    const P = pre.numPatches;
    const dim = 3 * this.patchSize * this.patchSize;
    const out = await this.session.run({
      pixel_values: new ort.Tensor('float32', pre.pixelValues, [1, P, dim]),
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(pre.positionIds, (v) => BigInt(v)),
        [1, P, 2],
      ),
    });
    const t = out.image_embeds!;
    const data = t.data as Float32Array;
    const rows = data.length / this.hidden;
    if (rows < pre.numSoftTokens)
      throw new Error(`vision encoder returned ${rows} rows for ${pre.numSoftTokens} soft tokens`);
    // Unpadded input: every row is real; the slice keeps exactly the soft tokens either way.
    const embeddings = rows === pre.numSoftTokens ? data : data.slice(0, pre.numSoftTokens * this.hidden);
    return {
      embeddings,
      numSoftTokens: pre.numSoftTokens,
      hidden: this.hidden,
      width: pre.width,
      height: pre.height,
      timings: { preprocessMs: t1 - t0, encodeMs: performance.now() - t1 },
    };
  }
}

function tensorMeta(
  list: readonly ort.InferenceSession.ValueMetadata[],
  name: string,
): ort.InferenceSession.TensorValueMetadata | undefined {
  const m = list.find((x) => x.name === name);
  return m?.isTensor ? m : undefined;
}
