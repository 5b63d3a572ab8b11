/**
 * The package's tokenizer: tokenizer.json + tokenizer_config.json loaded with @huggingface/tokenizers (the JS
 * port transformers.js uses; it handles Gemma's BPE with byte fallback and its Replace normalizer). Adds what
 * generation needs on top: special-token ids looked up by content, and a streaming detokenizer.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';

/** Gemma 4's tokenizer.json is ~30 MB; anything far beyond that is not a tokenizer we should parse. */
const MAX_TOKENIZER_BYTES = 256 * 1024 * 1024;
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

/** Content of the markers the engine needs, as Gemma 4 spells them (see design notes). */
export const GEMMA_MARKERS = {
  turnStart: '<|turn>',
  turnEnd: '<turn|>',
  think: '<|think|>',
  channelStart: '<|channel>',
  channelEnd: '<channel|>',
  imageStart: '<|image>',
  image: '<|image|>',
  imageEnd: '<image|>',
  audioStart: '<|audio>',
  audio: '<|audio|>',
  audioEnd: '<audio|>',
  video: '<|video|>',
  toolCallStart: '<|tool_call>',
  toolCallEnd: '<tool_call|>',
  toolResponseStart: '<|tool_response>',
  stringDelimiter: '<|"|>',
} as const;

export type MarkerName = keyof typeof GEMMA_MARKERS;

export interface SpecialTokens {
  bos: number;
  eos: number;
  pad?: number;
  /** Every Gemma marker the vocabulary has; absent ones (small synthetic vocabularies) are left out. */
  markers: Partial<Record<MarkerName, number>>;
  /** bos_token / eos_token as text, for the chat template. */
  bosText: string;
  eosText: string;
}

export interface DecodeOptions {
  /** Drop special tokens (markers, bos/eos) from the text. Default false. */
  skipSpecial?: boolean;
}

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** tokenizer_config.json writes a token either as a string or as an AddedToken object ({content: ...}). */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

async function readBounded(path: string, limit: number): Promise<string> {
  const info = await stat(path);
  if (info.size > limit)
    throw new Error(`${path} is ${info.size} bytes, more than the ${limit} a tokenizer file may have`);
  return readFile(path, 'utf8');
}

export class PackageTokenizer {
  readonly special: SpecialTokens;
  /** Highest id + 1 over the model vocabulary and the added tokens. */
  readonly vocabSize: number;
  readonly config: Readonly<JsonObject>;
  private readonly inner: Tokenizer;
  private readonly specialIds: Set<number>;

  /** Reads tokenizer.json and (when present) tokenizer_config.json from a package directory. */
  static async load(dir: string): Promise<PackageTokenizer> {
    const json = await readBounded(join(dir, 'tokenizer.json'), MAX_TOKENIZER_BYTES);
    let config = '{}';
    try {
      config = await readBounded(join(dir, 'tokenizer_config.json'), MAX_CONFIG_BYTES);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    return PackageTokenizer.fromJson(json, config);
  }

  static fromJson(tokenizerJson: string, tokenizerConfigJson = '{}'): PackageTokenizer {
    const tok: unknown = JSON.parse(tokenizerJson);
    const cfg: unknown = JSON.parse(tokenizerConfigJson);
    if (!isObject(tok) || !isObject(tok.model)) throw new Error('tokenizer.json has no model section');
    return new PackageTokenizer(tok, isObject(cfg) ? cfg : {});
  }

  private constructor(tokenizerJson: JsonObject, config: JsonObject) {
    this.inner = new Tokenizer(tokenizerJson, config);
    this.config = config;

    const vocab = this.inner.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;

    this.specialIds = new Set<number>();
    for (const [id, added] of this.inner.get_added_tokens_decoder()) if (added.special) this.specialIds.add(id);

    const bosText = tokenText(config.bos_token) ?? '<bos>';
    const eosText = tokenText(config.eos_token) ?? '<eos>';
    const padText = tokenText(config.pad_token) ?? '<pad>';
    const bos = this.inner.token_to_id(bosText);
    const eos = this.inner.token_to_id(eosText);
    if (bos === undefined || eos === undefined)
      throw new Error(`tokenizer lacks its bos (${bosText}) or eos (${eosText}) token`);

    // tokenizer_config may name the media tokens (HF processors read image_token, boi_token, ...); the
    // Gemma 4 spellings are the fallback.
    const configNames: Partial<Record<MarkerName, string>> = {
      image: tokenText(config.image_token),
      imageStart: tokenText(config.boi_token),
      imageEnd: tokenText(config.eoi_token),
      audio: tokenText(config.audio_token),
      audioStart: tokenText(config.boa_token),
      audioEnd: tokenText(config.eoa_token),
    };
    const markers: Partial<Record<MarkerName, number>> = {};
    for (const name of Object.keys(GEMMA_MARKERS) as MarkerName[]) {
      const id = this.inner.token_to_id(configNames[name] ?? GEMMA_MARKERS[name]);
      if (id !== undefined) markers[name] = id;
    }
    this.special = { bos, eos, pad: this.inner.token_to_id(padText), markers, bosText, eosText };
  }

  /** Text to ids. Special-token text in the input (e.g. a rendered chat template) maps to its id. */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.inner.encode(text, { add_special_tokens: opts.addSpecialTokens ?? false }).ids;
  }

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    if (ids.length === 0) return ''; // the library refuses an empty list
    const list = Array.isArray(ids) ? (ids as number[]) : Array.from(ids);
    return this.inner.decode(list, {
      skip_special_tokens: opts.skipSpecial ?? false,
      clean_up_tokenization_spaces: false,
    });
  }

  tokenId(content: string): number | undefined {
    return this.inner.token_to_id(content);
  }

  tokenContent(id: number): string | undefined {
    return this.inner.id_to_token(id);
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * Each id's token text as the vocabulary spells it ("▁" for a space, "<0x0A>" for a byte), for the grammar
   * engine; special tokens as '' so a grammar never lets them into the text.
   */
  grammarVocabulary(): string[] {
    const out = new Array<string>(this.vocabSize);
    for (let id = 0; id < this.vocabSize; id++)
      out[id] = this.specialIds.has(id) ? '' : (this.inner.id_to_token(id) ?? '');
    return out;
  }

  /** Ids that end an answer: eos and the end-of-turn marker. */
  stopIds(): number[] {
    const ids = [this.special.eos];
    const turnEnd = this.special.markers.turnEnd;
    if (turnEnd !== undefined && turnEnd !== this.special.eos) ids.push(turnEnd);
    return ids;
  }

  createDetokenizer(opts: DecodeOptions = {}): IncrementalDetokenizer {
    return new IncrementalDetokenizer((ids) => this.decode(ids, opts));
  }
}

/**
 * Streaming detokenizer. A byte-fallback token (<0xE2>) is one UTF-8 byte: a character may span up to four
 * tokens, and decoding a partial sequence yields U+FFFD. We decode a small window [prefix..end) and compare it
 * with the text of [prefix..read): the new text is released only once it no longer ends in U+FFFD. Decoding a
 * window with one already-released token in front keeps decoders that strip a leading space honest.
 */
export class IncrementalDetokenizer {
  private ids: number[] = [];
  private prefix = 0;
  private read = 0;
  /** More pending tokens than a UTF-8 character can span means the bytes are invalid: release them. */
  private static readonly MAX_PENDING = 8;

  constructor(private readonly decodeFn: (ids: number[]) => string) {}

  /** Feeds one id; returns the text it completes (often '', while bytes of a character are pending). */
  push(id: number): string {
    this.ids.push(id);
    const prefixText = this.decodeFn(this.ids.slice(this.prefix, this.read));
    const text = this.decodeFn(this.ids.slice(this.prefix));
    const pending = this.ids.length - this.read;
    if (
      text.length > prefixText.length &&
      (!text.endsWith('\uFFFD') || pending >= IncrementalDetokenizer.MAX_PENDING)
    ) {
      return this.release(text.slice(prefixText.length));
    }
    if (text.length <= prefixText.length && pending >= IncrementalDetokenizer.MAX_PENDING) {
      // Tokens that decode to nothing (skipped specials): drop them from the window, they can't change text.
      this.ids = this.ids.slice(0, this.read);
    }
    return '';
  }

  /** Releases whatever is pending (an unfinished byte sequence becomes U+FFFD, as a full decode would). */
  flush(): string {
    if (this.read === this.ids.length) return '';
    const prefixText = this.decodeFn(this.ids.slice(this.prefix, this.read));
    const text = this.decodeFn(this.ids.slice(this.prefix));
    return this.release(text.length > prefixText.length ? text.slice(prefixText.length) : '');
  }

  private release(delta: string): string {
    // Keep only the last released token as context, so the window stays a few tokens long.
    this.ids = this.ids.slice(this.read);
    this.prefix = 0;
    this.read = this.ids.length;
    return delta;
  }
}
