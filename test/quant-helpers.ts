/** Deterministic random weights for quantiser tests. */

function uniform(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s + 0.5) / 2 ** 32;
  };
}

/** Gaussian values (Box-Muller), standard deviation `std`. */
export function gaussian(n: number, seed: number, std: number): Float32Array {
  const r = uniform(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = std * Math.sqrt(-2 * Math.log(r())) * Math.cos(2 * Math.PI * r());
  return out;
}

/** Student-t with 3 degrees of freedom: heavy tails like real LLM weights with outliers. */
export function heavyTailed(n: number, seed: number, scale: number): Float32Array {
  const r = uniform(seed);
  const g = () => Math.sqrt(-2 * Math.log(r())) * Math.cos(2 * Math.PI * r());
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const chi = g() ** 2 + g() ** 2 + g() ** 2;
    out[i] = (scale * g()) / Math.sqrt(chi / 3);
  }
  return out;
}
