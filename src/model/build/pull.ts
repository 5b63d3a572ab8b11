/**
 * `perch model pull`: downloads an official checkpoint from Hugging Face (resuming with Range requests,
 * checking each LFS file's sha256 against the Hub's listing), then converts it. Plain on purpose: it cannot be
 * exercised offline; without network it fails with a message saying so.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { convertCheckpoint } from './convert.js';
import type { BuildProgress } from './build.js';
import type { Manifest, Profile } from '../package/manifest.js';
import { hashFile } from '../package/verify.js';

export const DEFAULT_REPO = 'google/gemma-4-E2B-it';
const HUB = 'https://huggingface.co';
const REQUIRED = ['config.json', 'tokenizer.json'];
const MAX_LISTING_BYTES = 16 * 1024 * 1024;
/** Files the listing gives no size for (it should for all) are capped at this. */
const MAX_UNSIZED_BYTES = 64 * 1024 * 1024;
const OPTIONAL = [
  'tokenizer_config.json',
  'chat_template.jinja',
  'model.safetensors.index.json',
  'model.safetensors',
  'generation_config.json',
];

export interface PullOptions {
  repo?: string;
  revision?: string;
  cacheDir: string;
  outDir: string;
  profile?: Profile;
  /** Hub base URL (default https://huggingface.co; tests point it at a local server). */
  hubUrl?: string;
  /** Hugging Face token for gated repositories (default: HF_TOKEN environment variable). */
  token?: string;
  onDownload?: (file: string, done: number, total: number) => void;
  onProgress?: (p: BuildProgress) => void;
}

interface HubFile {
  rfilename: string;
  size?: number;
  lfs?: { sha256: string; size: number };
}

export async function pullModel(opts: PullOptions): Promise<Manifest> {
  const repo = opts.repo ?? DEFAULT_REPO;
  const revision = opts.revision ?? 'main';
  if (!/^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/.test(repo) || repo.includes('..'))
    throw new Error(`invalid repository name ${JSON.stringify(repo)}`);
  if (!/^[\w./-]{1,128}$/.test(revision) || revision.split('/').includes('..'))
    throw new Error(`invalid revision ${JSON.stringify(revision)}`);
  const token = opts.token ?? process.env.HF_TOKEN;
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};

  const hub = opts.hubUrl ?? HUB;
  const listing = await hubJson<{ sha?: string; siblings?: HubFile[] }>(
    hub,
    `${hub}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`,
    headers,
  );
  const files = new Map((listing.siblings ?? []).map((f) => [f.rfilename, f]));
  for (const f of REQUIRED) if (!files.has(f)) throw new Error(`${repo}@${revision} has no ${f}`);
  await mkdir(opts.cacheDir, { recursive: true });
  // Download every file from the one commit the listing describes, so a push mid-download cannot mix versions.
  const pinned = typeof listing.sha === 'string' && /^[0-9a-f]{40}$/.test(listing.sha) ? listing.sha : revision;
  const get = async (name: string): Promise<void> => {
    const info = files.get(name);
    if (!info) throw new Error(`${repo}@${revision} has no ${name}`);
    await download(`${hub}/${repo}/resolve/${pinned}/${name}`, join(opts.cacheDir, name), info, headers, (d, t) =>
      opts.onDownload?.(name, d, t),
    );
  };
  for (const name of [...REQUIRED, ...OPTIONAL.filter((f) => files.has(f))]) await get(name);
  if (files.has('model.safetensors.index.json')) {
    // The shards are the files the index names (each checked: a plain file name, listed by the Hub).
    const index = JSON.parse(await readFile(join(opts.cacheDir, 'model.safetensors.index.json'), 'utf8')) as {
      weight_map?: Record<string, string>;
    };
    const shards = new Set(Object.values(index.weight_map ?? {}));
    for (const shard of shards) {
      if (!/^[\w.-]+\.safetensors$/.test(shard))
        throw new Error(`model.safetensors.index.json names an invalid shard ${JSON.stringify(shard)}`);
      await get(shard);
    }
  }
  return convertCheckpoint({
    from: opts.cacheDir,
    outDir: opts.outDir,
    profile: opts.profile,
    model: repo,
    revision: pinned,
    sourceKind: 'pull',
    onProgress: opts.onProgress,
  });
}

async function hubJson<T>(hub: string, url: string, headers: Record<string, string>): Promise<T> {
  let res: Response;
  try {
    res = await fetch(url, { headers });
  } catch (e) {
    throw new Error(
      `cannot reach ${hub} (${(e as Error).message}); pull needs network access. Download the checkpoint elsewhere and use "perch model convert --from DIR"`,
    );
  }
  if (res.status === 401 || res.status === 403)
    throw new Error(
      `${url}: HTTP ${res.status}; the model is gated: accept its licence on huggingface.co and set HF_TOKEN`,
    );
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return JSON.parse(await readCapped(res, MAX_LISTING_BYTES, url)) as T;
}

/** The body as text, refusing more than `cap` bytes (a listing is kilobytes; never buffer a runaway reply). */
async function readCapped(res: Response, cap: number, url: string): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of Readable.fromWeb(res.body as WebReadableStream<Uint8Array>)) {
    size += (chunk as Uint8Array).byteLength;
    if (size > cap) throw new Error(`${url}: reply larger than ${cap} bytes`);
    chunks.push(chunk as Uint8Array);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Downloads to NAME.incomplete (resuming from its size), checks size and sha256, then renames. */
async function download(
  url: string,
  dest: string,
  info: HubFile,
  headers: Record<string, string>,
  progress: (done: number, total: number) => void,
): Promise<void> {
  const expectedSize = info.lfs?.size ?? info.size;
  const expectedSha = info.lfs?.sha256;
  const done = await stat(dest).catch(() => null);
  if (done && (expectedSize === undefined || done.size === expectedSize)) {
    if (!expectedSha || (await hashFile(dest)).sha256 === expectedSha) return;
  }
  const partial = `${dest}.incomplete`;
  const have = (await stat(partial).catch(() => null))?.size ?? 0;
  // Interrupted after the last byte but before the rename: nothing left to fetch (a Range would get 416).
  if (expectedSize !== undefined && have === expectedSize) return finishDownload(partial, dest, expectedSha);
  const res = await fetch(url, { headers: { ...headers, ...(have > 0 ? { range: `bytes=${have}-` } : {}) } }).catch(
    (e: Error) => {
      throw new Error(`cannot download ${url} (${e.message})`);
    },
  );
  if (!res.ok || !res.body) throw new Error(`${url}: HTTP ${res.status}`);
  // 206: the server honoured the range, append; 200: it sent everything, start over.
  const resumed = res.status === 206;
  let written = resumed ? have : 0;
  const total = expectedSize ?? written + Number(res.headers.get('content-length') ?? 0);
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      written += chunk.length;
      if (written > (expectedSize ?? MAX_UNSIZED_BYTES))
        return cb(new Error(`${url}: more than the expected ${expectedSize ?? MAX_UNSIZED_BYTES} bytes`));
      progress(written, total);
      cb(null, chunk);
    },
  });
  await pipeline(
    Readable.fromWeb(res.body as WebReadableStream<Uint8Array>),
    count,
    createWriteStream(partial, { flags: resumed ? 'a' : 'w' }),
  );
  if (expectedSize !== undefined && written !== expectedSize)
    throw new Error(`${dest}: got ${written} bytes, expected ${expectedSize} (run pull again to resume)`);
  await finishDownload(partial, dest, expectedSha);
}

async function finishDownload(partial: string, dest: string, expectedSha: string | undefined): Promise<void> {
  if (expectedSha) {
    const h = await hashFile(partial);
    if (h.sha256 !== expectedSha)
      throw new Error(
        `${dest}: checksum mismatch (sha256 ${h.sha256}, the Hub says ${expectedSha}); delete ${partial} and pull again`,
      );
  }
  await rename(partial, dest);
}
