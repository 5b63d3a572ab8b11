/**
 * Mixed 2/4-bit policy by measured error: before the decoder is written, every Linear's 2-bit relative
 * reconstruction error is measured on a row sample (same quantiser and method as the real pass), and the
 * matrices where 2 bits costs most are kept at 4 bits: those whose error is at least `min_error_ratio`
 * times the median over all linears, worst first, while the promoted weights stay within `max_fraction` of
 * all linear weights (the byte budget: models/README.md has the arithmetic). Matrices that merely sit at
 * the typical 2-bit error stay at 2 bits, so random (synth) weights promote nothing.
 * The sample pass reads ~128 K values per matrix (row ranges when the source supports them), so it costs a
 * few percent of a conversion and works on a checkpoint read tensor by tensor.
 */
import type { Gemma4TextConfig } from '../gemma4/config.js';
import { type TensorSpec, type WeightSource, textTensorTable } from '../gemma4/weights.js';
import { type QuantBits, dequantizeMatMulNBits, quantizeMatMulNBits } from '../quant.js';
import type { QuantPolicy, TensorDecision } from '../package/manifest.js';
import { median } from '../../common/stats.js';

/** Values sampled per matrix (whole matrices up to this size). */
export const SAMPLE_VALUES = 1 << 17;
/** Row ranges the sample is spread over. */
const SAMPLE_CHUNKS = 8;

export interface LinearError {
  name: string;
  /** Weights in the matrix (N x K). */
  size: number;
  /** Relative RMS reconstruction error at the base bits, on the sample. */
  error: number;
}

/** Row ranges [start, count) spreading about `values` values evenly over an n x k matrix. */
export function sampleRanges(n: number, k: number, values = SAMPLE_VALUES, chunks = SAMPLE_CHUNKS): [number, number][] {
  const rows = Math.min(n, Math.max(1, Math.ceil(values / k)));
  if (rows === n) return [[0, n]];
  const parts = Math.min(chunks, rows);
  const per = Math.ceil(rows / parts);
  const out: [number, number][] = [];
  for (let i = 0; i < parts; i++) {
    const start = Math.floor((i * (n - per)) / Math.max(1, parts - 1));
    const prev = out[out.length - 1];
    if (prev && start < prev[0] + prev[1]) continue; // overlapping ranges would count rows twice
    out.push([start, per]);
  }
  return out;
}

/** Relative RMS error of quantising rows (k wide) at `bits`: sqrt(sum err^2 / sum w^2). */
function sampleError(
  w: Float32Array,
  k: number,
  bits: QuantBits,
  blockSize: number,
  method: 'search' | 'rtn',
): { se: number; ss: number } {
  const n = w.length / k;
  const d = dequantizeMatMulNBits(quantizeMatMulNBits(w, n, k, { bits, blockSize, method }));
  let se = 0;
  let ss = 0;
  for (let i = 0; i < w.length; i++) {
    const e = w[i]! - d[i]!;
    se += e * e;
    ss += w[i]! * w[i]!;
  }
  return { se, ss };
}

/** Measures every quantised Linear's relative error at the policy's base bits, on a row sample. */
export async function measureLinearErrors(
  cfg: Gemma4TextConfig,
  src: WeightSource,
  prefix: string,
  policy: QuantPolicy,
): Promise<LinearError[]> {
  const lin = policy.linear;
  if (!lin) return [];
  const out: LinearError[] = [];
  for (const spec of textTensorTable(cfg, prefix).filter((s) => s.kind === 'linear')) {
    const [n, k] = spec.shape as [number, number];
    let se = 0;
    let ss = 0;
    const ranges = src.getRows ? sampleRanges(n, k) : [[0, n] as [number, number]];
    const whole = ranges.length === 1 && ranges[0]![1] === n ? await src.get(spec.name) : null;
    for (const [start, count] of ranges) {
      const rows = whole ?? (await src.getRows!(spec.name, start, count));
      const e = sampleError(rows, k, lin.bits, lin.block_size, lin.method);
      se += e.se;
      ss += e.ss;
    }
    out.push({ name: spec.name, size: n * k, error: ss > 0 ? Math.sqrt(se / ss) : 0 });
  }
  return out;
}

/** The per-tensor decisions: promoted bits for the worst outliers within the budget, base bits otherwise. */
export function decidePromotions(errors: LinearError[], policy: QuantPolicy): TensorDecision[] {
  const lin = policy.linear;
  if (!lin) return [];
  const rule = lin.promote;
  const promoted = new Set<string>();
  if (rule) {
    const threshold = rule.min_error_ratio * median(errors.map((e) => e.error));
    let budget = rule.max_fraction * errors.reduce((a, e) => a + e.size, 0);
    for (const e of [...errors].sort((a, b) => b.error - a.error)) {
      if (e.error < threshold) break;
      if (e.size > budget) continue; // a smaller outlier further down may still fit
      promoted.add(e.name);
      budget -= e.size;
    }
  }
  return errors.map((e) => ({
    name: e.name,
    bits: promoted.has(e.name) ? rule!.bits : lin.bits,
    base_error: round4(e.error),
  }));
}

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

/** Runs the sample pass and returns the policy with its per-tensor decisions (unchanged without a promote rule). */
export async function planMixedPolicy(
  cfg: Gemma4TextConfig,
  src: WeightSource,
  prefix: string,
  policy: QuantPolicy,
): Promise<QuantPolicy> {
  if (!policy.linear?.promote || policy.linear.bits >= policy.linear.promote.bits) return policy;
  const decisions = decidePromotions(await measureLinearErrors(cfg, src, prefix, policy), policy);
  return { ...policy, tensors: decisions };
}

/** Bits of one Linear under a (possibly mixed) manifest policy. */
export function linearBitsFor(policy: QuantPolicy, spec: Pick<TensorSpec, 'name'>): QuantBits | null {
  if (!policy.linear) return null;
  const d = policy.tensors?.find((t) => t.name === spec.name);
  return d ? d.bits : policy.linear.bits;
}
