/**
 * A small but valid tokenizer for synthetic packages: a byte-fallback BPE in the layout Gemma ships
 * (tokenizer.json + tokenizer_config.json + chat_template.jinja), sized to the config's vocabulary so every
 * id the decoder can emit decodes. Real packages copy the checkpoint's own files instead.
 */

export interface SynthTokenizerFiles {
  tokenizerJson: string;
  tokenizerConfigJson: string;
  chatTemplate: string;
}

/** Gemma's fixed ids (bos 2, eos 1, pad 0), turn and thinking markers at low ids. */
const LOW_SPECIALS = [
  '<pad>',
  '<eos>',
  '<bos>',
  '<unk>',
  '<|turn>',
  '<turn|>',
  '<|think|>',
  '<|channel>',
  '<channel|>',
  // Tool use: declarations, calls, responses, and the string delimiter inside their arguments.
  '<|tool>',
  '<tool|>',
  '<|tool_call>',
  '<tool_call|>',
  '<|tool_response>',
  '<tool_response|>',
  '<|"|>',
];
/**
 * Media markers at E2B's real ids. A smaller vocabulary (tiny) gets them at its top ids instead, in this
 * order, so tiny packages can see and hear too.
 */
const MEDIA_SPECIALS: Array<[number, string]> = [
  [255999, '<|image>'],
  [256000, '<|audio>'],
  [258880, '<|image|>'],
  [258881, '<|audio|>'],
  [258882, '<image|>'],
  [258883, '<audio|>'],
  [258884, '<|video|>'],
];
const BYTE_BASE = 16;
const SPACE = '\u2581';
const BIGRAMS = [
  'th',
  'he',
  'in',
  'er',
  'an',
  're',
  'on',
  'at',
  'en',
  'nd',
  'ti',
  'es',
  'or',
  'te',
  'of',
  'ed',
  'is',
  'it',
  'al',
  'ar',
  'st',
  'to',
  'nt',
  'ng',
  'se',
  'ha',
  'as',
  'ou',
  'io',
  'le',
  've',
  'co',
  'me',
  'de',
  'hi',
  'ri',
  'ro',
  'ic',
  'ne',
  'ea',
];

/**
 * Gemma 4's prompt format (see design notes), written for Perch (Apache-2.0): `<bos><|turn>user\n...<turn|>\n
 * <|turn>model\n`. Content may be a string or a list of {type: 'text'|'image'|'audio'} items: an image renders
 * as `\n\n<|image|>\n\n`, audio as `<|audio|>` (the processor, and the engine, expand each into begin marker +
 * soft tokens + end marker). `enable_thinking` puts `<|think|>` at the top of the system turn (a system turn of
 * its own when the conversation has none); `tools` are declared in the system turn as
 * `<|tool>declaration:NAME{description:...,parameters:...}<tool|>`. A model message's `tool_calls` render as
 * `<|tool_call>call:NAME{arg:value,...}<tool_call|>` and leave the model turn open: each following `tool`
 * message adds `<|tool_response>response:NAME{...}<tool_response|>` and the model goes on in the same turn.
 * Values are written as Gemma writes them: keys bare, strings between `<|"|>` delimiters.
 * test/fixtures/golden/template/chat_template.jinja is this text, rendered by transformers for the goldens.
 */
export const SYNTH_CHAT_TEMPLATE = [
  '{%- macro value(v) -%}',
  "{%- if v is string -%}{{- '<|\"|>' + v + '<|\"|>' -}}",
  "{%- elif v is boolean -%}{{- 'true' if v else 'false' -}}",
  "{%- elif v is none -%}{{- 'null' -}}",
  "{%- elif v is mapping -%}{{- '{' -}}{%- for k, x in v.items() -%}{{- k + ':' -}}{{- value(x) -}}{%- if not loop.last -%}{{- ',' -}}{%- endif -%}{%- endfor -%}{{- '}' -}}",
  "{%- elif v is iterable -%}{{- '[' -}}{%- for x in v -%}{{- value(x) -}}{%- if not loop.last -%}{{- ',' -}}{%- endif -%}{%- endfor -%}{{- ']' -}}",
  '{%- else -%}{{- v -}}',
  '{%- endif -%}',
  '{%- endmacro -%}',
  '{%- macro content(c) -%}',
  '{%- if c is string -%}{{- c | trim -}}',
  '{%- elif c is iterable -%}{%- for item in c -%}',
  "{%- if item['type'] == 'image' -%}{{- '\n\n<|image|>\n\n' -}}",
  "{%- elif item['type'] == 'audio' -%}{{- '<|audio|>' -}}",
  "{%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}",
  '{%- endif -%}{%- endfor -%}',
  '{%- endif -%}',
  '{%- endmacro -%}',
  '{{- bos_token -}}',
  "{%- set has_system = messages | length > 0 and messages[0]['role'] == 'system' -%}",
  '{%- if has_system or enable_thinking or tools -%}',
  "{{- '<|turn>system\n' -}}",
  "{%- if enable_thinking -%}{{- '<|think|>' -}}{%- endif -%}",
  "{%- if has_system -%}{{- content(messages[0]['content']) -}}{%- endif -%}",
  '{%- for tool in tools or [] -%}',
  "{%- set f = tool['function'] if tool['function'] is defined else tool -%}",
  "{{- '<|tool>declaration:' + f['name'] + '{description:' -}}{{- value(f['description']) -}}{{- ',parameters:' -}}{{- value(f['parameters']) -}}{{- '}<tool|>' -}}",
  '{%- endfor -%}',
  "{{- '<turn|>\n' -}}",
  '{%- endif -%}',
  '{%- for message in messages -%}',
  "{%- set prev = messages[loop.index0 - 1]['role'] if loop.index0 > 0 else '' -%}",
  "{%- set next = messages[loop.index0 + 1]['role'] if not loop.last else '' -%}",
  "{%- if loop.first and message['role'] == 'system' -%}",
  "{%- elif message['role'] == 'tool' -%}",
  "{{- '<|tool_response>response:' + message['name'] -}}",
  "{{- '{value:' -}}{{- value(message['content']) -}}{{- '}' -}}",
  "{{- '<tool_response|>' -}}",
  "{%- if next != '' and next != 'assistant' and next != 'tool' -%}{{- '<turn|>\n' -}}{%- endif -%}",
  '{%- else -%}',
  "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}",
  "{%- if not (role == 'model' and prev == 'tool') -%}{{- '<|turn>' + role + '\n' -}}{%- endif -%}",
  "{%- if message['content'] -%}{{- content(message['content']) -}}{%- endif -%}",
  "{%- set calls = message['tool_calls'] if message['tool_calls'] is defined and message['tool_calls'] else [] -%}",
  '{%- for call in calls -%}',
  "{%- set fn = call['function'] if call['function'] is defined else call -%}",
  "{{- '<|tool_call>call:' + fn['name'] -}}{{- value(fn['arguments']) -}}{{- '<tool_call|>' -}}",
  '{%- endfor -%}',
  "{%- if not (calls and next == 'tool') -%}{{- '<turn|>\n' -}}{%- endif -%}",
  '{%- endif -%}',
  '{%- endfor -%}',
  "{%- if add_generation_prompt and not (messages | length > 0 and (messages | last)['role'] == 'tool') -%}{{- '<|turn>model\n' -}}{%- endif -%}",
  '',
].join('\n');

export function synthTokenizerFiles(vocabSize: number): SynthTokenizerFiles {
  const minimum = BYTE_BASE + 256 + 1 + MEDIA_SPECIALS.length;
  if (vocabSize < minimum)
    throw new Error(`synthetic tokenizer needs a vocabulary of at least ${minimum}, got ${vocabSize}`);
  const vocab: string[] = new Array<string>(vocabSize);
  const special = new Map<number, string>();
  LOW_SPECIALS.forEach((t, i) => special.set(i, t));
  const reachesMarkers = MEDIA_SPECIALS.every(([id]) => id < vocabSize);
  MEDIA_SPECIALS.forEach(([id, t], i) => special.set(reachesMarkers ? id : vocabSize - MEDIA_SPECIALS.length + i, t));
  for (const [id, t] of special) vocab[id] = t;
  for (let b = 0; b < 256; b++) vocab[BYTE_BASE + b] = `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;

  // Single characters, then merges, in id order after the byte tokens; the rest are unused placeholders.
  const pieces: string[] = [SPACE];
  for (let c = 33; c < 127; c++) pieces.push(String.fromCharCode(c));
  const merges: string[] = [];
  const addMerge = (a: string, b: string) => {
    merges.push(`${a} ${b}`);
    pieces.push(a + b);
  };
  for (const bg of BIGRAMS) addMerge(bg[0]!, bg[1]!);
  for (let c = 97; c < 123; c++) addMerge(SPACE, String.fromCharCode(c));
  let next = BYTE_BASE + 256;
  let used = 0;
  for (const piece of pieces) {
    while (next < vocabSize && vocab[next] !== undefined) next++;
    if (next >= vocabSize) break;
    vocab[next++] = piece;
    used++;
  }
  // Keep only merges whose result made it into the vocabulary (BPE requires that).
  const inVocab = new Set(vocab);
  const keptMerges = merges.filter((m) => inVocab.has(m.replace(' ', '')) && used > 0);
  let unused = 0;
  for (let i = 0; i < vocabSize; i++) if (vocab[i] === undefined) vocab[i] = `<unused${unused++}>`;

  const vocabObj: Record<string, number> = {};
  vocab.forEach((t, i) => (vocabObj[t] = i));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [...special]
      .sort((a, b) => a[0] - b[0])
      .map(([id, content]) => ({
        id,
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      })),
    normalizer: { type: 'Replace', pattern: { String: ' ' }, content: SPACE },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPACE }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: vocabObj,
      merges: keptMerges,
    },
  };
  const tokenizerConfig = {
    bos_token: '<bos>',
    eos_token: '<eos>',
    pad_token: '<pad>',
    unk_token: '<unk>',
    add_bos_token: false,
    add_eos_token: false,
    model_max_length: 131072,
    tokenizer_class: 'GemmaTokenizer',
  };
  return {
    tokenizerJson: JSON.stringify(tokenizer),
    tokenizerConfigJson: JSON.stringify(tokenizerConfig, null, 2) + '\n',
    chatTemplate: SYNTH_CHAT_TEMPLATE,
  };
}
