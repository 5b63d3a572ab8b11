/**
 * The audio encoder as a stream: one graph run per chunk of audio, carrying across chunks exactly what the
 * next chunk's outputs depend on, so that a clip fed in pieces gives the soft tokens one pass over it gives.
 *
 * Why this is exact: every link between time steps in the encoder looks only backwards, a bounded distance.
 *   - Subsampling: Conv2d(3x3, stride 2, pad 1) reads input rows 2t-1 .. 2t+1. Fed 4n frames at a time
 *     (n tokens), stage 0 needs one earlier frame and stage 1 one earlier stage-0 row; the first chunk gets
 *     zeros, which is the one-pass graph's padding. Frames are masked before each stage as there.
 *   - Attention: query t sees keys t - (left - 2) .. t (attention_context_right is 0), each with the relative
 *     term of its distance; transformers' blocks only decide how that is batched. So W = left - 2 past keys
 *     and values per layer, with their validity (nothing before the stream's start).
 *   - The depthwise convolution is causal (left pad K - 1): its last K - 1 inputs per layer.
 * Everything else (feed-forwards, norms, projections, the embedder) works on one time step at a time.
 * The one-pass graph's right edge (its padded tokens) is reproduced by feeding the last chunk with its mask.
 */
import type { GraphBuilder } from '../../onnx/graph.js';
import { type Gemma4AudioConfig, audioDerived } from './audio-config.js';
import type { TimeAxis } from './audio-graph.js';
import { AUDIO_GRAPH_IO, type AudioStreamState, audioStateInput, audioStateOutput } from './contract.js';
import type { Ops } from './graph-ops.js';

/** Sizes of the stream state (see AUDIO_STREAM_STATE in contract.ts). */
export function audioStreamShapes(cfg: Gemma4AudioConfig): Record<AudioStreamState, number[]> {
  const W = audioDerived(cfg).maxPastHorizon - 1;
  const L = cfg.numHiddenLayers;
  const H = cfg.hiddenSize;
  return {
    keys: [L, W, H],
    values: [L, W, H],
    conv: [L, cfg.convKernelSize - 1, H],
    valid: [W],
    frame: [1, cfg.inputFeatureSize],
    sub: [cfg.subsamplingConvChannels[0], Math.ceil(cfg.inputFeatureSize / 2)],
  };
}

/** The time axis of one chunk continuing a stream; collects the state it leaves for the next chunk. */
export class StreamChunk implements TimeAxis {
  private readonly W: number;
  /** Per layer: the state's rows this chunk leaves (stacked into next_* by finish()). */
  private readonly next: { keys: string[]; values: string[]; conv: string[]; frame?: string; sub?: string } = {
    keys: [],
    values: [],
    conv: [],
  };
  private visible = '';
  private relIndex = '';
  private keyValid = '';

  constructor(
    private readonly o: Ops,
    private readonly b: GraphBuilder,
    private readonly cfg: Gemma4AudioConfig,
  ) {
    this.W = audioDerived(cfg).maxPastHorizon - 1;
    if (this.W < 1) throw new Error('a streaming audio encoder needs attention_context_left >= 3');
    if (cfg.convKernelSize < 2) throw new Error('a streaming audio encoder needs conv_kernel_size >= 2');
  }

  /** Declares the state inputs. */
  declareInputs(): void {
    const shapes = audioStreamShapes(this.cfg);
    for (const s of Object.keys(shapes) as AudioStreamState[]) this.b.input(audioStateInput(s), 'float32', shapes[s]);
  }

  /** Last `n` rows along `axis`. */
  private tail(x: string, n: number, axis: number): string {
    const o = this.o;
    return o.op('Slice', [x, o.i64([-n]), o.i64([Number.MAX_SAFE_INTEGER]), o.i64([axis])]);
  }

  /** Layer `layer`'s slice of a stacked state, with a leading batch axis: [1, rows, H]. */
  private layerState(s: 'keys' | 'values' | 'conv', layer: number): string {
    const o = this.o;
    return o.op('Unsqueeze', [o.op('Gather', [audioStateInput(s), o.i64(layer)], { axis: 0 }), o.i64([0])]);
  }

  subsampleConv(x: string, w: string, stage: 0 | 1): string {
    const o = this.o;
    // The row before this chunk (zeros at the start), then no time padding: 4n + 1 rows give 2n, 2n + 1 give n.
    let before: string;
    if (stage === 0) {
      before = o.op('Unsqueeze', [audioStateInput('frame'), o.i64([0, 1])]); // [1, 1, 1, F]
      this.next.frame = o.op('Squeeze', [this.tail(x, 1, 2), o.i64([0, 1])]); // [1, F]
    } else {
      before = o.op('Unsqueeze', [audioStateInput('sub'), o.i64([0, 2])]); // [1, C0, 1, F/2]
      this.next.sub = o.op('Squeeze', [this.tail(x, 1, 2), o.i64([0, 2])]);
    }
    const joined = o.op('Concat', [before, x], { axis: 2 });
    return o.op('Conv', [joined, w], { kernel_shape: [3, 3], strides: [2, 2], pads: [0, 1, 0, 1] });
  }

  tokens(tokenMaskF: string): void {
    const o = this.o;
    const W = this.W;
    const d = audioDerived(this.cfg);
    // Keys are the W past tokens then this chunk's n: query i sits at key index W + i.
    this.keyValid = o.op('Concat', [audioStateInput('valid'), o.op('Squeeze', [tokenMaskF, o.i64([0])])], {
      axis: 0,
    }); // [W + n]
    const n = o.dim(tokenMaskF, 1);
    const qi = o.op('Unsqueeze', [o.op('Range', [o.i64(0), n, o.i64(1)]), o.i64([1])]);
    const kj = o.op('Unsqueeze', [o.op('Range', [o.i64(0), o.op('Add', [n, o.i64(W)]), o.i64(1)]), o.i64([0])]);
    const offset = o.op('Sub', [kj, qi]); // j - i = W - distance
    const inWindow = o.op('And', [o.op('GreaterOrEqual', [offset, o.i64(0)]), o.op('LessOrEqual', [offset, o.i64(W)])]);
    const real = o.op('Greater', [o.op('Unsqueeze', [this.keyValid, o.i64([0])]), o.f32(0.5)]);
    this.visible = o.op('And', [inWindow, real]); // [n, W + n]
    // The relative term of distance dist is column maxPast - dist of q.relk; columns past the table read 0
    // (transformers' rel_shift pads there), here a zero column appended at index P.
    const P = d.numRelPositions;
    this.relIndex = o.op('Clip', [o.op('Add', [offset, o.i64(d.maxPastHorizon - W)]), o.i64(0), o.i64(P)]);
  }

  attend(q: string, k: string, v: string, relk: { name: string; data: Float32Array }, layer: number): string {
    const o = this.o;
    const c = this.cfg;
    const d = audioDerived(c);
    const nH = c.numAttentionHeads;
    const D = d.headDim;
    const W = this.W;
    const keys = o.op('Concat', [this.layerState('keys', layer), k], { axis: 1 }); // [1, W + n, H]
    const values = o.op('Concat', [this.layerState('values', layer), v], { axis: 1 });
    this.next.keys.push(this.tail(keys, W, 1));
    this.next.values.push(this.tail(values, W, 1));
    const heads = (x: string, perm: number[]): string =>
      o.op('Transpose', [o.op('Reshape', [x, o.i64([1, -1, nH, D])])], { perm });
    const qh = heads(q, [0, 2, 1, 3]); // [1, nH, n, D]
    const ac = o.op('MatMul', [qh, heads(keys, [0, 2, 3, 1])]); // [1, nH, n, W + n]
    const r = this.b.initializer(relk.name, 'float32', [nH, D, d.numRelPositions], relk.data);
    const qr = o.op('Pad', [o.op('MatMul', [qh, r]), o.i64([0, 0, 0, 0, 0, 0, 0, 1]), o.f32(0)], { mode: 'constant' });
    const index = o.op('Expand', [this.relIndex, o.op('Shape', [ac])]);
    const bd = o.op('GatherElements', [qr, index], { axis: 3 });
    const cap = o.f32(c.attentionLogitCap);
    const capped = o.op('Mul', [o.op('Tanh', [o.op('Div', [o.op('Add', [ac, bd]), cap])]), cap]);
    const logits = o.op('Where', [this.visible, capped, o.f32(c.attentionInvalidLogitsValue)]);
    const probs = o.op('Softmax', [logits], { axis: -1 });
    const att = o.op('MatMul', [probs, heads(values, [0, 2, 1, 3])]); // [1, nH, n, D]
    return o.op('Reshape', [o.op('Transpose', [att], { perm: [0, 2, 1, 3] }), o.i64([1, -1, nH * D])]);
  }

  causalConv(x: string, w: string, layer: number): string {
    const o = this.o;
    const K = this.cfg.convKernelSize;
    const joined = o.op('Concat', [this.layerState('conv', layer), x], { axis: 1 }); // [1, K - 1 + n, H]
    this.next.conv.push(this.tail(joined, K - 1, 1));
    const conv = o.op('Conv', [o.op('Transpose', [joined], { perm: [0, 2, 1] }), w], {
      kernel_shape: [K],
      group: this.cfg.hiddenSize,
    });
    return o.op('Transpose', [conv], { perm: [0, 2, 1] });
  }

  /** Writes the next_* outputs. */
  finish(): void {
    const o = this.o;
    const shapes = audioStreamShapes(this.cfg);
    const stack = (rows: string[]): string => o.op('Concat', rows, { axis: 0 }); // [1, r, H] each -> [L, r, H]
    const outs: Record<AudioStreamState, string> = {
      keys: stack(this.next.keys),
      values: stack(this.next.values),
      conv: stack(this.next.conv),
      valid: this.tail(this.keyValid, this.W, 0),
      frame: this.next.frame!,
      sub: this.next.sub!,
    };
    for (const s of Object.keys(outs) as AudioStreamState[]) {
      this.b.node('Identity', [outs[s]], [audioStateOutput(s)]);
      this.b.output(audioStateOutput(s), 'float32', shapes[s]);
    }
  }
}

/** Writes the streaming graph's I/O around `encode` (see AUDIO_STREAM_STATE in contract.ts). */
export async function buildStreamGraph(
  encode: (features: string, maskF: string, time: TimeAxis) => Promise<{ embeds: string; tokenMaskF: string }>,
  o: Ops,
  b: GraphBuilder,
  cfg: Gemma4AudioConfig,
): Promise<void> {
  const time = new StreamChunk(o, b, cfg);
  b.input(AUDIO_GRAPH_IO.features, 'float32', [1, 'frames', cfg.inputFeatureSize]);
  b.input(AUDIO_GRAPH_IO.mask, 'bool', [1, 'frames']);
  time.declareInputs();
  const maskF = o.op('Cast', [AUDIO_GRAPH_IO.mask], { to: 1 });
  const { embeds, tokenMaskF } = await encode(AUDIO_GRAPH_IO.features, maskF, time);
  b.node('Identity', [embeds], [AUDIO_GRAPH_IO.embeds]);
  b.node('Cast', [tokenMaskF], [AUDIO_GRAPH_IO.outMask], { to: 9 });
  b.output(AUDIO_GRAPH_IO.embeds, 'float32', [1, 'tokens', cfg.textHiddenSize]);
  b.output(AUDIO_GRAPH_IO.outMask, 'bool', [1, 'tokens']);
  time.finish();
}
