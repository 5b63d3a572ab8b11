/**
 * Constrained decoding: replies that must be JSON valid against a schema are decoded under a token mask, so
 * they are valid on the first pass (a retry costs seconds on a slow board). The grammar engine is xgrammar
 * (@mlc-ai/web-xgrammar, its WebAssembly build): it compiles the schema against the package's vocabulary
 * once, and per token gives a bitmask of the ids that keep the reply on the grammar (about 0.02 ms over
 * Gemma's 262,144 ids, measured on the build machine: `npm run bench` prints it).
 *
 * Control tokens are given to xgrammar as empty strings, which it never allows inside the grammar: only the
 * stop ids (eos, end of turn) may follow once the JSON is complete. On top of xgrammar's mask: no control
 * characters (its JSON strings take them, JSON parsers do not) and only byte sequences that are valid UTF-8.
 * Not enforced by the mask, so still validated after: bounds on non-integer numbers. A long string maxLength
 * compiles slowly (80: 7 s, 16: 0.5 s, none: 0.06 s against 262,144 ids); compiled schemas are kept.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { OrFormat } from '@mlc-ai/web-xgrammar';
import type { PackageTokenizer } from './tokenizer.js';

/** What the decode loop needs: the allowed ids before each step, and each sampled id after it. */
export interface TokenConstraint {
  /** Bitmask of the ids allowed next: bit (id & 31) of word (id >> 5). */
  allowed(): Promise<Int32Array>;
  /** Takes a sampled id (not a stop id); false when the grammar refuses it (a bug, or a mask not applied). */
  accept(id: number): boolean;
  dispose(): void;
}

// The package is a UMD bundle in a "type": "module" package: Node would load it as an ES module, where its
// CommonJS branch cannot run. It is evaluated here as the CommonJS module it is; its one dynamic
// import('module') (which code made by new Function cannot do under every loader, vitest's included) becomes
// the require it stands for.
type XGrammar = typeof import('@mlc-ai/web-xgrammar');
const DYNAMIC_IMPORT = "await import('module')";
let loaded: XGrammar | null = null;
function xgrammar(): XGrammar {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const file = require.resolve('@mlc-ai/web-xgrammar');
  const source = readFileSync(file, 'utf8');
  if (source.split(DYNAMIC_IMPORT).length !== 2)
    throw new Error(`${file} is not the xgrammar bundle this loader knows (one ${DYNAMIC_IMPORT} expected)`);
  const module = { exports: {} as Record<string, unknown> };
  new Function(
    'exports',
    'module',
    'require',
    '__filename',
    '__dirname',
    source.replace(DYNAMIC_IMPORT, "require('module')"),
  )(module.exports, module, require, file, file.slice(0, file.lastIndexOf('/')));
  loaded = module.exports as unknown as XGrammar;
  return loaded;
}

type Compiler = Awaited<ReturnType<XGrammar['GrammarCompiler']['createGrammarCompiler']>>;
type Matcher = Awaited<ReturnType<XGrammar['GrammarMatcher']['createGrammarMatcher']>>;

/** Whether a token spells a character below 0x20 (JSON needs none on one line; xgrammar lets them into strings). */
function hasControl(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) < 0x20) return true;
  return false;
}
/** A byte-fallback token: "<0xAB>". */
const BYTE_TOKEN = /^<0x([0-9A-F]{2})>$/;

/** One package's vocabulary prepared for xgrammar, and its compiled schemas (the last few, by their JSON). */
export class JsonGrammars {
  private readonly compiled = new Map<string, Promise<Awaited<ReturnType<Compiler['compileJSONSchema']>>>>();
  private static readonly KEEP = 16;

  private constructor(
    private readonly compiler: Compiler,
    /** Ids never allowed in JSON text: control characters, and bytes that start no valid UTF-8 sequence. */
    private readonly banned: Int32Array,
    /** The id of each byte-fallback token by its byte (-1: none). */
    private readonly byteIds: Int32Array,
    /** The byte of each byte-fallback token, by its id. */
    private readonly byteOf: ReadonlyMap<number, number>,
    /** Ids that end a reply (xgrammar allows them where the grammar is complete). */
    private readonly stopIds: number[],
  ) {}

  /** Builds the vocabulary table (about 0.4 s for 262,144 ids). */
  static async create(tokenizer: PackageTokenizer): Promise<JsonGrammars> {
    const xg = xgrammar();
    const vocab = tokenizer.grammarVocabulary();
    const info = await xg.TokenizerInfo.createTokenizerInfo(
      vocab,
      'byte_fallback',
      false,
      vocab.length,
      tokenizer.stopIds(),
    );
    // xgrammar keeps only " \\ \r \n out of JSON strings and takes any byte >= 0xC0 as a UTF-8 lead; a JSON
    // parser refuses the other control characters, and a decoder turns bad sequences into U+FFFD.
    const banned = new Int32Array(Math.ceil(vocab.length / 32));
    const byteIds = new Int32Array(256).fill(-1);
    const byteOf = new Map<number, number>();
    vocab.forEach((text, id) => {
      const byte = BYTE_TOKEN.exec(text);
      const b = byte ? Number.parseInt(byte[1]!, 16) : -1;
      if (b >= 0) {
        byteIds[b] = id;
        byteOf.set(id, b);
      }
      if (hasControl(text) || (b >= 0 && (b < 0x20 || b === 0xc0 || b === 0xc1 || b >= 0xf5)))
        banned[id >> 5]! |= 1 << (id & 31);
    });
    return new JsonGrammars(
      await xg.GrammarCompiler.createGrammarCompiler(info, true),
      banned,
      byteIds,
      byteOf,
      tokenizer.stopIds(),
    );
  }

  /**
   * A constraint that makes the reply one call of one of `tools`, as Gemma 4 writes calls:
   *   <|tool_call>call:NAME{ARGS}<tool_call|><|tool_response>
   * with ARGS a JSON object valid against the tool's schema (the call parser reads JSON as well as Gemma's own
   * notation). The markers are special tokens, which the grammar never allows: this wraps it, forcing the opening
   * marker first, the closing one where the grammar could end, then the stop.
   */
  async toolCall(tools: CallableTool[], markers: ToolCallMarkers): Promise<TokenConstraint> {
    if (tools.length === 0) throw new Error('a forced tool call needs at least one tool');
    const grammars = await Promise.all(tools.map((t) => this.schemaGrammar(t.parameters)));
    const format: OrFormat = {
      type: 'or',
      elements: tools.map((t, i) => ({
        type: 'tag',
        begin: `call:${t.name}`,
        content: { type: 'grammar', grammar: grammars[i]!.toString() },
        end: '',
      })),
    };
    const compiled = await this.compiler.compileStructuralTag({ type: 'structural_tag', format });
    const matcher = await xgrammar().GrammarMatcher.createGrammarMatcher(compiled);
    const inner = this.wrap(matcher);
    const only = (id: number): Int32Array => {
      const mask = new Int32Array(this.banned.length);
      mask[id >> 5] = 1 << (id & 31);
      return mask;
    };
    const stops = new Set(this.stopIds);
    let stage: 'open' | 'call' | 'respond' = 'open';
    return {
      allowed: async () => {
        if (stage === 'open') return only(markers.callStart);
        if (stage === 'respond') return only(markers.responseStart);
        const mask = await inner.allowed();
        // Where the grammar could end, the call closes instead.
        let end = false;
        for (const id of stops) {
          if ((mask[id >> 5]! >>> (id & 31)) & 1) end = true;
          mask[id >> 5]! &= ~(1 << (id & 31));
        }
        if (end) mask[markers.callEnd >> 5]! |= 1 << (markers.callEnd & 31);
        return mask;
      },
      accept: (id) => {
        if (stage === 'open') {
          stage = 'call';
          return id === markers.callStart;
        }
        if (stage === 'call' && id === markers.callEnd) {
          stage = 'respond';
          return true;
        }
        if (stage === 'respond') return false;
        return inner.accept(id);
      },
      dispose: () => inner.dispose(),
    };
  }

  /**
   * A constraint for one reply: one JSON value valid against `schema`, on one line with json.dumps' spacing
   * (", " and ": "), properties in the schema's order; no properties the schema does not name.
   */
  async constraint(schema: Record<string, unknown>): Promise<TokenConstraint> {
    const key = JSON.stringify(schema);
    let c = this.compiled.get(key);
    if (!c) {
      // Strict (no properties the schema does not name) when it names some: {type: object} alone is any object.
      c = this.compiler.compileJSONSchema(key, false, -1, [', ', ': '], 'properties' in schema);
      this.compiled.set(key, c);
      if (this.compiled.size > JsonGrammars.KEEP) this.compiled.delete(this.compiled.keys().next().value!);
    }
    return this.wrap(await xgrammar().GrammarMatcher.createGrammarMatcher(await c));
  }

  /** The EBNF of one line of JSON valid against `schema`, with json.dumps' spacing. */
  private schemaGrammar(schema: Record<string, unknown>): ReturnType<XGrammar['Grammar']['fromJSONSchema']> {
    return xgrammar().Grammar.fromJSONSchema(JSON.stringify(schema), false, -1, [', ', ': '], 'properties' in schema);
  }

  /** xgrammar's mask, less control characters and invalid UTF-8. */
  private wrap(matcher: Matcher): TokenConstraint {
    const utf8 = new Utf8Sequence();
    return {
      allowed: async () => {
        const mask = await matcher.getNextTokenBitmask();
        for (let w = 0; w < this.banned.length; w++) mask[w]! &= ~this.banned[w]!;
        // Inside a multi-byte character: only the continuation bytes UTF-8 allows there.
        const range = utf8.next();
        if (range) {
          for (let b = 0x80; b <= 0xbf; b++) {
            const id = this.byteIds[b]!;
            if (id >= 0 && (b < range[0] || b > range[1])) mask[id >> 5]! &= ~(1 << (id & 31));
          }
        }
        return mask;
      },
      accept: (id) => {
        utf8.push(this.byteOf.get(id) ?? -1);
        return matcher.acceptToken(id);
      },
      dispose: () => matcher.dispose(),
    };
  }
}

/** The markers a forced tool call is written between (tokenizer.special.markers). */
export interface ToolCallMarkers {
  callStart: number;
  callEnd: number;
  /** Where generation stops after a call: the model would wait for the tool's response here. */
  responseStart: number;
}

/** The tools a forced call may name: each a name and its arguments' JSON schema. */
export interface CallableTool {
  name: string;
  parameters: Record<string, unknown>;
}

/** Where a character's UTF-8 bytes stand (RFC 3629's table), from the bytes of byte-fallback tokens. */
class Utf8Sequence {
  private need = 0;
  private lo = 0x80;
  private hi = 0xbf;

  /** The range the next byte must fall in, or null between characters. */
  next(): [number, number] | null {
    return this.need > 0 ? [this.lo, this.hi] : null;
  }

  /** One token: its byte, or -1 for a token of whole characters. */
  push(b: number): void {
    if (this.need > 0) {
      this.need = b >= 0 ? this.need - 1 : 0;
      [this.lo, this.hi] = [0x80, 0xbf];
      return;
    }
    if (b < 0xc2) return;
    this.need = b < 0xe0 ? 1 : b < 0xf0 ? 2 : 3;
    [this.lo, this.hi] =
      b === 0xe0
        ? [0xa0, 0xbf]
        : b === 0xed
          ? [0x80, 0x9f]
          : b === 0xf0
            ? [0x90, 0xbf]
            : b === 0xf4
              ? [0x80, 0x8f]
              : [0x80, 0xbf];
  }
}

/** Sets the logits of ids the mask leaves out to -Infinity (ids past the mask's vocabulary too). */
export function applyMask(logits: Float32Array, mask: Int32Array, vocabSize: number): void {
  const n = Math.min(logits.length, vocabSize);
  for (let w = 0; w * 32 < n; w++) {
    const bits = mask[w]!;
    if (bits === -1) continue;
    const end = Math.min(n, (w + 1) * 32);
    for (let id = w * 32; id < end; id++) if (((bits >>> (id & 31)) & 1) === 0) logits[id] = Number.NEGATIVE_INFINITY;
  }
  for (let id = n; id < logits.length; id++) logits[id] = Number.NEGATIVE_INFINITY;
}
