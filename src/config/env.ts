/**
 * Environment overrides, derived from the schema: every scalar leaf outside a list gets PERCH_<PATH>
 * (mqtt.tls.ca -> PERCH_MQTT_TLS_CA), and every string leaf also <NAME>_FILE, whose value is read from a
 * file (systemd credentials, docker secrets). Lists (cameras) cannot be set this way.
 */
import { readFileSync, statSync } from 'node:fs';
import type { z } from 'zod';
import { perchConfigSchema } from './schema.js';
import {
  choices,
  isArray,
  isObject,
  isRecord,
  isTaggedUnion,
  scalarKind,
  shapeOf,
  unionOptions,
  unwrap,
  type Field,
  type ScalarKind,
} from './introspect.js';

export const ENV_PREFIX = 'PERCH_';
/** Secrets are small; a bigger _FILE is a mistake (wrong path), not a password. */
const MAX_ENV_FILE_BYTES = 64 * 1024;

export interface EnvVariable {
  name: string;
  /** Variant read from a file, for string leaves. */
  fileName?: string;
  path: string[];
  kind: ScalarKind;
  field: Field;
}

export interface AppliedEnv {
  name: string;
  path: string[];
  /** Set when the value came from a <NAME>_FILE. */
  file?: string;
}

export interface EnvProblem {
  variable: string;
  message: string;
}

export function envName(path: readonly string[]): string {
  return ENV_PREFIX + path.join('_').toUpperCase();
}

/** Every environment variable the schema allows, in schema order. */
export function envVariables(root: z.ZodType = perchConfigSchema): EnvVariable[] {
  const out: EnvVariable[] = [];
  const seen = new Set<string>();
  const visit = (schema: z.ZodType, path: string[]): void => {
    const f = unwrap(schema);
    const s = f.schema;
    if (isArray(s)) return; // lists are not env-overridable
    const objects = isTaggedUnion(s) ? unionOptions(s).map((o) => o.schema) : isObject(s) ? [s] : [];
    if (objects.length) {
      // Tagged unions: the keys of all options, each once (same-named keys share a type in this schema).
      for (const o of objects) for (const [k, child] of Object.entries(shapeOf(o))) visit(child, [...path, k]);
      return;
    }
    const kind = scalarKind(s);
    if (!kind) return;
    const name = envName(path);
    if (seen.has(name)) return;
    seen.add(name);
    out.push({ name, path, kind, field: f, ...(kind === 'string' ? { fileName: `${name}_FILE` } : {}) });
  };
  visit(root, []);
  return out;
}

/** Turns an environment string into the leaf's type where it clearly is one; otherwise leaves it for validation to report. */
export function coerce(raw: string, kind: ScalarKind, field: Field): unknown {
  const t = raw.trim();
  switch (kind) {
    case 'boolean':
      if (/^(true|1|yes|on)$/i.test(t)) return true;
      if (/^(false|0|no|off)$/i.test(t)) return false;
      return raw;
    case 'integer':
    case 'number':
      return /^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i.test(t) ? Number(t) : raw;
    case 'enum': {
      // Numeric choices (e.g. 280) arrive as text.
      const numeric = (choices(field.schema) ?? []).some((c) => typeof c === 'number');
      return numeric && t !== '' && Number.isFinite(Number(t)) ? Number(t) : t;
    }
    default:
      return raw;
  }
}

function readSecretFile(variable: string, file: string): { value?: string; problem?: EnvProblem } {
  try {
    const st = statSync(file);
    if (!st.isFile()) return { problem: { variable, message: `${file} is not a regular file` } };
    if (st.size > MAX_ENV_FILE_BYTES)
      return {
        problem: { variable, message: `${file} is ${st.size} bytes, more than the ${MAX_ENV_FILE_BYTES} allowed` },
      };
    // One trailing newline is an artefact of `echo` and editors, never part of the value.
    return { value: readFileSync(file, 'utf8').replace(/\r?\n$/, '') };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'does not exist'
        : code === 'EACCES'
          ? 'is not readable (permission denied)'
          : (err as Error).message;
    return { problem: { variable, message: `cannot read ${file}: it ${why}` } };
  }
}

function setIn(data: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let cur = data;
  for (const seg of path.slice(0, -1)) {
    const next = cur[seg];
    if (!isRecord(next)) cur[seg] = {};
    cur = cur[seg] as Record<string, unknown>;
  }
  cur[path[path.length - 1]!] = value;
}

/**
 * Writes the environment's values into `data` (the parsed file, changed in place). An empty variable counts
 * as unset. Values that do not fit their type are left as text so that validation reports them.
 */
export function applyEnv(
  data: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  vars: EnvVariable[] = envVariables(),
): { applied: AppliedEnv[]; problems: EnvProblem[] } {
  const applied: AppliedEnv[] = [];
  const problems: EnvProblem[] = [];
  for (const v of vars) {
    const direct = env[v.name];
    const fromFile = v.fileName ? env[v.fileName] : undefined;
    const hasDirect = direct !== undefined && direct !== '';
    const hasFile = fromFile !== undefined && fromFile !== '';
    if (hasDirect && hasFile) {
      problems.push({ variable: v.name, message: `both ${v.name} and ${v.fileName} are set; set only one` });
      continue;
    }
    if (hasDirect) {
      setIn(data, v.path, coerce(direct, v.kind, v.field));
      applied.push({ name: v.name, path: v.path });
    } else if (hasFile) {
      const r = readSecretFile(v.fileName!, fromFile);
      if (r.problem) problems.push(r.problem);
      else {
        setIn(data, v.path, coerce(r.value!, v.kind, v.field));
        applied.push({ name: v.fileName!, path: v.path, file: fromFile });
      }
    }
  }
  return { applied, problems };
}

/** PERCH_* variables that set nothing (typos), each with the closest real name when there is one. */
export function unknownEnvVariables(
  env: NodeJS.ProcessEnv,
  vars: EnvVariable[] = envVariables(),
  ignore: readonly string[] = ['PERCH_CONFIG'],
): { name: string; suggestion?: string }[] {
  const known = new Set<string>(ignore);
  for (const v of vars) {
    known.add(v.name);
    if (v.fileName) known.add(v.fileName);
  }
  const names = [...known];
  return Object.keys(env)
    .filter((k) => k.startsWith(ENV_PREFIX) && !known.has(k))
    .sort()
    .map((name) => {
      const suggestion = closest(name, names);
      return suggestion ? { name, suggestion } : { name };
    });
}

/** Levenshtein distance, for "did you mean". */
export function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

/** The candidate nearest to `word` when it is near enough to be a likely typo. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  const limit = Math.max(1, Math.floor(word.length / 3));
  return bestD <= limit ? best : undefined;
}
