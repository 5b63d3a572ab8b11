/**
 * `npm run bench` end to end on a tiny synthetic package (a real child process, real ONNX Runtime), plus its
 * weight-bytes formula checked against the package's config and quantisation policy. No timing asserts.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parseGemma4TextConfig } from '../src/model/gemma4/config.js';
import { textTensorTable } from '../src/model/gemma4/weights.js';
import { MANIFEST_FILE, type Manifest } from '../src/model/package/manifest.js';
import { rowStrideFor } from '../src/model/ple/format.js';
import { synthPackage } from '../src/model/build/synth.js';
import { withHugePageTunable, type BenchResult } from '../src/bench/run.js';
import { EARLY_CAPTION_TARGET_MS, PI5_TARGETS } from '../src/bench/media.js';
import { runScript } from './cli-helpers.js';

const bench = (...args: string[]) => runScript('src/bench/main.ts', args, 120_000);

const SMALL = [
  '--threads',
  '1',
  '--prompt-tokens',
  '8,16',
  '--decode-tokens',
  '4',
  '--runs',
  '1',
  '--bandwidth-mb',
  '8',
  '--bandwidth-reps',
  '2',
];

let root: string;
let pkg: string;
let manifest: Manifest;
beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'perch-bench-'));
  pkg = join(root, 'tiny');
  manifest = await synthPackage({ preset: 'tiny', outDir: pkg, seed: 3 });
}, 60_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A copy of the package without its encoder files (and without them in its manifest). */
function withoutEncoders(src: string, dst: string): string {
  cpSync(src, dst, { recursive: true });
  const file = join(dst, MANIFEST_FILE);
  const m = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
  const enc = m.files.filter((f) => /^(vision|audio)-/.test(f.role));
  expect(enc.map((f) => f.path).sort()).toEqual([
    'audio_encoder.onnx',
    'audio_encoder.onnx.data',
    'vision_encoder.onnx',
    'vision_encoder.onnx.data',
  ]);
  for (const f of enc) rmSync(join(dst, f.path));
  m.files = m.files.filter((f) => !enc.includes(f));
  writeFileSync(file, JSON.stringify(m, null, 2));
  return dst;
}

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
  for (const t of textTensorTable(cfg))
    if (t.kind === 'linear') bytes += nbits(t.shape[0]!, t.shape[1]!, q.linear!.bits, q.linear!.block_size);
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
  expect(res.prompts[0]!.decodeVsFirst).toBe(1);
  expect(res.prompts[1]!.decodeVsFirst).toBeCloseTo(res.prompts[1]!.decodeTokPerS / res.prompts[0]!.decodeTokPerS, 9);
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
  // Read on Linux (null would print 'unknown'): a whole number of PMD-sized huge pages, within the anonymous
  // memory. Measured 0 at the end of a run here (THP madvise: the huge-page heap blocks are freed by then).
  const hugePage = Number(readFileSync('/sys/kernel/mm/transparent_hugepage/hpage_pmd_size', 'utf8'));
  expect(mem.currentAnonHugePages).not.toBeNull();
  expect(Number.isInteger(mem.currentAnonHugePages! / hugePage)).toBe(true);
  expect(mem.currentAnonHugePages!).toBeLessThanOrEqual(mem.current.anon);
  expect(['always', 'madvise', 'never']).toContain(res.machine.hugePages.thp);
  expect(mem.peak.anon).toBeGreaterThan(0);
  expect(mem.peak.file).toBeGreaterThan(0); // node and the ORT library are mapped files
  expect(mem.peak.rss).toBeGreaterThanOrEqual(mem.current.rss);
  expect(mem.peak.anon).toBeGreaterThanOrEqual(mem.current.anon);
  // The whole-run peak (speech and caption too) is at least the peak up to the decode runs.
  expect(res.memoryWithMedia.peak.rss).toBeGreaterThanOrEqual(mem.peak.rss);
  expect(res.memoryWithMedia.peak.anon).toBeGreaterThanOrEqual(mem.peak.anon);

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

  // The decoder's own MatMulNBits alone, shape for shape: as many nodes and weight bytes as its graph's matmuls.
  const k = res.kernels!;
  const graph = onnxProto.onnx.ModelProto.decode(readFileSync(join(pkg, 'decoder.onnx'))).graph!;
  const matMulNBits = (graph.node ?? []).filter((n) => n.opType === 'MatMulNBits').length;
  expect(k.linear.nodes).toBe(matMulNBits - 1); // the LM head apart
  expect(k.linear).toMatchObject({ bits: 2, blockSize: manifest.quantisation.linear!.block_size, accuracyLevel: 4 });
  expect(k.lmHead).toMatchObject({ bits: 4, blockSize: manifest.quantisation.embedding!.block_size, nodes: 1 });
  expect(k.linear.bytes).toBe(w.matmulBytes);
  expect(k.lmHead!.bytes).toBe(w.lmHeadBytes);
  for (const x of [k.linear, k.lmHead!]) {
    expect(x.gbps).toBeGreaterThan(0);
    expect(x.gbps).toBeCloseTo(x.bytes / x.ms / 1e6, 9);
  }
  // Rounds alternate with decode runs; ceiling and share are the rounds' medians.
  expect(k.rounds.length).toBeGreaterThanOrEqual(5);
  const ceilings = k.rounds.map((r) => 1000 / (r.linearMs + r.lmHeadMs)).sort((a, b) => a - b);
  expect(k.ceilingTokPerS).toBeCloseTo(ceilings[ceilings.length >> 1]!, 9);
  expect(k.decodeTokPerS).toBeGreaterThan(0);
  expect(k.decodeShareOfCeiling).toBeGreaterThan(0);
  // The decoder's weights came from the prepacked file cache: the chains are timed so placed too, same rounds.
  expect(res.prepacked).not.toBe('heap');
  expect(k.prepackedFile!.rounds).toHaveLength(k.rounds.length);
  const fileCeilings = k.prepackedFile!.rounds.map((r) => 1000 / (r.linearMs + r.lmHeadMs)).sort((a, b) => a - b);
  expect(k.prepackedFileCeiling!.tokPerS).toBeCloseTo(fileCeilings[fileCeilings.length >> 1]!, 9);

  // Constrained decoding's mask: measured over the whole vocabulary along a reply the grammar took.
  const mk = res.mask;
  expect(mk.vocabSize).toBeGreaterThan(200);
  expect(mk.steps).toBeGreaterThan(10);
  expect(mk.perTokenMs.p50).toBeGreaterThan(0);
  expect(mk.perTokenMs.p95).toBeGreaterThanOrEqual(mk.perTokenMs.p50);
  expect(mk.shareOfDecodeStep).toBeCloseTo((mk.perTokenMs.p50 * res.decodeTokPerS) / 1000, 9);

  // Picking a token, on a row of the package's logits: the whole vocabulary each pick.
  const sp = res.sampling;
  expect(sp.vocabSize).toBe(mk.vocabSize);
  expect(sp.greedyMs).toBeGreaterThan(0);
  expect(sp.defaultMs).toBeGreaterThan(0);
  expect(sp.defaultShare).toBeCloseTo((sp.defaultMs * res.decodeTokPerS) / 1000, 9);

  // The tiny package has both encoders: both sections are measured (values positive, not judged for speed).
  const s = res.speech;
  if (s.skipped) throw new Error(`speech skipped: ${s.reason}`);
  expect(s.audioSeconds).toBe(5);
  expect(s.audioTokens).toBeGreaterThan(0);
  expect(s.runs).toHaveLength(1);
  for (const v of [
    s.endToTranscriptMs,
    s.firstTokenMs,
    s.realTimeFactor,
    s.split.featuresMs,
    s.split.encodeMs,
    s.split.prefillMs,
  ])
    expect(v).toBeGreaterThan(0);
  expect(s.endToTranscriptMs).toBe(s.runs[0]!.totalMs);
  expect(s.realTimeFactor).toBeCloseTo(s.endToTranscriptMs / 5000, 9);
  expect(s.firstTokenMs).toBeLessThanOrEqual(s.endToTranscriptMs);
  expect(s.decodedTokens).toBeLessThanOrEqual(32);
  expect(s.targetPi5Ms).toBe(PI5_TARGETS.speechEndToTranscriptMs);
  // The warm-up heard a clip first: the instruction before the clip comes from the prefix cache.
  expect(s.reusedTokens).toBeGreaterThan(0);
  expect(s.promptTokens).toBeGreaterThan(s.audioTokens + s.reusedTokens);
  expect(s.runs[0]).toMatchObject({ promptTokens: s.promptTokens, reusedTokens: s.reusedTokens });
  // Heard while spoken, alternating with the whole-clip run: the same transcript, most audio done before the
  // hand-over (the tiny model keeps up; the end goes back over the streamed hang-over, at most two chunks).
  const st = s.streamed!;
  expect(st.runs).toHaveLength(1);
  expect(st.sameTranscript).toBe(true);
  expect(st.firstLogitsRelDiff).toBeLessThan(1e-4);
  expect(st.streamedTokens).toBeGreaterThanOrEqual(s.audioTokens - 24 - 12);
  expect(st.streamedTokens).toBeLessThan(s.audioTokens);
  expect(st.endToTranscriptMs).toBe(st.runs[0]!.totalMs);
  expect(st.targetMs).toBeCloseTo(st.split.decodeMs + 500, 9);

  const c = res.caption;
  if (c.skipped) throw new Error(`caption skipped: ${c.reason}`);
  expect(c.imageTokens).toBeGreaterThan(0);
  expect(c.imageTokens).toBeLessThanOrEqual(280);
  expect(c.width * c.height).toBeGreaterThan(0);
  expect(c.promptTokens).toBeGreaterThan(c.imageTokens);
  // Stop ids masked: exactly the default 32 caption tokens.
  expect(c.decodedTokens).toBe(32);
  for (const v of [
    c.imageEncodeMs,
    c.frameToCaptionMs,
    c.firstTokenMs,
    c.split.preprocessMs,
    c.split.encodeMs,
    c.split.prefillMs,
    c.split.decodeMs,
  ])
    expect(v).toBeGreaterThan(0);
  expect(c.imageEncodeMs).toBeCloseTo(c.split.preprocessMs + c.split.encodeMs, 9);
  expect(c.frameToCaptionMs).toBeGreaterThanOrEqual(c.imageEncodeMs + c.split.prefillMs + c.split.decodeMs);
  expect(c.targetPi5Ms).toBe(PI5_TARGETS.frameToCaptionMs);
  // The early caption at the smaller default budget, timed as often as the final one: fewer image tokens.
  expect(c.early).toMatchObject({ budget: 70, targetMs: EARLY_CAPTION_TARGET_MS });
  expect(c.early.runs).toHaveLength(c.runs.length);
  expect(c.early.imageTokens).toBeGreaterThan(0);
  expect(c.early.imageTokens).toBeLessThan(c.imageTokens);
  expect(c.early.frameToCaptionMs).toBe(c.early.runs[0]!.totalMs);
  expect(c.early.imageEncodeMs).toBeCloseTo(c.early.runs[0]!.preprocessMs + c.early.runs[0]!.encodeMs, 9);
}, 180_000);

it('says skipped for speech and captions on a package without encoders', async () => {
  const plain = withoutEncoders(pkg, join(root, 'plain'));
  const r = await bench('--model', plain, '--json', ...SMALL);
  expect(r.code, r.stderr).toBe(0);
  const res = JSON.parse(r.stdout) as BenchResult;
  expect(res.speech).toEqual({ skipped: true, reason: expect.stringMatching(/no audio encoder/) as unknown });
  expect(res.caption).toEqual({ skipped: true, reason: expect.stringMatching(/no vision encoder/) as unknown });
  expect(res.prompts).toHaveLength(2); // the rest of the bench still runs
}, 120_000);

it('prints a human table by default, speech and caption beside their Pi 5 targets; --no-* turn them off', async () => {
  const r = await bench('--model', pkg, ...SMALL, '--bandwidth-pages', '4k', '--no-caption', '--speech-seconds', '2');
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^speech +speech\.wav, 2\.0 s utterance/m);
  expect(r.stdout).toMatch(/end of speech -> transcript +\d+ ms \(Pi 5 target: under 1500 ms; measured on \w+, /);
  expect(r.stdout).toMatch(/heard while spoken/);
  expect(r.stdout).toMatch(
    /end of speech -> transcript +\d+ ms \(target: decode \+ 0\.5 s = \d+ ms; (met|not met)\), [\d.]+x faster/,
  );
  expect(r.stdout).toMatch(
    /transcript +the same tokens as heard whole; first-token logits differ by [\d.e+-]+ of their largest/,
  );
  expect(r.stdout).toMatch(/real-time factor +[\d.]+ /);
  expect(r.stdout).toContain('caption   skipped: turned off (--no-caption)');
  expect(r.stdout).toMatch(
    /^ +MatMulNBits alone +the decoder's \d+ linears \(mostly 2-bit, block \d+, accuracy_level 4\) read [\d.]+ GB\/s/m,
  );
  expect(r.stdout).toMatch(
    /^ +with speech, caption +peak RSS \d+ MiB \(anonymous \d+ MiB, file \d+ MiB\) over the whole run/m,
  );
  expect(r.stdout).toMatch(
    /^ +kernel ceiling +[\d.]+ tok\/s if decode were nothing but these kernels; decode reaches \d+% of it \(\d+ rounds alternating with decode at [\d.]+ tok\/s\)/m,
  );
  expect(r.stdout).toMatch(
    /^ +ceiling, file-mapped +[\d.]+ tok\/s with the kernels' weights mapped from a prepacked file as the decoder's are; decode reaches \d+% of it$/m,
  );
  expect(r.stdout).toMatch(
    /^ +grammar mask +[\d.]+ ms per token \(p95 [\d.]+; \d+ steps of a JSON caption\) over \d+ ids: /m,
  );
  expect(r.stdout).toMatch(
    /^ +picking a token +greedy [\d.]+ ms, default sampling \(temperature 1, top-k 64, top-p 0\.95\) [\d.]+ ms per token over \d+ ids: \d+% and \d+% of a decode step$/m,
  );
  const off = await bench('--model', pkg, '--json', ...SMALL, '--no-speech', '--no-caption', '--no-kernels');
  expect(off.code, off.stderr).toBe(0);
  const res = JSON.parse(off.stdout) as BenchResult;
  expect(res.speech).toEqual({ skipped: true, reason: 'turned off (--no-speech)' });
  expect(res.kernels).toBeNull();
  expect(res.caption).toEqual({ skipped: true, reason: 'turned off (--no-caption)' });
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toContain('4 KiB pages)');
  for (const label of [
    'prefill tok/s',
    'weights read / token',
    'read bandwidth',
    'copy bandwidth',
    'decode share',
    'peak RSS',
    'PLE cache',
  ]) {
    expect(r.stdout).toContain(label);
  }
  expect(r.stdout).toMatch(/^\s+8\s+[\d.]+\s+\d+\s+[\d.]+\s+100%\s+\([\d.]+, [\d.]+\)$/m);
}, 180_000);

it('prints the caption figures with the split and the Pi 5 target', async () => {
  const r = await bench('--model', pkg, ...SMALL, '--no-speech', '--caption-tokens', '4');
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^caption +frame-01\.jpg at \d+x\d+, \d+ image tokens, 4 caption tokens greedy/m);
  expect(r.stdout).toMatch(/image encode +\d+ ms \(preprocess \d+ ms \+ encoder \d+ ms\)/);
  expect(r.stdout).toMatch(/frame -> caption +\d+ ms \(Pi 5 target: under 8000 ms; measured on \w+, /);
  expect(r.stdout).toMatch(
    /early caption +\d+ ms at \d+ image tokens \(budget 70; .*target: within 5000 ms of the first frame\)/,
  );
  expect(r.stdout).toMatch(/split +preprocess \d+ ms, encode \d+ ms, prefill \d+ ms, decode \d+ ms \(4 tokens\)/);
  expect(r.stdout).toContain('speech    skipped: turned off (--no-speech)');
}, 120_000);

it('refuses an image token budget the encoder does not take (exit 2)', async () => {
  const r = await bench('--model', pkg, '--image-tokens', '300');
  expect(r.code).toBe(2);
  expect(r.stderr).toContain('--image-tokens must be one of 70, 140, 280, 560, 1120');
}, 30_000);

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
