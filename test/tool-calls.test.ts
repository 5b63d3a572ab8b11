/**
 * Gemma 4's tool calls read back from the model's output. The call text comes from transformers' own rendering
 * of an assistant turn with tool_calls (test/fixtures/golden/template/conversations.json, the "tools" case):
 * the format the model is trained to write. The router test pushes the token ids a package's tokenizer gives
 * that text, as generation would.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OutputRouter } from '../src/engine/prompt.js';
import { PackageTokenizer } from '../src/engine/tokenizer.js';
import { parseToolCall } from '../src/engine/tool-calls.js';
import { makeTinyPackage, tempRoot } from './engine-helpers.js';

interface Case {
  name: string;
  messages: Array<{ role: string; tool_calls?: Array<{ function: { name: string; arguments: unknown } }> }>;
  text: string;
}
const fixture = JSON.parse(
  readFileSync(join(__dirname, 'fixtures', 'golden', 'template', 'conversations.json'), 'utf8'),
) as { cases: Case[] };
const tools =
  fixture.cases.find((c) => c.name === 'tools-answered') ?? fixture.cases.find((c) => c.text.includes('<|tool_call>'))!;
/** What transformers rendered between <|tool_call> and <tool_call|>, and the call it rendered it from. */
const rendered = /<\|tool_call>([\s\S]*?)<tool_call\|>/.exec(tools.text)![1]!;
const call = tools.messages.find((m) => m.tool_calls)!.tool_calls![0]!.function;

let root: string;
let tokenizer: PackageTokenizer;
beforeAll(async () => {
  root = tempRoot('tool-calls');
  const { dir } = await makeTinyPackage(root);
  tokenizer = await PackageTokenizer.load(dir);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('Gemma 4 tool calls', () => {
  it('reads the call transformers rendered back into the call it was rendered from', () => {
    expect(rendered).toContain('<|"|>');
    expect(parseToolCall(rendered)).toEqual({ name: call.name, arguments: call.arguments });
  });

  it('reads nested objects, lists, numbers, null and delimited strings with commas, braces and colons', () => {
    const q = '<|"|>';
    const r = parseToolCall(
      `call:set_scene{room:${q}living, room {1}: east${q},lights:[{id:3,level:0.5},{id:-4,level:1e2}],off:null,tags:[],"quoted key":"a \\"b\\""}`,
    );
    expect(r).toEqual({
      name: 'set_scene',
      arguments: {
        room: 'living, room {1}: east',
        lights: [
          { id: 3, level: 0.5 },
          { id: -4, level: 100 },
        ],
        off: null,
        tags: [],
        'quoted key': 'a "b"',
      },
    });
    expect(parseToolCall('call:ping{}')).toEqual({ name: 'ping', arguments: {} });
    // A key named __proto__ stays data.
    expect(Object.keys(parseToolCall('call:x{__proto__:1}').arguments)).toEqual(['__proto__']);
  });

  it('refuses what is not a call, naming the problem', () => {
    expect(() => parseToolCall('get_weather{city:1}')).toThrow(/starts with call:NAME/);
    expect(() => parseToolCall('call:f{city:<|"|>Paris}')).toThrow(/not closed/);
    expect(() => parseToolCall('call:f{city:1')).toThrow(/expected ',' or '}'/);
    expect(() => parseToolCall('call:f{city:1} trailing')).toThrow(/unexpected text/);
    expect(() => parseToolCall('call:f[1]')).toThrow(/not an object/);
  });

  it('the output router takes calls out of the answer text, as generation emits their tokens', () => {
    const ids = tokenizer.encode(`Checking.<|tool_call>${rendered}<tool_call|>`, { addSpecialTokens: false });
    // The markers and the string delimiter are single special tokens.
    for (const m of ['<|tool_call>', '<tool_call|>', '<|"|>']) expect(ids).toContain(tokenizer.tokenId(m));
    const router = new OutputRouter(tokenizer);
    let text = '';
    for (const id of ids) text += router.push(id).answer;
    text += router.finish().answer;
    expect(text).toBe('Checking.');
    expect(router.toolCalls()).toEqual({ calls: [{ name: call.name, arguments: call.arguments }], errors: [] });
    // A call cut off by the token limit is said, not invented.
    const cut = new OutputRouter(tokenizer);
    for (const id of ids.slice(0, -3)) cut.push(id);
    expect(cut.toolCalls().calls).toEqual([]);
    expect(cut.toolCalls().errors).toEqual(['a tool call was cut off']);
  });
});
