/**
 * `npm run bench` end to end on a tiny synthetic package (a real child process, real ONNX Runtime), plus its
 * weight-bytes formula checked against the package's config and quantisation policy. No timing asserts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parseGemma4TextConfig } from '../src/model/gemma4/config.js';
import { textTensorTable } from '../src/model/gemma4/weights.js';
import type { Manifest } from '../src/model/package/manifest.js';
import { rowStrideFor } from '../src/model/ple/format.js';
import { synthPackage } from '../src/model/synth.js';
import { withHugePageTunable, type BenchResult } from '../src/bench/run.js';
import { runScript } from './cli-helpers.js';

const bench = (...args: string[]) => runScript('src/bench/main.ts', args, 120_000);

const SMALL = ['--threads', '1', '--prompt-tokens', '8,16', '--decode-tokens', '4', '--runs', '1', '--bandwidth-mb', '8', '--bandwidth-reps', '2'];

let root: string;
let pkg: string;
let manifest: Manifest;
beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'perch-bench-'));
  pkg = join(root, 'tiny');
  manifest = await synthPackage({ preset: 'tiny', outDir: pkg, seed: 3 });
}, 60_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

/**
 * The formula worked out from the config and the policy, independently of the graph: every quantised linear
 * (MatMulNBits B + f32 scales + packed zero points), the tied LM head over the 4-bit table, one PLE row.
 */
function expectedBytesPerToken(m: Manifest): number {
  const cfg = parseGemma4TextConfig(m.config);
  const q = m.quantisation;
  const nbits = (n: number, k: number, bits: number, bs: number): number => {
    const nb = Math.ceil(k / bs);
    return n * nb * ((bs * bits) / 8) + n * nb * 4 + n * Math.ceil((nb * bits) / 8);
  };
  let bytes = 0;
  for (const t of textTensorTable(cfg)) if (t.kind === 'linear') bytes += nbits(t.shape[0]!, t.shape[1]!, q.linear!.bits, q.linear!.block_size);
  bytes += nbits(cfg.vocabSize, cfg.hiddenSize, q.embedding!.bits, q.embedding!.block_size);
  return bytes + rowStrideFor(cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput, q.ple.bits, q.ple.block_size);
}

it('--json reports every figure with sane values, and bytes/token matches the formula for the package', async () => {
  const r = await bench('--model', pkg, '--json', ...SMALL, '--profile-ort', '--profile-decode-tokens', '2');
  expect(r.code, r.stderr).toBe(0);
  const res = JSON.parse(r.stdout) as BenchResult;

  expect(res.machine.threads).toBe(1);
  expect(res.machine.cpu.length).toBeGreaterThan(0);
  expect(res.machine.cores).toBeGreaterThan(0);
  expect(res.model).toMatchObject({ source: 'synth:synthetic-gemma4-tiny', profile: 'pi5', linearBits: 2 });
  expect(res.loadMs).toBeGreaterThan(0);

  expect(res.prompts.map((p) => p.promptTokens)).toEqual([8, 16]);
  for (const p of res.prompts) {
    expect(p.prefillTokPerS).toBeGreaterThan(0);
    expect(p.firstTokenMs).toBeGreaterThan(0);
    expect(p.decodeTokPerS).toBeGreaterThan(0);
    // Stop ids are masked: every run decodes exactly --decode-tokens.
    expect(p.decodedTokens).toBe(4);
    expect(p.runs).toHaveLength(1);
    // One run: its figures are both the median and the best.
    expect(p.best).toEqual({ prefillTokPerS: p.prefillTokPerS, decodeTokPerS: p.decodeTokPerS });
  }
  expect(res.decodeTokPerS).toBe(res.prompts[0]!.decodeTokPerS);

  const w = res.weights;
  expect(w.perToken).toBe(expectedBytesPerToken(manifest));
  expect(w.perToken).toBe(w.matmulBytes + w.lmHeadBytes + w.pleRowBytes);
  expect(w.lmHeadBytes).toBeGreaterThan(0);
  // The gathered table is the LM head's bytes, counted once (in the LM head).
  expect(w.gatherTableBytes).toBeGreaterThan(0);

  const b = res.bandwidth;
  expect(b.threads).toBe(1);
  expect(b.readGBps).toBeGreaterThan(0);
  expect(b.copyGBps).toBeGreaterThan(0);
  expect(b.readGBps).toBe(Math.max(b.readByMethod.ort, b.readByMethod.wasm));
  // Measured before the model loads and after the timed runs; the best of each is used.
  expect(res.bandwidthRuns).toHaveLength(2);
  expect(b.pages).toBe('huge');
  expect(b.readGBps).toBe(Math.max(...res.bandwidthRuns.map((x) => x.readGBps)));
  expect(b.copyGBps).toBe(Math.max(...res.bandwidthRuns.map((x) => x.copyGBps)));
  const l = res.limits;
  expect(l.decodeShareOfRead).toBeGreaterThan(0);
  expect(l.decodeShareOfRead).toBeLessThan(5);
  expect(l.decodeShareOfCopy).toBeGreaterThan(0);
  expect(l.decodeShareOfCopy).toBeLessThan(10);
  expect(l.decodeShareOfRead).toBeCloseTo((res.decodeTokPerS * w.perToken) / (b.readGBps * 1e9), 9);
  expect(l.readLimitTokPerS).toBeCloseTo((b.readGBps * 1e9) / w.perToken, 6);

  const mem = res.memory;
  expect(mem.peak.samples).toBeGreaterThan(0);
  expect(mem.currentAnonHugePages).toBeGreaterThanOrEqual(0);
  expect(['always', 'madvise', 'never']).toContain(res.machine.hugePages.thp);
  expect(mem.peak.anon).toBeGreaterThan(0);
  expect(mem.peak.file).toBeGreaterThan(0); // node and the ORT library are mapped files
  expect(mem.peak.rss).toBeGreaterThanOrEqual(mem.current.rss);
  expect(mem.peak.anon).toBeGreaterThanOrEqual(mem.current.anon);

  expect(res.ple.misses).toBeGreaterThan(0);
  expect(res.ple.readLatencyMs.samples).toBe(res.ple.reads);
  expect(res.ple.readLatencyMs.p50).toBeGreaterThan(0);

  const prof = res.profile!;
  expect(prof.decodeRuns).toBe(2);
  expect(prof.runMs).toBeGreaterThan(0);
  expect(prof.byOp.map((o) => o.name)).toContain('MatMulNBits');
  for (const o of prof.byOp) {
    expect(o.share).toBeGreaterThan(0);
    expect(o.share).toBeLessThanOrEqual(1);
  }
  expect(prof.kernelShare).toBeLessThanOrEqual(1);
}, 120_000);

it('prints a human table by default', async () => {
  const r = await bench('--model', pkg, ...SMALL, '--bandwidth-pages', '4k');
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toContain('4 KiB pages)');
  for (const label of ['prefill tok/s', 'weights read / token', 'read bandwidth', 'copy bandwidth', 'decode share', 'peak RSS', 'PLE cache']) {
    expect(r.stdout).toContain(label);
  }
  expect(r.stdout).toMatch(/^\s+8\s+[\d.]+\s+\d+\s+[\d.]+\s+\([\d.]+, [\d.]+\)$/m);
}, 120_000);

it('adds the huge-page tunable to GLIBC_TUNABLES without overriding a given one', () => {
  expect(withHugePageTunable(undefined)).toBe('glibc.malloc.hugetlb=1');
  expect(withHugePageTunable('glibc.malloc.arena_max=2')).toBe('glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1');
  expect(withHugePageTunable('glibc.malloc.hugetlb=0')).toBe('glibc.malloc.hugetlb=0');
});

it('without a package it says how to make one (exit 2)', async () => {
  const r = await bench('--json');
  expect(r.code).toBe(2);
  expect(r.stderr).toContain('perch model synth --preset e2b --out models/e2b-synth');
});
