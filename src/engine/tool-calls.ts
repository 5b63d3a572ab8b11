/**
 * Gemma 4's tool calls, as its chat template renders them and the model writes them:
 *   <|tool_call>call:NAME{ARGS}<tool_call|>
 * ARGS is an object in the template's own notation: keys unquoted, strings between <|"|> delimiters, numbers,
 * true / false / null, nested objects and [lists] as in JSON (transformers' serving code reads it as JSON with
 * unquoted keys and those string delimiters). The router (prompt.ts) hands this file the text between the
 * markers, `call:NAME{ARGS}`, with each <|"|> kept.
 */

/** A call the model made: the function's name and its arguments. */
export interface ModelToolCall {
  name: string;
  arguments: Record<string, unknown>;
}

export const STRING_DELIMITER = '<|"|>';

/** Reads one call's body (`call:NAME{ARGS}`); throws SyntaxError naming what is wrong. */
export function parseToolCall(body: string): ModelToolCall {
  const m = /^\s*call:([A-Za-z_][A-Za-z0-9_.-]*)\s*/.exec(body);
  if (!m) throw new SyntaxError(`a tool call starts with call:NAME, got ${JSON.stringify(body.slice(0, 40))}`);
  const reader = new ArgsReader(body, m[0].length);
  const args = reader.value();
  reader.end();
  if (typeof args !== 'object' || args === null || Array.isArray(args))
    throw new SyntaxError(`the arguments of ${m[1]} are not an object`);
  return { name: m[1]!, arguments: args as Record<string, unknown> };
}

class ArgsReader {
  constructor(
    private readonly s: string,
    private i: number,
  ) {}

  end(): void {
    this.space();
    if (this.i !== this.s.length) throw this.error('unexpected text after the arguments');
  }

  value(): unknown {
    this.space();
    const s = this.s;
    if (s.startsWith(STRING_DELIMITER, this.i)) return this.delimited();
    const c = s[this.i];
    if (c === '{') return this.object();
    if (c === '[') return this.list();
    if (c === '"') return this.quoted();
    const lit = /^(?:true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(s.slice(this.i));
    if (!lit) throw this.error('expected a value');
    this.i += lit[0].length;
    return JSON.parse(lit[0]) as unknown;
  }

  private object(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    this.i++; // {
    this.space();
    if (this.s[this.i] === '}') {
      this.i++;
      return out;
    }
    for (;;) {
      this.space();
      const key = this.key();
      this.space();
      if (this.s[this.i] !== ':') throw this.error(`expected ':' after key ${key}`);
      this.i++;
      Object.defineProperty(out, key, { value: this.value(), enumerable: true, writable: true, configurable: true });
      this.space();
      const c = this.s[this.i++];
      if (c === '}') return out;
      if (c !== ',') throw this.error("expected ',' or '}'");
    }
  }

  private list(): unknown[] {
    const out: unknown[] = [];
    this.i++; // [
    this.space();
    if (this.s[this.i] === ']') {
      this.i++;
      return out;
    }
    for (;;) {
      out.push(this.value());
      this.space();
      const c = this.s[this.i++];
      if (c === ']') return out;
      if (c !== ',') throw this.error("expected ',' or ']'");
    }
  }

  private key(): string {
    if (this.s.startsWith(STRING_DELIMITER, this.i)) return this.delimited();
    if (this.s[this.i] === '"') return this.quoted();
    const m = /^[A-Za-z_$][A-Za-z0-9_$.-]*/.exec(this.s.slice(this.i));
    if (!m) throw this.error('expected a key');
    this.i += m[0].length;
    return m[0];
  }

  private delimited(): string {
    const start = this.i + STRING_DELIMITER.length;
    const end = this.s.indexOf(STRING_DELIMITER, start);
    if (end < 0) throw this.error('a string is not closed');
    this.i = end + STRING_DELIMITER.length;
    return this.s.slice(start, end);
  }

  private quoted(): string {
    const m = /^"(?:[^"\\]|\\.)*"/.exec(this.s.slice(this.i));
    if (!m) throw this.error('a string is not closed');
    this.i += m[0].length;
    return JSON.parse(m[0]) as string;
  }

  private space(): void {
    while (this.i < this.s.length && /\s/.test(this.s[this.i]!)) this.i++;
  }

  private error(what: string): SyntaxError {
    return new SyntaxError(`${what} at ${this.i} in ${JSON.stringify(this.s.slice(0, 200))}`);
  }
}
