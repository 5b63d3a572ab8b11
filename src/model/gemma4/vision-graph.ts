/**
 * Writes the Gemma 4 vision encoder + vision embedder as ONE ONNX graph (plain ONNX ops; MatMulNBits /
 * GatherBlockQuantized when quantised). The computation is the one vision-reference.ts spells out.
 *
 * I/O contract:
 *   pixel_values  float32 [batch, patches, 3*patch^2]  preprocess.ts pixelValues (values in [0, 1]; the graph
 *                                                      applies 2 * (x - 0.5) itself)
 *   position_ids  int64   [batch, patches, 2]          (x = column, y = row); (-1, -1) marks padding rows,
 *                                                      which are masked out as keys and zeroed before pooling
 *   image_embeds  float32 [batch, patches / k^2, text_hidden]   k = pooling_kernel_size
 * patches must be a multiple of k^2 (preprocess.ts guarantees it, padded or not). Graphs built with
 * attention 'unpadded' (packages) take unpadded input only: padding rows would be attended to. Soft token s of an image
 * is row s; only the first (patchRows/k) * (patchCols/k) rows (preprocess.ts numSoftTokens) are real: with
 * padding rows, the trailing slots pool nothing and must be dropped by the caller (they are exactly 0
 * unless the config standardizes).
 */
import * as path from 'node:path';
import { GraphBuilder, type SaveResult, attrFloat } from '../../onnx/graph.js';
import { type LinearWeight, Ops } from './graph-ops.js';
import { quantizeLinear } from './quantize.js';
import { type Gemma4VisionConfig, patchDim, visionInvFreq } from './vision-config.js';
import { type VisionQuantPolicy, quantizeTable, splitPositionTable } from './vision-quant.js';
import {
  CLIP_BOUNDS,
  type VisionLayerNormRole,
  type VisionLinearRole,
  type VisionTensorSpec,
  checkVisionWeightShapes,
  visionNames,
  visionTensorTable,
} from './vision-weights.js';
import type { WeightSource } from './weights.js';

export interface VisionGraphOptions {
  /** null: float32 everywhere (parity tests). */
  quant?: VisionQuantPolicy | null;
  /** com.microsoft SimplifiedLayerNormalization for the RMSNorms (default false: plain ops). */
  fusedNorm?: boolean;
  /** ONNX Gelu(approximate="tanh") instead of the explicit formula (default false). */
  onnxGelu?: boolean;
  /**
   * 'masked' (default): attention in plain ops, head by head, with padding rows masked out as keys: any input,
   * padded batches included. 'unpadded': one com.microsoft.MultiHeadAttention, which ONNX Runtime runs as
   * flash attention on the CPU (no [patches, patches] scores in memory): 20% faster at 2,376 patches, but it
   * has no key mask, so the graph takes unpadded images only (what the runtime feeds: one image a run).
   */
  attention?: 'masked' | 'unpadded';
}

export interface VisionGraphInfo {
  inputs: { pixelValues: string; positionIds: string };
  output: string;
  /** Patches pooled into one soft token per side (k); patches per soft token = k^2. */
  poolingKernelSize: number;
}

const NEG_MASK = -1e30;

/** Adds the whole encoder to `b`. Weights are read one at a time from `src` (official names). */
export async function buildVisionGraph(
  b: GraphBuilder,
  cfg: Gemma4VisionConfig,
  src: WeightSource,
  opts: VisionGraphOptions = {},
): Promise<VisionGraphInfo> {
  const problems = checkVisionWeightShapes(cfg, src);
  if (problems.length)
    throw new Error(`vision weights do not match the config:\n  ${problems.slice(0, 20).join('\n  ')}`);
  const ops = new Ops(b, { fusedNorm: opts.fusedNorm ?? false, onnxGelu: opts.onnxGelu ?? false });
  const quant = opts.quant ?? null;
  const specs = new Map(visionTensorTable(cfg).map((s) => [s.name, s]));
  const H = cfg.hiddenSize;
  const E = cfg.positionEmbeddingSize;
  const hd = cfg.headDim;
  const nh = cfg.numAttentionHeads;
  const nkv = cfg.numKeyValueHeads;
  const eps = cfg.rmsNormEps;
  const k = cfg.poolingKernelSize;

  const linear = async (x: string, name: string, tag: string): Promise<string> =>
    ops.linear(x, tag, await linearWeight(specs.get(name)!, await src.get(name), quant));
  /** Gemma4ClippableLinear: clamp input, linear, clamp output (bounds from the checkpoint). */
  const clipped = async (x: string, l: number, r: VisionLinearRole): Promise<string> => {
    if (!cfg.useClippedLinears) return linear(x, visionNames.linear(l, r), `layers.${l}.${r}`);
    const [inMin, inMax, outMin, outMax] = await Promise.all(
      CLIP_BOUNDS.map(async (c) => (await src.get(visionNames.clip(l, r, c)))[0]!),
    );
    const clamp = (t: string, lo: number, hi: number): string =>
      lo === -Infinity && hi === Infinity ? t : ops.op('Clip', [t, ops.f32(lo), ops.f32(hi)]);
    return clamp(
      await linear(clamp(x, inMin!, inMax!), visionNames.linear(l, r), `layers.${l}.${r}`),
      outMin!,
      outMax!,
    );
  };
  const norm = async (x: string, l: number, r: VisionLayerNormRole): Promise<string> =>
    ops.rmsNorm(x, `layers.${l}.${r}`, await src.get(visionNames.norm(l, r)), eps);

  // ---- inputs
  const pixels = b.input('pixel_values', 'float32', ['batch', 'patches', patchDim(cfg)]);
  const pos = b.input('position_ids', 'int64', ['batch', 'patches', 2]);

  // padding = (x, y) == (-1, -1); as float [B, P, 1] (1 = padding) and its complement.
  const isPad = ops.op('ReduceMin', [ops.op('Cast', [ops.op('Equal', [pos, ops.i64(-1)])], { to: 1 }), ops.i64([-1])], {
    keepdims: 1,
  });
  const valid = ops.op('Sub', [ops.f32(1), isPad]);
  const clampedPos = ops.op('Max', [pos, ops.i64(0)]);
  const px = ops.op('Gather', [clampedPos, ops.i64(0)], { axis: 2 });
  const py = ops.op('Gather', [clampedPos, ops.i64(1)], { axis: 2 });

  // ---- patch embedder: input_proj(2 (x - 0.5)) + table[0][x] + table[1][y] (0 on padding rows)
  let h = await linear(
    ops.op('Mul', [ops.op('Sub', [pixels, ops.f32(0.5)]), ops.f32(2)]),
    visionNames.inputProj,
    'patch_embedder.input_proj',
  );
  const [tx, ty] = splitPositionTable(await src.get(visionNames.positionTable), E, H);
  const lookup = (t: Float32Array, ids: string, name: string): string => {
    if (!quant?.table) return ops.op('Gather', [b.initializer(name, 'float32', [E, H], t), ids], { axis: 0 });
    return ops.gatherQuantized(quantizeTable(t, E, H, quant.table), ids, name).out;
  };
  const posEmb = ops.op('Add', [
    lookup(tx!, px, 'patch_embedder.position_table_x'),
    lookup(ty!, py, 'patch_embedder.position_table_y'),
  ]);
  h = ops.op('Add', [h, ops.op('Mul', [posEmb, valid])]);

  // ---- 2-D RoPE tables [B, P, 1, hd]: channels [0, hd/2) follow x, [hd/2, hd) follow y
  const posF = ops.op('Cast', [pos], { to: 1 });
  const invFreq = ops.f32([...Float32Array.from(visionInvFreq(cfg))]);
  const halves = [0, 1].map((a) => {
    const f = ops.op('Mul', [ops.op('Gather', [posF, ops.i64([a])], { axis: 2 }), invFreq]);
    return ops.op('Concat', [f, f], { axis: -1 });
  });
  const table = (fn: 'Cos' | 'Sin'): string =>
    ops.op('Unsqueeze', [
      ops.op(
        'Concat',
        halves.map((e) => ops.op(fn, [e])),
        { axis: -1 },
      ),
      ops.i64([2]),
    ]);
  const cos = table('Cos');
  const sin = table('Sin');
  const q4 = hd / 4;
  const rope = (t: string): string => {
    // rotate_half inside each half: (a, b, c, d) quarters -> (-b, a, -d, c)
    const [a, bq, c, d] = b.node('Split', [t, ops.i64([q4, q4, q4, q4])], 4, { axis: -1 });
    const rot = ops.op('Concat', [ops.op('Neg', [bq!]), a!, ops.op('Neg', [d!]), c!], { axis: -1 });
    return ops.op('Add', [ops.op('Mul', [t, cos]), ops.op('Mul', [rot, sin])]);
  };

  // Additive key mask [B, 1, 1, T]: the same for every query row of Ops.attention's scores [B, nKv, rows, T].
  const keyMask = ops.op('Reshape', [ops.op('Mul', [isPad, ops.f32(NEG_MASK)]), ops.i64([0, 1, 1, -1])]);

  // ---- encoder layers
  const heads = (t: string, n: number): string => ops.op('Reshape', [t, ops.i64([0, 0, n, hd])]);
  const toBhsd = (t: string): string => ops.op('Transpose', [t], { perm: [0, 2, 1, 3] });
  // One key/value head (and its query heads) at a time: the scores are [heads, patches, patches] floats, 271 MB
  // for all 12 heads at the 280-token budget (2376 patches) and 4.9 GB at 1120. Run head by head, ORT frees each
  // head's scores before the next, so the peak is one head's.
  const attentionByKvHead = (q4: string, k4: string, v4: string): string => {
    if (nkv === 1) return ops.attention(q4, k4, v4, keyMask, nh, nkv, hd, 'all');
    const qs = b.node('Split', [q4, ops.i64(Array(nkv).fill(nh / nkv))], nkv, { axis: 1 });
    const ks = b.node('Split', [k4, ops.i64(Array(nkv).fill(1))], nkv, { axis: 1 });
    const vs = b.node('Split', [v4, ops.i64(Array(nkv).fill(1))], nkv, { axis: 1 });
    const outs = qs.map((qi, i) => ops.attention(qi, ks[i]!, vs[i]!, keyMask, nh / nkv, 1, hd, 'all'));
    return ops.op('Concat', outs, { axis: -1 });
  };
  // q, k, v [B, P, heads, hd] -> [B, P, hidden]: softmax(q k^T) v, scaling 1.0 (q and k are RMS-normed).
  const selfAttention = (q: string, kk: string, v: string): string => {
    if (opts.attention !== 'unpadded' || nkv !== nh) return attentionByKvHead(toBhsd(q), toBhsd(kk), toBhsd(v));
    const flat = (t: string, n: number): string => ops.op('Reshape', [t, ops.i64([0, 0, n * hd])]);
    return b.node(
      'MultiHeadAttention',
      [flat(q, nh), flat(kk, nkv), flat(v, nkv)],
      1,
      { num_heads: nh, scale: attrFloat(1) },
      'com.microsoft',
    )[0]!;
  };
  let x = await norm(h, 0, 'input_norm');
  for (let l = 0; l < cfg.numHiddenLayers; l++) {
    const q = rope(await norm(heads(await clipped(x, l, 'q_proj'), nh), l, 'q_norm'));
    const kk = rope(await norm(heads(await clipped(x, l, 'k_proj'), nkv), l, 'k_norm'));
    const v = ops.rmsNormNoScale(heads(await clipped(x, l, 'v_proj'), nkv), `layers.${l}.v_norm`, hd, eps);
    const attn = selfAttention(q, kk, v);
    const a = await norm(await clipped(attn, l, 'o_proj'), l, 'post_attn_norm');
    let xf: string;
    [xf, h] = ops.skipRmsNorm(a, h, `layers.${l}.pre_ff_norm`, await src.get(visionNames.norm(l, 'pre_ff_norm')), eps);
    const g = ops.geluTanh(await clipped(xf, l, 'gate_proj'));
    const f = await norm(
      await clipped(ops.op('Mul', [g, await clipped(xf, l, 'up_proj')]), l, 'down_proj'),
      l,
      'post_ff_norm',
    );
    if (l + 1 < cfg.numHiddenLayers) {
      [x, h] = ops.skipRmsNorm(
        f,
        h,
        `layers.${l + 1}.input_norm`,
        await src.get(visionNames.norm(l + 1, 'input_norm')),
        eps,
      );
    } else {
      h = ops.op('Add', [h, f]);
    }
  }

  // ---- pooler: slot = x/k + ((maxX + 1)/k) * (y/k); mean of k^2 patches (padding zeroed), times sqrt(H)
  const hz = ops.op('Mul', [h, valid]);
  const slots = ops.op('Div', [ops.dim(hz, 1), ops.i64(k * k)]);
  const perRow = ops.op('Div', [
    ops.op('Add', [ops.op('ReduceMax', [px, ops.i64([1])], { keepdims: 1 }), ops.i64(1)]),
    ops.i64(k),
  ]);
  const slot = ops.op('Add', [
    ops.op('Div', [px, ops.i64(k)]),
    ops.op('Mul', [perRow, ops.op('Div', [py, ops.i64(k)])]),
  ]);
  const range = ops.op('Range', [ops.i64(0), slots, ops.i64(1)]);
  const onehot = ops.op('Cast', [ops.op('Equal', [ops.op('Unsqueeze', [slot, ops.i64([2])]), range])], { to: 1 });
  let pooled = ops.op('MatMul', [ops.op('Transpose', [onehot], { perm: [0, 2, 1] }), hz]);
  pooled = ops.op('Mul', [pooled, ops.f32(Math.sqrt(H) / (k * k))]);
  if (cfg.standardize) {
    const bias = b.initializer('std_bias', 'float32', [H], await src.get(visionNames.stdBias));
    const scale = b.initializer('std_scale', 'float32', [H], await src.get(visionNames.stdScale));
    pooled = ops.op('Mul', [ops.op('Sub', [pooled, bias]), scale]);
  }

  // ---- embed_vision: RMSNorm (no scale) + projection to the text hidden size
  const embeds = await linear(
    ops.rmsNormNoScale(pooled, 'embed_vision.norm', H, eps),
    visionNames.embedProjection,
    'embed_vision.projection',
  );
  b.node('Identity', [embeds], ['image_embeds']);
  b.output('image_embeds', 'float32', ['batch', 'soft_tokens', cfg.textHiddenSize]);
  return { inputs: { pixelValues: pixels, positionIds: pos }, output: 'image_embeds', poolingKernelSize: k };
}

async function linearWeight(
  spec: VisionTensorSpec,
  w: Float32Array,
  quant: VisionQuantPolicy | null,
): Promise<LinearWeight> {
  const [n, k] = spec.shape as [number, number];
  const lq = quant?.linear(spec) ?? null;
  if (!lq) return { kind: 'float', n, k, w };
  return { kind: 'nbits', packed: quantizeLinear(w, n, k, lq), accuracyLevel: lq.accuracyLevel };
}

export const VISION_ONNX_FILE = 'vision_encoder.onnx';
export const VISION_DATA_FILE = 'vision_encoder.onnx.data';

/**
 * Writes vision_encoder.onnx + one external-data file into `dir` (streaming: weights go to disk as they are
 * added). For the package builder: returns the file names and sizes.
 */
export async function writeVisionEncoderModel(
  dir: string,
  cfg: Gemma4VisionConfig,
  src: WeightSource,
  opts: VisionGraphOptions & { onnxFile?: string; dataFile?: string } = {},
): Promise<SaveResult & { info: VisionGraphInfo; onnxFile: string; dataFile: string }> {
  const onnxFile = opts.onnxFile ?? VISION_ONNX_FILE;
  const dataFile = opts.dataFile ?? VISION_DATA_FILE;
  const b = new GraphBuilder({
    name: 'gemma4_vision_encoder',
    externalData: { path: path.join(path.resolve(dir), dataFile) },
  });
  const info = await buildVisionGraph(b, cfg, src, opts);
  b.setMetadata('perch.model', 'gemma4_vision_encoder');
  b.setMetadata('perch.pooling_kernel_size', String(cfg.poolingKernelSize));
  b.setMetadata('perch.vision_attention', opts.attention ?? 'masked');
  const saved = await b.save(dir, onnxFile);
  return { ...saved, info, onnxFile, dataFile };
}
