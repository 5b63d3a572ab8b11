/**
 * Writes the Gemma 4 text decoder as ONE ONNX graph (H6's GraphBuilder), everything derived from the config.
 *
 * I/O contract (batch: all rows share positions and cache lengths; the engine uses batch 1):
 *   input_ids        int64   [batch, seq]
 *   per_layer_rows   float32 [batch, seq, layers * ple]  raw embed_tokens_per_layer rows of the ids
 *                                                       (dequantised, NOT scaled: the graph applies sqrt(ple))
 *   position_ids     int64   [batch, seq]               absolute positions, consecutive: past .. past+seq-1
 *   past_key_values.<s>.key / .value  float32 [batch, kv_heads, past_s, head_dim_s]  for every KV-owning
 *                    layer s (s = 0 .. layers - num_kv_shared_layers - 1; slot == layer index)
 * Outputs:
 *   logits           float32 [batch, seq, vocab] (logits: 'all') or [batch, 1, vocab] ('last'); soft-capped
 *   present.<s>.key / .value  float32 [batch, kv_heads, present_s, head_dim_s]
 *
 * Driving the cache: start with past length 0 on every slot (tensors with a 0-sized axis 2); after each
 * run feed every present.<s>.* back verbatim as past_key_values.<s>.*. Full-attention slots grow by seq
 * each run (present = past + new). Sliding slots are truncated IN THE GRAPH to the last (window - 1)
 * entries, which is all the next call can see, so they never exceed window - 1. The mask is computed
 * from the tensor lengths (past = cache length), so the engine must keep each cache contiguous and
 * ending at the position just before position_ids[0]; a ring buffer would need a different mask.
 * KV-shared layers own no cache: inside the graph they attend with their source layer's (past + new) K/V.
 * Gemma 3 configs (no per-layer embeddings) have no per_layer_rows input; their switches (RMSNorm as (1 + w),
 * the query scale, no v norm or layer scalar) are applied where the formula has them.
 */
import { GraphBuilder, type SaveResult } from '../../onnx/graph.js';
import { type Gemma4TextConfig, type LayerInfo, type LayerType, hasPle, layerInfos } from './config.js';
import { type CacheSlot, DECODER_IO, cacheSlots } from './contract.js';
import { type Int8ChannelMatrix, type QuantizedMatrix, concatQuantized, quantizeInt8Channels } from '../quant.js';
import { type LinearWeight, type QuantInits, Ops, type RotaryCaches } from './graph-ops.js';
import {
  type GlobalRole,
  type LayerRole,
  type TensorSpec,
  type WeightSource,
  MULTIMODAL_TEXT_PREFIX,
  checkWeightShapes,
  globalName,
  layerName,
  textTensorTable,
} from './weights.js';
import { type EmbeddingQuant, type QuantPolicy, quantizeEmbedding, quantizeLinearFor } from './quantize.js';

export interface DecoderGraphOptions {
  /** 'last': logits only for the last position (decode / end of prefill). Default 'all'. */
  logits?: 'all' | 'last';
  /** null: float32 everywhere (parity tests). */
  quant?: QuantPolicy | null;
  /** Checkpoint name prefix (default model.language_model.). */
  prefix?: string;
  /** SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization for RMSNorms (default false: plain ops). */
  fusedNorm?: boolean;
  /** ONNX Gelu(approximate="tanh") instead of the explicit formula (default false). */
  onnxGelu?: boolean;
  /** 'gqa': com.microsoft.GroupQueryAttention (RoPE and norms stay outside it); default 'plain' ops. */
  attention?: 'plain' | 'gqa';
  /**
   * What the graph returns of the cache: 'present' (default), past + new entries per slot, truncated to the
   * window on sliding layers; 'new', only this call's entries (the engine appends them to buffers it keeps, so
   * a decode step's output stays one row however long the context). 'new' needs plain attention.
   */
  cacheOutputs?: 'present' | 'new';
  /**
   * Adds inputs media_embeds float32 [batch, seq, hidden] and media_mask bool [batch, seq]: where the mask is
   * true, the row of media_embeds replaces the scaled token embedding (image/audio encoder output). As in
   * transformers' Gemma4Model, the per-layer context projection then sees the merged embeddings, while the
   * token-identity PLE rows (per_layer_rows) and input_ids at those positions are the pad id's.
   */
  media?: boolean;
  /** Rows per chunk when the embedding is quantised from a row-reading source (default 8192; tests use less). */
  embedChunkRows?: number;
}

/**
 * The graph packages are built with; every option is checked against the reference (test/gemma4-parity.test.ts).
 * Fused RMSNorms and ONNX Gelu are faster everywhere. Attention stays in plain ops: ORT 1.30's CPU
 * GroupQueryAttention copies past + new K/V in every call, and each KV-shared layer calls it again on its
 * source's cache. On the synthetic E2B package (2-core x86-64, 2 threads) plain attention decodes at 17.1 tok/s
 * after 128 prompt tokens and 12.9 after 512, against 15.8 and 9.9 with GroupQueryAttention (prefill equal).
 * The cache goes out as each run's new rows only (engine/kv-cache.ts keeps it): a graph output of the whole
 * cache costs a fresh allocation and a copy into JavaScript every step, about 25 ms for 38 MB here.
 */
export { type CacheSlot, cacheSlots } from './contract.js';

export const FAST_VARIANT: Pick<DecoderGraphOptions, 'attention' | 'fusedNorm' | 'onnxGelu' | 'cacheOutputs'> = {
  attention: 'plain',
  fusedNorm: true,
  onnxGelu: true,
  cacheOutputs: 'new',
};

export interface DecoderGraphInfo {
  inputs: {
    inputIds: string;
    perLayerRows: string | null;
    positionIds: string;
    mediaEmbeds: string | null;
    mediaMask: string | null;
  };
  logits: string;
  logitsMode: 'all' | 'last';
  cache: CacheSlot[];
}

/** Adds the whole decoder to `b`. Weights are read one at a time from `src` (official names). */
export async function buildDecoderGraph(
  b: GraphBuilder,
  cfg: Gemma4TextConfig,
  src: WeightSource,
  opts: DecoderGraphOptions = {},
): Promise<DecoderGraphInfo> {
  const prefix = opts.prefix ?? MULTIMODAL_TEXT_PREFIX;
  const problems = checkWeightShapes(cfg, src, prefix);
  if (problems.length)
    throw new Error(`decoder weights do not match the config:\n  ${problems.slice(0, 20).join('\n  ')}`);
  const ops = new Ops(b, { fusedNorm: opts.fusedNorm ?? false, onnxGelu: opts.onnxGelu ?? false });
  const quant = opts.quant ?? null;
  const specs = new Map(textTensorTable(cfg, prefix).map((s) => [s.name, s]));
  const layers = layerInfos(cfg);
  const H = cfg.hiddenSize;
  const P = cfg.hiddenSizePerLayerInput;
  const L = cfg.numHiddenLayers;
  const eps = cfg.rmsNormEps;
  const logitsMode = opts.logits ?? 'all';

  const get = (name: string): Promise<Float32Array> => src.get(name);
  // RMSNorm scales as the formula uses them: Gemma 3 stores w for a scale of (1 + w).
  const normScale = async (name: string): Promise<Float32Array> => {
    const w = await get(name);
    return cfg.normScaleOffset ? Float32Array.from(w, (v) => v + cfg.normScaleOffset) : w;
  };
  const gName = (r: GlobalRole): string => globalName(r, prefix);
  const lName = (l: number, r: LayerRole): string => layerName(l, r, prefix);
  /** x W^T; `scale` multiplies W (a linear reading the residual stream as carried, see Stream). */
  const linear = async (x: string, name: string, scale = 1): Promise<string> => {
    const lw = await linearWeight(specs.get(name)!, await get(name), quant);
    return ops.linear(x, name, scale === 1 ? lw : scaleLinear(lw, scale));
  };

  // ---- inputs
  const inputIds = b.input(DECODER_IO.inputIds, 'int64', ['batch', 'seq']);
  const perLayerRows = hasPle(cfg) ? b.input(DECODER_IO.perLayerRows, 'float32', ['batch', 'seq', L * P]) : null;
  const positionIds = b.input(DECODER_IO.positionIds, 'int64', ['batch', 'seq']);
  const mediaEmbeds = opts.media ? b.input(DECODER_IO.mediaEmbeds, 'float32', ['batch', 'seq', H]) : null;
  const mediaMask = opts.media ? b.input(DECODER_IO.mediaMask, 'bool', ['batch', 'seq']) : null;
  const slots = cacheSlots(cfg);
  for (const s of slots) {
    const past = s.type === 'sliding_attention' ? 'past_sliding' : 'past_full';
    b.input(s.pastKey, 'float32', ['batch', s.kvHeads, past, s.headDim]);
    b.input(s.pastValue, 'float32', ['batch', s.kvHeads, past, s.headDim]);
  }

  // ---- token embedding (tied with the LM head), scaled by sqrt(hidden)
  // The E2B table is 1.6 GB as float32: quantised in row chunks when the source can read rows (and the
  // graph streams its weights), else whole and released after quantising.
  let embedW: Float32Array | null = null;
  let embedQ: { q: QuantizedMatrix; inits: QuantInits } | null = null;
  let embedded: string;
  let embedTable: string | null = null;
  if (quant?.embedding && src.getRows && streamsWeights(b)) {
    const g = await chunkedQuantizedEmbedding(
      b,
      ops,
      src,
      gName('embed'),
      cfg.vocabSize,
      H,
      quant.embedding,
      inputIds,
      opts.embedChunkRows ?? EMBED_CHUNK_ROWS,
    );
    embedQ = { q: g.q, inits: g.inits };
    embedded = g.out;
  } else if (quant?.embedding) {
    const q = quantizeEmbedding(await get(gName('embed')), cfg.vocabSize, H, quant.embedding);
    const g = ops.gatherQuantized(q, inputIds, 'embed_tokens');
    embedQ = { q, inits: g.inits };
    embedded = g.out;
  } else {
    embedW = await get(gName('embed'));
    embedTable = b.initializer('embed_tokens.weight', 'float32', [cfg.vocabSize, H], embedW);
    embedded = ops.op('Gather', [embedTable, inputIds], { axis: 0 });
  }
  let x0 = ops.op('Mul', [embedded, ops.f32(Math.sqrt(H))]);
  if (mediaEmbeds && mediaMask) x0 = ops.op('Where', [ops.op('Unsqueeze', [mediaMask, ops.i64([2])]), mediaEmbeds, x0]);

  // ---- per-layer inputs [batch, seq, L, P] (Gemma 4)
  let pleAll: string | null = null;
  if (perLayerRows) {
    let ctx = await linear(x0, gName('ple_model_proj'));
    ctx = ops.op('Mul', [ctx, ops.f32(H ** -0.5)]);
    ctx = ops.op('Reshape', [ctx, ops.i64([0, 0, L, P])]);
    ctx = ops.rmsNorm(ctx, 'per_layer_projection_norm', await normScale(gName('ple_proj_norm')), eps);
    const rows = ops.op('Mul', [ops.op('Reshape', [perLayerRows, ops.i64([0, 0, L, P])]), ops.f32(Math.sqrt(P))]);
    pleAll = ops.op('Mul', [ops.op('Add', [ctx, rows]), ops.f32(Math.SQRT1_2)]);
  }

  // ---- RoPE tables per layer type, from float positions [batch, seq, 1]
  const posF = ops.op('Cast', [ops.op('Unsqueeze', [positionIds, ops.i64([2])])], { to: 1 });
  const attention = opts.attention ?? 'plain';
  // Plain attention rotates q and k after their transpose to [B, heads, S, d], in one RotaryEmbedding node
  // each (six plain ops before: 300 of E2B's ~1,500 nodes a step); GroupQueryAttention takes [B, S, hidden].
  const ropeTables = new Map<LayerType, { cos: string; sin: string }>();
  const rotaryCaches = new Map<LayerType, RotaryCaches>();
  for (const l of layers) {
    if (attention === 'plain' && !rotaryCaches.has(l.type))
      rotaryCaches.set(l.type, ops.rotaryCaches(posF, positionIds, l.invFreq));
    if (attention !== 'plain' && !ropeTables.has(l.type)) ropeTables.set(l.type, ops.ropeTables(posF, l.invFreq));
  }

  // ---- decoder layers
  const seqLen = ops.dim(inputIds, 1);
  const masks = new Map<LayerType, string>();
  const newKv = new Map<number, { k: string; v: string; pastK: string; pastV: string }>();
  const kvAll = new Map<number, { k: string; v: string }>();
  const cacheOutputs = opts.cacheOutputs ?? 'present';
  if (cacheOutputs === 'new' && attention !== 'plain') throw new Error("cacheOutputs 'new' needs plain attention");
  const newOutputs: Array<[string, string]> = [];
  // With one KV head (E2B, Gemma 3 270M) every query row attends to the same keys, so the rows can be ordered
  // (position, head): the projections' own layout, with no transpose into attention or out of it.
  const oneKvHead = attention === 'plain' && cfg.numKeyValueHeads === 1;
  const bnshCache = new Map<string, string>();
  /** [B, S, heads, d] -> [B, heads, S, d], once per tensor (a KV-shared layer reuses its source's). */
  const bnsh = (t: string): string => {
    let r = bnshCache.get(t);
    if (!r) {
      r = ops.op('Transpose', [t], { perm: [0, 2, 1, 3] });
      bnshCache.set(t, r);
    }
    return r;
  };
  let stream: Stream = { h: x0, pending: null, scale: 1 };
  for (const info of layers) {
    stream = await decoderLayer(info, stream);
  }

  // ---- final norm (adding the last layer's pending contribution), tied LM head, soft-cap
  const finalScale = await normScale(gName('final_norm'));
  const finalEps = eps / stream.scale ** 2;
  let h = stream.pending
    ? ops.skipRmsNorm(stream.pending, stream.h, 'norm', finalScale, finalEps)[0]
    : ops.rmsNorm(stream.h, 'norm', finalScale, finalEps);
  if (logitsMode === 'last') h = ops.op('Slice', [h, ops.i64([-1]), ops.i64([Number.MAX_SAFE_INTEGER]), ops.i64([1])]);
  let logits: string;
  if (embedQ && quant!.embedding!.lmHead === 'int8-channels') {
    logits = ops.int8Linear(
      h,
      'lm_head',
      await int8LmHead(src, gName('embed'), cfg.vocabSize, H, opts.embedChunkRows ?? EMBED_CHUNK_ROWS),
    );
  } else if (embedQ) {
    logits = ops.linearFromTable(h, 'lm_head', embedQ.q, embedQ.inits, quant!.embedding!.accuracyLevel);
  } else {
    // Float mode: share the table's bytes when streamed, transpose in-graph (ORT folds it at load).
    const ref = b.externalRef(embedTable!);
    const head = ref
      ? b.initializerFromRef('lm_head.weight', 'float32', [cfg.vocabSize, H], ref)
      : b.initializer('lm_head.weight', 'float32', [cfg.vocabSize, H], embedW!);
    logits = ops.op('MatMul', [h, ops.op('Transpose', [head], { perm: [1, 0] })]);
  }
  const cap = cfg.finalLogitSoftcapping;
  if (cap !== null) logits = ops.op('Mul', [ops.op('Tanh', [ops.op('Div', [logits, ops.f32(cap)])]), ops.f32(cap)]);
  b.node('Identity', [logits], [DECODER_IO.logits]);
  b.output(DECODER_IO.logits, 'float32', ['batch', logitsMode === 'last' ? 1 : 'seq', cfg.vocabSize]);
  // This run's K/V rows leave the graph under their output names, without an Identity copy each.
  for (const [tensor, output] of newOutputs) b.renameNodeOutput(tensor, output);
  for (const s of slots) {
    if (cacheOutputs === 'new') {
      b.output(s.newKey, 'float32', ['batch', s.kvHeads, 'seq', s.headDim]);
      b.output(s.newValue, 'float32', ['batch', s.kvHeads, 'seq', s.headDim]);
      continue;
    }
    const present = s.type === 'sliding_attention' ? 'present_sliding' : 'present_full';
    b.output(s.presentKey, 'float32', ['batch', s.kvHeads, present, s.headDim]);
    b.output(s.presentValue, 'float32', ['batch', s.kvHeads, present, s.headDim]);
  }
  return {
    inputs: { inputIds, perLayerRows, positionIds, mediaEmbeds, mediaMask },
    logits: DECODER_IO.logits,
    logitsMode,
    cache: slots,
  };

  async function decoderLayer(info: LayerInfo, stream: Stream): Promise<Stream> {
    const l = info.index;
    const { scale } = stream;
    const streamEps = eps / scale ** 2; // RMSNorm of the true stream, read from the carried one
    /** A block's output norm with its weights divided by the stream's scale: adds to the carried stream. */
    const contribution = async (x: string, name: string, r: LayerRole): Promise<string> => {
      const wn = await norm(r);
      return ops.rmsNorm(x, name, scale === 1 ? wn : wn.map((v) => v / scale), eps);
    };
    const d = info.headDim;
    const nH = cfg.numAttentionHeads;
    const nKv = cfg.numKeyValueHeads;
    /** x [B, S, heads, d] -> rotated; [B, heads, S, d] for plain attention (bnsh), [B, S, heads, d] for GQA. */
    const rope = (x: string): string =>
      attention === 'plain'
        ? ops.rotary(bnsh(x), rotaryCaches.get(info.type)!)
        : ops.applyRope(x, ropeTables.get(info.type)!, d);
    const w = (r: LayerRole): Promise<Float32Array> => get(lName(l, r));
    const norm = (r: LayerRole): Promise<Float32Array> => normScale(lName(l, r));

    // attention block: projections, q/k RMSNorm, RoPE in [B, S, heads, d]; v RMSNorm without scale
    // The previous layer's last contribution is added here, in the input norm's own node.
    const inputNorm = `layers.${l}.input_layernorm`;
    const [xa, h] = stream.pending
      ? ops.skipRmsNorm(stream.pending, stream.h, inputNorm, await norm('input_norm'), streamEps)
      : [ops.rmsNorm(stream.h, inputNorm, await norm('input_norm'), streamEps), stream.h];
    const reshape = (x: string, dims: number[]): string => ops.op('Reshape', [x, ops.i64(dims)]);
    let q = reshape(await linear(xa, lName(l, 'q_proj')), [0, 0, nH, d]);
    q = ops.rmsNorm(q, `layers.${l}.q_norm`, await norm('q_norm'), eps);
    // One KV head: RotaryEmbedding on [B, S, heads * d], then query rows in (position, head) order.
    q = oneKvHead ? ops.rotary(reshape(q, [0, 0, nH * d]), rotaryCaches.get(info.type)!) : rope(q);
    // Scaling q scales every score q.k (Gemma 3's query_pre_attn_scalar^-0.5; Gemma 4's is 1).
    if (cfg.attentionScale !== 1) q = ops.op('Mul', [q, ops.f32(cfg.attentionScale)]);
    if (oneKvHead) q = reshape(q, [0, 1, -1, d]);
    if (info.ownsKv) {
      let k: string;
      let v: string;
      if (oneKvHead) {
        // [B, S, d] is one head already: norm and rotate as it is, then [B, 1, S, d].
        k = ops.rmsNorm(await linear(xa, lName(l, 'k_proj')), `layers.${l}.k_norm`, await norm('k_norm'), eps);
        k = reshape(ops.rotary(k, rotaryCaches.get(info.type)!), [0, 1, -1, d]);
        v = await linear(xa, lName(l, 'v_proj'));
        if (cfg.valueNorm) v = ops.rmsNormNoScale(v, `layers.${l}.v_norm`, d, eps);
        v = reshape(v, [0, 1, -1, d]);
      } else {
        k = reshape(await linear(xa, lName(l, 'k_proj')), [0, 0, nKv, d]);
        k = rope(ops.rmsNorm(k, `layers.${l}.k_norm`, await norm('k_norm'), eps));
        v = reshape(await linear(xa, lName(l, 'v_proj')), [0, 0, nKv, d]);
        if (cfg.valueNorm) v = ops.rmsNormNoScale(v, `layers.${l}.v_norm`, d, eps);
        if (attention === 'plain') v = bnsh(v);
      }
      const slot = slots.find((s) => s.layer === l)!;
      newKv.set(l, { k, v, pastK: slot.pastKey, pastV: slot.pastValue });
    }
    // KV-shared layers attend with their source layer's past + new K/V ([B, kv heads, S, d] for plain attention).
    const kv = newKv.get(info.kvSource)!;
    const ownSlot = info.ownsKv ? slots.find((s) => s.layer === l)! : null;
    let attn: string;
    let presentK: string;
    let presentV: string;
    if (attention === 'gqa') {
      const flat = (t: string, heads: number): string => ops.op('Reshape', [t, ops.i64([0, 0, heads * d])]);
      [attn, presentK, presentV] = ops.gqa(
        flat(q, nH),
        flat(kv.k, nKv),
        flat(kv.v, nKv),
        kv.pastK,
        kv.pastV,
        seqLen,
        nH,
        nKv,
        info.window,
      ) as [string, string, string];
    } else {
      let all = kvAll.get(info.kvSource);
      if (!all) {
        all = {
          k: ops.op('Concat', [kv.pastK, kv.k], { axis: 2 }),
          v: ops.op('Concat', [kv.pastV, kv.v], { axis: 2 }),
        };
        kvAll.set(info.kvSource, all);
      }
      let mask = masks.get(info.type);
      if (!mask) {
        mask = ops.causalMask(seqLen, ops.dim(all.k, 2), info.window);
        if (oneKvHead) mask = ops.repeatRows(mask, nH);
        masks.set(info.type, mask);
      }
      attn = oneKvHead
        ? ops.attentionOneKvHead(q, all.k, all.v, mask, nH, d)
        : ops.attention(q, all.k, all.v, mask, nH, nKv, d);
      [presentK, presentV] = [all.k, all.v];
    }
    if (ownSlot && cacheOutputs === 'new') {
      newOutputs.push([kv.k, ownSlot.newKey], [kv.v, ownSlot.newValue]);
    } else if (ownSlot) {
      if (info.window !== null) {
        // Keep only what the next call can see: the last window-1 positions.
        const keep = [ops.i64([-(info.window - 1)]), ops.i64([Number.MAX_SAFE_INTEGER]), ops.i64([2])];
        b.node('Slice', [presentK, ...keep], [ownSlot.presentKey]);
        b.node('Slice', [presentV, ...keep], [ownSlot.presentValue]);
      } else {
        b.node('Identity', [presentK], [ownSlot.presentKey]);
        b.node('Identity', [presentV], [ownSlot.presentValue]);
      }
    }
    const o = await contribution(
      await linear(attn, lName(l, 'o_proj')),
      `layers.${l}.post_attention_layernorm`,
      'post_attn_norm',
    );

    // MLP block (the residual add and pre-FF norm fuse into one SkipSimplifiedLayerNormalization)
    const preFf = `layers.${l}.pre_feedforward_layernorm`;
    let [xf, hs] = ops.skipRmsNorm(o, h, preFf, await norm('pre_ff_norm'), streamEps);
    const gate = ops.geluTanh(await linear(xf, lName(l, 'gate_proj')));
    const up = await linear(xf, lName(l, 'up_proj'));
    const m = await contribution(
      await linear(ops.op('Mul', [gate, up]), lName(l, 'down_proj')),
      `layers.${l}.post_feedforward_layernorm`,
      'post_ff_norm',
    );

    // per-layer input block (Gemma 4); its gate reads the true stream, so its weights take the scale
    let pending = m;
    if (pleAll) {
      hs = ops.op('Add', [hs, m]);
      const pleL = ops.op('Gather', [pleAll, ops.i64(l)], { axis: 2 });
      const g = ops.op('Mul', [ops.geluTanh(await linear(hs, lName(l, 'ple_gate'), scale)), pleL]);
      const p = await linear(g, lName(l, 'ple_proj'));
      pending = await contribution(p, `layers.${l}.post_per_layer_input_norm`, 'ple_post_norm');
    }
    // h_next = layer_scalar * (hs + pending): the scalar joins the carried scale instead of a Mul.
    const next = cfg.layerScalar ? scale * (await w('layer_scalar'))[0]! : scale;
    if (next >= 1 / MAX_CARRIED_SCALE && next <= MAX_CARRIED_SCALE) return { h: hs, pending, scale: next };
    // Far from 1, the carried stream would lose range: multiply it back to the true one here.
    return { h: ops.op('Mul', [ops.op('Add', [hs, pending]), ops.f32(next)]), pending: null, scale: 1 };
  }
}

/**
 * The residual stream between layers, carried as h / scale plus a last contribution not yet added. Gemma 4
 * multiplies the whole stream by a scalar after every layer; instead of a Mul over it each layer, the product so
 * far is folded into what reads or adds to the stream: RMSNorm(scale * h) is RMSNorm(h) with eps / scale^2, a
 * normed contribution is added with its norm weights divided by scale, and a linear reading the stream takes
 * its weights times scale. Exact in real arithmetic. The pending add joins the next norm's node
 * (SkipSimplifiedLayerNormalization), so each layer ends without an Add and a Mul of its own.
 */
interface Stream {
  h: string;
  pending: string | null;
  scale: number;
}

/** Past this factor either way the carried stream is multiplied back (float32 range and eps / scale^2). */
const MAX_CARRIED_SCALE = 64;

function streamsWeights(b: GraphBuilder): boolean {
  try {
    return !b.externalData.closed;
  } catch {
    return false; // deferred mode: no external-data file to write chunks into
  }
}

/**
 * The embedding table as an untied int8 LM head ([hidden, vocab] codes, one scale per vocabulary row), read
 * in row chunks when the source can (E2B's table is 1.6 GB as float32; the codes are a quarter of that).
 */
async function int8LmHead(
  src: WeightSource,
  name: string,
  vocab: number,
  hidden: number,
  chunkRows: number,
): Promise<Int8ChannelMatrix> {
  if (!src.getRows) return quantizeInt8Channels(await src.get(name), vocab, hidden);
  const codes = new Int8Array(hidden * vocab);
  const scales = new Float32Array(vocab);
  for (let start = 0; start < vocab; start += chunkRows) {
    const count = Math.min(chunkRows, vocab - start);
    const part = quantizeInt8Channels(await src.getRows(name, start, count), count, hidden);
    scales.set(part.scales, start);
    for (let c = 0; c < hidden; c++) codes.set(part.codes.subarray(c * count, (c + 1) * count), c * vocab + start);
  }
  return { n: vocab, k: hidden, codes, scales };
}

/** Rows of the embedding table quantised per chunk (rows are independent: the bytes equal a whole-table quantisation); 50 MB of float32 at E2B's width. */
const EMBED_CHUNK_ROWS = 8192;

/**
 * The quantised embedding lookup with the table read and quantised `chunkRows` rows at a time: packed
 * codes go straight to the external-data file, scales and zero points (1/16 of the bytes or less) are
 * gathered in memory. The returned matrix has no `data` (its bytes live only in the file, shared by ref).
 */
async function chunkedQuantizedEmbedding(
  b: GraphBuilder,
  ops: Ops,
  src: WeightSource,
  name: string,
  vocab: number,
  hidden: number,
  eq: EmbeddingQuant,
  ids: string,
  chunkRows: number,
): Promise<{ q: QuantizedMatrix; inits: QuantInits; out: string }> {
  const rowBytes = (hidden * eq.bits) / 8;
  const writer = b.beginExternal(vocab * rowBytes);
  const parts: QuantizedMatrix[] = [];
  try {
    for (let start = 0; start < vocab; start += chunkRows) {
      const count = Math.min(chunkRows, vocab - start);
      const part = quantizeEmbedding(await src.getRows!(name, start, count), count, hidden, eq);
      writer.write(part.data);
      parts.push({ ...part, data: new Uint8Array(0) });
    }
  } catch (e) {
    writer.finish(); // the builder must not be left mid-tensor
    throw e;
  }
  const ref = writer.finish();
  const joined = concatQuantized(parts);
  const q: QuantizedMatrix = { ...joined, n: vocab, data: new Uint8Array(0) };
  const nb = hidden / eq.blockSize;
  const inits: QuantInits = {
    data: b.initializerFromRef('embed_tokens.qweight', 'uint8', [vocab, rowBytes], ref),
    scales: b.initializer('embed_tokens.scales', 'float32', [vocab, nb], q.scales),
    zeroPoints: b.initializer(
      'embed_tokens.zero_points',
      'uint8',
      [vocab, Math.ceil((nb * eq.bits) / 8)],
      q.zeroPoints,
    ),
  };
  const out = ops.op(
    'GatherBlockQuantized',
    [inits.data, ids, inits.scales, inits.zeroPoints!],
    { gather_axis: 0, quantize_axis: 1, block_size: eq.blockSize, bits: eq.bits },
    'com.microsoft',
  );
  return { q, inits, out };
}

/**
 * scale * W, with a quantised W's codes untouched and its scales multiplied: exactly scale times the weights the
 * package's quantisation gives (quantising scale * W instead can round some codes the other way).
 */
function scaleLinear(lw: LinearWeight, scale: number): LinearWeight {
  const times = (a: Float32Array): Float32Array => a.map((v) => v * scale);
  if (lw.kind === 'float') return { ...lw, w: times(lw.w) };
  if (lw.kind === 'int8') return { kind: 'int8', matrix: { ...lw.matrix, scales: times(lw.matrix.scales) } };
  return { ...lw, packed: { ...lw.packed, scales: times(lw.packed.scales) } };
}

async function linearWeight(spec: TensorSpec, w: Float32Array, quant: QuantPolicy | null): Promise<LinearWeight> {
  const [n, k] = spec.shape as [number, number];
  const lq = quant?.linear(spec) ?? null;
  if (!lq) return { kind: 'float', n, k, w };
  const r = quantizeLinearFor(w, n, k, lq);
  return r.kind === 'int8'
    ? { kind: 'int8', matrix: r.q }
    : { kind: 'nbits', packed: r.q, accuracyLevel: lq.accuracyLevel };
}

/** Writes decoder.onnx + one external-data file into `dir` (streaming: weights go to disk as they are added). */
export async function writeDecoderModel(
  dir: string,
  cfg: Gemma4TextConfig,
  src: WeightSource,
  opts: DecoderGraphOptions & { onnxFile?: string; dataFile?: string } = {},
): Promise<SaveResult & { info: DecoderGraphInfo }> {
  const path = await import('node:path');
  const onnxFile = opts.onnxFile ?? 'decoder.onnx';
  const dataFile = opts.dataFile ?? 'decoder.onnx.data';
  const b = new GraphBuilder({
    name: 'gemma4_text_decoder',
    externalData: { path: path.join(path.resolve(dir), dataFile) },
  });
  const info = await buildDecoderGraph(b, cfg, src, opts);
  b.setMetadata('perch.model', 'gemma4_text_decoder');
  b.setMetadata('perch.logits', info.logitsMode);
  const saved = await b.save(dir, onnxFile);
  return { ...saved, info };
}
