/**
 * Allow-listed actions: what the model may do, declared in config (actions.allowed). Each is offered to the
 * model as a Gemma 4 tool; a call it makes is validated against the action's schema, its topic and payload are
 * filled in from the arguments (a value in a topic must be one plain level: no "/", no wildcards), it is
 * published, and, with a reply_topic, the first message there is its result. Every call, done or refused, is
 * said on <root>/action with the question's id, and its result goes back to the model, so the final answer
 * says what happened.
 *
 * Refused without acting: actions switched off (Home Assistant's Actions switch), more than max_per_minute,
 * the broker not connected (an action must not fire minutes later from the outbox), arguments the schema
 * refuses, values that would leave the topic's template.
 */
import type { z } from 'zod';
import type { Logger } from '../common/log.js';
import { topicNameProblem } from '../common/mqtt-strings.js';
import { compileStructured } from '../common/structured-output.js';
import { ACTION_PLACEHOLDER, type ActionSettings, type ActionsSettings } from '../config/schema.js';
import type {
  GenerationMessage,
  GenerationRequest,
  GenerationResult,
  ToolCallRecord,
  ToolSpec,
} from '../engine/types.js';

/** What the actions need of the MQTT connection. */
export interface ActionBus {
  readonly connected: boolean;
  publish(topic: string, payload: string, opts: { qos: 0 | 1; retain?: boolean }): Promise<unknown>;
  subscribe(
    filter: string,
    handler: (msg: { topic: string; payload: Buffer }) => void,
    opts: { qos: 0 | 1; owner: string },
  ): unknown;
  removeOwner(owner: string): void;
}

export type ActionStatus = 'done' | 'refused' | 'awaiting_confirmation' | 'cancelled';

/** One call of an action, as <root>/action says it and the model reads it back. */
export interface ActionRecord {
  name: string;
  arguments: Record<string, unknown>;
  status: ActionStatus;
  /** Where it was published (done). */
  topic?: string;
  /** The reply_topic message (parsed as JSON when it is), or that it was published. */
  result?: unknown;
  /** Why it was refused or is waiting. */
  reason?: string;
  /** awaiting_confirmation: the name a yes on <root>/action/confirm gives. */
  confirmation?: string;
}

/** Who asked: the question's id, and the Wyoming conversation it belongs to (its next turn may say yes). */
export interface ActionContext {
  id: string;
  conversation?: string;
}

interface PendingCall {
  call: ToolCallRecord;
  ctx: ActionContext;
  expires: number;
}

/** A yes or a no as a whole answer ("yes", "yes please", "no thanks", "do it"...). */
const YES = /^(yes|yeah|yep|sure|ok|okay|do it|go ahead|confirm(ed)?|please do)\b/i;
const NO = /^(no|nope|don'?t|do not|cancel|stop|never ?mind)\b/i;

/** What a reply to a waiting call says: yes, no, or neither (an unrelated question). */
export function yesOrNo(text: string): boolean | null {
  const t = text.trim();
  return YES.test(t) ? true : NO.test(t) ? false : null;
}

/** Tool rounds per question: calls, their results back, and the model's next turn. */
const MAX_ROUNDS = 3;
/** A value placed in a topic level. */
const TOPIC_VALUE = /^[A-Za-z0-9 ._-]{1,64}$/;
/** A template string that is one placeholder and nothing else: the value itself goes there. */
const WHOLE_PLACEHOLDER = new RegExp(`^${ACTION_PLACEHOLDER.source}$`);
const MAX_RESULT_CHARS = 2000;

export class Actions {
  private readonly byName = new Map<string, { settings: ActionSettings; validator: z.ZodType }>();
  private readonly recent: number[] = [];
  private readonly pending = new Map<string, PendingCall>();
  private enabled: boolean;
  private calls = 0;
  readonly counts = { done: 0, refused: 0 };

  constructor(
    private readonly o: {
      settings: ActionsSettings;
      bus: ActionBus;
      /** <root>/action. */
      recordTopic: string;
      logger: Logger;
      now?: () => number;
    },
  ) {
    for (const a of o.settings.allowed)
      this.byName.set(a.name, { settings: a, validator: compileStructured(a.parameters) });
    this.enabled = o.settings.enabled;
  }

  get on(): boolean {
    return this.enabled;
  }

  set on(value: boolean) {
    this.enabled = value;
  }

  /** The actions as the model's tools (none while switched off). */
  tools(): ToolSpec[] {
    if (!this.enabled) return [];
    return [...this.byName.values()].map(({ settings: a }) => ({
      name: a.name,
      description: a.description,
      parameters: a.parameters,
    }));
  }

  /**
   * Answers a request with the actions as tools: each call the model makes is carried out (or refused) and its
   * result goes back to it, until it answers without a call (at most MAX_ROUNDS rounds of calls).
   */
  async answer(
    generate: (req: GenerationRequest) => Promise<GenerationResult>,
    req: GenerationRequest,
    ctx: ActionContext,
  ): Promise<GenerationResult & { actions: ActionRecord[] }> {
    const records: ActionRecord[] = [];
    let messages: GenerationMessage[] = req.messages;
    // The previous turn of this conversation asked to confirm a call: a yes or a no settles it first.
    const waiting = this.waitingIn(ctx.conversation);
    const question = req.messages.at(-1);
    const said =
      waiting && question?.role === 'user' && typeof question.content === 'string' ? yesOrNo(question.content) : null;
    if (waiting && said !== null) {
      const rec = await this.confirm(waiting.confirmation, said);
      if (rec) {
        records.push(rec);
        messages = [
          ...messages,
          { role: 'assistant', content: '', toolCalls: [waiting.call] },
          { role: 'tool', name: rec.name, content: JSON.stringify(resultForModel(rec)) },
        ];
      }
    }
    const tools = this.tools();
    if (tools.length === 0) return { ...(await generate({ ...req, messages, toolChoice: 'auto' })), actions: records };
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const r = await generate({
        ...req,
        messages,
        tools: [...(req.tools ?? []), ...tools],
        ...(round === 0 && req.toolChoice ? { toolChoice: req.toolChoice } : { toolChoice: 'auto' }),
      });
      if (!r.toolCalls?.length || r.finishReason === 'cancelled') return { ...r, actions: records };
      const results: GenerationMessage[] = [];
      for (const call of r.toolCalls) {
        const rec = await this.run(call, ctx);
        records.push(rec);
        results.push({ role: 'tool', name: rec.name, content: JSON.stringify(resultForModel(rec)) });
      }
      messages = [...messages, { role: 'assistant', content: r.text, toolCalls: r.toolCalls }, ...results];
    }
    const last = await generate({ ...req, messages, tools: undefined, toolChoice: 'auto' });
    return { ...last, actions: records };
  }

  /** Carries out one call, or refuses it, or holds it for confirmation; says it on <root>/action either way. */
  async run(call: ToolCallRecord, ctx: ActionContext, confirmed = false): Promise<ActionRecord> {
    const rec = await this.carryOut(call, ctx, confirmed);
    if (rec.status === 'done') this.counts.done++;
    else if (rec.status === 'refused') this.counts.refused++;
    return this.say(rec, ctx);
  }

  /**
   * A yes or a no to a waiting call (by its confirmation name): a yes carries it out now (every check again), a
   * no drops it. Null when there is no such call, or it waited past actions.confirm_timeout_s.
   */
  async confirm(confirmation: string, yes: boolean): Promise<ActionRecord | null> {
    this.expire();
    const p = this.pending.get(confirmation);
    if (!p) return null;
    this.pending.delete(confirmation);
    if (yes) return this.run(p.call, p.ctx, true);
    return this.say(
      { name: p.call.name, arguments: p.call.arguments, status: 'cancelled', reason: 'the user said no' },
      p.ctx,
    );
  }

  /** The call a Wyoming conversation's previous turn left waiting for a yes, if any. */
  waitingIn(conversation: string | undefined): { confirmation: string; call: ToolCallRecord } | null {
    if (!conversation) return null;
    this.expire();
    for (const [confirmation, p] of this.pending)
      if (p.ctx.conversation === conversation) return { confirmation, call: p.call };
    return null;
  }

  private expire(): void {
    const now = (this.o.now ?? Date.now)();
    for (const [k, p] of this.pending) if (p.expires < now) this.pending.delete(k);
  }

  private async say(rec: ActionRecord, ctx: ActionContext): Promise<ActionRecord> {
    this.o.logger.info({ id: ctx.id, action: rec.name, status: rec.status, reason: rec.reason }, 'action');
    await this.o.bus
      .publish(this.o.recordTopic, JSON.stringify({ v: 1, id: ctx.id, ts: new Date().toISOString(), ...rec }), {
        qos: 1,
      })
      .catch((err: unknown) => this.o.logger.warn({ err }, 'action record not published'));
    return rec;
  }

  private async carryOut(call: ToolCallRecord, ctx: ActionContext, confirmed: boolean): Promise<ActionRecord> {
    const base = { name: call.name, arguments: call.arguments };
    const refuse = (reason: string): ActionRecord => ({ ...base, status: 'refused', reason });
    const action = this.byName.get(call.name);
    if (!action) return refuse(`no action is called ${JSON.stringify(call.name).slice(0, 80)}`);
    if (!this.enabled) return refuse('actions are switched off');
    const checked = action.validator.safeParse(call.arguments);
    if (!checked.success)
      return refuse(
        `the arguments do not match the schema: ${checked.error.issues
          .slice(0, 3)
          .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
          .join('; ')}`,
      );
    const args = call.arguments;
    let topic: string;
    let reply: string | undefined;
    try {
      topic = fillTopic(action.settings.topic, args);
      reply = action.settings.reply_topic ? fillTopic(action.settings.reply_topic, args) : undefined;
    } catch (err) {
      return refuse((err as Error).message);
    }
    if (action.settings.confirm && !confirmed) {
      this.expire();
      const confirmation = `c${++this.calls}-${Math.random().toString(36).slice(2, 8)}`;
      this.pending.set(confirmation, {
        call,
        ctx,
        expires: (this.o.now ?? Date.now)() + this.o.settings.confirm_timeout_s * 1000,
      });
      return {
        ...base,
        status: 'awaiting_confirmation',
        confirmation,
        reason: 'this action needs the user to confirm it first: ask them',
      };
    }
    const now = (this.o.now ?? Date.now)();
    while (this.recent.length && now - this.recent[0]! > 60_000) this.recent.shift();
    if (this.recent.length >= this.o.settings.max_per_minute)
      return refuse(`more than ${this.o.settings.max_per_minute} actions in a minute`);
    if (!this.o.bus.connected) return refuse('the MQTT broker is not connected');
    this.recent.push(now);
    const payload = fillPayload(action.settings.payload, args);
    const owner = `action-${++this.calls}`;
    const result = reply ? this.firstMessage(reply, owner) : null;
    try {
      await this.o.bus.publish(topic, payload, { qos: 1 });
      const got = result ? await result.message : undefined;
      return { ...base, status: 'done', topic, result: got === undefined ? 'published' : got };
    } finally {
      result?.cancel();
    }
  }

  /** The first message on `topic` after now, or a timeout note. */
  private firstMessage(topic: string, owner: string): { message: Promise<unknown>; cancel(): void } {
    let timer: NodeJS.Timeout | undefined;
    const message = new Promise<unknown>((resolve) => {
      timer = setTimeout(
        () => resolve(`published; no reply on ${topic} within ${this.o.settings.reply_timeout_ms} ms`),
        this.o.settings.reply_timeout_ms,
      );
      this.o.bus.subscribe(
        topic,
        (msg) => {
          const text = msg.payload.toString('utf8').slice(0, MAX_RESULT_CHARS);
          try {
            resolve(JSON.parse(text) as unknown);
          } catch {
            resolve(text);
          }
        },
        { qos: 1, owner },
      );
    });
    return {
      message,
      cancel: () => {
        clearTimeout(timer);
        this.o.bus.removeOwner(owner);
      },
    };
  }
}

/** What the model reads back: the result, or why nothing was done. */
export function resultForModel(rec: ActionRecord): unknown {
  if (rec.status === 'done') return { done: true, result: rec.result };
  if (rec.status === 'awaiting_confirmation') return { done: false, waiting_for_confirmation: true, note: rec.reason };
  return { done: false, error: rec.reason };
}

/** The topic template with each {param} replaced by its value, which must be one plain topic level. */
export function fillTopic(template: string, args: Record<string, unknown>): string {
  const topic = template.replace(ACTION_PLACEHOLDER, (_, name: string) => {
    const v = args[name];
    const text = typeof v === 'number' || typeof v === 'boolean' ? String(v) : typeof v === 'string' ? v : '';
    if (!TOPIC_VALUE.test(text))
      throw new Error(
        `${name} ${JSON.stringify(v)?.slice(0, 80)} cannot go in a topic (letters, digits, space, . _ - only)`,
      );
    return text;
  });
  const problem = topicNameProblem(topic);
  if (problem) throw new Error(`topic ${JSON.stringify(topic)}: ${problem}`);
  return topic;
}

/** The payload: an object template as JSON (a string that is only "{param}" becomes the value), or a string. */
export function fillPayload(template: string | Record<string, unknown>, args: Record<string, unknown>): string {
  const asText = (v: unknown): string => (typeof v === 'string' ? v : (JSON.stringify(v) ?? ''));
  const fill = (s: string): unknown => {
    const whole = WHOLE_PLACEHOLDER.exec(s);
    if (whole) return args[whole[1]!] ?? null;
    return s.replace(ACTION_PLACEHOLDER, (_, name: string) => asText(args[name]));
  };
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return fill(v);
    if (Array.isArray(v)) return v.map(walk);
    if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    return v;
  };
  if (typeof template === 'string')
    return template.replace(ACTION_PLACEHOLDER, (_, name: string) => asText(args[name]));
  return JSON.stringify(walk(template));
}
