/**
 * Prompt side of generation: render the package's own chat template (chat_template.jinja, with
 * @huggingface/jinja), expand media placeholders into soft-token runs at the id level, and split the model's
 * output into its thinking channel and the answer.
 *
 * Gemma 4 facts used here (llama.cpp models/templates/gemma4.jinja, transformers processing_gemma4.py):
 * - thinking is switched by the template variable `enable_thinking` (it puts `<|think|>` at the top of the
 *   system turn; without it, the generation prompt ends with an empty `<|channel>thought\n<channel|>`);
 * - a user turn's content may be a list of {type: 'text'|'image'|'audio'} items; an image renders as
 *   `\n\n<|image|>\n\n`, audio as `<|audio|>`;
 * - the processor then replaces each placeholder with `<|image>` + N x `<|image|>` + `<image|>` (audio alike:
 *   `<|audio>` + N x `<|audio|>` + `<audio|>`); the encoder's N output rows replace those N embeddings.
 */
import { type ModelToolCall, STRING_DELIMITER, parseToolCall } from './tool-calls.js';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import type { IncrementalDetokenizer, PackageTokenizer, SpecialTokens } from './tokenizer.js';

const MAX_TEMPLATE_BYTES = 1024 * 1024;

export type ContentItem = { type: 'text'; text: string } | { type: 'image' } | { type: 'audio' };

/** The media placeholders as Gemma's template renders media items (the tokenizer maps each to one id). */
export const PLACEHOLDER_TEXT = { image: '<|image|>', audio: '<|audio|>' } as const;

/**
 * Content items as one string, for chat templates that take only strings (the synthetic package's): each
 * media item as its placeholder text, an image followed by a blank line, audio on a line of its own.
 */
export function placeholderContent(items: readonly ContentItem[]): string {
  let out = '';
  for (const item of items) {
    if (item.type === 'image') out += `${PLACEHOLDER_TEXT.image}\n\n`;
    else if (item.type === 'audio') out += `${out && !out.endsWith('\n') ? '\n' : ''}${PLACEHOLDER_TEXT.audio}`;
    else out += item.text;
  }
  return out;
}

/** A call the model made, in transformers' chat format (arguments as an object, keys in order). */
export interface ToolCall {
  type: 'function';
  function: { name: string; arguments: Record<string, unknown> };
}

/** A tool the model may call, in transformers' chat format (JSON-schema parameters). */
export interface ToolDeclaration {
  type: 'function';
  function: { name: string; description: string; parameters: Record<string, unknown> };
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  /** Absent only for a model turn that just calls tools. */
  content?: string | ContentItem[];
  /** The model's tool calls (assistant turns). */
  tool_calls?: ToolCall[];
  /** The tool that answered (tool turns). */
  name?: string;
}

export interface RenderOptions {
  bosToken: string;
  /** Tools declared to the model. */
  tools?: ToolDeclaration[];
  /** End with the model's turn opener, so generation continues as the model. Default true. */
  addGenerationPrompt?: boolean;
  /** Ask for a thinking channel before the answer. Default false. */
  enableThinking?: boolean;
}

export class ChatTemplate {
  private readonly template: Template;

  constructor(readonly source: string) {
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new Error(`chat template does not parse: ${(err as Error).message}`);
    }
  }

  /** chat_template.jinja from the package, else a `chat_template` string in tokenizer_config.json. */
  static async load(dir: string): Promise<ChatTemplate> {
    const file = join(dir, 'chat_template.jinja');
    try {
      const info = await stat(file);
      if (info.size > MAX_TEMPLATE_BYTES) throw new Error(`${file} is larger than ${MAX_TEMPLATE_BYTES} bytes`);
      return new ChatTemplate(await readFile(file, 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const cfgFile = join(dir, 'tokenizer_config.json');
    const info = await stat(cfgFile);
    if (info.size > 16 * MAX_TEMPLATE_BYTES) throw new Error(`${cfgFile} is too large`);
    const cfg: unknown = JSON.parse(await readFile(cfgFile, 'utf8'));
    const tpl = typeof cfg === 'object' && cfg !== null ? (cfg as Record<string, unknown>).chat_template : undefined;
    if (typeof tpl !== 'string')
      throw new Error(`package ${dir} has no chat_template.jinja and no chat_template in tokenizer_config.json`);
    return new ChatTemplate(tpl);
  }

  render(messages: ChatMessage[], opts: RenderOptions): string {
    // Text-only content goes in as a plain string, so templates that only know strings still render it.
    // Tool calls and the answering tool's name go through as transformers passes them.
    const plain = messages.map((m) => ({
      role: m.role,
      ...(m.content !== undefined ? { content: simplifyContent(m.content) } : {}),
      ...(m.tool_calls ? { tool_calls: m.tool_calls } : {}),
      ...(m.name !== undefined ? { name: m.name } : {}),
    }));
    const vars: Record<string, unknown> = {
      messages: plain,
      bos_token: opts.bosToken,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      enable_thinking: opts.enableThinking ?? false,
      ...(opts.tools?.length ? { tools: opts.tools } : {}),
    };
    try {
      return this.template.render(vars);
    } catch (err) {
      throw new Error(`chat template failed to render: ${(err as Error).message}`);
    }
  }
}

function simplifyContent(content: string | ContentItem[]): string | ContentItem[] {
  if (typeof content === 'string') return content;
  if (content.every((c) => c.type === 'text')) return content.map((c) => (c as { text: string }).text).join('');
  return content;
}

/**
 * Prompt ids for a conversation, before media expansion: the template rendered with the tokenizer's bos text,
 * then tokenised without adding specials (the template writes bos itself). What Engine.encodeMessages runs.
 */
export function encodeChat(
  template: ChatTemplate,
  tokenizer: PackageTokenizer,
  messages: ChatMessage[],
  opts: Omit<RenderOptions, 'bosToken'> = {},
): { text: string; ids: number[] } {
  const text = template.render(messages, { ...opts, bosToken: tokenizer.special.bosText });
  return { text, ids: tokenizer.encode(text) };
}

/** The configured system prompt first (unless the caller supplied one), then the conversation. */
export function withSystemPrompt(systemPrompt: string | undefined, messages: ChatMessage[]): ChatMessage[] {
  const sys = systemPrompt?.trim();
  if (!sys || messages[0]?.role === 'system') return messages;
  return [{ role: 'system', content: sys }, ...messages];
}

export interface MediaCounts {
  /** Soft tokens of each image, in prompt order (the vision encoder's output rows). */
  imageTokens?: number[];
  /** Soft tokens of each audio clip, in prompt order (the audio encoder's output rows). */
  audioTokens?: number[];
}

export interface MediaSpan {
  kind: 'image' | 'audio';
  /** Which image (or clip), in prompt order. */
  index: number;
  /** Position in the expanded ids of the first soft token: encoder row r goes to position start + r. */
  start: number;
  length: number;
}

export interface ExpandedPrompt {
  ids: number[];
  media: MediaSpan[];
}

/**
 * Replaces each placeholder id (`<|image|>`, `<|audio|>`) with begin marker + N placeholders + end marker.
 * The engine embeds the ids as usual and then overwrites the rows of each span with the encoder output.
 */
export function expandMediaPlaceholders(
  ids: ArrayLike<number>,
  special: SpecialTokens,
  counts: MediaCounts,
): ExpandedPrompt {
  const imageCounts = counts.imageTokens ?? [];
  const audioCounts = counts.audioTokens ?? [];
  const kinds = {
    image: { counts: imageCounts, ...markerTriple(special, 'imageStart', 'image', 'imageEnd', imageCounts.length) },
    audio: { counts: audioCounts, ...markerTriple(special, 'audioStart', 'audio', 'audioEnd', audioCounts.length) },
  };
  const out: number[] = [];
  const media: MediaSpan[] = [];
  const seen = { image: 0, audio: 0 };
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    const kind = id === kinds.image.placeholder ? 'image' : id === kinds.audio.placeholder ? 'audio' : undefined;
    if (kind === undefined) {
      out.push(id);
      continue;
    }
    const k = kinds[kind];
    const index = seen[kind]++;
    const n = k.counts[index];
    if (n === undefined)
      throw new Error(`prompt has more ${kind} placeholders than the ${k.counts.length} ${kind}(s) given`);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${kind} ${index} has an invalid soft-token count ${n}`);
    out.push(k.begin!);
    media.push({ kind, index, start: out.length, length: n });
    for (let r = 0; r < n; r++) out.push(k.placeholder!);
    out.push(k.end!);
  }
  for (const kind of ['image', 'audio'] as const) {
    if (seen[kind] !== kinds[kind].counts.length) {
      throw new Error(
        `prompt has ${seen[kind]} ${kind} placeholder(s) but ${kinds[kind].counts.length} ${kind}(s) were given`,
      );
    }
  }
  return { ids: out, media };
}

function markerTriple(
  special: SpecialTokens,
  b: 'imageStart' | 'audioStart',
  p: 'image' | 'audio',
  e: 'imageEnd' | 'audioEnd',
  wanted: number,
) {
  const m = special.markers;
  const triple = { begin: m[b], placeholder: m[p], end: m[e] };
  if (wanted > 0 && (triple.begin === undefined || triple.placeholder === undefined || triple.end === undefined)) {
    throw new Error(`the tokenizer lacks the ${p} markers, so this package cannot take ${p} input`);
  }
  return triple;
}

export interface ChannelSplit {
  thinking: string;
  answer: string;
}

const CHANNEL_OPEN = '<|channel>';
const CHANNEL_CLOSE = '<channel|>';

/**
 * Splits decoded output text (special tokens kept) into the thinking channel(s) and the answer. A channel is
 * `<|channel>NAME\n...<channel|>`; its name line is dropped. An unclosed channel (cut off by the length limit)
 * is all thinking.
 */
export function splitChannels(text: string): ChannelSplit {
  const thinking: string[] = [];
  const answer: string[] = [];
  let pos = 0;
  while (pos < text.length) {
    const open = text.indexOf(CHANNEL_OPEN, pos);
    if (open < 0) {
      answer.push(text.slice(pos));
      break;
    }
    answer.push(text.slice(pos, open));
    const bodyStart = open + CHANNEL_OPEN.length;
    const close = text.indexOf(CHANNEL_CLOSE, bodyStart);
    const body = text.slice(bodyStart, close < 0 ? text.length : close);
    thinking.push(dropChannelName(body));
    pos = close < 0 ? text.length : close + CHANNEL_CLOSE.length;
  }
  return { thinking: thinking.join('\n').trim(), answer: answer.join('').trim() };
}

function dropChannelName(body: string): string {
  const nl = body.indexOf('\n');
  return nl < 0 ? '' : body.slice(nl + 1);
}

export interface RoutedDelta {
  answer: string;
  thinking: string;
}

/**
 * Streams generated ids into answer and thinking text as they come. Channel markers are single special
 * tokens, so routing happens at the id level; each stream has its own detokenizer (specials skipped) so a
 * byte sequence is never split. The channel's name line ("thought\n") is held back from the thinking stream.
 */
export class OutputRouter {
  private inChannel = false;
  /** Inside <|tool_call> ... <tool_call|>: the call's text, with each <|"|> kept. */
  private inCall = false;
  private callText = '';
  private readonly callDetok: IncrementalDetokenizer;
  private readonly calls: ModelToolCall[] = [];
  private readonly callErrors: string[] = [];
  private readonly callOpen: number | undefined;
  private readonly callClose: number | undefined;
  private readonly delimiter: number | undefined;
  private needSeparator = false;
  private nameDone = false;
  private nameBuf = '';
  private readonly answerDetok: IncrementalDetokenizer;
  private readonly thinkingDetok: IncrementalDetokenizer;
  private readonly open: number | undefined;
  private readonly close: number | undefined;
  private answerText = '';
  private thinkingText = '';

  constructor(tokenizer: PackageTokenizer) {
    this.answerDetok = tokenizer.createDetokenizer({ skipSpecial: true });
    this.thinkingDetok = tokenizer.createDetokenizer({ skipSpecial: true });
    this.open = tokenizer.special.markers.channelStart;
    this.close = tokenizer.special.markers.channelEnd;
    this.callDetok = tokenizer.createDetokenizer({ skipSpecial: true });
    this.callOpen = tokenizer.special.markers.toolCallStart;
    this.callClose = tokenizer.special.markers.toolCallEnd;
    this.delimiter = tokenizer.special.markers.stringDelimiter;
  }

  push(id: number): RoutedDelta {
    if (this.inCall) {
      if (id === this.delimiter) this.callText += this.callDetok.flush() + STRING_DELIMITER;
      else if (id === this.callClose) this.endCall();
      else this.callText += this.callDetok.push(id);
      return this.emit('', '');
    }
    if (id === this.callOpen && !this.inChannel) {
      const answer = this.answerDetok.flush();
      this.inCall = true;
      this.callText = '';
      return this.emit(answer, '');
    }
    if (id === this.open && !this.inChannel) {
      const answer = this.answerDetok.flush();
      this.inChannel = true;
      this.needSeparator = this.thinkingText !== '';
      this.nameDone = false;
      this.nameBuf = '';
      return this.emit(answer, '');
    }
    if (id === this.close && this.inChannel) {
      const thinking = this.thinkingFilter(this.thinkingDetok.flush());
      this.inChannel = false;
      return this.emit('', thinking);
    }
    if (this.inChannel) return this.emit('', this.thinkingFilter(this.thinkingDetok.push(id)));
    return this.emit(this.answerDetok.push(id), '');
  }

  /** The tool calls made so far, and why any call could not be read (generation cut inside one, bad syntax). */
  toolCalls(): { calls: ModelToolCall[]; errors: string[] } {
    return {
      calls: [...this.calls],
      errors: [...this.callErrors, ...(this.inCall ? ['a tool call was cut off'] : [])],
    };
  }

  private endCall(): void {
    this.callText += this.callDetok.flush();
    this.inCall = false;
    try {
      this.calls.push(parseToolCall(this.callText));
    } catch (err) {
      this.callErrors.push((err as Error).message);
    }
  }

  /** Releases pending bytes at the end of generation. */
  finish(): RoutedDelta {
    return this.inChannel
      ? this.emit('', this.thinkingFilter(this.thinkingDetok.flush()))
      : this.emit(this.answerDetok.flush(), '');
  }

  /** Everything so far, trimmed as splitChannels would. */
  result(): ChannelSplit {
    return { answer: this.answerText.trim(), thinking: this.thinkingText.trim() };
  }

  private thinkingFilter(delta: string): string {
    if (this.nameDone) return delta;
    this.nameBuf += delta;
    const nl = this.nameBuf.indexOf('\n');
    if (nl < 0) return '';
    this.nameDone = true;
    const rest = this.nameBuf.slice(nl + 1);
    this.nameBuf = '';
    return rest;
  }

  private emit(answer: string, thinking: string): RoutedDelta {
    // Leading whitespace is held back, so the streamed text is a prefix of the trimmed result.
    if (this.answerText === '') answer = answer.trimStart();
    if (this.thinkingText === '') thinking = thinking.trimStart();
    // A later channel is separated from the earlier one by a newline, as splitChannels joins them.
    if (thinking && this.needSeparator) {
      thinking = '\n' + thinking;
      this.needSeparator = false;
    }
    this.answerText += answer;
    this.thinkingText += thinking;
    return { answer, thinking };
  }
}
