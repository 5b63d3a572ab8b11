/**
 * Documentation generated from the schema: config/perch.example.yaml (every key, commented) and
 * docs/config.md (a table per section). A test compares the committed files with this output, so the
 * documentation cannot drift from the schema. `perch config docs --write` regenerates both.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { z } from 'zod';
import { perchConfigSchema } from './schema.js';
import { envName, envVariables } from './env.js';
import {
  choices,
  isArray,
  isObject,
  isTaggedUnion,
  shapeOf,
  typeLabel,
  unionOptions,
  unwrap,
  type Field,
} from './introspect.js';
import { DEFAULT_CONFIG_PATH } from './load.js';

/** Repository root, from src/config or dist/config alike. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const EXAMPLE_FILE = `${ROOT}config/perch.example.yaml`;
export const DOCS_FILE = `${ROOT}docs/config.md`;
const WIDTH = 100;
const HEADER = 'Generated from src/config/schema.ts by `perch config docs --write`; do not edit by hand.';

type Shape = Record<string, z.ZodType>;

function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      out.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) out.push(line);
  return out;
}

/** A scalar as it appears after `key: ` in YAML. */
function yamlScalar(v: unknown): string {
  // Arrays and objects in flow style (JSON is valid YAML) so that a value always fits on its key's line.
  return typeof v === 'object' && v !== null ? JSON.stringify(v) : stringify(v, { lineWidth: 0 }).trimEnd();
}

function described(key: string, f: Field): string {
  if (f.description === undefined)
    throw new Error(`schema key ${key} has no description; every key needs one (.describe(...))`);
  return f.description;
}

/** The env variable(s) of a leaf, as one phrase; undefined inside lists. */
function envPhrase(path: string[] | undefined, f: Field): string | undefined {
  if (!path) return undefined;
  const name = envName(path);
  return f.schema.def.type === 'string' ? `${name} (or ${name}_FILE)` : name;
}

/** An example value for a leaf with no default. */
function exampleOf(f: Field, index = 0): unknown {
  const ex = f.meta.examples;
  if (Array.isArray(ex) && ex.length) return ex[index % ex.length];
  const c = choices(f.schema);
  return c?.length === 1 ? c[0] : undefined;
}

/**
 * Emits YAML lines with comments. `hash` is the column of the "#" that comments a line out (undefined: a
 * live line); `envPath` is undefined inside lists, which the environment cannot set.
 */
type Hash = number | undefined;

class YamlWriter {
  readonly lines: string[] = [];
  private seen = new Set<string>();

  private prefix(indent: number, hash: Hash): string {
    return hash === undefined ? ' '.repeat(indent) : `${' '.repeat(hash)}# ${' '.repeat(indent - hash)}`;
  }

  comment(indent: number, hash: Hash, text: string): void {
    const pre = this.prefix(indent, hash) + '# ';
    for (const l of wrap(text, WIDTH - pre.length)) this.lines.push(pre + l);
  }

  line(indent: number, hash: Hash, text: string): void {
    this.lines.push(this.prefix(indent, hash) + text);
  }

  /** Description and type/env line; inside repeated examples only the first occurrence of a key is described. */
  describe(indent: number, hash: Hash, key: string, f: Field, envPath: string[] | undefined, dedupe: boolean): void {
    const desc = described(key, f);
    if (dedupe) {
      const id = `${key}\0${desc}`;
      if (this.seen.has(id)) return;
      this.seen.add(id);
    }
    this.comment(indent, hash, desc);
    const env = envPhrase(envPath, f);
    const scalar = !isObject(f.schema) && !isArray(f.schema) && !isTaggedUnion(f.schema);
    const constant = choices(f.schema)?.length === 1;
    const type = constant ? 'selects this type' : `${typeLabel(f)}${f.optional ? '' : ', required'}`;
    if (scalar) this.comment(indent, hash, `${type}${env ? ` · env ${env}` : ''}`);
  }

  fields(
    shape: Shape,
    indent: number,
    hash: Hash,
    envPath: string[] | undefined,
    dedupe: boolean,
    exampleIndex = 0,
  ): void {
    for (const [key, child] of Object.entries(shape)) {
      const f = unwrap(child);
      const childEnv = envPath && [...envPath, key];
      const s = f.schema;
      if (isTaggedUnion(s)) {
        this.describe(indent, hash, key, f, undefined, dedupe);
        if (childEnv)
          this.comment(
            indent,
            hash,
            `One of the types below${f.optional ? ' (optional; uncomment one)' : ''}. Env: ${envName(childEnv)}_<KEY>.`,
          );
        const h = hash ?? (f.optional ? indent : undefined);
        this.seen.clear();
        for (const opt of unionOptions(s)) {
          this.line(indent, h, `${key}:`);
          this.fields(shapeOf(opt.schema), indent + 2, h, childEnv, true, exampleIndex);
        }
      } else if (isObject(s)) {
        this.describe(indent, hash, key, f, childEnv, dedupe);
        this.line(indent, hash, `${key}:`);
        this.fields(shapeOf(s), indent + 2, hash, childEnv, dedupe, exampleIndex);
      } else if (isArray(s)) {
        this.describe(indent, hash, key, f, undefined, dedupe);
        this.list(key, f, indent, hash);
      } else {
        this.describe(indent, hash, key, f, childEnv, dedupe);
        const value = f.hasDefault ? f.default : exampleOf(f, exampleIndex);
        // Keys without a default are shown commented out: uncommenting sets them.
        const h = hash ?? (f.hasDefault ? undefined : indent);
        this.line(indent, h, value === undefined ? `${key}:` : `${key}: ${yamlScalar(value)}`);
      }
    }
  }

  /** A list of mappings: empty by default, followed by one commented example per source type. */
  private list(key: string, f: Field, indent: number, hash: Hash): void {
    const el = unwrap((f.schema as z.ZodArray<z.ZodType>).element).schema;
    this.comment(indent, hash, 'A list: not settable from the environment.');
    // Inside a commented example (a camera's motion zones) only the example is shown: a default line
    // beside it would repeat the key once the block is uncommented.
    const nestedExample = hash !== undefined && isObject(el);
    if (!nestedExample) this.line(indent, hash, `${key}: ${yamlScalar(f.default ?? exampleOf(f) ?? [])}`);
    if (!isObject(el)) return;
    const shape = shapeOf(el);
    const union = Object.values(shape)
      .map((c) => unwrap(c).schema)
      .find(isTaggedUnion);
    const variants = union ? unionOptions(union).length : 1;
    if (!nestedExample)
      this.comment(
        indent,
        hash,
        `Example${variants > 1 ? 's, one per source type' : ''} (replace the line above with it):`,
      );
    const h = hash ?? indent;
    this.line(indent, h, `${key}:`);
    if (!nestedExample) this.seen.clear();
    const itemIndent = indent + 4;
    const itemPrefix = this.prefix(itemIndent, h);
    for (let i = 0; i < variants; i++) {
      const start = this.lines.length;
      this.fields(this.variant(shape, i), itemIndent, h, undefined, true, i);
      // The element's first key line becomes the "- " list item.
      const first = this.lines.findIndex(
        (l, n) => n >= start && l.startsWith(itemPrefix) && /^[a-z_]+:/.test(l.slice(itemPrefix.length)),
      );
      if (first >= 0)
        this.lines[first] = `${this.prefix(itemIndent - 2, h)}- ${this.lines[first]!.slice(itemPrefix.length)}`;
    }
  }

  /** A list element's shape with each tagged-union field narrowed to its option `index`. */
  private variant(shape: Shape, index: number): Shape {
    const picked: Shape = {};
    for (const [k, c] of Object.entries(shape)) {
      const f = unwrap(c);
      picked[k] = isTaggedUnion(f.schema) ? unionOptions(f.schema)[index]!.schema.describe(f.description ?? '') : c;
    }
    return picked;
  }
}

export function generateExampleYaml(root: z.ZodObject = perchConfigSchema): string {
  const w = new YamlWriter();
  w.lines.push(
    '# Perch configuration: every setting with its default.',
    `# ${HEADER}`,
    `# Perch reads --config FILE, else $PERCH_CONFIG, else ${DEFAULT_CONFIG_PATH}. Relative paths are relative to`,
    '# the directory of this file. Environment variables override the file (see docs/config.md).',
    '# Keys that are commented out have no default; uncomment them to set them.',
  );
  for (const [key, child] of Object.entries(shapeOf(root))) {
    w.lines.push('');
    w.fields({ [key]: child }, 0, undefined, [], false);
  }
  return w.lines.join('\n') + '\n';
}

// Escaped so that <id> in a description is not taken for an HTML tag.
const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/\n/g, ' ');
const code = (s: string) => '`' + s + '`';

interface Row {
  key: string;
  f: Field;
  env?: string;
}

function rows(
  shape: Shape,
  prefix: string,
  envPath: string[] | undefined,
  out: Row[],
  subsections: { title: string; intro: string; shape: Shape; prefix: string; envPath?: string[] }[],
): void {
  for (const [k, c] of Object.entries(shape)) {
    const f = unwrap(c);
    const key = prefix + k;
    const childEnv = envPath && [...envPath, k];
    const s = f.schema;
    if (isTaggedUnion(s)) {
      out.push({ key, f });
      for (const o of unionOptions(s)) {
        subsections.push({
          title: `${key} — type: ${o.tag}`,
          intro: described(key, f),
          shape: shapeOf(o.schema),
          prefix: `${key}.`,
          envPath: childEnv,
        });
      }
    } else if (isObject(s)) rows(shapeOf(s), `${key}.`, childEnv, out, subsections);
    else if (isArray(s)) {
      out.push({ key, f });
      const el = unwrap(s.element).schema;
      if (isObject(el))
        subsections.push({
          title: `${key}[]`,
          intro: `Each entry of ${key}. Lists cannot be set from the environment.`,
          shape: shapeOf(el),
          prefix: `${key}[].`,
        });
    } else out.push({ key, f, env: childEnv && envPhrase(childEnv, f)?.replace(' (or ', ', ').replace(')', '') });
  }
}

function table(rowsIn: Row[]): string[] {
  const lines = ['| Key | Type | Default | Environment variable | Description |', '|---|---|---|---|---|'];
  for (const r of rowsIn) {
    const def = r.f.hasDefault ? code(JSON.stringify(r.f.default)) : r.f.optional ? '—' : '**required**';
    const env = r.env ? r.env.split(', ').map(code).join(', ') : '—';
    lines.push(`| ${code(r.key)} | ${cell(typeLabel(r.f))} | ${cell(def)} | ${env} | ${cell(described(r.key, r.f))} |`);
  }
  return lines;
}

export function generateMarkdown(root: z.ZodObject = perchConfigSchema): string {
  const out: string[] = [
    '# Perch configuration reference',
    '',
    `<!-- ${HEADER} -->`,
    '',
    `Perch reads one YAML file: the one given with \`--config FILE\`, else \`$PERCH_CONFIG\`, else \`${DEFAULT_CONFIG_PATH}\`.`,
    'Check a file with `perch config check FILE`: it lists every problem at once (unknown keys included, with a',
    'suggestion when a key looks like a typo), or prints the effective settings. `config/perch.example.yaml` shows',
    'every key with its default.',
    '',
    'Relative paths in the file (state directory, model directory, WAV file, image directory, TLS files) are',
    'relative to the directory of the config file; relative paths given through environment variables are',
    'relative to the working directory. A key left empty (`password:`) counts as not set.',
    '',
    '## Environment variables',
    '',
    'Every setting outside a list can be overridden by an environment variable named `PERCH_` and its key path',
    'in capitals, joined with `_`: `mqtt.url` is `PERCH_MQTT_URL`, `mqtt.tls.ca` is `PERCH_MQTT_TLS_CA`.',
    "Environment variables win over the file. Values are converted to the key's type: booleans accept",
    '`true/false`, `1/0`, `yes/no`, `on/off`. An empty variable counts as unset.',
    '',
    'Every string setting also has a `_FILE` variant (`PERCH_MQTT_PASSWORD_FILE=/run/credentials/perch/mqtt`):',
    'the value is read from that file, without its trailing newline, which suits systemd credentials and',
    'docker secrets. Setting both a variable and its `_FILE` variant is an error.',
    '',
    'Lists (`cameras`) cannot be set from the environment; write them in the file. Invalid values from the',
    'environment are reported like file errors, naming the variable. `PERCH_*` variables that match no',
    'setting are reported as warnings.',
  ];
  const names = envVariables(root).length;
  out.push('', `There are ${names} such variables; the tables below name each.`);
  for (const [key, child] of Object.entries(shapeOf(root))) {
    const f = unwrap(child);
    const main: Row[] = [];
    const subs: { title: string; intro: string; shape: Shape; prefix: string; envPath?: string[] }[] = [];
    rows({ [key]: child }, '', [], main, subs);
    out.push('', `## ${key}`, '', described(key, f), '', ...table(main));
    for (let i = 0; i < subs.length; i++) {
      const sub = subs[i]!;
      const r: Row[] = [];
      rows(sub.shape, sub.prefix, sub.envPath, r, subs);
      out.push('', `### ${sub.title}`, '', sub.intro, '', ...table(r));
    }
  }
  return out.join('\n') + '\n';
}

/** Writes both generated files; returns their paths. */
export function writeDocs(): string[] {
  const files: [string, string][] = [
    [EXAMPLE_FILE, generateExampleYaml()],
    [DOCS_FILE, generateMarkdown()],
  ];
  for (const [file, text] of files) {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, text);
  }
  return files.map(([f]) => f);
}
