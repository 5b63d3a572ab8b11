#!/usr/bin/env node
/**
 * `npm run bench -- --model DIR [--json] [--threads N] [--prompt-tokens 128,512,2048] [--decode-tokens 64]
 *   [--runs 3] [--profile-ort] [--no-speech] [--no-caption]`: the one place Perch's speed and memory are measured.
 * From source: `node --import tsx src/bench/main.ts ...` (same options).
 * Exit status: 0 ok, 1 the run failed, 2 bad arguments or no package.
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { defaultCacheDir } from '../engine/prepacked-cache.js';
import {
  DEFAULT_IMAGE_TOKENS,
  EARLY_IMAGE_TOKENS,
  SOFT_TOKEN_BUDGETS,
  type TokenBudget,
} from '../model/gemma4/contract.js';
import { DEFAULT_BANDWIDTH_BYTES } from './bandwidth.js';
import { DEFAULT_FRAME, DEFAULT_SPEECH_WAV } from './media.js';
import { formatReport } from './report.js';
import { runBench, type BenchOptions } from './run.js';

const USAGE = `usage: npm run bench -- --model DIR [options]
  --model DIR               model package (make a synthetic E2B one with
                            \`perch model synth --preset e2b --out models/e2b-synth\`)
  --json                    print the result as JSON
  --threads N               ONNX Runtime intra-op threads (default: all cores)
  --prompt-tokens A,B       prompt lengths for prefill and decode, alternated (default 128,512,2048)
  --decode-tokens N         tokens decoded per run (default 64)
  --runs N                  runs per prompt length; medians are reported (default 3)
  --ple-cache-mb N          PLE row cache budget (default 64)
  --prefill-chunk N         prompt tokens per prefill run (default: the engine's)
  --cache-dir DIR           prepacked weight cache (default $PERCH_CACHE_DIR or ~/.cache/perch)
  --no-prepacked-cache      let ONNX Runtime pack the weights on the heap instead
  --bandwidth-mb N          bandwidth buffer size (default 1024)
  --bandwidth-reps N         timed repetitions per bandwidth figure, best kept (default 5)
  --bandwidth-pages P       huge (default: transparent huge pages, the machine's limit) or 4k
  --profile-ort             profile decode with ONNX Runtime's profiler and list the top ops
  --profile-decode-tokens N decode steps profiled (default 16)
  --no-kernels              skip timing the MatMulNBits kernels alone (the decode ceiling they set)
  --no-speech               skip end of speech -> transcript (needs audio_encoder.onnx)
  --speech-wav FILE         utterance (default config/samples/speech.wav)
  --speech-seconds S        seconds of it used from its start (default 5)
  --speech-tokens N         transcript token bound (default 32; it stops at the transcript's end)
  --no-caption              skip frame -> caption (needs vision_encoder.onnx)
  --frame FILE              image captioned (default config/samples/frames/frame-01.jpg)
  --image-tokens N          image token budget: ${SOFT_TOKEN_BUDGETS.join(', ')} (default ${DEFAULT_IMAGE_TOKENS})
  --caption-tokens N        caption tokens decoded per run, greedy (default 32)
  --early-image-tokens N    budget of the early caption, timed alternately with the final one (default 70)
`;

class UsageError extends Error {}

function int(name: string, v: string | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got ${v}`);
  return n;
}

export function parseBenchArgs(argv: string[]): BenchOptions & { json: boolean } {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      model: { type: 'string' },
      json: { type: 'boolean', default: false },
      threads: { type: 'string' },
      'prompt-tokens': { type: 'string' },
      'decode-tokens': { type: 'string' },
      runs: { type: 'string' },
      'ple-cache-mb': { type: 'string' },
      'prefill-chunk': { type: 'string' },
      'cache-dir': { type: 'string' },
      'no-prepacked-cache': { type: 'boolean', default: false },
      'bandwidth-mb': { type: 'string' },
      'bandwidth-reps': { type: 'string' },
      'bandwidth-pages': { type: 'string' },
      'profile-ort': { type: 'boolean', default: false },
      'profile-decode-tokens': { type: 'string' },
      'no-kernels': { type: 'boolean', default: false },
      'no-speech': { type: 'boolean', default: false },
      'speech-wav': { type: 'string' },
      'speech-seconds': { type: 'string' },
      'speech-tokens': { type: 'string' },
      'no-caption': { type: 'boolean', default: false },
      frame: { type: 'string' },
      'image-tokens': { type: 'string' },
      'caption-tokens': { type: 'string' },
      'early-image-tokens': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) throw new UsageError('');
  if (!values.model) throw new UsageError('no model package given (--model DIR)');
  const pages = values['bandwidth-pages'] ?? 'huge';
  if (pages !== 'huge' && pages !== '4k') throw new UsageError(`--bandwidth-pages must be huge or 4k, got ${pages}`);
  const imageTokens = int('image-tokens', values['image-tokens'], DEFAULT_IMAGE_TOKENS, 1, 1120);
  if (!(SOFT_TOKEN_BUDGETS as readonly number[]).includes(imageTokens))
    throw new UsageError(`--image-tokens must be one of ${SOFT_TOKEN_BUDGETS.join(', ')}, got ${imageTokens}`);
  const earlyImageTokens = int('early-image-tokens', values['early-image-tokens'], EARLY_IMAGE_TOKENS, 1, 1120);
  if (!(SOFT_TOKEN_BUDGETS as readonly number[]).includes(earlyImageTokens))
    throw new UsageError(
      `--early-image-tokens must be one of ${SOFT_TOKEN_BUDGETS.join(', ')}, got ${earlyImageTokens}`,
    );
  const seconds = Number(values['speech-seconds'] ?? 5);
  if (!(seconds > 0 && seconds <= 30))
    throw new UsageError(`--speech-seconds must be a number above 0 and at most 30, got ${values['speech-seconds']}`);
  const promptTokens = (values['prompt-tokens'] ?? '128,512,2048')
    .split(',')
    .map((s) => int('prompt-tokens', s.trim(), 0, 1, 32768));
  return {
    model: values.model,
    json: values.json ?? false,
    threads: int('threads', values.threads, availableParallelism(), 1, 256),
    promptTokens,
    decodeTokens: int('decode-tokens', values['decode-tokens'], 64, 1, 8192),
    runs: int('runs', values.runs, 3, 1, 100),
    pleCacheMb: int('ple-cache-mb', values['ple-cache-mb'], 64, 1, 65536),
    prepackedCacheDir: values['no-prepacked-cache'] ? null : (values['cache-dir'] ?? defaultCacheDir()),
    prefillChunk:
      values['prefill-chunk'] === undefined ? undefined : int('prefill-chunk', values['prefill-chunk'], 128, 1, 32768),
    bandwidthBytes: int('bandwidth-mb', values['bandwidth-mb'], DEFAULT_BANDWIDTH_BYTES / 2 ** 20, 1, 65536) * 2 ** 20,
    bandwidthPages: pages,
    bandwidthReps: int('bandwidth-reps', values['bandwidth-reps'], 5, 1, 100),
    profileOrt: values['profile-ort'] ?? false,
    kernels: !values['no-kernels'],
    profileDecodeTokens: int('profile-decode-tokens', values['profile-decode-tokens'], 16, 1, 1024),
    speech: values['no-speech']
      ? null
      : {
          wav: values['speech-wav'] ?? DEFAULT_SPEECH_WAV,
          seconds,
          maxTokens: int('speech-tokens', values['speech-tokens'], 32, 1, 1024),
        },
    caption: values['no-caption']
      ? null
      : {
          frame: values.frame ?? DEFAULT_FRAME,
          imageTokens: imageTokens as TokenBudget,
          earlyImageTokens: earlyImageTokens as TokenBudget,
          captionTokens: int('caption-tokens', values['caption-tokens'], 32, 1, 1024),
        },
  };
}

async function main(): Promise<void> {
  let opts: ReturnType<typeof parseBenchArgs>;
  try {
    opts = parseBenchArgs(process.argv.slice(2));
  } catch (e) {
    const msg = (e as Error).message;
    process.stderr.write(msg ? `bench: ${msg}\n${USAGE}` : USAGE);
    process.exitCode = 2;
    return;
  }
  const result = await runBench({ ...opts, onProgress: (line) => process.stderr.write(`bench: ${line}\n`) });
  process.stdout.write(opts.json ? JSON.stringify(result, null, 2) + '\n' : formatReport(result));
}

try {
  await main();
} catch (e) {
  process.stderr.write(`bench: ${(e as Error).message}\n`);
  process.exitCode = 1;
}
