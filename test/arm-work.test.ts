import { describe, expect, it } from 'vitest';
import { parseKernelCase } from '../src/bench/arm-kernels.js';
import { formatArmWork, parseReadings, workFromReadings } from '../src/bench/arm-work.js';

// The counting plugin's output for a 16-token prompt and 6 decoded tokens (token-0 comes from prefill).
const READINGS = `start 500 0
loaded 30000500 10
prompt 30000600 10
token-0 39600600 2000010
token-1 40700600 2150010
token-2 41800000 2300000
token-3 42830000 2442000
token-4 43860000 2584000
token-5 44890000 2726000
token-6 45920000 2868000
exit 46000000 2868000
`;

describe('bench:arm readings', () => {
  it('per decoded token is the steady state after two decode steps; per prefilled token spans prompt to first token', () => {
    const w = workFromReadings(parseReadings(READINGS), 'cortex-a76', 'pkg', 16);
    expect(w.decodeStepsMeasured).toBe(4);
    expect(w.perDecodedToken).toBe((45920000 - 41800000) / 4);
    expect(w.dotProductsPerDecodedToken).toBe((2868000 - 2300000) / 4);
    expect(w.perPrefilledToken).toBe((39600600 - 30000600) / 16);
    expect(w.loadInstructions).toBe(30000000);
    expect(formatArmWork(w)).toContain('per decoded token:   0.001 G');
  });

  it('refuses output that is not readings, and runs too short for a steady state', () => {
    expect(() => parseReadings('start 12 x\n')).toThrow(/not a reading/);
    const short = parseReadings('start 0 0\nloaded 1 0\nprompt 2 0\ntoken-0 3 0\ntoken-1 4 0\ntoken-2 5 0\n');
    expect(() => workFromReadings(short, 'cortex-a72', 'pkg', 4)).toThrow(/too few tokens/);
    expect(() => workFromReadings(parseReadings('start 0 0\n'), 'cortex-a72', 'pkg', 4)).toThrow();
  });

  it('kernel cases parse from their labels and nothing else does', () => {
    expect(parseKernelCase('q4-b64-acc1')).toEqual({ op: 'nbits', bits: 4, blockSize: 64, accuracyLevel: 1 });
    expect(parseKernelCase('dqmm-s8')).toEqual({ op: 'dqmm', weights: 's8' });
    expect(parseKernelCase('int8-rows')).toEqual({ op: 'int8-rows' });
    for (const bad of ['q3-b64-acc1', 'q4-b48-acc1', 'q4-b8-acc1', 'q4-b64-acc5', 'dqmm-s4', 'q4-b64-acc1;rm'])
      expect(parseKernelCase(bad)).toBeNull();
  });
});
