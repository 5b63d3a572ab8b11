/** Stitching split transcripts: the words an overlap repeated are kept once, nothing else is dropped. */
import { describe, expect, it } from 'vitest';
import { stitchTranscripts } from '../src/audio/stitch.js';

describe('stitchTranscripts', () => {
  it('drops an exact repeat at the start of the next part', () => {
    expect(stitchTranscripts(['turn on the porch light', 'porch light when the courier arrives'])).toBe(
      'turn on the porch light when the courier arrives',
    );
    expect(stitchTranscripts(['one two three', 'three four five', 'five six'])).toBe('one two three four five six');
  });

  it('takes the longest repeat, not the first one that matches', () => {
    // "the" alone also ends the first part and starts the second; the repeat is "on the".
    expect(stitchTranscripts(['put it on the', 'on the table'])).toBe('put it on the table');
  });

  it('compares without case and punctuation, keeping the earlier part’s spelling', () => {
    expect(stitchTranscripts(['Turn on the Porch Light,', 'porch light. When the courier arrives.'])).toBe(
      'Turn on the Porch Light, When the courier arrives.',
    );
    // Typographic and plain apostrophes are both punctuation: the words still match.
    expect(stitchTranscripts(['It’s raining', "IT'S RAINING again"])).toBe('It’s raining again');
    expect(stitchTranscripts(["it's raining", "It's raining again!"])).toBe("it's raining again!");
  });

  it('joins with a space when nothing repeats', () => {
    expect(stitchTranscripts(['good morning', 'how are you'])).toBe('good morning how are you');
    expect(stitchTranscripts(['lights', 'lightswitch on'])).toBe('lights lightswitch on'); // whole words only
  });

  it('skips empty and blank parts', () => {
    expect(stitchTranscripts([])).toBe('');
    expect(stitchTranscripts(['', '  '])).toBe('');
    expect(stitchTranscripts(['', 'hello there', '   ', 'there friend', ''])).toBe('hello there friend');
  });

  it('keeps a word that is really said twice', () => {
    // Only one "had" is the overlap's repeat: "had had" stays.
    expect(stitchTranscripts(['we had had', 'had enough'])).toBe('we had had enough');
    // The repeat is the whole of the previous tail, once; the rest of the next part stays.
    expect(stitchTranscripts(['no no', 'no no no stop'])).toBe('no no no stop');
    // A word inside the previous text (not at its end) is not a repeat.
    expect(stitchTranscripts(['the cat sat down', 'the cat left'])).toBe('the cat sat down the cat left');
  });

  it('does not take bare punctuation as a repeat', () => {
    expect(stitchTranscripts(['well —', '— maybe'])).toBe('well — — maybe');
  });

  it('bounds the repeat to maxOverlapWords', () => {
    const a = 'a b c d e f';
    expect(stitchTranscripts([a, 'a b c d e f g'])).toBe('a b c d e f g');
    expect(stitchTranscripts([a, 'a b c d e f g'], { maxOverlapWords: 3 })).toBe('a b c d e f a b c d e f g');
    expect(stitchTranscripts([a, 'e f g'], { maxOverlapWords: 3 })).toBe('a b c d e f g');
    expect(stitchTranscripts([a, 'f g'], { maxOverlapWords: 0 })).toBe('a b c d e f f g');
  });

  it('drops a next part that is all repeat', () => {
    expect(stitchTranscripts(['hello there', 'There.', 'friend'])).toBe('hello there friend');
  });
});
