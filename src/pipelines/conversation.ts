/**
 * Spoken conversations: the wake phrase and how a transcript is matched against it, what a push-to-talk
 * message may carry, and the instruction for a question that continues earlier exchanges (the model has no
 * memory between generations, so they go into the prompt).
 */

/** Why an utterance is a question: the wake phrase, a push-to-talk message, or a follow-up to an answer. */
export type QuestionKind = 'wake' | 'talk' | 'follow_up';

/** One question (its transcript) and the answer given. */
export interface Exchange {
  question: string;
  answer: string;
}

/** The instruction for a question asked without the wake phrase (push-to-talk, follow-up). */
export const QUESTION_PROMPT = 'The speaker asks you something. Answer what they ask, briefly and helpfully.';

/** Exchanges kept in the instruction, and characters per side: enough context, bounded prompt length. */
export const MAX_HISTORY = 3;
const MAX_HISTORY_CHARS = 300;

const clip = (s: string): string => {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > MAX_HISTORY_CHARS ? `${t.slice(0, MAX_HISTORY_CHARS)}…` : t;
};

/** `base` itself without history; otherwise the latest exchanges first, then `base`. */
export function conversationPrompt(base: string, history: readonly Exchange[]): string {
  if (history.length === 0) return base;
  const lines = history
    .slice(-MAX_HISTORY)
    .map((e) => `They asked: "${clip(e.question)}" You answered: "${clip(e.answer)}"`);
  return `This continues a conversation.\n${lines.join('\n')}\n${base}`;
}

/** Same rule as message ids in the contract: 1–128 printable ASCII characters, no spaces. */
const TALK_ID = /^[\x21-\x7e]{1,128}$/;

export type TalkParse = { ok: true; id?: string } | { ok: false; message: string };

/** A push-to-talk payload: anything (a button's `PRESS`, empty), or a JSON object with an optional `id`. */
export function parseTalk(payload: Buffer): TalkParse {
  const text = payload.toString('utf8').trim();
  if (!text.startsWith('{')) return { ok: true };
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { ok: false, message: 'payload starts with "{" but is not JSON' };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { ok: false, message: 'expected a JSON object' };
  const id = (v as Record<string, unknown>).id;
  if (id === undefined) return { ok: true };
  if (typeof id !== 'string' || !TALK_ID.test(id))
    return { ok: false, message: 'id must be 1-128 printable ASCII characters without spaces' };
  return { ok: true, id };
}

/** Lower case, punctuation dropped, single spaces: how the wake phrase and transcripts are compared. */
export function normalizeForMatch(text: string): string {
  return text
    .normalize('NFKC')
    .toLowerCase()
    .replace(/[\p{P}\p{S}]+/gu, ' ')
    .replace(/\s+/g, ' ')
    .trim();
}

/** Whether the transcript contains the wake phrase as whole words, whatever the case and punctuation. */
export function containsWakePhrase(transcript: string, phrase: string): boolean {
  const p = normalizeForMatch(phrase);
  if (!p) return false;
  return ` ${normalizeForMatch(transcript)} `.includes(` ${p} `);
}

/** The instruction for a spoken question: the audio follows it. */
export function spokenQuestionPrompt(phrase: string): string {
  return `The speaker addresses you as "${phrase}" and asks you something. Answer what they ask, briefly and helpfully.`;
}
