/**
 * The Ollama API, the part Home Assistant's Ollama integration, Frigate's `ollama` provider and the `ollama` client
 * library use: /api/tags (the integration's connection check and model list, read by `model`), /api/ps,
 * /api/show (Frigate's check that the model is there), /api/version, /api/pull (the model is already here),
 * /api/chat (Home Assistant) and /api/generate (Frigate's descriptions: a prompt and images). Both answer in NDJSON
 * by default: every line one complete JSON object, the last one done: true.
 */
import type * as http from 'node:http';
import { z } from 'zod';
import type { JsonSchemaObject } from '../common/structured-output.js';
import type { ContentPart, GenerationMessage, GenerationRequest, GenerationResult } from '../engine/types.js';
import { checkSchema, imageBytes, reply, samplingOf, toolSpecs } from './chat.js';
import { type HttpApi, HttpError, type Route, describeIssues, sendJson } from './server.js';

const base64Images = z.array(z.string()).max(16).nullish();
const message = z.looseObject({
  role: z.enum(['system', 'user', 'assistant', 'tool']),
  content: z.string().max(1_000_000).optional(),
  images: base64Images,
  tool_calls: z
    .array(
      z.looseObject({
        function: z.looseObject({ name: z.string().min(1).max(64), arguments: z.record(z.string(), z.unknown()) }),
      }),
    )
    .max(64)
    .nullish(),
  tool_name: z.string().max(64).nullish(),
  thinking: z.string().nullish(),
});
/** What /api/chat and /api/generate share. Options Perch does not use (repeat_penalty, say) are accepted. */
const common = {
  model: z.string().min(1).max(256),
  stream: z.boolean().default(true),
  format: z
    .union([z.literal('json'), z.literal(''), z.record(z.string(), z.unknown())], {
      error: '"json" or a JSON schema object',
    })
    .nullish(),
  options: z
    .looseObject({
      temperature: z.number().min(0).max(2).nullish(),
      top_p: z.number().gt(0).max(1).nullish(),
      top_k: z.number().int().min(1).max(1000).nullish(),
      seed: z.number().int().nullish(),
      num_predict: z.number().int().min(-2).max(32768).nullish(),
      stop: z.array(z.string().min(1)).max(8).nullish(),
      num_ctx: z.number().int().positive().nullish(),
    })
    .nullish(),
  // Accepted and ignored: the model stays loaded while Perch runs.
  keep_alive: z.union([z.number(), z.string().max(32)]).nullish(),
  think: z.union([z.boolean(), z.enum(['low', 'medium', 'high'])]).nullish(),
};
const chatRequest = z.looseObject({
  ...common,
  messages: z.array(message).max(1000).default([]),
  tools: z.array(z.unknown()).nullish(),
});
const generateRequest = z.looseObject({
  ...common,
  prompt: z.string().max(1_000_000).default(''),
  system: z.string().max(1_000_000).nullish(),
  images: base64Images,
  // Ollama features Perch does not have: refused by name below rather than ignored.
  suffix: z.string().nullish(),
  raw: z.boolean().nullish(),
  template: z.string().nullish(),
  context: z.array(z.number()).nullish(),
});
type ChatRequest = z.infer<typeof chatRequest>;
type GenerateRequest = z.infer<typeof generateRequest>;
const modelRequest = z.looseObject({
  model: z.string().min(1).max(256).optional(),
  name: z.string().max(256).optional(),
});

export function ollamaRoutes(api: HttpApi): Record<string, Route> {
  const tag = `${api.settings.model_name}:latest`;
  const details = (): Record<string, unknown> => ({
    format: 'onnx',
    family: 'gemma4',
    families: ['gemma4'],
    parameter_size: '',
    quantization_level: '',
  });
  const entry = (): Record<string, unknown> => ({
    name: tag,
    model: tag,
    modified_at: new Date(0).toISOString(),
    size: 0,
    digest: '',
    details: details(),
  });
  const known = (body: unknown): string => {
    const p = modelRequest.safeParse(body);
    if (!p.success) throw new HttpError(400, 'invalid_request', describeIssues(p.error.issues));
    const name = p.data.model ?? p.data.name;
    if (!api.isModel(name))
      throw new HttpError(404, 'model_not_found', `model "${String(name).slice(0, 100)}" not found`);
    return tag;
  };
  return {
    'GET /api/tags': async ({ res }) => sendJson(res, 200, { models: [entry()] }),
    'GET /api/ps': async ({ res }) => {
      const ready = api.engine().status().state === 'ready';
      const far = new Date(Date.UTC(2099, 0, 1)).toISOString();
      sendJson(res, 200, {
        models: ready ? [{ ...entry(), size_vram: 0, expires_at: far, context_length: api.contextTokens }] : [],
      });
    },
    'GET /api/version': async ({ res }) => sendJson(res, 200, { version: api.version }),
    'POST /api/show': async ({ res, body }) => {
      known(body);
      const s = api.engine().status();
      sendJson(res, 200, {
        modelfile: '',
        parameters: '',
        template: '',
        details: details(),
        model_info: { 'general.architecture': 'gemma4', 'gemma4.context_length': api.contextTokens },
        // What Ollama lists for a model like this one. Clients read it: Frigate sends `think` only to a model
        // with 'thinking', others offer tools only to one with 'tools'.
        capabilities: ['completion', 'tools', 'thinking', ...(s.vision ? ['vision'] : [])],
        modified_at: new Date(0).toISOString(),
      });
    },
    'POST /api/pull': async ({ res, body }) => {
      known(body);
      sendJson(res, 200, { status: 'success' });
    },
    'POST /api/chat': async (ctx) => chat(api, ctx.body, ctx.res, ctx.signal),
    'POST /api/generate': async (ctx) => generate(api, ctx.body, ctx.res, ctx.signal),
  };
}

async function chat(api: HttpApi, body: unknown, res: http.ServerResponse, signal: AbortSignal): Promise<void> {
  const parsed = chatRequest.safeParse(body);
  if (!parsed.success) throw new HttpError(400, 'invalid_request', describeIssues(parsed.error.issues));
  const r = parsed.data;
  if (!api.isModel(r.model)) throw new HttpError(404, 'model_not_found', `model "${r.model.slice(0, 100)}" not found`);
  const tools = toolSpecs(r.tools, undefined);
  // Ollama's way to load a model: an empty chat answers done at once.
  if (r.messages.length === 0) return loaded(res, r.model, { message: { role: 'assistant', content: '' } });
  if (tools && r.format) throw new HttpError(400, 'invalid_request', 'give tools or a format, not both');
  const request = { ...generationRequest(r), ...(tools ? { tools } : {}) };
  await answer(api, r, request, res, signal, (content, result) => ({
    message: {
      role: 'assistant',
      content,
      ...(result?.thinking ? { thinking: result.thinking } : {}),
      // The client runs the tools; arguments stay objects, as the Ollama library requires.
      ...(result?.toolCalls?.length
        ? { tool_calls: result.toolCalls.map((c) => ({ function: { name: c.name, arguments: c.arguments } })) }
        : {}),
    },
  }));
}

/** A prompt (and images) without a conversation: what Frigate's `ollama` provider sends for a description. */
async function generate(api: HttpApi, body: unknown, res: http.ServerResponse, signal: AbortSignal): Promise<void> {
  const parsed = generateRequest.safeParse(body);
  if (!parsed.success) throw new HttpError(400, 'invalid_request', describeIssues(parsed.error.issues));
  const r = parsed.data;
  if (!api.isModel(r.model)) throw new HttpError(404, 'model_not_found', `model "${r.model.slice(0, 100)}" not found`);
  if (r.raw) throw new HttpError(400, 'invalid_request', "raw: Perch always applies Gemma 4's chat template");
  if (r.template) throw new HttpError(400, 'invalid_request', "template: Perch always applies Gemma 4's chat template");
  if (r.suffix) throw new HttpError(400, 'invalid_request', 'suffix: fill-in-the-middle is not supported');
  if (r.context?.length)
    throw new HttpError(400, 'invalid_request', 'context: not supported; send the conversation to /api/chat');
  const images = r.images ?? [];
  // As with chat, an empty request loads the model.
  if (!r.prompt && images.length === 0) return loaded(res, r.model, { response: '' });
  const messages: GenerationMessage[] = [
    ...(r.system != null ? [{ role: 'system' as const, content: r.system }] : []),
    { role: 'user', content: userContent(r.prompt, images, '') },
  ];
  await answer(api, r, { ...settingsOf(r), messages }, res, signal, (text, result) => ({
    response: text,
    ...(result?.thinking ? { thinking: result.thinking } : {}),
  }));
}

/** The answer to a request with nothing to generate from: Ollama loads the model and says so. */
function loaded(res: http.ServerResponse, model: string, payload: Record<string, unknown>): void {
  sendJson(res, 200, { model, created_at: new Date().toISOString(), ...payload, done: true, done_reason: 'load' });
}

/**
 * Generates the reply and writes it as both endpoints do: one object (stream false) or NDJSON lines, each piece of
 * text in `payload`'s shape, then a last line done: true with the counts and durations (nanoseconds).
 */
async function answer(
  api: HttpApi,
  r: { model: string; stream: boolean; format?: GenerateRequest['format'] },
  request: Omit<GenerationRequest, 'signal'>,
  res: http.ServerResponse,
  signal: AbortSignal,
  payload: (text: string, result?: GenerationResult) => Record<string, unknown>,
): Promise<void> {
  const schema: JsonSchemaObject | null =
    r.format === 'json'
      ? { type: 'object' }
      : r.format && typeof r.format === 'object'
        ? checkSchema(r.format, 'format')
        : null;
  const head = () => ({ model: r.model, created_at: new Date().toISOString() });
  const done = (result: GenerationResult, text: string) => ({
    ...head(),
    ...payload(text, result),
    done: true,
    done_reason: result.finishReason === 'length' ? 'length' : 'stop',
    total_duration: Math.round(result.timings.totalMs * 1e6),
    load_duration: 0,
    prompt_eval_count: result.tokens.prompt,
    prompt_eval_duration: Math.round((result.timings.prefillMs ?? 0) * 1e6),
    eval_count: result.tokens.completion,
    eval_duration: Math.round((result.timings.decodeMs ?? 0) * 1e6),
  });
  if (!r.stream) {
    const result = await reply(api, request, schema, signal);
    if (result.finishReason !== 'cancelled') sendJson(res, 200, done(result, result.text));
    return;
  }
  const line = (obj: unknown): void => {
    if (!res.headersSent) res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
    res.write(`${JSON.stringify(obj)}\n`);
  };
  const result = await reply(api, request, schema, signal, (delta) =>
    line({ ...head(), ...payload(delta), done: false }),
  );
  if (result.finishReason !== 'cancelled') line(done(result, ''));
  res.end();
}

/** The chat request in the engine's terms. */
function generationRequest(r: ChatRequest): Omit<GenerationRequest, 'signal'> {
  let lastCall: string | undefined;
  const messages: GenerationMessage[] = r.messages.map((m, i) => {
    if (m.role === 'tool') {
      // Home Assistant sends tool results without tool_name: the latest call's tool answered.
      const name = m.tool_name ?? lastCall;
      if (!name)
        throw new HttpError(400, 'invalid_request', `messages.${i}: a tool result needs a tool call before it`);
      return { role: 'tool', name, content: m.content ?? '' };
    }
    if (m.tool_calls?.length) {
      const toolCalls = m.tool_calls.map((c) => ({ name: c.function.name, arguments: c.function.arguments }));
      lastCall = toolCalls[toolCalls.length - 1]!.name;
      return { role: 'assistant', content: m.content ?? '', toolCalls };
    }
    const images = m.images ?? [];
    if (images.length > 0 && m.role !== 'user')
      throw new HttpError(400, 'invalid_request', `messages.${i}: images go in user messages`);
    return { role: m.role, content: userContent(m.content ?? '', images, `messages.${i}.`) };
  });
  return { messages, ...settingsOf(r) };
}

/** A message's content as the engine takes it: the text alone, or the images (base64, `where` names them) then it. */
function userContent(text: string, images: string[], where: string): GenerationMessage['content'] {
  if (images.length === 0) return text;
  const parts: ContentPart[] = images.map((b64, j) => ({
    type: 'image',
    data: imageBytes(b64, `${where}images.${j}`),
  }));
  if (text) parts.push({ type: 'text', text });
  return parts;
}

/** Length, sampling, stop texts and thinking, as both endpoints name them. */
function settingsOf(r: Pick<ChatRequest, 'options' | 'think'>): Omit<GenerationRequest, 'signal' | 'messages'> {
  const o = r.options ?? {};
  const maxTokens = o.num_predict != null && o.num_predict > 0 ? o.num_predict : undefined;
  return {
    ...(maxTokens ? { maxTokens } : {}),
    sampling: samplingOf(o),
    ...(o.stop?.length ? { stop: o.stop } : {}),
    ...(r.think === true || typeof r.think === 'string' ? { thinking: true } : {}),
  };
}
