/**
 * A tool call end to end through the HTTP API. The synthetic model never calls a tool (random weights), so the
 * model's sampling is replaced by recorded Gemma 4 output: the tokens of the call transformers renders for an
 * assistant turn (test/fixtures/golden/template/conversations.json), pushed through the real output router as
 * generation pushes them. Everything else is real: the HTTP server, the scheduler, the wire shapes.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import * as http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpSettings, schedulerSettings } from '../src/config/schema.js';
import { silentLogger } from '../src/common/log.js';
import { OutputRouter } from '../src/engine/prompt.js';
import { PackageTokenizer } from '../src/engine/tokenizer.js';
import type { AnswerEngine, GenerationRequest, GenerationResult } from '../src/engine/types.js';
import { HttpServer } from '../src/http/server.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { makeTinyPackage, tempRoot } from './engine-helpers.js';

const fixture = JSON.parse(
  readFileSync(join(__dirname, 'fixtures', 'golden', 'template', 'conversations.json'), 'utf8'),
) as {
  cases: Array<{
    text: string;
    messages: Array<{ tool_calls?: Array<{ function: { name: string; arguments: Record<string, unknown> } }> }>;
  }>;
};
const tools = fixture.cases.find((c) => c.text.includes('<|tool_call>'))!;
const recordedCall = /<\|tool_call>[\s\S]*?<tool_call\|>/.exec(tools.text)![0];
const call = tools.messages.find((m) => m.tool_calls)!.tool_calls![0]!.function;

/** Plays recorded model output through the real router; remembers the last request. */
class RecordedModel implements AnswerEngine {
  last: GenerationRequest | undefined;
  constructor(
    private readonly tokenizer: PackageTokenizer,
    private readonly output: string,
  ) {}
  status() {
    return { state: 'ready' as const, detail: 'recorded', vision: false };
  }
  async generate(request: GenerationRequest): Promise<GenerationResult> {
    this.last = request;
    const router = new OutputRouter(this.tokenizer);
    const ids = this.tokenizer.encode(this.output, { addSpecialTokens: false });
    let text = '';
    for (const id of ids) {
      const d = router.push(id).answer;
      text += d;
      if (d) request.onToken?.(d);
    }
    text += router.finish().answer;
    const { calls } = router.toolCalls();
    return {
      text: text.trim(),
      finishReason: 'stop',
      tokens: { prompt: 10, completion: ids.length },
      timings: { firstTokenMs: 1, totalMs: 2 },
      ...(calls.length ? { toolCalls: calls } : {}),
    };
  }
  async close() {}
}

let root: string;
let server: HttpServer;
let model: RecordedModel;
let base: string;
const LIGHTS = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather',
    parameters: { type: 'object', properties: { city: { type: 'string' } } },
  },
};

beforeAll(async () => {
  root = tempRoot('http-tools');
  const { dir } = await makeTinyPackage(root);
  model = new RecordedModel(await PackageTokenizer.load(dir), `Let me look.${recordedCall}`);
  server = new HttpServer({
    // Port 0: any free one (the config itself asks for a real port).
    settings: { ...httpSettings.parse({ enabled: true }), port: 0 },
    engine: () => model,
    scheduler: new Scheduler(schedulerSettings.parse({})),
    version: 'test',
    contextTokens: 1024,
    logger: silentLogger,
  });
  await server.start();
  base = `http://127.0.0.1:${server.address()!.port}`;
});
afterAll(async () => {
  await server?.stop();
  rmSync(root, { recursive: true, force: true });
});

const post = (path: string, body: unknown) =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });

describe('a recorded Gemma 4 tool call through the HTTP API', () => {
  it('OpenAI: tool_calls with JSON-string arguments, finish_reason tool_calls; the tools reached the engine', async () => {
    const r = await post('/v1/chat/completions', {
      model: 'perch',
      messages: [{ role: 'user', content: 'Weather?' }],
      tools: [LIGHTS],
    });
    expect(r.status).toBe(200);
    const j = (await r.json()) as {
      choices: Array<{
        message: {
          content: string | null;
          tool_calls: Array<{ id: string; type: string; function: { name: string; arguments: string } }>;
        };
        finish_reason: string;
      }>;
    };
    const c = j.choices[0]!;
    expect(c.finish_reason).toBe('tool_calls');
    expect(c.message.content).toBe('Let me look.');
    expect(c.message.tool_calls).toHaveLength(1);
    const tc = c.message.tool_calls[0]!;
    expect(tc).toMatchObject({ type: 'function', function: { name: call.name } });
    expect(tc.id).toMatch(/^call_/);
    expect(JSON.parse(tc.function.arguments)).toEqual(call.arguments);
    expect(model.last!.tools).toEqual([
      { name: 'get_weather', description: 'Weather', parameters: LIGHTS.function.parameters },
    ]);
  });

  it('OpenAI streamed: the text as deltas, then the call as a tool_calls delta with its index, then tool_calls', async () => {
    const r = await post('/v1/chat/completions', {
      model: 'perch',
      messages: [{ role: 'user', content: 'Weather?' }],
      tools: [LIGHTS],
      stream: true,
    });
    const events = (await r.text())
      .split('\n\n')
      .filter((e) => e.startsWith('data: '))
      .map((e) => e.slice(6));
    expect(events[events.length - 1]).toBe('[DONE]');
    const chunks = events
      .slice(0, -1)
      .map(
        (e) => JSON.parse(e) as { choices: Array<{ delta: Record<string, unknown>; finish_reason: string | null }> },
      );
    const text = chunks.map((c) => (c.choices[0]!.delta.content as string | undefined) ?? '').join('');
    expect(text).toBe('Let me look.');
    const calls = chunks.flatMap(
      (c) =>
        (c.choices[0]!.delta.tool_calls as Array<{ index: number; function: { name: string; arguments: string } }>) ??
        [],
    );
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ index: 0, function: { name: call.name } });
    expect(JSON.parse(calls[0]!.function.arguments)).toEqual(call.arguments);
    expect(chunks[chunks.length - 1]!.choices[0]!.finish_reason).toBe('tool_calls');
  });

  it('Ollama: the call in the last line with object arguments, done true', async () => {
    const r = await post('/api/chat', {
      model: 'perch:latest',
      messages: [{ role: 'user', content: 'Weather?' }],
      tools: [LIGHTS],
    });
    const lines = (await r.text())
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { done: boolean; message: { role: string; content: string; tool_calls?: unknown } });
    for (const l of lines) expect(l.message.role).toBe('assistant');
    const last = lines[lines.length - 1]!;
    expect(last.done).toBe(true);
    expect(last.message.tool_calls).toEqual([{ function: { name: call.name, arguments: call.arguments } }]);
    expect(lines.map((l) => l.message.content).join('')).toBe('Let me look.');
  });

  it('without tools declared, the engine is asked without tools (tool_choice none too)', async () => {
    await post('/v1/chat/completions', {
      model: 'perch',
      messages: [{ role: 'user', content: 'hi' }],
      tools: [LIGHTS],
      tool_choice: 'none',
    });
    expect(model.last!.tools).toBeUndefined();
  });
});

describe('a full queue', () => {
  it('answers 503 with Retry-After and the busy code past scheduler.max_queued, then serves again', async () => {
    // A model that holds its first request until released: one running, two waiting (max_queued 2), one over.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let calls = 0;
    const slow: AnswerEngine = {
      status: () => ({ state: 'ready', detail: 'held' }),
      generate: async (req) => {
        if (calls++ === 0) await held;
        return model.generate(req);
      },
      close: async () => undefined,
    };
    const scheduler = new Scheduler(schedulerSettings.parse({ max_queued: 2 }));
    const s = new HttpServer({
      settings: { ...httpSettings.parse({ enabled: true }), port: 0 },
      engine: () => slow,
      scheduler,
      version: 'test',
      contextTokens: 1024,
      logger: silentLogger,
    });
    await s.start();
    try {
      const url = `http://127.0.0.1:${s.address()!.port}/api/chat`;
      const body = JSON.stringify({ model: 'perch', messages: [{ role: 'user', content: 'hi' }], stream: false });
      // Each on a connection of its own: fetch would hold the later ones behind the held one.
      const send = () =>
        new Promise<{ status: number; retryAfter: string | undefined; body: string }>((resolve, reject) => {
          const req = http.request(
            url,
            { method: 'POST', agent: false, headers: { 'Content-Type': 'application/json' } },
            (res) => {
              let text = '';
              res.on('data', (c: Buffer) => (text += c.toString()));
              res.on('end', () =>
                resolve({
                  status: res.statusCode ?? 0,
                  retryAfter: res.headers['retry-after'] as string | undefined,
                  body: text,
                }),
              );
            },
          );
          req.on('error', reject);
          req.end(body);
        });
      const first = send();
      while (calls === 0) await new Promise((r) => setTimeout(r, 5));
      const waiting = [send(), send()];
      while (scheduler.stats().depth_by_kind.http < 2) await new Promise((r) => setTimeout(r, 5));
      const over = await send();
      expect(over.status).toBe(503);
      expect(over.retryAfter).toBe('5');
      expect((JSON.parse(over.body) as { error: string }).error).toMatch(/queue full/);
      release();
      expect((await first).status).toBe(200);
      for (const w of waiting) expect((await w).status).toBe(200);
      expect((await send()).status).toBe(200);
      expect(s.stats().http).toMatchObject({ rejected: 1, errors: 1 });
    } finally {
      await s.stop();
    }
  });
});
