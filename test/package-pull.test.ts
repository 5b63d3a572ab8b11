/**
 * `pullModel` against a local HTTP server speaking the two Hub endpoints it uses (file listing with LFS
 * sha256, resolve with Range): resume of a partial download, checksum refusal, and the offline message.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { tinyConfig } from '../src/model/gemma4/config.js';
import { MULTIMODAL_TEXT_PREFIX, randomWeightSource, textTensorTable } from '../src/model/gemma4/weights.js';
import { verifyPackage } from '../src/model/package/verify.js';
import { synthTokenizerFiles } from '../src/model/build/synth-tokenizer.js';
import { pullModel } from '../src/model/build/pull.js';
import { writeShardedCheckpoint, type TensorToWrite } from '../src/model/safetensors.js';
import { synthConfigJson } from '../src/model/build/synth.js';

const SHA = 'ab'.repeat(20);
let root: string;
let served: string;
let server: Server;
let hub: string;
const requests: Array<{ path: string; range: string | undefined }> = [];
/** File name -> byte index to corrupt when serving it. */
const corrupt = new Map<string, number>();

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'perch-pull-'));
  served = join(root, 'served');
  mkdirSync(served);
  const cfg = tinyConfig();
  const src = randomWeightSource(cfg, 4);
  const tensors: TensorToWrite[] = [];
  for (const t of textTensorTable(cfg, MULTIMODAL_TEXT_PREFIX))
    tensors.push({ name: t.name, dtype: 'BF16', shape: t.shape, data: await src.get(t.name) });
  writeShardedCheckpoint(served, tensors, 256 * 1024);
  writeFileSync(join(served, 'config.json'), JSON.stringify(synthConfigJson(cfg)));
  writeFileSync(join(served, 'tokenizer.json'), synthTokenizerFiles(cfg.vocabSize).tokenizerJson);

  server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    requests.push({ path: url.pathname, range: req.headers.range });
    if (url.pathname === '/api/models/google/tiny/revision/main') {
      const siblings = readdirSync(served).map((name) => {
        const bytes = readFileSync(join(served, name));
        const lfs = name.endsWith('.safetensors')
          ? { lfs: { size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') } }
          : {};
        return { rfilename: name, size: bytes.length, ...lfs };
      });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ sha: SHA, siblings }));
      return;
    }
    const prefix = `/google/tiny/resolve/${SHA}/`;
    const name = url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : '';
    if (!name || !existsSync(join(served, name))) {
      res.statusCode = 404;
      res.end();
      return;
    }
    const bytes = Buffer.from(readFileSync(join(served, name)));
    const bad = corrupt.get(name);
    if (bad !== undefined) bytes[bad] = bytes[bad]! ^ 0xff;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (m) {
      res.statusCode = 206;
      res.end(bytes.subarray(Number(m[1])));
    } else res.end(bytes);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  hub = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

beforeEach(() => {
  requests.length = 0;
  corrupt.clear();
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  rmSync(root, { recursive: true, force: true });
});

function shards(): string[] {
  return readdirSync(served)
    .filter((n) => n.endsWith('.safetensors'))
    .sort();
}

it('downloads every file of the pinned commit, resumes a partial shard with a Range request, and converts', async () => {
  const cache = join(root, 'cache-ok');
  mkdirSync(cache);
  const shard = shards()[0]!;
  const full = readFileSync(join(served, shard));
  const half = Math.floor(full.length / 2);
  writeFileSync(join(cache, `${shard}.incomplete`), full.subarray(0, half));

  const out = join(root, 'pkg-ok');
  const m = await pullModel({ repo: 'google/tiny', hubUrl: hub, cacheDir: cache, outDir: out, profile: 'float' });
  expect(m.source).toEqual({ kind: 'pull', model: 'google/tiny', revision: SHA });
  expect((await verifyPackage(out, { full: true })).ok).toBe(true);
  expect(requests.find((r) => r.path.endsWith(`/${shard}`))?.range).toBe(`bytes=${half}-`);
  expect(readFileSync(join(cache, shard)).equals(full)).toBe(true);
  expect(shards().every((s) => requests.some((r) => r.path === `/google/tiny/resolve/${SHA}/${s}`))).toBe(true);

  // A second pull finds everything downloaded and checked: no file is fetched again.
  requests.length = 0;
  await pullModel({
    repo: 'google/tiny',
    hubUrl: hub,
    cacheDir: cache,
    outDir: join(root, 'pkg-again'),
    profile: 'float',
  });
  expect(requests.map((r) => r.path)).toEqual(['/api/models/google/tiny/revision/main']);
});

it('refuses a shard whose sha256 does not match the listing, and writes no package', async () => {
  const shard = shards().at(-1)!;
  corrupt.set(shard, 100);
  const out = join(root, 'pkg-bad');
  await expect(
    pullModel({ repo: 'google/tiny', hubUrl: hub, cacheDir: join(root, 'cache-bad'), outDir: out, profile: 'float' }),
  ).rejects.toThrow(new RegExp(`${shard}: checksum mismatch`));
  expect(existsSync(join(out, 'manifest.json'))).toBe(false);
});

it('says that it needs the network when the Hub cannot be reached, and rejects odd names', async () => {
  await expect(
    pullModel({
      repo: 'google/tiny',
      hubUrl: 'http://127.0.0.1:1',
      cacheDir: join(root, 'c'),
      outDir: join(root, 'o'),
    }),
  ).rejects.toThrow(/cannot reach http:\/\/127\.0\.0\.1:1 .*pull needs network access/);
  await expect(
    pullModel({ repo: '../etc', hubUrl: hub, cacheDir: join(root, 'c'), outDir: join(root, 'o') }),
  ).rejects.toThrow(/invalid repository/);
  await expect(
    pullModel({ repo: 'a/b', revision: '../x', hubUrl: hub, cacheDir: join(root, 'c'), outDir: join(root, 'o') }),
  ).rejects.toThrow(/invalid revision/);
});
