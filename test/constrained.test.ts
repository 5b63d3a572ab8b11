/**
 * Constrained decoding with the real engine on the tiny random package: a reply asked for with a JSON schema
 * is decoded under xgrammar's token mask, so even random weights give JSON that parses and validates, on the
 * first pass, every time (sampled at temperature 1 with many seeds). Without the mask the same requests give
 * no JSON at all, which is what makes the test mean something.
 */
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileStructured, parseStructured } from '../src/common/structured-output.js';
import { applyMask } from '../src/engine/grammar.js';
import type { GemmaAnswerEngine } from '../src/engine/gemma-engine.js';
import { PackageTokenizer } from '../src/engine/tokenizer.js';
import { startAnswerEngine, tempRoot } from './engine-helpers.js';
import { makeSeeingPackage } from './seeing-helpers.js';

let root: string;
let dir: string;
let engine: GemmaAnswerEngine;
const signal = new AbortController().signal;

beforeAll(async () => {
  root = tempRoot('constrained');
  dir = await makeSeeingPackage(root);
  engine = await startAnswerEngine(dir, { max_answer_tokens: 160 });
}, 180_000);
afterAll(async () => {
  await engine?.close();
  rmSync(root, { recursive: true, force: true });
});

const SCHEMAS: Record<string, Record<string, unknown>> = {
  light: {
    type: 'object',
    properties: {
      light: { type: 'string', enum: ['kitchen', 'hall', 'porch'] },
      on: { type: 'boolean' },
      brightness: { type: 'integer', minimum: 0, maximum: 255 },
    },
    required: ['light', 'on', 'brightness'],
  },
  caption: {
    type: 'object',
    properties: {
      people: { type: 'integer', minimum: 0, maximum: 20 },
      summary: { type: 'string', maxLength: 12 },
      objects: { type: 'array', items: { type: 'string', enum: ['car', 'cat', 'parcel'] }, maxItems: 3 },
    },
    required: ['people', 'summary', 'objects'],
  },
  nested: {
    type: 'object',
    properties: {
      event: {
        type: 'object',
        properties: {
          kind: { type: 'string', enum: ['motion', 'sound'] },
          score: { type: 'integer', minimum: 0, maximum: 100 },
        },
        required: ['kind'],
      },
      alarm: { type: 'boolean' },
    },
    required: ['event', 'alarm'],
  },
};

describe('constrained decoding on the tiny random model', () => {
  it.each(Object.keys(SCHEMAS))(
    '%s: 24 sampled replies, every one valid JSON against the schema',
    async (name) => {
      const schema = SCHEMAS[name]!;
      const validator = compileStructured(schema);
      for (let seed = 1; seed <= 24; seed++) {
        const r = await engine.generate({
          messages: [{ role: 'user', content: 'Reply with the JSON object.' }],
          jsonSchema: schema,
          sampling: { temperature: 1, seed },
          signal,
        });
        expect(r.finishReason, `seed ${seed}: ${r.text}`).toBe('stop');
        const parsed = parseStructured(r.text, validator);
        expect(parsed, `seed ${seed}: ${JSON.stringify(r.text)} ${JSON.stringify(parsed)}`).toMatchObject({ ok: true });
        // The whole reply is the object: nothing before or after it.
        expect(JSON.parse(r.text)).toEqual((parsed as { data: unknown }).data);
        expect(r.timings.maskMs).toBeGreaterThan(0);
      }
    },
    120_000,
  );

  it('without the mask the same requests give no valid object (the mask is what makes them valid)', async () => {
    const validator = compileStructured(SCHEMAS.light!);
    let valid = 0;
    for (let seed = 1; seed <= 6; seed++) {
      const r = await engine.generate({
        messages: [{ role: 'user', content: 'Reply with the JSON object.' }],
        sampling: { temperature: 1, seed },
        maxTokens: 40,
        signal,
      });
      if (parseStructured(r.text, validator).ok) valid++;
    }
    expect(valid).toBe(0);
  }, 120_000);

  it('a schema that names no properties ({type: object}, OpenAI json_object) allows any object', async () => {
    const r = await engine.generate({
      messages: [{ role: 'user', content: 'JSON please.' }],
      jsonSchema: { type: 'object' },
      sampling: { temperature: 0 },
      maxTokens: 200,
      signal,
    });
    if (r.finishReason === 'stop') expect(typeof JSON.parse(r.text)).toBe('object');
    else expect(r.text.startsWith('{')).toBe(true);
  }, 60_000);
});

describe('a forced tool call (toolChoice required or named) on the tiny random model', () => {
  const tools = [
    {
      name: 'set_light',
      description: 'Switch a light',
      parameters: {
        type: 'object',
        properties: {
          device: { type: 'string', enum: ['kitchen', 'hall'] },
          state: { type: 'string', enum: ['ON', 'OFF'] },
          brightness: { type: 'integer', minimum: 0, maximum: 254 },
        },
        required: ['device', 'state'],
      },
    },
    {
      name: 'open_garage',
      description: 'Open the garage door',
      parameters: {
        type: 'object',
        properties: { seconds: { type: 'integer', minimum: 1, maximum: 60 } },
        required: ['seconds'],
      },
    },
  ];

  it('required: every sampled reply is exactly one call of a declared tool, with arguments its schema accepts', async () => {
    const names = new Set<string>();
    for (let seed = 1; seed <= 16; seed++) {
      const r = await engine.generate({
        messages: [{ role: 'user', content: 'Turn on the kitchen light.' }],
        tools,
        toolChoice: 'required',
        sampling: { temperature: 1, seed },
        signal,
      });
      expect(r.finishReason, `seed ${seed}`).toBe('stop');
      expect(r.toolCalls, `seed ${seed}: ${r.text}`).toHaveLength(1);
      const call = r.toolCalls![0]!;
      const tool = tools.find((t) => t.name === call.name)!;
      expect(tool, call.name).toBeDefined();
      expect(compileStructured(tool.parameters).safeParse(call.arguments).success, JSON.stringify(call)).toBe(true);
      names.add(call.name);
    }
    // The model chose among the tools (random weights: both, over 16 seeds).
    expect(names.size).toBe(2);
  }, 120_000);

  it('a named tool: that one; a name not among the tools is refused', async () => {
    const r = await engine.generate({
      messages: [{ role: 'user', content: 'Open it.' }],
      tools,
      toolChoice: { name: 'open_garage' },
      sampling: { temperature: 1, seed: 3 },
      signal,
    });
    expect(r.toolCalls?.map((c) => c.name)).toEqual(['open_garage']);
    await expect(
      engine.generate({ messages: [{ role: 'user', content: 'x' }], tools, toolChoice: { name: 'nope' }, signal }),
    ).rejects.toThrow(/tool_choice names "nope", which is not among the tools/);
  }, 60_000);
});

describe('applyMask', () => {
  it('keeps exactly the ids whose bit is set, and drops ids past the mask', () => {
    const logits = Float32Array.from({ length: 70 }, (_, i) => i);
    const mask = new Int32Array(3);
    for (const id of [0, 31, 32, 63, 64]) mask[id >> 5]! |= 1 << (id & 31);
    applyMask(logits, mask, 65);
    const kept = [...logits.keys()].filter((i) => logits[i]! > Number.NEGATIVE_INFINITY);
    expect(kept).toEqual([0, 31, 32, 63, 64]);
  });

  it("gives the grammar every control token as '' so none can enter the text", async () => {
    const tok = await PackageTokenizer.load(dir);
    const vocab = tok.grammarVocabulary();
    expect(vocab).toHaveLength(tok.vocabSize);
    for (const id of [tok.special.bos, tok.special.eos, ...Object.values(tok.special.markers)])
      expect(vocab[id]).toBe('');
    expect(vocab.filter((t) => t !== '').length).toBeGreaterThan(200);
  });
});
