/**
 * What picking a token costs per decode step (engine/sampling.ts), on a row of the package's own logits: the
 * greedy pick the bench's decode runs use, and the daemon's default sampling (DEFAULT_SAMPLING: temperature 1,
 * top-k 64, top-p 0.95), which answers use. Both read the whole vocabulary every step.
 */
import { DEFAULT_SAMPLING } from '../engine/gemma-engine.js';
import { createSampler } from '../engine/sampling.js';
import { median } from '../common/stats.js';

export interface SamplingCost {
  vocabSize: number;
  /** Median ms per token over `draws` draws from the same logits. */
  greedyMs: number;
  defaultMs: number;
  draws: number;
}

export function measureSamplingCost(logits: Float32Array, draws = 200): SamplingCost {
  const time = (opts: Parameters<typeof createSampler>[0]): number => {
    const sampler = createSampler({ ...opts, seed: 1 });
    for (let i = 0; i < 20; i++) sampler.sample(logits); // warm the JIT
    const ms: number[] = [];
    for (let i = 0; i < draws; i++) {
      const t0 = performance.now();
      sampler.sample(logits);
      ms.push(performance.now() - t0);
    }
    return median(ms);
  };
  return { vocabSize: logits.length, greedyMs: time({ temperature: 0 }), defaultMs: time(DEFAULT_SAMPLING), draws };
}
