/**
 * What constrained decoding costs per token (engine/grammar.ts): the package's vocabulary prepared for
 * xgrammar, a caption-like schema compiled, then a reply walked token by token, each step computing the mask
 * and applying it to a vocabulary-wide row of logits, as the decode loop does.
 */
import { JsonGrammars, applyMask } from '../engine/grammar.js';
import type { PackageTokenizer } from '../engine/tokenizer.js';

export interface MaskCost {
  vocabSize: number;
  /** Building the vocabulary table (once per package). */
  tableMs: number;
  /** Compiling the schema (once per schema; cached). */
  compileMs: number;
  /** Steps measured (the reply's tokens the grammar took). */
  steps: number;
  perTokenMs: { p50: number; p95: number };
}

export const MASK_SCHEMA = {
  type: 'object',
  properties: {
    people: { type: 'integer', minimum: 0, maximum: 20 },
    vehicle: { type: 'string', enum: ['car', 'bike', 'none'] },
    summary: { type: 'string' },
  },
  required: ['people', 'vehicle', 'summary'],
};
const REPLY = '{"people": 2, "vehicle": "car", "summary": "Two people walk a dog past a parked car"}';

export async function measureMaskCost(tokenizer: PackageTokenizer): Promise<MaskCost> {
  let t = performance.now();
  const grammars = await JsonGrammars.create(tokenizer);
  const tableMs = performance.now() - t;
  t = performance.now();
  const constraint = await grammars.constraint(MASK_SCHEMA);
  const compileMs = performance.now() - t;
  const logits = new Float32Array(tokenizer.vocabSize);
  const times: number[] = [];
  try {
    for (const id of tokenizer.encode(REPLY)) {
      logits.fill(0.5);
      const start = performance.now();
      applyMask(logits, await constraint.allowed(), tokenizer.vocabSize);
      times.push(performance.now() - start);
      if (!constraint.accept(id)) break;
    }
  } finally {
    constraint.dispose();
  }
  times.sort((a, b) => a - b);
  const at = (q: number): number => times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? 0;
  return {
    vocabSize: tokenizer.vocabSize,
    tableMs,
    compileMs,
    steps: times.length,
    perTokenMs: { p50: at(0.5), p95: at(0.95) },
  };
}
