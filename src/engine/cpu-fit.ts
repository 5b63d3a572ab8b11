/**
 * Which package profile suits this CPU, and whether a package's does.
 *
 * The `pi5` profile's 2-bit linears are fast only where ONNX Runtime runs them with int8 activations
 * (accuracy_level 4 on a CPU with integer dot-product instructions: arm64's `asimddp`, as on the Pi 5's
 * Cortex-A76, or x86-64's AVX2 and later). Elsewhere (the Pi 4's Cortex-A72: ARMv8.0, no `asimddp`) MLAS
 * silently falls back to a float path that costs about 70x the instructions per token under emulation
 * (models/README.md). The `pi4` profile's int8-channel linears need no dot product: on a CPU that has one
 * they work, but `pi5` is a third of the size and reads a third of the bytes per token.
 *
 * The decision asks ONNX Runtime (ortRunsInt8Activations: one MatMulNBits node whose result shows whether
 * activations were rounded to int8), since kernel coverage moves between ORT versions; the CPU's feature
 * flags are named in the message so a user can see why.
 */
import type { Profile, QuantPolicy } from '../model/package/manifest.js';
import type { QuantBits } from '../model/quant.js';
import { cpuFeatureFlags, ortRunsInt8Activations } from './int8-activations.js';

export interface CpuProfileChoice {
  profile: Extract<Profile, 'pi5' | 'pi4'>;
  /** Why, for the log and the CLI: the dot-product flag (arm64) and what ONNX Runtime showed. */
  reason: string;
}

/** The pi5 profile's linear kernel: 2-bit, block 128, int8 activations. */
const PI5_KERNEL = { bits: 2, blockSize: 128 } as const;

function dotProductFlag(): string {
  const flags = cpuFeatureFlags();
  if (process.arch === 'arm64')
    return flags.includes('asimddp') ? 'asimddp (dot product) present' : 'no asimddp (dot product)';
  if (process.arch === 'x64') return flags.includes('avx2') ? 'avx2 present' : 'no avx2';
  return `${process.arch}`;
}

/** pi5 where ONNX Runtime runs 2-bit linears with int8 activations on this CPU, else pi4. */
export async function profileForThisCpu(): Promise<CpuProfileChoice> {
  const int8 = await ortRunsInt8Activations(PI5_KERNEL.bits, PI5_KERNEL.blockSize);
  const flag = dotProductFlag();
  return int8
    ? { profile: 'pi5', reason: `this CPU runs 2-bit linears with int8 activations (${flag})` }
    : { profile: 'pi4', reason: `this CPU has no int8 path for 2-bit linears (${flag}): int8-channel linears instead` };
}

/** A sentence for the log and `perch model verify` when the package does not suit this CPU, else null. */
export async function profileMismatch(policy: QuantPolicy): Promise<string | null> {
  const linear = policy.linear;
  if (!linear) return null;
  if (linear.kernel === 'int8-channels') {
    if (!(await ortRunsInt8Activations(PI5_KERNEL.bits, PI5_KERNEL.blockSize))) return null;
    return (
      `this package's int8-channel linears (profile ${policy.profile}) are made for CPUs without int8 dot-product ` +
      `instructions; this one has them (${dotProductFlag()}): the 'pi5' profile (perch model convert --profile pi5) ` +
      'is about a third of the size and reads a third of the bytes per token'
    );
  }
  if (linear.accuracy_level !== 4) return null;
  if (await ortRunsInt8Activations(linear.bits as QuantBits, linear.block_size)) return null;
  return (
    `this package's ${linear.bits}-bit linears (profile ${policy.profile}, block ${linear.block_size}) expect int8 dot-product ` +
    `instructions this CPU lacks (${dotProductFlag()}): ONNX Runtime falls back to a much slower float path; ` +
    "use the 'pi4' profile (perch model convert --profile pi4)"
  );
}
