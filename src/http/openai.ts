/**
 * The OpenAI chat API (what the `openai` SDK and Frigate's `openai` provider call) and the llama.cpp server
 * endpoints Frigate's `llamacpp` provider reads first (/v1/models for the input modalities, /props, /health).
 * Paths come with and without /v1: the SDK appends its paths to whatever base URL it is given.
 */
import { randomUUID } from 'node:crypto';
import type * as http from 'node:http';
import { z } from 'zod';
import type { ContentPart, GenerationMessage, GenerationRequest, GenerationResult } from '../engine/types.js';
import { checkSchema, imageBytes, reply, samplingOf, toolChoiceOf, toolSpecs } from './chat.js';
import { type HttpApi, HttpError, type Route, describeIssues, sendJson } from './server.js';

const text = z.string().max(1_000_000);
const contentPart = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text'), text }),
  z.object({
    type: z.literal('image_url'),
    image_url: z.union([z.string(), z.object({ url: z.string(), detail: z.string().optional() })]),
  }),
]);
const message = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.union([text, z.array(contentPart).max(64), z.null()]).optional(),
  name: z.string().max(256).optional(),
  tool_calls: z.array(z.unknown()).optional(),
  tool_call_id: z.string().optional(),
});
const tokens = z.number().int().min(1).max(32768);
/** Unknown fields are allowed: Frigate spreads its provider_options into the body. */
const chatRequest = z.looseObject({
  model: z.string().min(1).max(256),
  messages: z.array(message).min(1).max(1000),
  stream: z.boolean().optional(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullish(),
  max_tokens: tokens.nullish(),
  max_completion_tokens: tokens.nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.number().int().min(1).max(1000).nullish(),
  seed: z.number().int().nullish(),
  n: z.literal(1).nullish(),
  stop: z.union([z.string().min(1), z.array(z.string().min(1)).max(8)]).nullish(),
  response_format: z
    .discriminatedUnion('type', [
      z.object({ type: z.literal('text') }),
      z.object({ type: z.literal('json_object') }),
      z.object({
        type: z.literal('json_schema'),
        json_schema: z.looseObject({ name: z.string().optional(), schema: z.record(z.string(), z.unknown()) }),
      }),
    ])
    .nullish(),
  tools: z.array(z.unknown()).nullish(),
  tool_choice: z.unknown().optional(),
  chat_template_kwargs: z.looseObject({ enable_thinking: z.boolean().optional() }).nullish(),
});
type ChatRequest = z.infer<typeof chatRequest>;

/** The media marker llama.cpp's /props names (Frigate reads it; images come as image_url parts here). */
const MEDIA_MARKER = '<__media__>';

export function openAiRoutes(api: HttpApi): Record<string, Route> {
  const models: Route = async ({ res }) => sendJson(res, 200, { object: 'list', data: [modelEntry(api)] });
  const chat: Route = async (ctx) => chatCompletions(api, ctx.body, ctx.res, ctx.signal);
  return {
    'GET /v1/models': models,
    'GET /models': models,
    'POST /v1/chat/completions': chat,
    'POST /chat/completions': chat,
    'GET /health': async ({ res }) => {
      const s = api.engine().status();
      if (s.state === 'ready') sendJson(res, 200, { status: 'ok' });
      else throw new HttpError(503, 'unavailable', s.detail, { 'Retry-After': '30' });
    },
    'GET /props': async ({ res }) => {
      const s = api.engine().status();
      sendJson(res, 200, {
        model_alias: api.settings.model_name,
        default_generation_settings: { n_ctx: api.contextTokens },
        modalities: { vision: s.vision === true, audio: false },
        chat_template_caps: { supports_tools: true },
        // Perch renders Gemma's template itself; no enable_thinking switch is offered through chat_template_kwargs.
        chat_template: '',
        media_marker: MEDIA_MARKER,
        build_info: `perch ${api.version}`,
      });
    },
  };
}

function modelEntry(api: HttpApi): Record<string, unknown> {
  const s = api.engine().status();
  return {
    id: api.settings.model_name,
    object: 'model',
    created: 0,
    owned_by: 'perch',
    aliases: [],
    // As llama.cpp's server reports them (Frigate reads these to decide whether to send images).
    architecture: { input_modalities: ['text', ...(s.vision ? ['image'] : [])], output_modalities: ['text'] },
    meta: { n_ctx: api.contextTokens },
  };
}

async function chatCompletions(
  api: HttpApi,
  body: unknown,
  res: http.ServerResponse,
  signal: AbortSignal,
): Promise<void> {
  const parsed = chatRequest.safeParse(body);
  if (!parsed.success) throw new HttpError(400, 'invalid_request', describeIssues(parsed.error.issues));
  const r = parsed.data;
  if (!api.isModel(r.model))
    throw new HttpError(
      404,
      'model_not_found',
      `unknown model "${r.model.slice(0, 100)}"; this server has "${api.settings.model_name}"`,
    );
  const tools = toolSpecs(r.tools, r.tool_choice);
  const toolChoice = toolChoiceOf(r.tool_choice);
  const request = {
    ...generationRequest(r),
    ...(tools ? { tools, ...(toolChoice !== 'auto' ? { toolChoice } : {}) } : {}),
  };
  const fmt = r.response_format;
  if (tools && fmt && fmt.type !== 'text')
    throw new HttpError(400, 'invalid_request', 'give tools or a JSON response_format, not both');
  const schema =
    fmt?.type === 'json_schema'
      ? checkSchema(fmt.json_schema.schema, 'response_format.json_schema.schema')
      : fmt?.type === 'json_object'
        ? { type: 'object' }
        : null;
  const id = `chatcmpl-${randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const run = (onToken?: (delta: string) => void): Promise<GenerationResult> =>
    reply(api, request, schema, signal, onToken);
  if (!r.stream) {
    const result = await run();
    if (result.finishReason === 'cancelled') return;
    const calls = toolCallsOut(result);
    sendJson(res, 200, {
      id,
      object: 'chat.completion',
      created,
      model: r.model,
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: calls.length && !result.text ? null : result.text,
            ...(result.thinking ? { reasoning_content: result.thinking } : {}),
            ...(calls.length ? { tool_calls: calls } : {}),
          },
          finish_reason: calls.length ? 'tool_calls' : result.finishReason,
        },
      ],
      usage: usage(result),
    });
    return;
  }
  // Server-sent events: the head goes out with the first token, so a request refused before it gets a status.
  const chunk = (delta: Record<string, unknown>, finish: string | null, extra: Record<string, unknown> = {}) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model: r.model,
    choices: [{ index: 0, delta, finish_reason: finish }],
    ...extra,
  });
  const send = (data: unknown): void => {
    if (!res.headersSent) {
      res.writeHead(200, {
        'Content-Type': 'text/event-stream',
        'Cache-Control': 'no-cache',
        Connection: 'keep-alive',
      });
      res.write(`data: ${JSON.stringify(chunk({ role: 'assistant', content: '' }, null))}\n\n`);
    }
    res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };
  const result = await run((delta) => send(chunk({ content: delta }, null)));
  if (result.finishReason === 'cancelled') {
    res.end();
    return;
  }
  const calls = toolCallsOut(result);
  if (calls.length) send(chunk({ tool_calls: calls.map((c, index) => ({ index, ...c })) }, null));
  send(chunk({}, calls.length ? 'tool_calls' : result.finishReason));
  if (r.stream_options?.include_usage)
    send({ id, object: 'chat.completion.chunk', created, model: r.model, choices: [], usage: usage(result) });
  send('[DONE]');
  res.end();
}

/** The model's calls as OpenAI's tool_calls (arguments as a JSON string). */
function toolCallsOut(r: GenerationResult): Array<Record<string, unknown>> {
  return (r.toolCalls ?? []).map((c) => ({
    id: `call_${randomUUID().replace(/-/g, '').slice(0, 24)}`,
    type: 'function',
    function: { name: c.name, arguments: JSON.stringify(c.arguments) },
  }));
}

function usage(r: GenerationResult): Record<string, number> {
  return {
    prompt_tokens: r.tokens.prompt,
    completion_tokens: r.tokens.completion,
    total_tokens: r.tokens.prompt + r.tokens.completion,
  };
}

const toolCallIn = z.looseObject({
  id: z.string().max(256).optional(),
  type: z.literal('function').optional(),
  function: z.looseObject({
    name: z.string().min(1).max(64),
    arguments: z.union([z.string(), z.record(z.string(), z.unknown())]),
  }),
});

function parseArguments(a: string | Record<string, unknown>, where: string): Record<string, unknown> {
  if (typeof a !== 'string') return a;
  try {
    const v = JSON.parse(a) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // the error below
  }
  throw new HttpError(400, 'invalid_request', `${where}: a JSON object (as a string) is required`);
}

function textContent(c: ChatRequest['messages'][number]['content']): string {
  if (c == null) return '';
  if (typeof c === 'string') return c;
  return c.map((p) => (p.type === 'text' ? p.text : '')).join('');
}

/** The request in the engine's terms. */
function generationRequest(r: ChatRequest): Omit<GenerationRequest, 'signal'> {
  // A tool result names its call by id; the engine (Gemma's template) wants the tool's name.
  const callNames = new Map<string, string>();
  const messages: GenerationMessage[] = r.messages.map((m, i) => {
    if (m.role === 'tool') {
      const name = (m.tool_call_id && callNames.get(m.tool_call_id)) || m.name;
      if (!name)
        throw new HttpError(
          400,
          'invalid_request',
          `messages.${i}: a tool result needs the tool_call_id of a call before it`,
        );
      return { role: 'tool', name, content: textContent(m.content) };
    }
    if (m.tool_calls?.length) {
      const toolCalls = m.tool_calls.map((c, j) => {
        const p = toolCallIn.safeParse(c);
        if (!p.success)
          throw new HttpError(
            400,
            'invalid_request',
            `messages.${i}.tool_calls.${j}: ${describeIssues(p.error.issues)}`,
          );
        const args = parseArguments(p.data.function.arguments, `messages.${i}.tool_calls.${j}.function.arguments`);
        if (p.data.id) callNames.set(p.data.id, p.data.function.name);
        return { name: p.data.function.name, arguments: args };
      });
      return { role: 'assistant', content: textContent(m.content), toolCalls };
    }
    const role = m.role === 'developer' ? 'system' : m.role;
    if (typeof m.content === 'string' || m.content == null) return { role, content: m.content ?? '' };
    const parts: ContentPart[] = m.content.map((p, j) =>
      p.type === 'text'
        ? { type: 'text', text: p.text }
        : {
            type: 'image',
            data: imageBytes(
              typeof p.image_url === 'string' ? p.image_url : p.image_url.url,
              `messages.${i}.content.${j}.image_url`,
            ),
          },
    );
    if (role !== 'user' && parts.some((p) => p.type === 'image'))
      throw new HttpError(400, 'invalid_request', `messages.${i}: images go in user messages`);
    return { role, content: parts };
  });
  const stop = typeof r.stop === 'string' ? [r.stop] : (r.stop ?? undefined);
  const maxTokens = r.max_completion_tokens ?? r.max_tokens ?? undefined;
  return {
    messages,
    ...(maxTokens ? { maxTokens } : {}),
    sampling: samplingOf(r),
    ...(stop?.length ? { stop } : {}),
    ...(r.chat_template_kwargs?.enable_thinking ? { thinking: true } : {}),
  };
}
