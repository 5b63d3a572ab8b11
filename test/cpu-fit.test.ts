/**
 * The profile Perch picks for a CPU agrees with the CPU's own feature flags: pi5 where arm64 shows the
 * dot-product extension (asimddp) or x86-64 shows AVX2, pi4 on an ARMv8.0 core. The code decides by asking
 * ONNX Runtime; this test reads /proc/cpuinfo itself. CI runs it on x86-64 and under Cortex-A76 and A72
 * emulation (test/arm/run.sh), where the answers must be pi5 and pi4.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { profileForThisCpu, profileMismatch } from '../src/engine/cpu-fit.js';
import { quantPolicyFor } from '../src/model/package/manifest.js';

function flags(): string[] {
  const m = /^(?:flags|Features)\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
  return m ? m[1]!.trim().split(/\s+/) : [];
}

const expected =
  process.arch === 'arm64' ? (flags().includes('asimddp') ? 'pi5' : 'pi4') : flags().includes('avx2') ? 'pi5' : 'pi4';

describe(`profile for this CPU (${process.arch}, expected ${expected})`, () => {
  it('is the one its feature flags call for, with the flag named', async () => {
    const c = await profileForThisCpu();
    expect(c.profile).toBe(expected);
    expect(c.reason).toMatch(process.arch === 'arm64' ? /asimddp/ : /avx2/);
  });

  it('packages of that profile are not announced as a mismatch; the other profile is', async () => {
    const other = expected === 'pi5' ? 'pi4' : 'pi5';
    expect(await profileMismatch(quantPolicyFor(expected))).toBeNull();
    expect(await profileMismatch(quantPolicyFor(other))).toMatch(new RegExp(`'${expected}' profile`));
    expect(await profileMismatch(quantPolicyFor('float'))).toBeNull();
  });
});
