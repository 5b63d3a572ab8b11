/**
 * Does a package's quantisation suit this CPU? The `pi5` profile's 2-bit linears are fast only where ONNX
 * Runtime runs them with int8 activations (accuracy_level 4 on a CPU with integer dot-product instructions, e.g.
 * the Pi 5's Cortex-A76). Elsewhere (the Pi 4's Cortex-A72) MLAS silently falls back to float activations, a
 * path measured at about 3x the cost per token under emulation: say so, and name the profile that fits.
 */
import type { QuantPolicy } from '../model/package/manifest.js';
import type { QuantBits } from '../model/quant.js';
import { ortRunsInt8Activations } from './int8-activations.js';

/** A sentence for the log and `perch model verify` when the package does not suit this CPU, else null. */
export async function profileMismatch(policy: QuantPolicy): Promise<string | null> {
  const linear = policy.linear;
  if (!linear || linear.accuracy_level !== 4) return null;
  if (await ortRunsInt8Activations(linear.bits as QuantBits, linear.block_size)) return null;
  const better = policy.profile === 'pi4' ? 'a float or 8-bit build' : "the 'pi4' profile (perch model convert --profile pi4)";
  return (
    `this package's ${linear.bits}-bit linears (profile ${policy.profile}, block ${linear.block_size}) expect int8 dot-product ` +
    `instructions this CPU lacks: ONNX Runtime falls back to a much slower float path; use ${better}`
  );
}
