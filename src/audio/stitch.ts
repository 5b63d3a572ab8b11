/**
 * Stitching the transcripts of a long utterance's parts. The segmenter starts each part split_overlap_ms
 * before the previous one ended, so the words spoken in that overlap usually appear twice: at the end of one
 * part's text and at the start of the next. The longest run of words that ends the text so far and starts the
 * next part (compared without case and punctuation) is taken as that repeat and dropped from the next part.
 * Runs are bounded (the overlap is short, so it holds few words): a longer coincidence is not a repeat.
 */

export interface StitchOptions {
  /** Longest repeat looked for, in words (default 12): about what a few seconds of overlap can hold. */
  maxOverlapWords?: number;
}

const DEFAULT_MAX_OVERLAP_WORDS = 12;

interface Word {
  /** Where the word starts in its text. */
  index: number;
  /** Lower case, punctuation and symbols dropped: what is compared. */
  key: string;
}

function words(text: string): Word[] {
  const out: Word[] = [];
  for (const m of text.matchAll(/\S+/gu)) {
    out.push({
      index: m.index,
      key: m[0]
        .normalize('NFKC')
        .toLowerCase()
        .replace(/[\p{P}\p{S}]+/gu, ''),
    });
  }
  return out;
}

/** How many words at the start of `next` repeat the end of `prev` (0: none). */
function overlapLength(prev: Word[], next: Word[], maxWords: number): number {
  for (let k = Math.min(maxWords, prev.length, next.length); k > 0; k--) {
    const tail = prev.slice(prev.length - k);
    let same = true;
    let spoken = false; // a run of bare punctuation ("-", "…") is no evidence of a repeat
    for (let i = 0; i < k && same; i++) {
      same = tail[i]!.key === next[i]!.key;
      spoken ||= next[i]!.key.length > 0;
    }
    if (same && spoken) return k;
  }
  return 0;
}

/** Joins consecutive part texts into one, with each overlap's repeated words kept once. */
export function stitchTranscripts(parts: readonly string[], opts: StitchOptions = {}): string {
  const maxWords = Math.max(0, Math.floor(opts.maxOverlapWords ?? DEFAULT_MAX_OVERLAP_WORDS));
  let text = '';
  for (const part of parts) {
    const next = part.trim();
    if (!next) continue;
    if (!text) {
      text = next;
      continue;
    }
    const nextWords = words(next);
    // Only the last maxWords words of the text so far can take part in a repeat.
    const k = overlapLength(words(text.slice(Math.max(0, text.length - 4096))), nextWords, maxWords);
    const rest = k < nextWords.length ? next.slice(nextWords[k]!.index) : '';
    if (rest) text = `${text} ${rest}`;
  }
  return text;
}
