/**
 * The HTTP API as users run it: the real `perch run` process with a tiny package that can see, a private
 * Mosquitto, and the real clients: the `openai` SDK and the `ollama` library from PyPI (test/http_clients.py,
 * run in the reference environment), plus replays of what Frigate's llamacpp and ollama providers and Home
 * Assistant's Ollama integration send. Bad input comes from plain fetch and node:http.
 */
import { execFile } from 'node:child_process';
import * as http from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { compileStructured, parseStructured } from '../src/common/structured-output.js';
import { perchConfigSchema } from '../src/config/schema.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DaemonProcess, REPO, SAMPLES } from './daemon-helpers.js';
import { tempRoot } from './engine-helpers.js';
import mqtt from 'mqtt';
import { Collector, freePort, privateBrokerForFile, tempDir, uniqueRoot } from './mqtt-helpers.js';
import { makeHearingPackage } from './transcribe-helpers.js';

const shared = privateBrokerForFile();
/** The daemon lives for the whole file (the shared cleanups run after each test). */
const cleanups: Array<() => unknown> = [];
const TOKEN = 'test-token-0123456789';
const JPEG = join(SAMPLES, 'frames', 'frame-01.jpg');
let base: string;
let rootTopic: string;
let daemon: DaemonProcess;
// biome-ignore lint/suspicious/noExplicitAny: JSON from the clients and the server, read field by field below
type Json = any;
let clients: Record<string, Json>;
/** test/http_clients.py's DOOR schema. */
const clientsDoorSchema = {
  type: 'object',
  properties: {
    door: { type: 'string', enum: ['front', 'garage', 'back'] },
    open: { type: 'boolean' },
    minutes: { type: 'integer', minimum: 0, maximum: 600 },
  },
  required: ['door', 'open', 'minutes'],
  additionalProperties: false,
};

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { cwd: REPO, maxBuffer: 1 << 26, timeout: 300_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${cmd} failed: ${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
}

const post = (path: string, body: string, headers: Record<string, string> = {}) =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json', ...headers },
    body,
  });

/** POSTs on a connection of its own; resolves with the status (and headers, body) once the whole response is in. */
function postOwnConnection(path: string, body: string): Promise<number> {
  return postFull(path, body).then((r) => r.status);
}

function postFull(
  path: string,
  body: string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  const url = new URL(`${base}${path}`);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: 'POST',
        agent: false,
        headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

beforeAll(async () => {
  const setup = run('bash', [join(REPO, 'reference', 'setup.sh')]);
  const root = tempRoot('http');
  const pkg = await makeHearingPackage(root);
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  rootTopic = uniqueRoot();
  const tmp = tempDir('perch-http-');
  cleanups.push(() => tmp.cleanup());
  daemon = DaemonProcess.start(tmp.dir, {
    device: { id: `http${Date.now().toString(36)}` },
    log: { level: 'info' },
    daemon: { state_dir: tmp.dir, drain_timeout_ms: 3000 },
    mqtt: { url: shared.broker.url, root_topic: rootTopic },
    homeassistant: { enabled: false },
    model: { dir: pkg, threads: 1, context_tokens: 1024 },
    http: { enabled: true, port, token: TOKEN, max_body_bytes: 1024 * 1024 },
    scheduler: { max_queued: 100 },
  });
  cleanups.push(() => daemon.kill());
  // Ready when the model is: /health says 200.
  const t0 = Date.now();
  for (;;) {
    const r = await fetch(`${base}/health`, { headers: { Authorization: `Bearer ${TOKEN}` } }).catch(() => null);
    if (r?.status === 200) break;
    if (Date.now() - t0 > 90_000) throw new Error(`the HTTP API did not come up; log:\n${daemon.log()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  await setup;
  const python = join(REPO, 'reference', '.venv', 'bin', 'python');
  const out = await run(python, [join(REPO, 'test', 'http_clients.py'), base, TOKEN, JPEG]);
  clients = JSON.parse(out) as Record<string, Json>;
}, 400_000);

afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('the OpenAI API, through the openai SDK', () => {
  it('lists the model and answers, whole and streamed alike (greedy), with usage', () => {
    expect(clients.openai_models).toEqual(['perch']);
    const whole = clients.openai_chat;
    expect(typeof whole.text).toBe('string');
    expect(['stop', 'length']).toContain(whole.finish);
    expect(whole.usage.completion_tokens).toBeGreaterThan(0);
    expect(whole.usage.completion_tokens).toBeLessThanOrEqual(8);
    expect(whole.usage.total_tokens).toBe(whole.usage.prompt_tokens + whole.usage.completion_tokens);
    const streamed = clients.openai_stream;
    expect(streamed.text).toBe(whole.text);
    expect(streamed.finish).toBe(whole.finish);
    expect(streamed.usage).toEqual(whole.usage);
  });

  it('takes an image as a data URL: its soft tokens are in the prompt', () => {
    const img = clients.openai_image;
    expect(typeof img.text).toBe('string');
    expect(img.usage.prompt_tokens).toBeGreaterThan(clients.openai_chat.usage.prompt_tokens + 50);
  });

  it('takes declared tools into the prompt and a call with its result back, refuses bad call arguments', () => {
    const t = clients.openai_tools;
    // The declaration is in the prompt (the synthetic model makes no calls of its own: random weights).
    expect(t.prompt_tokens).toBeGreaterThan(clients.openai_chat.usage.prompt_tokens + 20);
    expect(['stop', 'length', 'tool_calls']).toContain(t.finish);
    expect(t.history_prompt_tokens).toBeGreaterThan(t.prompt_tokens);
    expect(clients.openai_bad_tool_args.error.status).toBe(400);
    expect(clients.openai_bad_tool_args.error.body.message).toMatch(/tool_calls\.0\.function\.arguments/);
  });

  it('answers an unknown model 404 and a wrong token 401, each with a reason', () => {
    expect(clients.openai_unknown_model.error.status).toBe(404);
    expect(clients.openai_unknown_model.error.body.message).toMatch(/unknown model "gpt-4o"/);
    expect(clients.openai_bad_token.error.status).toBe(401);
  });
});

describe('JSON-schema replies (decoded under the schema)', () => {
  it('tool_choice required or a named function: one call whose arguments the tool schema accepts', () => {
    const calls = clients.openai_tool_required as Array<{
      finish: string;
      calls: Array<{ name: string; arguments: Json }>;
    }>;
    expect(calls, JSON.stringify(clients.openai_tool_required)).toHaveLength(3);
    for (const c of calls) {
      expect(c.finish).toBe('tool_calls');
      expect(c.calls).toHaveLength(1);
      expect(c.calls[0]!.name).toBe('switch_light');
      expect(['kitchen', 'hall']).toContain(c.calls[0]!.arguments.room);
      expect(typeof c.calls[0]!.arguments.on).toBe('boolean');
    }
  });

  it('response_format json_schema (openai) and format (ollama): every sampled reply parses and validates', () => {
    const validator = compileStructured(clientsDoorSchema);
    for (const name of ['openai_json_schema', 'ollama_format']) {
      const replies = clients[name] as string[];
      expect(replies, JSON.stringify(clients[name])).toHaveLength(5);
      for (const text of replies) expect(parseStructured(text, validator), text).toMatchObject({ ok: true });
      // Five seeds, not five copies of one reply.
      expect(new Set(replies).size).toBeGreaterThan(1);
    }
  });
});

describe('the Ollama API, through the ollama library as Home Assistant calls it', () => {
  it('lists, shows and reports the loaded model under the name the integration reads (model)', () => {
    expect(clients.ollama_list).toEqual(['perch:latest']);
    expect(clients.ollama_ps).toEqual(['perch:latest']);
    expect(clients.ollama_show).toEqual(['completion', 'tools', 'thinking', 'vision']);
  });

  it('chats whole and streamed (Home Assistant’s arguments: keep_alive -1, num_ctx, tools [], think off), alike', () => {
    const whole = clients.ollama_chat;
    expect(whole.done).toBe(true);
    expect(['stop', 'length']).toContain(whole.reason);
    expect(whole.eval_count).toBeGreaterThan(0);
    const ha = clients.ollama_stream_ha;
    expect(ha.done).toBe(true);
    expect(ha.chunks).toBeGreaterThan(1);
    expect(typeof ha.text).toBe('string');
    // The image's soft tokens are in the prompt (a bound of 50 alone passed with the image dropped).
    expect(clients.ollama_image.prompt_eval_count).toBeGreaterThan(clients.ollama_chat.prompt_eval_count + 50);
    expect(clients.ollama_unknown_model.error.status).toBe(404);
    // Home Assistant's tool loop: tools declared, its call and the result without tool_name, streamed.
    expect(clients.ollama_tools_ha.done).toBe(true);
    expect(clients.ollama_tools_ha.prompt_eval_count).toBeGreaterThan(clients.ollama_chat.prompt_eval_count + 20);
  });

  it('generates from a prompt, streamed and whole alike, with a system prompt; an empty prompt loads', () => {
    const g = clients.ollama_generate_stream;
    expect(g.error, JSON.stringify(g.error)).toBeUndefined();
    expect(g.done).toBe(true);
    expect(g.chunks).toBeGreaterThan(1);
    expect(g.text).toBe(g.whole);
    expect(g.eval_count).toBe(g.whole_eval_count);
    expect(g.eval_count).toBeGreaterThan(0);
    expect(g.system_prompt_eval_count).toBeGreaterThan(g.no_system_prompt_eval_count + 3);
    expect(g.empty).toEqual({ done: true, done_reason: 'load', response: '' });
  });

  it('refuses what it does not do by name (raw prompts, context) and an unknown model', () => {
    expect(clients.ollama_generate_raw.error).toMatchObject({ status: 400 });
    expect(clients.ollama_generate_raw.error.message).toMatch(/^raw: /);
    expect(clients.ollama_generate_context.error).toMatchObject({ status: 400 });
    expect(clients.ollama_generate_context.error.message).toMatch(/^context: .*\/api\/chat/);
    expect(clients.ollama_generate_unknown_model.error).toMatchObject({ status: 404 });
    expect(clients.ollama_generate_unknown_model.error.message).toMatch(/"llava:7b" not found/);
  });
});

describe('Frigate’s ollama provider, replayed (show, then generate with the snapshot)', () => {
  it('finds the model, and describes an image with its options; a review schema is met by every sampled reply', () => {
    const f = clients.frigate_ollama;
    expect(f.error, JSON.stringify(f.error)).toBeUndefined();
    expect(f.capabilities).toContain('vision');
    expect(typeof f.response).toBe('string');
    expect(f.done).toBe(true);
    expect(['stop', 'length']).toContain(f.done_reason);
    expect(f.eval_count).toBeGreaterThan(0);
    // The snapshot's soft tokens are in the prompt.
    expect(f.prompt_eval_count).toBeGreaterThan(f.text_prompt_eval_count + 50);
    const validator = compileStructured(clientsDoorSchema);
    expect(f.review).toHaveLength(3);
    for (const text of f.review as string[]) expect(parseStructured(text, validator), text).toMatchObject({ ok: true });
  });
});

describe('Frigate’s llamacpp provider, replayed', () => {
  it('finds the image modality and the context, and gets descriptions of an image with its provider_options in the body', () => {
    expect(clients.frigate_discovery).toEqual({
      ids: ['perch'],
      modalities: ['text', 'image'],
      n_ctx: 1024,
      media_marker: '<__media__>',
      thinking_toggle: false,
    });
    expect(clients.frigate_description.status).toBe(200);
    expect(typeof clients.frigate_description.content).toBe('string');
    expect(clients.frigate_probe_prompt_tokens).toBeGreaterThan(50);
  });
});

describe('bad input, answered while the daemon goes on', () => {
  it('malformed JSON 400, wrong types 400 naming the field, a huge body 413, an unknown path 404, no token 401', async () => {
    let r = await post('/v1/chat/completions', '{"model": "perch", "messages": [');
    expect(r.status).toBe(400);
    expect(((await r.json()) as Json).error.type).toBe('invalid_json');
    r = await post(
      '/v1/chat/completions',
      JSON.stringify({ model: 'perch', messages: [{ role: 'user', content: 'hi' }], max_tokens: 'x' }),
    );
    expect(r.status).toBe(400);
    expect(((await r.json()) as Json).error.message).toMatch(/max_tokens/);
    r = await post('/api/chat', JSON.stringify({ model: 'perch', messages: 'hello' }));
    expect(r.status).toBe(400);
    expect(((await r.json()) as Json).error).toMatch(/messages/);
    r = await post('/api/generate', JSON.stringify({ model: 'perch', prompt: 5 }));
    expect(r.status).toBe(400);
    expect(((await r.json()) as Json).error).toMatch(/prompt/);
    r = await post('/api/generate', JSON.stringify({ model: 'perch', prompt: 'hi', images: ['not base64!'] }));
    expect(r.status).toBe(400);
    expect(((await r.json()) as Json).error).toMatch(/images\.0: not base64/);
    r = await post('/api/generate', JSON.stringify({ model: 'perch', prompt: 'hi', format: 'yaml' }));
    expect(r.status).toBe(400);
    expect(((await r.json()) as Json).error).toBe('format: "json" or a JSON schema object');
    r = await post('/api/generate', JSON.stringify({ model: 'perch', prompt: 'hi', format: { type: 'strnig' } }));
    expect(r.status).toBe(400);
    expect(((await r.json()) as Json).error).toMatch(/^format: /);
    r = await post(
      '/v1/chat/completions',
      JSON.stringify({ model: 'perch', messages: [{ role: 'user', content: 'x'.repeat(2 * 1024 * 1024) }] }),
    );
    expect(r.status).toBe(413);
    r = await post(
      '/v1/chat/completions',
      JSON.stringify({
        model: 'perch',
        messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://example.com/a.jpg' } }] }],
      }),
    );
    expect(r.status).toBe(400);
    expect(((await r.json()) as Json).error.message).toMatch(/does not fetch remote images/);
    r = await fetch(`${base}/v1/nothing`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBe(404);
    r = await fetch(`${base}/v1/models`);
    expect(r.status).toBe(401);
    // Still serving.
    r = await post(
      '/v1/chat/completions',
      JSON.stringify({ model: 'perch', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
    );
    expect(r.status).toBe(200);
  });

  it('a client that goes away mid-stream: its job ends, the next request is answered', async () => {
    const url = new URL(`${base}/v1/chat/completions`);
    await new Promise<void>((resolve, reject) => {
      const req = http.request(
        {
          host: url.hostname,
          port: url.port,
          path: url.pathname,
          method: 'POST',
          headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
        },
        (res) => {
          expect(res.statusCode).toBe(200);
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        },
      );
      req.on('error', () => undefined);
      req.setTimeout(60_000, () => reject(new Error('no data')));
      req.end(
        JSON.stringify({
          model: 'perch',
          messages: [{ role: 'user', content: 'Tell a long story.' }],
          max_tokens: 500,
          stream: true,
        }),
      );
    });
    const r = await post(
      '/api/chat',
      JSON.stringify({
        model: 'perch',
        messages: [{ role: 'user', content: 'hi' }],
        stream: false,
        options: { num_predict: 2 },
      }),
    );
    expect(r.status).toBe(200);
    expect(((await r.json()) as Json).done).toBe(true);
    expect(daemon.log()).not.toMatch(/HTTP request failed/);
  });
});

describe('one model, one queue', () => {
  it('MQTT questions and HTTP chats share the queue: a question arriving behind 60 chats is answered before most of them', async () => {
    const watcher = await Collector.connect(shared.broker.url, [`${rootTopic}/answer`]);
    try {
      // 60 chats fill the queue; once the first is answered, a question comes over MQTT. Questions rank above
      // HTTP requests, so it starts after the chat running then, not after the ones waiting.
      let done = 0;
      // Each on a connection of its own (fetch would share a few), so that all of them wait in the queue at once.
      const chats = Array.from({ length: 60 }, () =>
        postOwnConnection(
          '/v1/chat/completions',
          JSON.stringify({
            model: 'perch',
            messages: [{ role: 'user', content: 'Go on.' }],
            max_tokens: 96,
            temperature: 0,
          }),
        ).then((status) => {
          done++;
          return status;
        }),
      );
      // Not a fixed delay: how long a chat takes varies several-fold with the machine, so a delay could find most
      // of them done already. 96 tokens each: the few chats that end while the question travels over MQTT are few.
      while (done === 0) await new Promise((r) => setTimeout(r, 2));
      const doneAtAsk = done;
      const c = await mqtt.connectAsync(shared.broker.url);
      await c.publishAsync(`${rootTopic}/ask`, JSON.stringify({ id: 'prio-1', text: 'hi', max_tokens: 4 }), { qos: 1 });
      await c.endAsync();
      let doneAtAnswer = -1;
      await watcher.waitFor(
        (m) => m.some((x) => x.topic === `${rootTopic}/answer` && x.payload.toString().includes('prio-1')),
        120_000,
      );
      doneAtAnswer = done;
      expect(await Promise.all(chats)).toEqual(chats.map(() => 200));
      // In line by kind, the question waits for the chat running when it came, not for the ones queued (watched
      // failing with HTTP ranked first: answered after all 60).
      expect(doneAtAnswer).toBeLessThanOrEqual(doneAtAsk + 3);
      expect(doneAtAnswer).toBeLessThan(30);
    } finally {
      await watcher.close();
    }
  }, 180_000);
});

describe('docs/http.md', () => {
  it('shows a Perch config that validates, and Frigate and Home Assistant pointed at its port and model name', () => {
    const doc = readFileSync(join(REPO, 'docs', 'http.md'), 'utf8');
    const blocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => parse(m[1]!) as Json);
    const perch = perchConfigSchema.parse(blocks[0]);
    expect(perch.http).toMatchObject({ enabled: true, port: 8484, token: expect.any(String) });
    // Frigate's llamacpp and ollama providers, both pointed at Perch.
    expect([blocks[1].genai.perch.provider, blocks[2].genai.perch.provider]).toEqual(['llamacpp', 'ollama']);
    for (const frigate of [blocks[1].genai.perch, blocks[2].genai.perch]) {
      expect(new URL(frigate.base_url).port).toBe(String(perch.http.port));
      expect(frigate.model).toBe(perch.http.model_name);
      expect(frigate.api_key).toBe(perch.http.token);
    }
    // The Home Assistant steps name the same URL and the model as the Ollama API lists it.
    expect(doc).toContain(`URL: \`http://perch.local:${perch.http.port}\``);
    expect(doc).toContain(`\`${perch.http.model_name}:latest\``);
    expect(clients.ollama_list).toEqual([`${perch.http.model_name}:latest`]);
  });
});
