/** The probe behind every accuracy_level 4 expectation agrees with what MLAS's sources say about CPU features. */
import { describe, expect, it } from 'vitest';
import { cpuFeatureFlags, ortRunsInt8Activations } from '../src/engine/int8-activations.js';

describe('ortRunsInt8Activations', () => {
  it('follows the CPU: int8 with AVX2 on x86-64, never without dot products on arm64', async () => {
    const flags = new Set(cpuFeatureFlags());
    const int8 = await ortRunsInt8Activations(4, 32);
    const int8Two = await ortRunsInt8Activations(2, 32);
    console.log(
      `int8 activations at 4-bit block 32: ${int8}, 2-bit block 32: ${int8Two} (${process.arch}, ${[...flags].filter((f) => /^(avx2|avx512|avx_vnni|asimddp|i8mm)/.test(f)).join(' ') || 'no dot-product flags'})`,
    );
    // MLAS's x86-64 CompInt8 kernels start at AVX2; arm64's need the dot-product (asimddp) or I8MM extension.
    if (process.arch === 'x64') expect(int8).toBe(flags.has('avx2'));
    if (process.arch === 'arm64' && !flags.has('asimddp') && !flags.has('i8mm')) {
      // e.g. the Pi 4's Cortex-A72 (test/arm/run.sh cortex-a72): the pi5 profile's 2-bit linears run float too.
      expect(int8).toBe(false);
      expect(int8Two).toBe(false);
    }
  });

  // ORT 1.30's 2-bit int8 kernels take blocks of 32 to 128 only: a case that must come out float anywhere.
  it('tells the two arithmetics apart: 2-bit blocks of 16 run float', async () => {
    expect(await ortRunsInt8Activations(2, 16)).toBe(false);
  });
});
