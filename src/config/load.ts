/**
 * Loading the config: one YAML file, then environment overrides, then validation against the schema.
 * Every problem is collected and reported at once, each naming its key path (or environment variable),
 * the value found (secrets hidden) and what was expected, so one edit fixes them all.
 */
import { readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { perchConfigSchema, type PerchConfig } from './schema.js';
import { applyEnv, closest, envVariables, unknownEnvVariables, type AppliedEnv } from './env.js';
import {
  expectation,
  formatPath,
  isArray,
  isObject,
  isRecord,
  isTaggedUnion,
  schemaAt,
  shapeOf,
  unionOptions,
  unwrap,
} from './introspect.js';

export const DEFAULT_CONFIG_PATH = '/etc/perch/config.yaml';
/** A config file is a few KiB; anything this big is the wrong file. */
const MAX_CONFIG_BYTES = 1024 * 1024;
export const MASK = '********';

export interface ConfigProblem {
  /** Key path such as mqtt.keepalive_s or cameras[0].source.type; empty for file-level problems. */
  path: string;
  /** The environment variable that supplied the value, when one did. */
  variable?: string;
  /** 1-based line in the YAML file, when known. */
  line?: number;
  column?: number;
  message: string;
}

export function formatProblem(p: ConfigProblem): string {
  const at = p.line !== undefined && !p.variable && p.path ? ` (line ${p.line})` : '';
  if (p.variable) return `${p.variable} (sets ${p.path || 'the config'}): ${p.message}`;
  // File-level problems (missing file, YAML syntax) carry their location in the message.
  return p.path ? `${p.path}: ${p.message}${at}` : p.message;
}

export class ConfigError extends Error {
  /** Every problem, one line each. */
  readonly problems: string[];
  constructor(
    readonly file: string,
    readonly details: ConfigProblem[],
  ) {
    const problems = details.map(formatProblem);
    super(
      `${file}: ${problems.length === 1 ? 'invalid configuration' : `${problems.length} configuration problems`}:\n  ${problems.join('\n  ')}`,
    );
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export interface LoadedConfig {
  config: PerchConfig;
  /** Absolute path of the file read. */
  path: string;
  /** Environment variables that changed a setting. */
  applied: AppliedEnv[];
  /** Not errors, but worth a log line: unknown PERCH_* variables. */
  warnings: string[];
}

const NOT_FOUND_HINT = {
  named: '',
  PERCH_CONFIG: ' (the path in PERCH_CONFIG)',
  default: ' (the default path: name a file, or set PERCH_CONFIG)',
} as const;

/** --config, else PERCH_CONFIG, else /etc/perch/config.yaml; made absolute. */
export function resolveConfigPath(arg: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return resolve(arg || env.PERCH_CONFIG || DEFAULT_CONFIG_PATH);
}

export function loadConfig(path?: string, env: NodeJS.ProcessEnv = process.env): PerchConfig {
  return loadConfigDetailed(path, env).config;
}

export function loadConfigDetailed(path?: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const file = resolveConfigPath(path, env);
  // How the path was chosen decides the hint: a file the user named needs none; the default path tells how to name one.
  const chosenBy = path ? 'named' : env.PERCH_CONFIG ? 'PERCH_CONFIG' : 'default';
  return parseConfig(readConfigFile(file, chosenBy), { file, env });
}

function readConfigFile(file: string, chosenBy: 'named' | 'PERCH_CONFIG' | 'default'): string {
  const fail = (message: string) => new ConfigError(file, [{ path: '', message }]);
  try {
    const st = statSync(file);
    if (!st.isFile()) throw fail(`${file} is not a regular file`);
    if (st.size > MAX_CONFIG_BYTES)
      throw fail(`${file} is ${st.size} bytes; a config file may be at most ${MAX_CONFIG_BYTES}`);
    return readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw fail(`config file ${file} not found${NOT_FOUND_HINT[chosenBy]}`);
    if (code === 'EACCES') throw fail(`config file ${file} is not readable (permission denied)`);
    throw fail(`cannot read config file ${file}: ${(err as Error).message}`);
  }
}

export interface ParseOptions {
  /** Where the text came from: names it in messages and anchors relative paths (its directory). */
  file: string;
  env?: NodeJS.ProcessEnv;
  /** Directory for relative paths set by environment variables; default the working directory. */
  cwd?: string;
}

/** Parses, overrides and validates config text. Throws ConfigError listing every problem. */
export function parseConfig(text: string, opts: ParseOptions): LoadedConfig {
  const env = opts.env ?? process.env;
  const file = resolve(opts.file);
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    throw new ConfigError(
      file,
      doc.errors.map((e) => ({
        path: '',
        line: e.linePos?.[0].line,
        column: e.linePos?.[0].col,
        message: `YAML syntax error at line ${e.linePos?.[0].line ?? '?'}, column ${e.linePos?.[0].col ?? '?'}: ${e.message.split(' at line ')[0]}`,
      })),
    );
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError(file, [{ path: '', message: `YAML could not be read: ${(err as Error).message}` }]);
  }
  if (data === null || data === undefined) data = {};
  if (!isRecord(data))
    throw new ConfigError(file, [
      { path: '', message: `got ${render(data, false)} — expected a mapping of sections (device:, mqtt:, …)` },
    ]);

  const root = perchConfigSchema as z.ZodType;
  const problems: ConfigProblem[] = [];
  const lineOf = (path: readonly PropertyKey[]): number | undefined => lineAt(doc, lines, path);
  checkKeys(root, data, [], problems, lineOf);

  const vars = envVariables(root);
  const { applied, problems: envProblems } = applyEnv(data, env, vars);
  for (const p of envProblems)
    problems.push({
      path: formatPath(vars.find((v) => v.name === p.variable || v.fileName === p.variable)?.path ?? []),
      variable: p.variable,
      message: p.message,
    });
  const origin = new Map(applied.map((a) => [formatPath(a.path), a.name]));

  const result = perchConfigSchema.safeParse(data);
  if (!result.success) {
    for (const issue of result.error.issues) {
      if (issue.code === 'unrecognized_keys') continue; // checkKeys reported these, at every level, with suggestions
      const key = formatPath(issue.path);
      const variable = origin.get(key);
      problems.push({
        path: key,
        ...(variable ? { variable } : { line: lineOf(issue.path) }),
        message: describeIssue(root, issue, data),
      });
    }
  }
  if (problems.length) throw new ConfigError(file, order(dedupe(problems)));

  const config = result.data!;
  const envPaths = new Set(applied.map((a) => formatPath(a.path)));
  resolvePaths(root, config, [], dirname(file), opts.cwd ?? process.cwd(), envPaths);
  const warnings = unknownEnvVariables(env, vars).map(
    (u) => `${u.name} is not a Perch setting and is ignored${u.suggestion ? ` — did you mean ${u.suggestion}?` : ''}`,
  );
  return { config, path: file, applied, warnings };
}

/** File problems in line order, then those from the environment. */
function order(problems: ConfigProblem[]): ConfigProblem[] {
  const rank = (p: ConfigProblem) => (p.variable ? Number.MAX_SAFE_INTEGER : (p.line ?? Number.MAX_SAFE_INTEGER - 1));
  return [...problems].sort((a, b) => rank(a) - rank(b));
}

function dedupe(problems: ConfigProblem[]): ConfigProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const k = formatProblem(p);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** The line of the deepest key (or list item) of `path` present in the document. */
function lineAt(doc: Document, lines: LineCounter, path: readonly PropertyKey[]): number | undefined {
  let node: unknown = doc.contents;
  let line = rangeLine(node, lines);
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => (isScalar(p.key) ? p.key.value : p.key) === seg);
      if (!pair) break;
      // The key's line: a nested mapping's value starts on the next line.
      line = rangeLine(pair.key, lines) ?? line;
      node = pair.value;
    } else if (isSeq(node) && typeof seg === 'number' && node.items[seg]) {
      node = node.items[seg];
      line = rangeLine(node, lines) ?? line;
    } else break;
  }
  return line;
}

function rangeLine(node: unknown, lines: LineCounter): number | undefined {
  const range = (node as { range?: [number, number, number] } | null | undefined)?.range;
  return range ? lines.linePos(range[0]).line : undefined;
}

/**
 * Walks the data along the schema: reports keys the schema does not know (zod would drop them silently
 * below the top level) and turns empty values of optional keys into "not set", so `password:` with nothing
 * after it means no password rather than an error.
 */
function checkKeys(
  schema: z.ZodType,
  data: unknown,
  path: PropertyKey[],
  problems: ConfigProblem[],
  lineOf: (p: readonly PropertyKey[]) => number | undefined,
): void {
  let s = unwrap(schema).schema;
  let otherOptions: { tag: string; keys: string[] }[] = [];
  if (isTaggedUnion(s)) {
    if (!isRecord(data)) return;
    const options = unionOptions(s);
    const opt = options.find((o) => o.tag === data[o.key]);
    if (!opt) return; // the bad or missing tag is reported by validation
    otherOptions = options.filter((o) => o !== opt).map((o) => ({ tag: o.tag, keys: Object.keys(shapeOf(o.schema)) }));
    s = opt.schema;
  }
  if (isArray(s) && Array.isArray(data)) {
    data.forEach((item, i) => checkKeys(s.element, item, [...path, i], problems, lineOf));
    return;
  }
  if (!isObject(s) || !isRecord(data)) return;
  const shape = shapeOf(s);
  const known = Object.keys(shape);
  for (const key of Object.keys(data)) {
    const here = [...path, key];
    const child = shape[key];
    if (!child) {
      const elsewhere = otherOptions.find((o) => o.keys.includes(key));
      const hint = elsewhere ? ` (it belongs to type ${elsewhere.tag})` : suggest(key, known);
      problems.push({ path: formatPath(here), line: lineOf(here), message: `unknown key${hint}` });
      continue;
    }
    if (data[key] === null && unwrap(child).optional) {
      delete data[key];
      continue;
    }
    checkKeys(child, data[key], here, problems, lineOf);
  }
}

function suggest(key: string, known: string[]): string {
  const c = closest(key, known);
  return c ? ` — did you mean "${c}"?` : ` — known keys here: ${known.join(', ')}`;
}

type Issue = z.core.$ZodIssue;

function describeIssue(root: z.ZodType, issue: Issue, data: unknown): string {
  const field = schemaAt(root, issue.path, data);
  const value = valueAt(data, issue.path);
  // A rule across keys (custom) can trip on a key left at its default: say so rather than "missing".
  const atDefault = value === undefined && issue.code === 'custom' && field?.hasDefault;
  const got = atDefault
    ? `the default ${render(field.default, false)}`
    : value === undefined
      ? 'missing'
      : `got ${render(value, isSecretPath(issue.path))}`;
  let expected: string;
  if (issue.code === 'custom' || (issue.code === 'invalid_format' && issue.format === 'regex'))
    expected = issue.message;
  else if (field) expected = expectation(field.schema);
  else expected = issue.message;
  const about =
    value === undefined && !atDefault && field?.description ? ` (${field.description.replace(/\.$/, '')})` : '';
  return `${got} — expected ${expected}${about}`;
}

function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let d = data;
  for (const seg of path) {
    if (Array.isArray(d) && typeof seg === 'number') d = d[seg];
    else if (isRecord(d) && typeof seg === 'string') d = d[seg];
    else return undefined;
  }
  return d;
}

/** Keys whose values never appear in messages or summaries. */
export function isSecretPath(path: readonly PropertyKey[]): boolean {
  const last = [...path].reverse().find((s): s is string => typeof s === 'string');
  return last !== undefined && /(^|_)(password|passphrase|secret|token|credentials?)$/i.test(last);
}

/** user:password@ inside URLs. */
function maskUrl(s: string): string {
  return s.replace(/([a-z][a-z0-9+.-]*:\/\/[^:/@\s]*:)[^@\s]*@/gi, `$1${MASK}@`);
}

/** A value as shown in a message: quoted, shortened, secrets hidden. */
export function render(value: unknown, secret: boolean): string {
  if (secret) return `${MASK} (hidden)`;
  if (value === null) return 'an empty value';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') {
    const s = maskUrl(value);
    return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
  }
  return String(value);
}

/** A copy of the config safe to print or publish: secrets replaced, URL passwords hidden. */
export function maskSecrets<T>(value: T, path: PropertyKey[] = []): T {
  if (Array.isArray(value)) return value.map((v, i) => maskSecrets(v, [...path, i])) as T;
  if (isRecord(value)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value))
      out[k] = v !== undefined && isSecretPath([...path, k]) ? MASK : maskSecrets(v, [...path, k]);
    return out as T;
  }
  return (typeof value === 'string' ? maskUrl(value) : value) as T;
}

/** Makes relative file paths absolute: against the config file's directory, or the working directory for values from the environment. */
function resolvePaths(
  schema: z.ZodType,
  data: unknown,
  path: PropertyKey[],
  baseDir: string,
  cwd: string,
  fromEnv: Set<string>,
): void {
  if (!isRecord(data) && !Array.isArray(data)) return;
  let s = unwrap(schema).schema;
  if (isTaggedUnion(s)) {
    const opt = isRecord(data) ? unionOptions(s).find((o) => o.tag === data[o.key]) : undefined;
    if (!opt) return;
    s = opt.schema;
  }
  if (isArray(s) && Array.isArray(data)) {
    data.forEach((item, i) => resolvePaths(s.element, item, [...path, i], baseDir, cwd, fromEnv));
    return;
  }
  if (!isObject(s) || !isRecord(data)) return;
  for (const [key, child] of Object.entries(shapeOf(s))) {
    const v = data[key];
    const here = [...path, key];
    if (typeof v === 'string' && unwrap(child).meta.path === true) {
      if (!isAbsolute(v)) data[key] = resolve(fromEnv.has(formatPath(here)) ? cwd : baseDir, v);
    } else resolvePaths(child, v, here, baseDir, cwd, fromEnv);
  }
}
