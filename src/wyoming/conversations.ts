/**
 * What was said in each Home Assistant conversation, so a follow-up question has its context. Home Assistant
 * names a conversation by `context.conversation_id` and sends the same id with each turn of it. Bounded: the
 * newest `maxConversations`, each its last `maxTurns` exchanges, forgotten after `ttlMs` without a turn.
 */
import type { GenerationMessage } from '../engine/types.js';

export interface ConversationLimits {
  maxConversations: number;
  maxTurns: number;
  ttlMs: number;
}

export const DEFAULT_CONVERSATION_LIMITS: ConversationLimits = {
  maxConversations: 64,
  maxTurns: 8,
  ttlMs: 10 * 60_000,
};

interface Conversation {
  messages: GenerationMessage[];
  at: number;
}

export class Conversations {
  /** Insertion order is recency order: a turn moves its conversation to the end. */
  private readonly byId = new Map<string, Conversation>();

  constructor(
    private readonly limits: ConversationLimits = DEFAULT_CONVERSATION_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  /** The earlier turns of a conversation (empty for a new or forgotten one). */
  history(id: string | undefined): GenerationMessage[] {
    if (!id) return [];
    const c = this.byId.get(id);
    if (!c || this.now() - c.at > this.limits.ttlMs) return [];
    return [...c.messages];
  }

  /** Records one exchange. */
  record(id: string | undefined, question: string, answer: string): void {
    if (!id) return;
    const messages = [
      ...this.history(id),
      { role: 'user', content: question } as const,
      { role: 'assistant', content: answer } as const,
    ].slice(-2 * this.limits.maxTurns);
    this.byId.delete(id);
    this.byId.set(id, { messages, at: this.now() });
    while (this.byId.size > this.limits.maxConversations) this.byId.delete(this.byId.keys().next().value!);
  }

  get size(): number {
    return this.byId.size;
  }
}
