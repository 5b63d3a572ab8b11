/**
 * The Ollama API, the part Home Assistant's Ollama integration and the `ollama` client library use: /api/tags
 * (the integration's connection check and model list, read by `model`), /api/ps, /api/show, /api/version,
 * /api/pull (the model is already here) and /api/chat (NDJSON streaming by default: every line one complete
 * JSON object with message.role, the last one done: true).
 */
import type * as http from 'node:http';
import { z } from 'zod';
import type { ContentPart, GenerationMessage, GenerationRequest, GenerationResult } from '../engine/types.js';
import { checkSchema, imageBytes, reply, samplingOf, toolSpecs } from './chat.js';
import { type HttpApi, HttpError, type Route, describeIssues, sendJson } from './server.js';

const message = z.looseObject({
  role: z.enum(['system', 'user', 'assistant', 'tool']),
  content: z.string().max(1_000_000).optional(),
  images: z.array(z.string()).max(16).nullish(),
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
const chatRequest = z.looseObject({
  model: z.string().min(1).max(256),
  messages: z.array(message).max(1000).default([]),
  stream: z.boolean().default(true),
  format: z.union([z.literal('json'), z.literal(''), z.record(z.string(), z.unknown())]).nullish(),
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
  tools: z.array(z.unknown()).nullish(),
  think: z.union([z.boolean(), z.enum(['low', 'medium', 'high'])]).nullish(),
});
type ChatRequest = z.infer<typeof chatRequest>;
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
        capabilities: ['completion', ...(s.vision ? ['vision'] : [])],
        modified_at: new Date(0).toISOString(),
      });
    },
    'POST /api/pull': async ({ res, body }) => {
      known(body);
      sendJson(res, 200, { status: 'success' });
    },
    'POST /api/chat': async (ctx) => chat(api, ctx.body, ctx.res, ctx.signal),
  };
}

async function chat(api: HttpApi, body: unknown, res: http.ServerResponse, signal: AbortSignal): Promise<void> {
  const parsed = chatRequest.safeParse(body);
  if (!parsed.success) throw new HttpError(400, 'invalid_request', describeIssues(parsed.error.issues));
  const r = parsed.data;
  if (!api.isModel(r.model)) throw new HttpError(404, 'model_not_found', `model "${r.model.slice(0, 100)}" not found`);
  const tools = toolSpecs(r.tools, undefined);
  if (r.messages.length === 0) {
    // Ollama's way to load a model: an empty chat answers done at once.
    sendJson(res, 200, {
      model: r.model,
      created_at: new Date().toISOString(),
      message: { role: 'assistant', content: '' },
      done: true,
      done_reason: 'load',
    });
    return;
  }
  const request = { ...generationRequest(r), ...(tools ? { tools } : {}) };
  if (tools && r.format) throw new HttpError(400, 'invalid_request', 'give tools or a format, not both');
  const schema =
    r.format === 'json'
      ? { type: 'object' }
      : r.format && typeof r.format === 'object'
        ? checkSchema(r.format, 'format')
        : null;
  const run = (onToken?: (delta: string) => void): Promise<GenerationResult> =>
    reply(api, request, schema, signal, onToken);
  const done = (result: GenerationResult, content: string) => ({
    model: r.model,
    created_at: new Date().toISOString(),
    message: {
      role: 'assistant',
      content,
      ...(result.thinking ? { thinking: result.thinking } : {}),
      // The client runs the tools; arguments stay objects, as the Ollama library requires.
      ...(result.toolCalls?.length
        ? { tool_calls: result.toolCalls.map((c) => ({ function: { name: c.name, arguments: c.arguments } })) }
        : {}),
    },
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
    const result = await run();
    if (result.finishReason !== 'cancelled') sendJson(res, 200, done(result, result.text));
    return;
  }
  const line = (obj: unknown): void => {
    if (!res.headersSent) res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
    res.write(`${JSON.stringify(obj)}\n`);
  };
  const result = await run((delta) =>
    line({
      model: r.model,
      created_at: new Date().toISOString(),
      message: { role: 'assistant', content: delta },
      done: false,
    }),
  );
  if (result.finishReason !== 'cancelled') line(done(result, ''));
  res.end();
}

/** The request in the engine's terms. */
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
    if (images.length === 0) return { role: m.role, content: m.content ?? '' };
    if (m.role !== 'user') throw new HttpError(400, 'invalid_request', `messages.${i}: images go in user messages`);
    const parts: ContentPart[] = images.map((b64, j) => ({
      type: 'image',
      data: imageBytes(b64, `messages.${i}.images.${j}`),
    }));
    if (m.content) parts.push({ type: 'text', text: m.content });
    return { role: m.role, content: parts };
  });
  const o = r.options ?? {};
  const maxTokens = o.num_predict != null && o.num_predict > 0 ? o.num_predict : undefined;
  return {
    messages,
    ...(maxTokens ? { maxTokens } : {}),
    sampling: samplingOf(o),
    ...(o.stop?.length ? { stop: o.stop } : {}),
    ...(r.think === true || typeof r.think === 'string' ? { thinking: true } : {}),
  };
}
