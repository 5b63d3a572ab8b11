import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SYNTH_CHAT_TEMPLATE, synthTokenizerFiles } from '../src/model/build/synth-tokenizer.js';
import {
  ChatTemplate,
  OutputRouter,
  expandMediaPlaceholders,
  splitChannels,
  withSystemPrompt,
  type ChatMessage,
} from '../src/engine/prompt.js';
import { PackageTokenizer } from '../src/engine/tokenizer.js';

/**
 * A template in Gemma 4's documented format (written for this test, tools left out): thinking via
 * `enable_thinking` puts <|think|> atop the system turn; without it the generation prompt closes an empty
 * thought channel; images render as "\n\n<|image|>\n\n", audio as "<|audio|>"; model turns drop thinking.
 */
const GEMMA4_STYLE_TEMPLATE = `{%- macro drop_thought(text) -%}
{%- set acc = namespace(out='') -%}
{%- for piece in text.split('<channel|>') -%}
{%- if '<|channel>' in piece -%}{%- set acc.out = acc.out + piece.split('<|channel>')[0] -%}{%- else -%}{%- set acc.out = acc.out + piece -%}{%- endif -%}
{%- endfor -%}
{{- acc.out | trim -}}
{%- endmacro -%}
{%- set rest = messages -%}
{{ bos_token }}
{%- if (enable_thinking is defined and enable_thinking) or messages[0]['role'] == 'system' -%}
{{- '<|turn>system\\n' -}}
{%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>' -}}{%- endif -%}
{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] | trim -}}{%- set rest = messages[1:] -%}{%- endif -%}
{{- '<turn|>\\n' -}}
{%- endif -%}
{%- for m in rest -%}
{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}
{{- '<|turn>' + role + '\\n' -}}
{%- if m['content'] is string -%}
{%- if role == 'model' -%}{{- drop_thought(m['content']) -}}{%- else -%}{{- m['content'] | trim -}}{%- endif -%}
{%- else -%}
{%- for item in m['content'] -%}
{%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}
{%- elif item['type'] == 'image' -%}{{- '\\n\\n<|image|>\\n\\n' -}}
{%- elif item['type'] == 'audio' -%}{{- '<|audio|>' -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\\n' -}}
{%- if not enable_thinking | default(false) -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}
{%- endif -%}
`;

const BYTE_NL = 16 + 0x0a;

describe('chat template rendering', () => {
  let tok: PackageTokenizer;
  let smallTok: PackageTokenizer;
  let dir: string;

  beforeAll(async () => {
    const f = synthTokenizerFiles(262144);
    tok = PackageTokenizer.fromJson(f.tokenizerJson, f.tokenizerConfigJson);
    const s = synthTokenizerFiles(512);
    smallTok = PackageTokenizer.fromJson(s.tokenizerJson, s.tokenizerConfigJson);
    dir = await mkdtemp(join(tmpdir(), 'perch-prompt-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('renders the synthetic package template and tokenizes it to the turn ids', () => {
    const tpl = new ChatTemplate(SYNTH_CHAT_TEMPLATE);
    const messages = withSystemPrompt('Be brief.', [{ role: 'user', content: ' Hi there ' }]);
    const text = tpl.render(messages, { bosToken: tok.special.bosText });
    expect(text).toBe('<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi there<turn|>\n<|turn>model\n');
    const ids = tok.encode(text);
    const m = tok.special.markers;
    expect(ids[0]).toBe(tok.special.bos);
    expect(ids[1]).toBe(m.turnStart);
    const tail = [m.turnEnd, BYTE_NL, m.turnStart, ...tok.encode('model'), BYTE_NL];
    expect(ids.slice(-tail.length)).toEqual(tail);
    expect(ids.filter((id) => id === m.turnStart)).toHaveLength(3);
    expect(tok.decode(ids)).toBe(text);
    // Without the generation prompt the text stops after the last turn.
    expect(tpl.render(messages, { bosToken: '<bos>', addGenerationPrompt: false }).endsWith('Hi there<turn|>\n')).toBe(
      true,
    );
  });

  it('keeps thinking off by default and switches it on per request (Gemma 4 style)', () => {
    const tpl = new ChatTemplate(GEMMA4_STYLE_TEMPLATE);
    const messages = withSystemPrompt('You are Perch.', [{ role: 'user', content: 'Why is the sky blue?' }]);
    const off = tpl.render(messages, { bosToken: '<bos>' });
    expect(off).toBe(
      '<bos><|turn>system\nYou are Perch.<turn|>\n<|turn>user\nWhy is the sky blue?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>',
    );
    const on = tpl.render(messages, { bosToken: '<bos>', enableThinking: true });
    expect(on).toBe(
      '<bos><|turn>system\n<|think|>You are Perch.<turn|>\n<|turn>user\nWhy is the sky blue?<turn|>\n<|turn>model\n',
    );
    const ids = tok.encode(on);
    const head = [
      tok.special.bos,
      tok.special.markers.turnStart,
      ...tok.encode('system'),
      BYTE_NL,
      tok.special.markers.think,
    ];
    expect(ids.slice(0, head.length)).toEqual(head);
    expect(tok.encode(off)).not.toContain(tok.special.markers.think);
  });

  it('drops earlier thinking from model turns in the history', () => {
    const tpl = new ChatTemplate(GEMMA4_STYLE_TEMPLATE);
    const messages: ChatMessage[] = [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: '<|channel>thought\nhmm<channel|>Hello!' },
      { role: 'user', content: 'Bye' },
    ];
    expect(tpl.render(messages, { bosToken: '<bos>' })).toBe(
      '<bos><|turn>user\nHi<turn|>\n<|turn>model\nHello!<turn|>\n<|turn>user\nBye<turn|>\n<|turn>model\n<|channel>thought\n<channel|>',
    );
  });

  it('renders media items and expands them into soft-token runs', () => {
    const tpl = new ChatTemplate(GEMMA4_STYLE_TEMPLATE);
    const messages: ChatMessage[] = [
      { role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'What is this?' }, { type: 'audio' }] },
    ];
    const text = tpl.render(messages, { bosToken: '<bos>' });
    expect(text).toBe(
      '<bos><|turn>user\n\n\n<|image|>\n\nWhat is this?<|audio|><turn|>\n<|turn>model\n<|channel>thought\n<channel|>',
    );
    const ids = tok.encode(text);
    const m = tok.special.markers;
    expect(ids.filter((id) => id === m.image)).toHaveLength(1);

    const { ids: out, media } = expandMediaPlaceholders(ids, tok.special, { imageTokens: [3], audioTokens: [2] });
    expect(out.length).toBe(ids.length + (3 + 2 - 1) + (2 + 2 - 1));
    expect(media).toEqual([
      { kind: 'image', index: 0, start: expect.any(Number), length: 3 },
      { kind: 'audio', index: 0, start: expect.any(Number), length: 2 },
    ]);
    const img = media[0]!;
    expect(out.slice(img.start - 1, img.start + img.length + 1)).toEqual([
      m.imageStart,
      m.image,
      m.image,
      m.image,
      m.imageEnd,
    ]);
    const aud = media[1]!;
    expect(out.slice(aud.start - 1, aud.start + aud.length + 1)).toEqual([m.audioStart, m.audio, m.audio, m.audioEnd]);
    // Text around the media is untouched.
    expect(tok.decode(out.slice(0, img.start - 1))).toBe('<bos><|turn>user\n\n\n');
    expect(tok.decode(out.slice(img.start + img.length + 1, aud.start - 1))).toBe('\n\nWhat is this?');
  });

  it('expands several images in prompt order and refuses mismatched counts', () => {
    const m = tok.special.markers;
    const ids = [2, m.image!, 300, m.image!];
    const { ids: out, media } = expandMediaPlaceholders(ids, tok.special, { imageTokens: [1, 4] });
    expect(out).toEqual([
      2,
      m.imageStart,
      m.image,
      m.imageEnd,
      300,
      m.imageStart,
      m.image,
      m.image,
      m.image,
      m.image,
      m.imageEnd,
    ]);
    expect(media.map((s) => [s.index, s.start, s.length])).toEqual([
      [0, 2, 1],
      [1, 6, 4],
    ]);
    expect(() => expandMediaPlaceholders(ids, tok.special, { imageTokens: [1] })).toThrow(/more image placeholders/);
    expect(() => expandMediaPlaceholders(ids, tok.special, { imageTokens: [1, 2, 3] })).toThrow(/2 image placeholder/);
    expect(() => expandMediaPlaceholders(ids, tok.special, { imageTokens: [1, 0] })).toThrow(
      /invalid soft-token count/,
    );
    const noAudio = {
      ...smallTok.special,
      markers: { ...smallTok.special.markers, audioStart: undefined, audio: undefined, audioEnd: undefined },
    };
    expect(() => expandMediaPlaceholders([2, 300], noAudio, { audioTokens: [5] })).toThrow(/lacks the audio markers/);
    expect(expandMediaPlaceholders([2, 300], noAudio, {}).ids).toEqual([2, 300]);
  });

  it('loads the template from a package directory, or from tokenizer_config.json', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    await mkdir(a);
    await mkdir(b);
    await writeFile(join(a, 'chat_template.jinja'), SYNTH_CHAT_TEMPLATE);
    await writeFile(join(b, 'tokenizer_config.json'), JSON.stringify({ chat_template: GEMMA4_STYLE_TEMPLATE }));
    const ta = await ChatTemplate.load(a);
    const tb = await ChatTemplate.load(b);
    const msgs: ChatMessage[] = [{ role: 'user', content: 'x' }];
    expect(ta.render(msgs, { bosToken: '<bos>' })).toBe('<bos><|turn>user\nx<turn|>\n<|turn>model\n');
    expect(tb.render(msgs, { bosToken: '<bos>' }).endsWith('<channel|>')).toBe(true);
    await expect(ChatTemplate.load(join(dir, 'missing'))).rejects.toThrow();
  });

  it('reports a template that does not parse', () => {
    expect(() => new ChatTemplate('{% if %}')).toThrow(/does not parse/);
  });

  it('adds the configured system prompt only when the caller has none', () => {
    const user: ChatMessage = { role: 'user', content: 'q' };
    expect(withSystemPrompt('S', [user])).toEqual([{ role: 'system', content: 'S' }, user]);
    expect(withSystemPrompt('  ', [user])).toEqual([user]);
    expect(withSystemPrompt('S', [{ role: 'system', content: 'mine' }, user])[0]!.content).toBe('mine');
  });
});

describe('output channels', () => {
  it('splits thinking from the answer in decoded text', () => {
    expect(splitChannels('<|channel>thought\nstep one\nstep two<channel|>The answer.')).toEqual({
      thinking: 'step one\nstep two',
      answer: 'The answer.',
    });
    expect(splitChannels('Just an answer.')).toEqual({ thinking: '', answer: 'Just an answer.' });
    expect(splitChannels('<|channel>thought\n<channel|>\nPlain.')).toEqual({ thinking: '', answer: 'Plain.' });
    expect(splitChannels('<|channel>thought\ncut off by the lim')).toEqual({
      thinking: 'cut off by the lim',
      answer: '',
    });
    expect(splitChannels('<|channel>thought\na<channel|>X<|channel>thought\nb<channel|>Y')).toEqual({
      thinking: 'a\nb',
      answer: 'XY',
    });
  });

  it('routes streamed ids into thinking and answer, never splitting a character', () => {
    const f = synthTokenizerFiles(262144);
    const tok = PackageTokenizer.fromJson(f.tokenizerJson, f.tokenizerConfigJson);
    const m = tok.special.markers;
    const ids = [
      m.channelStart!,
      ...tok.encode('thought\nLet me think: é ✓'),
      m.channelEnd!,
      ...tok.encode('\nThe answer 😀 is 42.'),
    ];
    const router = new OutputRouter(tok);
    const answer: string[] = [];
    const thinking: string[] = [];
    for (const id of ids) {
      const d = router.push(id);
      if (d.answer) answer.push(d.answer);
      if (d.thinking) thinking.push(d.thinking);
    }
    const end = router.finish();
    answer.push(end.answer);
    expect(answer.join('')).toBe('The answer 😀 is 42.');
    expect(thinking.join('')).toBe('Let me think: é ✓');
    for (const d of [...answer, ...thinking]) expect(d).not.toContain('\uFFFD');
    expect(router.result()).toEqual(splitChannels(tok.decode(ids)));
  });

  it('streams an answer without a channel directly', () => {
    const f = synthTokenizerFiles(1024);
    const tok = PackageTokenizer.fromJson(f.tokenizerJson, f.tokenizerConfigJson);
    const router = new OutputRouter(tok);
    let out = '';
    for (const id of tok.encode('Hello there')) out += router.push(id).answer;
    out += router.finish().answer;
    expect(out).toBe('Hello there');
    expect(router.result()).toEqual({ answer: 'Hello there', thinking: '' });
  });
});
