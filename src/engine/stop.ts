/**
 * Stop conditions: stop token ids (eos, end of turn, single-token custom stops) and stop strings matched on the
 * streamed answer text. Text that could be the start of a stop string is held back until it is decided, so a
 * stop string never reaches the stream.
 */
import type { PackageTokenizer } from './tokenizer.js';

/** Bounds a custom stop list (they come from requests). */
const MAX_STOPS = 16;
const MAX_STOP_CHARS = 256;

export class StopMatcher {
  private readonly ids = new Set<number>();
  private readonly strings: string[] = [];
  private held = '';
  private matched = false;

  constructor(tokenizer: PackageTokenizer, stops: ReadonlyArray<number | string>, opts: { modelStops?: boolean } = {}) {
    // modelStops false (benchmarks): eos and end of turn do not stop generation.
    if (opts.modelStops !== false) for (const id of tokenizer.stopIds()) this.ids.add(id);
    if (stops.length > MAX_STOPS) throw new Error(`at most ${MAX_STOPS} stop entries, got ${stops.length}`);
    for (const s of stops) {
      if (typeof s === 'number') {
        if (!Number.isInteger(s) || s < 0) throw new Error(`stop token id ${s} is not a valid id`);
        this.ids.add(s);
        continue;
      }
      if (s.length === 0 || s.length > MAX_STOP_CHARS)
        throw new Error(`stop strings must have 1..${MAX_STOP_CHARS} characters`);
      const id = tokenizer.tokenId(s);
      if (id !== undefined) this.ids.add(id);
      else this.strings.push(s);
    }
  }

  isStopId(id: number): boolean {
    return this.ids.has(id);
  }

  /**
   * Takes the next answer delta; returns the text that is safe to stream now, and whether a stop string has
   * appeared (then the text before it is returned and the rest dropped).
   */
  feed(delta: string): { text: string; stopped: boolean } {
    if (this.matched) return { text: '', stopped: true };
    if (this.strings.length === 0) return { text: delta, stopped: false };
    const text = this.held + delta;
    const at = this.firstMatch(text);
    if (at >= 0) {
      this.matched = true;
      this.held = '';
      return { text: text.slice(0, at), stopped: true };
    }
    const keep = this.partialSuffix(text);
    this.held = text.slice(text.length - keep);
    return { text: text.slice(0, text.length - keep), stopped: false };
  }

  /** Held-back text, released at the end of generation. */
  flush(): string {
    const out = this.matched ? '' : this.held;
    this.held = '';
    return out;
  }

  /** The final answer cut at the first stop string. */
  trim(answer: string): string {
    const at = this.firstMatch(answer);
    return at >= 0 ? answer.slice(0, at).trimEnd() : answer;
  }

  private firstMatch(text: string): number {
    let best = -1;
    for (const s of this.strings) {
      const i = text.indexOf(s);
      if (i >= 0 && (best < 0 || i < best)) best = i;
    }
    return best;
  }

  /** Length of the longest suffix of text that is a proper prefix of some stop string. */
  private partialSuffix(text: string): number {
    let best = 0;
    for (const s of this.strings) {
      for (let k = Math.min(s.length - 1, text.length); k > best; k--) {
        if (text.endsWith(s.slice(0, k))) {
          best = k;
          break;
        }
      }
    }
    return best;
  }
}
