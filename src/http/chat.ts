/**
 * What the OpenAI and Ollama chat APIs share once their wire formats are read: images from the wire, structured
 * output by JSON schema (generated, parsed and validated as structured captions are, retried with the reason),
 * and the refusal of tool calling, which this server does not do yet.
 */
import {
  type JsonSchemaObject,
  compileStructured,
  generateStructured,
  structuredPrompt,
} from '../common/structured-output.js';
import type { GenerationMessage, GenerationRequest, GenerationResult } from '../engine/types.js';
import { type HttpApi, HttpError } from './server.js';

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

/** Refuses a request that declares tools it expects to be called (tool calling is not implemented yet). */
export function refuseTools(tools: unknown[] | undefined, choice: unknown): void {
  if (!tools || tools.length === 0 || choice === 'none') return;
  throw new HttpError(
    400,
    'invalid_request',
    'tool calling is not available in this Perch version: send the request without tools (or tool_choice "none")',
  );
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
export async function generateJson(
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
      result = await api.generate({ ...request, messages, onToken: undefined }, signal);
      if (result.finishReason === 'cancelled') throw new HttpError(499, 'cancelled', 'the request was cancelled');
      return result.text;
    },
    { prompt: question, schema, validator: compileStructured(schema), retries: STRUCTURED_RETRIES },
  );
  const text = JSON.stringify(r.data);
  request.onToken?.(text);
  return { ...result!, text, finishReason: 'stop' };
}

/** The prompt a JSON schema adds (for clients that only want the instruction, e.g. json_object mode). */
export { structuredPrompt };

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
