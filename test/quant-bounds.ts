/**
 * Bounds for a quantised encoder graph's output, placed between two references: the same model run on the
 * dequantised weights (what the graph should compute) and on the float weights (what it would compute had it
 * ignored its quantised weights). Both sides are bounded, from measurement, so that neither a graph that
 * ignored its weights (too near the float model) nor a broken one (too far from the dequantised reference)
 * passes, and where int8 activations are expected, a graph that silently ran float ones fails too.
 */
import { relErr } from './gemma4-helpers.js';

export interface QuantBounds {
  /** Ceiling on the relative error against the dequantised reference (float rounding, int8 activations). */
  maxVsDequantised: number;
  /** Floor on it, where int8 activations must perturb the output (float activations give ~1e-6). */
  minVsDequantised?: number;
  /** Floor on the relative error against the float model: the quantised weights' own, measured effect. */
  minVsFloat: number;
}

export interface QuantErrors {
  vsDequantised: number;
  vsFloat: number;
}

export function quantErrors(got: Float32Array, deq: Float32Array, float: Float32Array): QuantErrors {
  return { vsDequantised: relErr(got, deq), vsFloat: relErr(got, float) };
}

/** The bounds `e` breaks, as readable lines (empty: within bounds). */
export function boundFailures(e: QuantErrors, b: QuantBounds): string[] {
  const out: string[] = [];
  if (!(e.vsDequantised <= b.maxVsDequantised))
    out.push(`vs dequantised ${e.vsDequantised.toExponential(2)} > ${b.maxVsDequantised}`);
  if (b.minVsDequantised !== undefined && !(e.vsDequantised >= b.minVsDequantised))
    out.push(`vs dequantised ${e.vsDequantised.toExponential(2)} < ${b.minVsDequantised}`);
  if (!(e.vsFloat >= b.minVsFloat)) out.push(`vs float ${e.vsFloat.toExponential(2)} < ${b.minVsFloat}`);
  return out;
}

/**
 * Outputs a wrong graph would give: the float model's (quantised weights ignored) and zeros (weights read as
 * zeros); the bounds must reject both, which keeps them from drifting loose.
 */
export function impostors(float: Float32Array): { name: string; out: Float32Array }[] {
  return [
    { name: 'float weights', out: float },
    { name: 'zero weights', out: new Float32Array(float.length) },
  ];
}
