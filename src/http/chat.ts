/**
 * What the OpenAI and Ollama chat APIs share once their wire formats are read: images from the wire, structured
 * output by JSON schema (generated, parsed and validated as structured captions are, retried with the reason),
 * and the tools a request declares (the model's calls go back to the client, which runs them).
 */
import { type JsonSchemaObject, compileStructured, generateStructured } from '../common/structured-output.js';
import { z } from 'zod';
import type {
  GenerationMessage,
  GenerationRequest,
  GenerationResult,
  SamplingSettings,
  ToolSpec,
} from '../engine/types.js';
import { type HttpApi, HttpError, describeIssues } from './server.js';

/** Retries after an invalid structured reply (as a camera's default structured_retries). */
const STRUCTURED_RETRIES = 2;
/** Largest image accepted in a request, decoded. */
const MAX_IMAGE_BYTES = 10 * 1024 * 1024;

/** An image given as base64, raw (Ollama) or in a data: URL (OpenAI); remote URLs are not fetched. */
export function imageBytes(value: string, where: string): Buffer {
  let b64 = value;
  if (value.startsWith('data:')) {
    const m = /^data:(image\/[a-z0-9.+-]+)?(;[^,]*)?,/i.exec(value);
    if (!m || !/;base64/i.test(m[2] ?? ''))
      throw new HttpError(400, 'invalid_request', `${where}: only base64 image data URLs are accepted`);
    b64 = value.slice(m[0].length);
  } else if (/^[a-z]+:\/\//i.test(value)) {
    throw new HttpError(400, 'invalid_request', `${where}: Perch does not fetch remote images; send a data: URL`);
  }
  if (!/^[A-Za-z0-9+/=\s_-]*$/.test(b64)) throw new HttpError(400, 'invalid_request', `${where}: not base64 data`);
  const bytes = Buffer.from(b64, 'base64');
  if (bytes.length === 0) throw new HttpError(400, 'invalid_request', `${where}: the image is empty`);
  if (bytes.length > MAX_IMAGE_BYTES)
    throw new HttpError(413, 'payload_too_large', `${where}: the image is over ${MAX_IMAGE_BYTES} bytes`);
  return bytes;
}

const toolEntry = z.looseObject({
  type: z.literal('function'),
  function: z.looseObject({
    name: z.string().regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/, 'a function name: letters, digits, _ . -, up to 64'),
    description: z.string().max(4000).optional(),
    parameters: z.record(z.string(), z.unknown()).optional(),
  }),
});

/**
 * The tools a request declares, in the engine's terms (none with tool_choice "none"). With "auto" the model
 * decides whether to call one; OpenAI's "required" and a named function are decoded as one forced call
 * (toolChoice, engine/grammar.ts).
 */
export function toolChoiceOf(choice: unknown): GenerationRequest['toolChoice'] {
  if (choice === 'required') return 'required';
  if (typeof choice === 'object' && choice !== null) {
    const name = (choice as { function?: { name?: unknown } }).function?.name;
    if (typeof name !== 'string' || !name)
      throw new HttpError(400, 'invalid_request', 'tool_choice: {type: "function", function: {name}} names a function');
    return { name };
  }
  if (choice === undefined || choice === null || choice === 'auto' || choice === 'none') return 'auto';
  throw new HttpError(400, 'invalid_request', 'tool_choice: "auto", "none", "required" or a named function');
}

export function toolSpecs(tools: unknown[] | null | undefined, choice: unknown): ToolSpec[] | undefined {
  if (!tools || tools.length === 0 || choice === 'none') return undefined;
  if (tools.length > 64) throw new HttpError(400, 'invalid_request', 'tools: at most 64 are accepted');
  return tools.map((t, i) => {
    const p = toolEntry.safeParse(t);
    if (!p.success) throw new HttpError(400, 'invalid_request', `tools.${i}: ${describeIssues(p.error.issues)}`);
    const f = p.data.function;
    return {
      name: f.name,
      ...(f.description ? { description: f.description } : {}),
      ...(f.parameters ? { parameters: f.parameters } : {}),
    };
  });
}

/** Checks a response schema before any work: an object schema that the validator compiles. */
export function checkSchema(schema: unknown, where: string): JsonSchemaObject {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema))
    throw new HttpError(400, 'invalid_request', `${where}: a JSON schema object is required`);
  try {
    compileStructured(schema as JsonSchemaObject);
  } catch (err) {
    throw new HttpError(400, 'invalid_request', `${where}: ${(err as Error).message}`);
  }
  return schema as JsonSchemaObject;
}

/**
 * Generates a reply that is one JSON object valid against `schema`: the last user message asks for it, an
 * invalid reply is retried with the reason; after the last try the request fails with invalid_output (502).
 */
async function generateJson(
  api: HttpApi,
  request: Omit<GenerationRequest, 'signal'>,
  schema: JsonSchemaObject,
  signal: AbortSignal,
): Promise<GenerationResult> {
  const last = request.messages.findLastIndex((m) => m.role === 'user');
  if (last < 0) throw new HttpError(400, 'invalid_request', 'a JSON reply needs a user message to ask it in');
  const question = textOf(request.messages[last]!);
  let result: GenerationResult | undefined;
  const r = await generateStructured(
    async (prompt) => {
      const messages = request.messages.map((m, i) => (i === last ? withText(m, prompt) : m));
      result = await api.generate({ ...request, messages, onToken: undefined, jsonSchema: schema }, signal);
      if (result.finishReason === 'cancelled') throw new HttpError(499, 'cancelled', 'the request was cancelled');
      return result.text;
    },
    { prompt: question, schema, validator: compileStructured(schema), retries: STRUCTURED_RETRIES },
  );
  const text = JSON.stringify(r.data);
  request.onToken?.(text);
  return { ...result!, text, finishReason: 'stop' };
}

/** The sampling fields both APIs name alike (absent or null: the engine's default). */
export function samplingOf(o: {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  seed?: number | null;
}): SamplingSettings {
  return {
    ...(o.temperature != null ? { temperature: o.temperature } : {}),
    ...(o.top_p != null ? { topP: o.top_p } : {}),
    ...(o.top_k != null ? { topK: o.top_k } : {}),
    ...(o.seed != null ? { seed: o.seed } : {}),
  };
}

/** Generates the reply: a validated JSON object when a schema is given, else free text (streamed by onToken). */
export function reply(
  api: HttpApi,
  request: Omit<GenerationRequest, 'signal'>,
  schema: JsonSchemaObject | null,
  signal: AbortSignal,
  onToken?: (delta: string) => void,
): Promise<GenerationResult> {
  const req = { ...request, ...(onToken ? { onToken } : {}) };
  return schema ? generateJson(api, req, schema, signal) : api.generate(req, signal);
}

function textOf(m: GenerationMessage): string {
  if (typeof m.content === 'string') return m.content;
  return m.content
    .filter((p) => p.type === 'text')
    .map((p) => (p as { text: string }).text)
    .join('\n');
}

/** The message with its text replaced (images kept, first). */
function withText(m: GenerationMessage, text: string): GenerationMessage {
  if (typeof m.content === 'string') return { ...m, content: text };
  return { ...m, content: [...m.content.filter((p) => p.type !== 'text'), { type: 'text', text }] };
}
