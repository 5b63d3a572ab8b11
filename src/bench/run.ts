/**
 * The benchmark itself: load a package with the engine users run (Engine.load / generate), time prefill and
 * decode over synthetic prompts, and put decode against the machine's measured memory bandwidth.
 *
 * Decode limit (design/benchmarks.md): every decoder weight is read once per token, so
 *   read-limit tok/s = read bandwidth / weight bytes per token (weight-bytes.ts documents the bytes),
 *   decode share of the read limit = decode tok/s x bytes per token / read bandwidth (same for copy).
 */
import { spawn } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { Engine } from '../engine/engine.js';
import { DEFAULT_TUNING } from '../engine/session.js';
import type { PlePagerStats } from '../model/ple/pager.js';
import type { BandwidthOptions, BandwidthResult } from './bandwidth.js';
import { MemorySampler, thpMode, type MemoryReport } from './memory.js';
import {
  benchCaption,
  benchSpeech,
  type CaptionOptions,
  type CaptionResult,
  type Skipped,
  type SpeechOptions,
  type SpeechResult,
} from './media.js';
import { type SamplingCost, measureSamplingCost } from './sampling.js';
import { type KernelResult, measureKernels, roundCeilingTokPerS } from './kernels.js';
import { type MaskCost, measureMaskCost } from './grammar.js';
import { profileDecode, type OrtProfileSummary } from './ort-profile.js';
import { matMulNBitsShapes, weightBytesPerToken, type WeightBytes } from './weight-bytes.js';
import { median } from '../common/stats.js';

export interface BenchOptions {
  model: string;
  threads: number;
  promptTokens: number[];
  decodeTokens: number;
  runs: number;
  /** Bandwidth buffer size in bytes. */
  bandwidthBytes: number;
  bandwidthReps: number;
  /** Page size of the bandwidth buffers: 'huge' (default, the machine's limit) or '4k'. */
  bandwidthPages: 'huge' | '4k';
  pleCacheMb: number;
  /** Prepacked weight cache directory (null: --no-prepacked-cache, ORT packs on the heap). */
  prepackedCacheDir: string | null;
  /** Engine prefill chunk (undefined: the engine's default). */
  prefillChunk?: number;
  profileOrt: boolean;
  /** Measure the MatMulNBits kernels alone (kernels.ts): the decode ceiling they set. */
  kernels: boolean;
  profileDecodeTokens: number;
  /** End of speech -> transcript (null: --no-speech). */
  speech: Omit<SpeechOptions, 'runs' | 'threads' | 'prepackedCacheDir'> | null;
  /** Frame -> caption (null: --no-caption). */
  caption: Omit<CaptionOptions, 'runs' | 'threads' | 'prepackedCacheDir'> | null;
  /** Progress lines (stderr in the CLI). */
  onProgress?: (line: string) => void;
}

export interface PromptResult {
  promptTokens: number;
  /** Medians over the runs. */
  prefillTokPerS: number;
  firstTokenMs: number;
  decodeTokPerS: number;
  decodedTokens: number;
  /** Best run of each (on a shared machine the best is the least disturbed). */
  best: { prefillTokPerS: number; decodeTokPerS: number };
  /** Median decode here / median decode after the first prompt length (how decode slows as context grows). */
  decodeVsFirst: number;
  runs: Array<{ prefillMs: number; firstTokenMs: number; decodeTokPerS: number; decodedTokens: number }>;
}

export interface BenchResult {
  machine: {
    cpu: string;
    /** process.arch: the Pi 5 targets are for arm64; a figure from x64 is not a Pi's. */
    arch: string;
    cores: number;
    threads: number;
    node: string;
    onnxruntime: string;
    loadAvgStart: number[];
    loadAvgEnd: number[];
    /** Kernel THP mode and GLIBC_TUNABLES (glibc.malloc.hugetlb=1 puts large heap blocks on huge pages). */
    hugePages: { thp: string | null; glibcTunables: string | null };
  };
  model: { dir: string; source: string; profile: string; linearBits: number | null; fileBytes: number };
  settings: {
    promptTokens: number[];
    decodeTokens: number;
    runs: number;
    pleCacheMb: number;
    prefillChunk: number | null;
    sampling: 'greedy';
  };
  /** Where the packed weights lived: the file cache (found, or built during loadMs) or the heap. */
  prepacked: Engine['prepacked'];
  loadMs: number;
  prompts: PromptResult[];
  /** Decode rate after the first prompt length (median), the headline figure. */
  decodeTokPerS: number;
  weights: WeightBytes;
  /** Best read and best copy figure of bandwidthRuns (before the model loads, after the timed runs). */
  bandwidth: BandwidthResult;
  bandwidthRuns: BandwidthResult[];
  limits: { readLimitTokPerS: number; copyLimitTokPerS: number; decodeShareOfRead: number; decodeShareOfCopy: number };
  memory: MemoryReport;
  /** The same, over the whole run: with the speech and caption runs (their encoders loaded) too. */
  memoryWithMedia: MemoryReport;
  ple: PlePagerStats;
  profile: OrtProfileSummary | null;
  /**
   * The decoder's MatMulNBits alone and the decode ceiling they set, in rounds alternating with decode runs at the
   * first prompt length: medians of the rounds' ceilings, of their decode rates and of the per-round share
   * (null: --no-kernels or a float package).
   */
  kernels:
    | (KernelResult & {
        ceilingTokPerS: number;
        decodeTokPerS: number;
        decodeShareOfCeiling: number;
        /** The same with the chains' weights mapped from a prepacked file, as the decoder's were (null: heap). */
        prepackedFileCeiling: { tokPerS: number; decodeShare: number } | null;
      })
    | null;
  /** Constrained decoding's mask per token (grammar.ts), and its share of a decode step at the first prompt length. */
  mask: MaskCost & { shareOfDecodeStep: number };
  /** Picking a token (sampling.ts) on a row of the model's logits, and each pick's share of a decode step. */
  sampling: SamplingCost & { greedyShare: number; defaultShare: number };
  /** Measured after everything above (their encoders are not in `memory`); skipped with the reason otherwise. */
  speech: SpeechResult | Skipped;
  caption: CaptionResult | Skipped;
}

/** Context bound when speech or captions are measured: 1120 image tokens or 30 s of audio plus prompt and answer. */
const MEDIA_CONTEXT_TOKENS = 2048;

/** Deterministic pseudo-random prompt ids in [3, vocab): distinct per run so no prefix is ever shared. */
export function syntheticPrompt(length: number, vocab: number, seed: number): number[] {
  let x = (seed * 2654435761 + 12345) >>> 0;
  return Array.from({ length }, () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return 3 + (x % (vocab - 3));
  });
}

export function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) return m[1]!.trim();
  } catch {
    // not Linux: fall through
  }
  return cpus()[0]?.model ?? 'unknown';
}

/** GLIBC_TUNABLES with glibc.malloc.hugetlb=1 added (unless the caller already set that tunable). */
export function withHugePageTunable(current: string | undefined): string {
  if (current && /(^|:)glibc\.malloc\.hugetlb=/.test(current)) return current;
  return current ? `${current}:glibc.malloc.hugetlb=1` : 'glibc.malloc.hugetlb=1';
}

/**
 * Measures bandwidth in a child process so its buffers stay out of this process's peak RSS. With
 * pages 'huge' the child's heap goes on transparent huge pages (glibc tunable): that is the machine's
 * streaming limit as benchmarks.md measured it; on 4 KiB pages a VM loses a quarter or more to TLB misses.
 * The WebAssembly reader's memory is never on huge pages (V8 maps it itself), so it shows the 4 KiB figure.
 */
export function bandwidthInChild(opts: BandwidthOptions, pages: 'huge' | '4k' = 'huge'): Promise<BandwidthResult> {
  // Same extension as this file: .ts when run from source (tsx in execArgv), .js from dist.
  const child = fileURLToPath(new URL(`./bandwidth-child${extname(fileURLToPath(import.meta.url))}`, import.meta.url));
  const env = { ...process.env };
  if (pages === 'huge') env.GLIBC_TUNABLES = withHugePageTunable(env.GLIBC_TUNABLES);
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...process.execArgv, child, JSON.stringify(opts)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    let out = '';
    let err = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-65536)));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-8192)));
    p.on('error', reject);
    p.on('close', (code) => {
      if (code !== 0) return reject(new Error(`bandwidth measurement failed (exit ${code}): ${err.trim()}`));
      try {
        resolve({ ...(JSON.parse(out) as BandwidthResult), pages });
      } catch {
        reject(new Error(`bandwidth measurement printed no result: ${out.slice(0, 200)} ${err.trim()}`));
      }
    });
  });
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const say = o.onProgress ?? (() => undefined);
  const loadAvgStart = loadavg();
  const sampler = MemorySampler.start(50);
  try {
    // Measured before loading and again after the timed runs: on a shared machine one of the two may land
    // in a busy moment; the better figure of each kind is the machine's.
    const bwOpts: BandwidthOptions = { threads: o.threads, bytes: o.bandwidthBytes, reps: o.bandwidthReps };
    say(`bandwidth: ${o.threads} thread(s), ${(o.bandwidthBytes / 2 ** 20).toFixed(0)} MiB buffers`);
    const bandwidthRuns = [await bandwidthInChild(bwOpts, o.bandwidthPages)];

    say(`loading ${o.model}`);
    const maxPrompt = Math.max(...o.promptTokens);
    const t0 = performance.now();
    const engine = await Engine.load(o.model, {
      threads: o.threads,
      // contextTokens only bounds prompts (the KV cache grows as it fills): room for an image or a clip too.
      contextTokens: Math.max(128, maxPrompt + o.decodeTokens + 8, o.speech || o.caption ? MEDIA_CONTEXT_TOKENS : 0),
      pleCacheMb: o.pleCacheMb,
      prefillChunk: o.prefillChunk,
      prepackedCache: o.prepackedCacheDir === null ? undefined : { dir: o.prepackedCacheDir },
    });
    const loadMs = performance.now() - t0;
    try {
      const vocab = engine.config.vocabSize;
      // Random weights may well pick eos: ignoreEos makes every run decode exactly decodeTokens.
      const generate = (ids: number[], maxTokens: number, onLogits?: (logits: Float32Array) => void) =>
        // reusePrefix false: every run computes its whole prompt. Speech and captions reuse as the daemon does.
        engine.generate({
          promptIds: ids,
          maxTokens,
          sampling: { temperature: 0 },
          ignoreEos: true,
          reusePrefix: false,
          onLogits,
        });

      say('warm-up');
      // Its last row of logits is what picking a token is timed on (measureSamplingCost, at the end).
      let logitsRow = new Float32Array(0);
      await generate(syntheticPrompt(Math.min(16, maxPrompt), vocab, 999), Math.min(4, o.decodeTokens), (logits) => {
        logitsRow = logits.slice();
      });

      // The prompt lengths alternate within each round, so a slow spell of the machine hits them alike and the
      // ratios between lengths hold.
      const runsByLength: Array<PromptResult['runs']> = o.promptTokens.map(() => []);
      for (let r = 0; r < o.runs; r++) {
        for (const [pi, len] of o.promptTokens.entries()) {
          say(`prompt ${len} tokens, run ${r + 1}/${o.runs}`);
          const res = await generate(syntheticPrompt(len, vocab, 1000 * (pi + 1) + r), o.decodeTokens);
          const t = res.timings;
          runsByLength[pi]!.push({
            prefillMs: t.prefillMs,
            firstTokenMs: t.firstTokenMs,
            decodeTokPerS: t.tokensPerSecond,
            decodedTokens: res.tokens.length,
          });
        }
      }
      const prompts: PromptResult[] = [];
      for (const [pi, len] of o.promptTokens.entries()) {
        const runs = runsByLength[pi]!;
        prompts.push({
          promptTokens: len,
          prefillTokPerS: median(runs.map((x) => (len * 1000) / x.prefillMs)),
          firstTokenMs: median(runs.map((x) => x.firstTokenMs)),
          decodeTokPerS: median(runs.map((x) => x.decodeTokPerS)),
          decodedTokens: median(runs.map((x) => x.decodedTokens)),
          best: {
            prefillTokPerS: Math.max(...runs.map((x) => (len * 1000) / x.prefillMs)),
            decodeTokPerS: Math.max(...runs.map((x) => x.decodeTokPerS)),
          },
          decodeVsFirst: 1,
          runs,
        });
      }
      for (const p of prompts) p.decodeVsFirst = p.decodeTokPerS / prompts[0]!.decodeTokPerS;
      const memory = sampler.report();
      const ple = engine.pkg.pager.stats();
      say('bandwidth again');
      bandwidthRuns.push(await bandwidthInChild(bwOpts, o.bandwidthPages));
      const bandwidth = bestBandwidth(bandwidthRuns);
      const weights = await weightBytesPerToken(engine.pkg.path('decoder-graph')!, engine.pkg.path('ple')!);

      let profile: OrtProfileSummary | null = null;
      if (o.profileOrt) {
        say(`profiling ${o.profileDecodeTokens} decode steps with ONNX Runtime's profiler`);
        profile = await profileDecode(engine.pkg, {
          tuning: { ...DEFAULT_TUNING, threads: o.threads },
          promptIds: syntheticPrompt(o.promptTokens[0]!, vocab, 7),
          decodeTokens: o.profileDecodeTokens,
          prefillChunk: o.prefillChunk ?? 128,
          prepackedCacheDir: o.prepackedCacheDir,
        });
      }

      let speech: SpeechResult | Skipped = { skipped: true, reason: 'turned off (--no-speech)' };
      if (o.speech) {
        say(`speech: ${o.speech.seconds} s utterance, ${o.runs} run(s)`);
        speech = await benchSpeech(engine, o.model, {
          ...o.speech,
          runs: o.runs,
          threads: o.threads,
          prepackedCacheDir: o.prepackedCacheDir,
        });
        if (speech.skipped) say(`speech skipped: ${speech.reason}`);
      }
      let caption: CaptionResult | Skipped = { skipped: true, reason: 'turned off (--no-caption)' };
      if (o.caption) {
        say(
          `caption: ${o.caption.imageTokens} image tokens, ${o.caption.captionTokens} caption tokens, ${o.runs} run(s)`,
        );
        caption = await benchCaption(engine, o.model, {
          ...o.caption,
          runs: o.runs,
          threads: o.threads,
          prepackedCacheDir: o.prepackedCacheDir,
        });
        if (caption.skipped) say(`caption skipped: ${caption.reason}`);
      }

      const memoryWithMedia = sampler.report();
      // Last: its chains of weights are packed on the heap, outside what the figures above measure.
      let kernels: BenchResult['kernels'] = null;
      const q0 = engine.manifest.quantisation;
      if (o.kernels && q0.linear && (q0.linear.kernel ?? 'matmul-nbits') === 'matmul-nbits') {
        say("MatMulNBits kernels alone: the decoder's own shapes, alternating with decode runs");
        const shapes = await matMulNBitsShapes(engine.pkg.path('decoder-graph')!);
        const first = o.promptTokens[0]!;
        const decodeByRound: number[] = [];
        const k = await measureKernels({
          threads: o.threads,
          ...shapes,
          rounds: Math.max(5, o.runs),
          between: async (r) => {
            const res = await generate(syntheticPrompt(first, vocab, 5000 + r), o.decodeTokens);
            decodeByRound.push(res.timings.tokensPerSecond);
          },
          // The decoder's weights are mapped from the prepacked file cache: time the chains so too.
          alsoPrepackedFile: engine.prepacked !== 'heap',
        });
        const share = (rounds: KernelResult['rounds']) => {
          const ceilings = rounds.map(roundCeilingTokPerS);
          return { ceiling: median(ceilings), share: median(decodeByRound.map((d, i) => d / ceilings[i]!)) };
        };
        const heap = share(k.rounds);
        const file = k.prepackedFile ? share(k.prepackedFile.rounds) : null;
        kernels = {
          ...k,
          ceilingTokPerS: heap.ceiling,
          decodeTokPerS: median(decodeByRound),
          decodeShareOfCeiling: heap.share,
          prepackedFileCeiling: file ? { tokPerS: file.ceiling, decodeShare: file.share } : null,
        };
      }

      say('constrained decoding: the grammar mask per token');
      const mask = await measureMaskCost(engine.tokenizer);

      say("picking a token: greedy and the default sampling, on a row of the decoder's logits");
      const sampling = measureSamplingCost(logitsRow);

      const decodeTokPerS = prompts[0]!.decodeTokPerS;
      const bytesPerS = decodeTokPerS * weights.perToken;
      const q = engine.manifest.quantisation;
      return {
        machine: {
          cpu: cpuModel(),
          arch: process.arch,
          cores: cpus().length,
          threads: o.threads,
          node: process.version,
          onnxruntime: ortVersion(),
          loadAvgStart,
          loadAvgEnd: loadavg(),
          hugePages: { thp: thpMode(), glibcTunables: process.env.GLIBC_TUNABLES || null },
        },
        model: {
          dir: o.model,
          source: `${engine.manifest.source.kind}:${engine.manifest.source.model}`,
          profile: q.profile,
          linearBits: q.linear?.bits ?? null,
          fileBytes: engine.manifest.files.reduce((a, f) => a + f.bytes, 0),
        },
        settings: {
          promptTokens: o.promptTokens,
          decodeTokens: o.decodeTokens,
          runs: o.runs,
          pleCacheMb: o.pleCacheMb,
          prefillChunk: o.prefillChunk ?? null,
          sampling: 'greedy',
        },
        prepacked: engine.prepacked,
        loadMs,
        prompts,
        decodeTokPerS,
        weights,
        bandwidth,
        bandwidthRuns,
        limits: {
          readLimitTokPerS: (bandwidth.readGBps * 1e9) / weights.perToken,
          copyLimitTokPerS: (bandwidth.copyGBps * 1e9) / weights.perToken,
          decodeShareOfRead: bytesPerS / (bandwidth.readGBps * 1e9),
          decodeShareOfCopy: bytesPerS / (bandwidth.copyGBps * 1e9),
        },
        memory,
        memoryWithMedia,
        ple,
        profile,
        kernels,
        mask: { ...mask, shareOfDecodeStep: (mask.perTokenMs.p50 * decodeTokPerS) / 1000 },
        sampling: {
          ...sampling,
          greedyShare: (sampling.greedyMs * decodeTokPerS) / 1000,
          defaultShare: (sampling.defaultMs * decodeTokPerS) / 1000,
        },
        speech,
        caption,
      };
    } finally {
      await engine.close();
    }
  } finally {
    await sampler.stop();
  }
}

/** Per field, the best of several measurements. */
export function bestBandwidth(runs: readonly BandwidthResult[]): BandwidthResult {
  const best = (f: (r: BandwidthResult) => number): number => Math.max(...runs.map(f));
  const ort = best((r) => r.readByMethod.ort);
  const wasm = best((r) => r.readByMethod.wasm);
  return { ...runs[0]!, readGBps: Math.max(ort, wasm), readByMethod: { ort, wasm }, copyGBps: best((r) => r.copyGBps) };
}

function ortVersion(): string {
  const v = (ort.env as { versions?: { common?: string } }).versions?.common;
  return v ?? 'unknown';
}
