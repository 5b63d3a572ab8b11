/** Package-test helpers: feeds for the media inputs every package decoder has (text-only runs: nothing to replace). */
import * as ort from 'onnxruntime-node';
import type { Feeds } from './gemma4-helpers.js';

/** media_embeds zeros and media_mask all false for `n` positions: the decoder then embeds tokens as usual. */
export function noMedia(hidden: number, n: number): Feeds {
  return {
    media_embeds: new ort.Tensor('float32', new Float32Array(n * hidden), [1, n, hidden]),
    media_mask: new ort.Tensor('bool', new Uint8Array(n), [1, n]),
  };
}
