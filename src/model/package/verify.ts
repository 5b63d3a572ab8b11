/**
 * Package verification. Quick (at every load): manifest, presence and sizes, the PLE header, a minimal parse
 * of the ONNX graph and its external-data references, and that config.json, the manifest's config, the PLE
 * file and the graph agree. Full (`perch model verify`): the same plus sha256 of every file.
 * Every problem is collected (not just the first), each naming its file.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { isDeepStrictEqual } from 'node:util';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import { hasPle, parseGemma4TextConfig, type Gemma4TextConfig } from '../gemma4/config.js';
import { decodeHeader, PLE_DATA_OFFSET } from '../ple/format.js';
import { MANIFEST_FILE, REQUIRED_ROLES, parseManifest, type FileEntry, type Manifest } from './manifest.js';

const { onnx } = onnxProto;

export interface VerifyProblem {
  file: string;
  message: string;
}

export interface VerifyResult {
  ok: boolean;
  problems: VerifyProblem[];
  manifest: Manifest | null;
}

export interface VerifyOptions {
  /** sha256 of every file (slow: reads the whole package). */
  full: boolean;
  /** Called with bytes hashed so far, for a progress bar. */
  onHashBytes?: (n: number) => void;
}

/** Largest .onnx we parse in memory: weights live in the external-data file, so the graph itself is small. */
const MAX_GRAPH_BYTES = 256 * 1024 * 1024;

export async function verifyPackage(dir: string, opts: VerifyOptions): Promise<VerifyResult> {
  const problems: VerifyProblem[] = [];
  const fail = (file: string, message: string) => problems.push({ file, message });

  let text: string;
  try {
    text = await readFile(join(dir, MANIFEST_FILE), 'utf8');
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT';
    fail(MANIFEST_FILE, missing ? 'missing (not a model package, or an interrupted build)' : (e as Error).message);
    return { ok: false, problems, manifest: null };
  }
  const parsed = parseManifest(text);
  if ('error' in parsed) {
    fail(MANIFEST_FILE, parsed.error);
    return { ok: false, problems, manifest: null };
  }
  const m = parsed.manifest;

  for (const role of REQUIRED_ROLES) {
    if (!m.files.some((f) => f.role === role)) fail(MANIFEST_FILE, `no file with role ${role}`);
  }
  const present = new Set<string>();
  for (const f of m.files) {
    if (await checkFile(dir, f, opts, fail)) present.add(f.path);
  }

  let config: Gemma4TextConfig | null = null;
  try {
    config = parseGemma4TextConfig(m.config);
  } catch (e) {
    fail(MANIFEST_FILE, `config: ${(e as Error).message}`);
  }
  const byRole = (role: FileEntry['role']) => m.files.find((f) => f.role === role && present.has(f.path));
  const cfgFile = byRole('config');
  if (cfgFile) await checkConfigFile(dir, cfgFile.path, m.config, fail);
  const ple = byRole('ple');
  if (config && hasPle(config) && !m.files.some((f) => f.role === 'ple'))
    fail(MANIFEST_FILE, 'no file with role ple (the model has per-layer embeddings)');
  if (ple && config) await checkPle(dir, ple.path, config, fail);
  const graph = byRole('decoder-graph');
  const data = m.files.find((f) => f.role === 'decoder-weights');
  if (graph) await checkGraph(dir, graph.path, data ?? null, config, fail);
  const tok = byRole('tokenizer');
  if (tok) await checkJson(dir, tok.path, fail);
  const tokCfg = byRole('tokenizer-config');
  if (tokCfg) await checkJson(dir, tokCfg.path, fail);

  return { ok: problems.length === 0, problems, manifest: m };
}

/** Presence, size and (full) checksum. Returns true when the file is there with the right size. */
async function checkFile(
  dir: string,
  f: FileEntry,
  opts: VerifyOptions,
  fail: (file: string, msg: string) => void,
): Promise<boolean> {
  let size: number;
  try {
    const st = await stat(join(dir, f.path));
    if (!st.isFile()) {
      fail(f.path, 'not a regular file');
      return false;
    }
    size = st.size;
  } catch {
    fail(f.path, 'missing');
    return false;
  }
  if (size < f.bytes) {
    fail(f.path, `truncated: expected ${f.bytes} bytes, got ${size}`);
    return false;
  }
  if (size > f.bytes) {
    fail(f.path, `size mismatch: expected ${f.bytes} bytes, got ${size}`);
    return false;
  }
  if (opts.full) {
    const h = await hashFile(join(dir, f.path), opts.onHashBytes);
    if (h.sha256 !== f.sha256) {
      fail(f.path, `checksum mismatch: expected sha256 ${f.sha256}, got ${h.sha256}`);
      return false;
    }
  }
  return true;
}

async function checkConfigFile(
  dir: string,
  name: string,
  manifestConfig: Record<string, unknown>,
  fail: (file: string, msg: string) => void,
): Promise<void> {
  const json = await readJson(dir, name, fail);
  if (json !== undefined && !isDeepStrictEqual(json, manifestConfig))
    fail(name, `config mismatch: differs from the config in ${MANIFEST_FILE}`);
}

async function checkPle(
  dir: string,
  name: string,
  c: Gemma4TextConfig,
  fail: (file: string, msg: string) => void,
): Promise<void> {
  const fh = await open(join(dir, name), 'r');
  try {
    const head = Buffer.alloc(PLE_DATA_OFFSET);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const h = decodeHeader(head.subarray(0, bytesRead), name);
    const want = { rows: c.vocabSizePerLayerInput, numLayers: c.numHiddenLayers, layerDim: c.hiddenSizePerLayerInput };
    for (const [key, value] of Object.entries(want)) {
      const got = h[key as keyof typeof want];
      if (got !== value) fail(name, `config mismatch: PLE ${key} is ${got}, the config says ${value}`);
    }
    const size = (await fh.stat()).size;
    const expected = h.dataOffset + h.rows * h.rowStride;
    if (size !== expected)
      fail(
        name,
        `${size < expected ? 'truncated' : 'size mismatch'}: the PLE header needs ${expected} bytes, got ${size}`,
      );
  } catch (e) {
    // decodeHeader's errors already start with the file name; keep only the message.
    fail(name, (e as Error).message.replace(`${name}: `, ''));
  } finally {
    await fh.close();
  }
}

async function checkGraph(
  dir: string,
  name: string,
  data: FileEntry | null,
  c: Gemma4TextConfig | null,
  fail: (file: string, msg: string) => void,
): Promise<void> {
  const size = (await stat(join(dir, name))).size;
  if (size === 0 || size > MAX_GRAPH_BYTES) {
    fail(
      name,
      size === 0 ? 'empty ONNX file' : `ONNX file of ${size} bytes is too large (weights belong in external data)`,
    );
    return;
  }
  let model: onnxProto.onnx.ModelProto;
  try {
    model = onnx.ModelProto.decode(await readFile(join(dir, name)));
  } catch (e) {
    fail(name, `not a valid ONNX model (${(e as Error).message})`);
    return;
  }
  const g = model.graph;
  if (!g?.node || g.node.length === 0) {
    fail(name, 'ONNX model has no graph nodes');
    return;
  }
  const inputs = new Map((g.input ?? []).map((i) => [i.name, i]));
  const required = ['input_ids', ...(c && !hasPle(c) ? [] : ['per_layer_rows'])];
  for (const input of required) if (!inputs.has(input)) fail(name, `graph has no input ${input}`);
  const rowsDims = inputs.get('per_layer_rows')?.type?.tensorType?.shape?.dim;
  const last = rowsDims?.[rowsDims.length - 1]?.dimValue;
  if (
    c &&
    last !== undefined &&
    last !== null &&
    Number(last) !== 0 &&
    Number(last) !== c.numHiddenLayers * c.hiddenSizePerLayerInput
  ) {
    fail(
      name,
      `config mismatch: per_layer_rows width ${String(last)}, the config says ${c.numHiddenLayers * c.hiddenSizePerLayerInput}`,
    );
  }
  // Every external reference must point into the package's decoder-weights file, within its size.
  for (const t of g.initializer ?? []) {
    if (t.dataLocation !== onnx.TensorProto.DataLocation.EXTERNAL) continue;
    const kv = new Map((t.externalData ?? []).map((e) => [e.key, e.value]));
    const location = kv.get('location') ?? '';
    const end = Number(kv.get('offset') ?? 0) + Number(kv.get('length') ?? 0);
    if (!data || location !== data.path) {
      fail(
        name,
        `initializer ${t.name} refers to external data "${location}", which is not the package's decoder-weights file`,
      );
      return;
    }
    if (end > data.bytes) {
      fail(name, `initializer ${t.name} ends at byte ${end}, beyond ${data.path} (${data.bytes} bytes)`);
      return;
    }
  }
}

async function checkJson(dir: string, name: string, fail: (file: string, msg: string) => void): Promise<void> {
  await readJson(dir, name, fail);
}

async function readJson(dir: string, name: string, fail: (file: string, msg: string) => void): Promise<unknown> {
  try {
    return JSON.parse(await readFile(join(dir, name), 'utf8')) as unknown;
  } catch (e) {
    fail(name, `not valid JSON (${(e as Error).message})`);
    return undefined;
  }
}

/** One line per problem, for CLI output and load errors. */
export function formatProblems(dir: string, problems: readonly VerifyProblem[]): string {
  return problems.map((p) => `${join(dir, p.file)}: ${p.message}`).join('\n');
}

/** Quick check for the engine at load: throws one error listing every problem. */
export async function assertPackageLoadable(dir: string): Promise<Manifest> {
  const r = await verifyPackage(dir, { full: false });
  if (!r.ok || !r.manifest) throw new Error(`model package ${dir} is not usable:\n${formatProblems(dir, r.problems)}`);
  return r.manifest;
}

/** sha256 and size of a file, read in 1 MiB chunks (constant memory for multi-GB files). */
export async function hashFile(
  path: string,
  onBytes?: (n: number) => void,
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    const b = chunk as Buffer;
    hash.update(b);
    bytes += b.length;
    onBytes?.(b.length);
  }
  return { bytes, sha256: hash.digest('hex') };
}
