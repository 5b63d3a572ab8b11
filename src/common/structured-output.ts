/**
 * Structured captions: a camera's `structured` JSON schema turns its caption into a JSON object. The prompt
 * asks for JSON matching the schema; the reply is parsed and validated (zod's fromJSONSchema, so the schema is
 * checked once, when the config loads); an invalid reply is retried with the reason, up to `retries` times.
 *
 * Pure apart from the injected `generate`: the caller decides how a reply is made (the model, a test double).
 */
import { z } from 'zod';

/** A JSON schema as written in the config (an object schema; its fields are checked by compileStructured). */
export type JsonSchemaObject = Record<string, unknown>;

/** The caption could not be made into a valid object after every attempt (error code `invalid_output`). */
export class InvalidOutputError extends Error {
  constructor(
    message: string,
    readonly attempts: number,
    readonly lastText: string,
  ) {
    super(message);
    this.name = 'InvalidOutputError';
  }
}

/** Largest reply that is parsed at all (a caption is small; a runaway reply is not worth parsing). */
const MAX_REPLY_CHARS = 20_000;

/** Turns the config's JSON schema into a validator; throws (with the reason) for schemas zod cannot take. */
export function compileStructured(schema: JsonSchemaObject): z.ZodType {
  if (schema.type !== 'object') throw new Error('the schema must describe an object (type: object)');
  // fromJSONSchema's parameter type is its own JSON Schema type; the config holds plain JSON of that shape.
  return z.fromJSONSchema(schema as Parameters<typeof z.fromJSONSchema>[0]);
}

/** The caption prompt that asks for JSON matching the schema. */
export function structuredPrompt(base: string, schema: JsonSchemaObject): string {
  return `${base}\n\nReply with only one JSON object, no other text, that matches this JSON schema:\n${JSON.stringify(schema)}`;
}

export type ParseOutcome = { ok: true; data: Record<string, unknown> } | { ok: false; reason: string };

/** Parses a reply: the JSON object in it (code fences and text around it are tolerated), then validation. */
export function parseStructured(text: string, validator: z.ZodType): ParseOutcome {
  if (text.length > MAX_REPLY_CHARS) return { ok: false, reason: `reply longer than ${MAX_REPLY_CHARS} characters` };
  const start = text.indexOf('{');
  const end = text.lastIndexOf('}');
  if (start < 0 || end < start) return { ok: false, reason: 'no JSON object in the reply' };
  let json: unknown;
  try {
    json = JSON.parse(text.slice(start, end + 1));
  } catch (err) {
    return { ok: false, reason: `not valid JSON: ${(err as Error).message}` };
  }
  const r = validator.safeParse(json);
  if (!r.success) {
    const issues = r.error.issues
      .slice(0, 5)
      .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
    return { ok: false, reason: `does not match the schema: ${issues.join('; ')}` };
  }
  if (typeof r.data !== 'object' || r.data === null || Array.isArray(r.data))
    return { ok: false, reason: 'not a JSON object' };
  return { ok: true, data: r.data as Record<string, unknown> };
}

/** Makes one reply for a prompt; `attempt` counts from 1. */
export type GenerateFn = (prompt: string, attempt: number) => Promise<string>;

export interface StructuredResult {
  data: Record<string, unknown>;
  /** The reply that validated, trimmed. */
  text: string;
  attempts: number;
}

/**
 * Generates until a reply validates: 1 + `retries` attempts. A retry's prompt names what was wrong with the
 * previous reply. Throws InvalidOutputError after the last invalid reply; errors from `generate` pass through.
 */
export async function generateStructured(
  generate: GenerateFn,
  o: {
    prompt: string;
    schema: JsonSchemaObject;
    validator: z.ZodType;
    retries: number;
    onInvalid?: (attempt: number, reason: string) => void;
  },
): Promise<StructuredResult> {
  const base = structuredPrompt(o.prompt, o.schema);
  let prompt = base;
  let reason = '';
  let text = '';
  const total = 1 + Math.max(0, o.retries);
  for (let attempt = 1; attempt <= total; attempt++) {
    text = (await generate(prompt, attempt)).trim();
    const r = parseStructured(text, o.validator);
    if (r.ok) return { data: r.data, text, attempts: attempt };
    reason = r.reason;
    o.onInvalid?.(attempt, reason);
    prompt = `${base}\n\nYour previous reply was invalid (${reason.slice(0, 300)}). Reply with only the JSON object.`;
  }
  throw new InvalidOutputError(
    `no valid structured caption after ${total} attempts: ${reason}`.slice(0, 480),
    total,
    text,
  );
}
