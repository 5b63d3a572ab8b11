/**
 * Reading the config schema as data. The loader (unknown keys, readable expectations), the environment
 * overrides and the documentation generator all walk perchConfigSchema through these helpers, so none of
 * them keeps its own list of keys.
 */
import { z } from 'zod';

/** A schema with its wrappers (optional, default, prefault, nullable) peeled off. */
export interface Field {
  /** The innermost schema: object, array, union, string, number, boolean, enum or literal. */
  schema: z.ZodType;
  /** May be left out of the file. */
  optional: boolean;
  /** Whether a default (or prefault) fills the key in when it is left out. */
  hasDefault: boolean;
  default?: unknown;
  /** The outermost description found while unwrapping. */
  description?: string;
  /** Metadata merged over all layers, outer layers winning. Keys used here: path (relative file path), examples. */
  meta: Record<string, unknown>;
}

export function unwrap(schema: z.ZodType): Field {
  const field: Field = { schema, optional: false, hasDefault: false, meta: {} };
  let s: z.ZodType = schema;
  const metas: Record<string, unknown>[] = [];
  for (;;) {
    const m = z.globalRegistry.get(s);
    if (m) metas.push(m as Record<string, unknown>);
    if (field.description === undefined && typeof m?.description === 'string') field.description = m.description;
    if (s instanceof z.ZodOptional || s instanceof z.ZodNullable) {
      if (s instanceof z.ZodOptional) field.optional = true;
      s = s.unwrap() as z.ZodType;
    } else if (s instanceof z.ZodDefault || s instanceof z.ZodPrefault) {
      field.optional = true;
      if (!field.hasDefault) {
        field.hasDefault = true;
        field.default = s.def.defaultValue;
      }
      s = s.def.innerType as z.ZodType;
    } else break;
  }
  for (const m of metas.reverse()) Object.assign(field.meta, m);
  field.schema = s;
  return field;
}

export function isObject(s: z.ZodType): s is z.ZodObject {
  return s instanceof z.ZodObject;
}

export function isArray(s: z.ZodType): s is z.ZodArray<z.ZodType> {
  return s instanceof z.ZodArray;
}

/** A discriminated union of objects (the source settings). */
export function isTaggedUnion(s: z.ZodType): s is z.ZodDiscriminatedUnion<z.ZodObject[]> {
  return s instanceof z.ZodDiscriminatedUnion;
}

export function shapeOf(s: z.ZodObject): Record<string, z.ZodType> {
  return s.shape as Record<string, z.ZodType>;
}

/** The options of a tagged union, each with its tag value. */
export function unionOptions(
  s: z.ZodDiscriminatedUnion<z.ZodObject[]>,
): { tag: string; key: string; schema: z.ZodObject }[] {
  const key = s.def.discriminator;
  return s.options.map((o) => {
    const lit = unwrap(shapeOf(o)[key]!).schema;
    const tag = lit instanceof z.ZodLiteral ? String([...lit.values][0]) : '?';
    return { tag, key, schema: o };
  });
}

/** Literal values of a literal or of a union of literals, else undefined. */
function literalValues(s: z.ZodType): unknown[] | undefined {
  if (s instanceof z.ZodLiteral) return [...s.values];
  if (s instanceof z.ZodUnion && !(s instanceof z.ZodDiscriminatedUnion)) {
    const out: unknown[] = [];
    for (const o of s.options as z.ZodType[]) {
      const v = literalValues(o);
      if (!v) return undefined;
      out.push(...v);
    }
    return out;
  }
  return undefined;
}

export type ScalarKind = 'string' | 'number' | 'integer' | 'boolean' | 'enum';

/** What kind of scalar a leaf is; undefined for objects, arrays and tagged unions. */
export function scalarKind(s: z.ZodType): ScalarKind | undefined {
  if (s instanceof z.ZodString) return 'string';
  if (s instanceof z.ZodNumber) return s.isInt ? 'integer' : 'number';
  if (s instanceof z.ZodBoolean) return 'boolean';
  if (s instanceof z.ZodEnum || literalValues(s)) return 'enum';
  return undefined;
}

/** Allowed values of an enum-like leaf. */
export function choices(s: z.ZodType): unknown[] | undefined {
  if (s instanceof z.ZodEnum) return s.options as unknown[];
  return literalValues(s);
}

function range(lo: number | null, hi: number | null): string {
  const ok = (n: number | null): n is number =>
    n !== null && Number.isFinite(n) && Math.abs(n) < Number.MAX_SAFE_INTEGER;
  if (ok(lo) && ok(hi)) return ` between ${lo} and ${hi}`;
  if (ok(lo)) return ` of at least ${lo}`;
  if (ok(hi)) return ` of at most ${hi}`;
  return '';
}

const quote = (v: unknown): string => (typeof v === 'string' ? `"${v}"` : String(v));

/** What a value must look like, in words: "an integer between 5 and 3600". */
export function expectation(s: z.ZodType): string {
  if (s instanceof z.ZodString) {
    if (s.format === 'url') return 'a URL such as http://camera.local/snapshot.jpg';
    return s.minLength === 1 && s.maxLength === null
      ? 'a non-empty string'
      : `a string${lengthText(s.minLength, s.maxLength)}`;
  }
  if (s instanceof z.ZodNumber) return `${s.isInt ? 'an integer' : 'a number'}${range(s.minValue, s.maxValue)}`;
  if (s instanceof z.ZodBoolean) return 'true or false';
  const c = choices(s);
  if (c) return c.length === 1 ? quote(c[0]) : `one of ${c.map(quote).join(', ')}`;
  if (isTaggedUnion(s))
    return `a mapping with ${s.def.discriminator}: ${unionOptions(s)
      .map((o) => o.tag)
      .join(' | ')}`;
  if (isObject(s)) return 'a mapping (key: value lines)';
  if (isArray(s)) return 'a list';
  return 'a valid value';
}

function lengthText(lo: number | null, hi: number | null): string {
  if (lo && hi !== null) return ` of ${lo} to ${hi} characters`;
  if (lo) return ` of at least ${lo} characters`;
  if (hi !== null) return ` of at most ${hi} characters`;
  return '';
}

/** Short type label for documentation: "integer 5–3600", "path", "one of: json, pretty". */
export function typeLabel(f: Field): string {
  const s = f.schema;
  if (f.meta.path === true) return 'path';
  if (s instanceof z.ZodString) return s.format === 'url' ? 'URL' : 'string';
  if (s instanceof z.ZodNumber) {
    const base = s.isInt ? 'integer' : 'number';
    const r = range(s.minValue, s.maxValue)
      .replace(' between ', ' ')
      .replace(' and ', '–')
      .replace(' of at least ', ' ≥ ')
      .replace(' of at most ', ' ≤ ');
    return base + r;
  }
  if (s instanceof z.ZodBoolean) return 'boolean';
  const c = choices(s);
  if (c) return c.length === 1 ? `"${String(c[0])}"` : `one of: ${c.join(', ')}`;
  if (isTaggedUnion(s)) return 'mapping';
  if (isObject(s)) return 'mapping';
  if (isArray(s)) return 'list';
  return 'value';
}

/** The schema node at a key path (numbers index arrays), following tagged unions by the data's tag. */
export function schemaAt(root: z.ZodType, path: readonly PropertyKey[], data: unknown): Field | undefined {
  let f = unwrap(root);
  let d: unknown = data;
  for (const seg of path) {
    let s = f.schema;
    if (isTaggedUnion(s)) {
      const tag = isRecord(d) ? d[s.def.discriminator] : undefined;
      const opt = unionOptions(s).find((o) => o.tag === tag);
      if (!opt) {
        // Unknown tag: only the tag itself can be described.
        if (seg !== s.def.discriminator) return undefined;
        return {
          schema: z.enum(unionOptions(s).map((o) => o.tag) as [string, ...string[]]),
          optional: false,
          hasDefault: false,
          meta: {},
        };
      }
      s = opt.schema;
    }
    if (isObject(s) && typeof seg === 'string' && seg in shapeOf(s)) {
      f = unwrap(shapeOf(s)[seg]!);
      d = isRecord(d) ? d[seg] : undefined;
    } else if (isArray(s) && typeof seg === 'number') {
      f = unwrap(s.element);
      d = Array.isArray(d) ? d[seg] : undefined;
    } else return undefined;
  }
  return f;
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** "cameras[0].source.type" */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += (out ? '.' : '') + String(seg);
  }
  return out;
}
