/**
 * `perch transcribe FILE.wav --model DIR [--json]`: the hearing path on a file, as fast as the CPU allows.
 * The WAV is converted to 16 kHz mono, cut into utterances by the same segmenter (Silero VAD) the daemon
 * uses, and each utterance is transcribed by the package's audio encoder and decoder. Prints one line per
 * utterance, or with --json one array [{id, start_ms, end_ms, text, latency_ms}]. Times are the speech the
 * VAD found, in ms from the start of the file.
 */
import { readFile, stat } from 'node:fs/promises';
import type { Command } from 'commander';
import { NO_PREPACKED_CACHE_FLAG, NO_PREPACKED_CACHE_HELP, commandLogger, intIn, reportFailure } from './args.js';
import { commandCache } from '../engine/prepacked-cache.js';
import { Transcriber } from '../engine/transcriber.js';
import { MAX_WAV_BYTES } from '../sources/wav.js';
import { wavTo16kMono } from '../sources/wav-decode.js';
import { segment } from '../audio/segment-clip.js';

/** Samples fed to the segmenter between waits: well under its max_backlog_ms, so nothing is dropped. */

interface TranscribeCommandOptions {
  model: string;
  json?: boolean;
  maxTokens: number;
  language?: string;
  threads: number;
  contextTokens: number;
  pleCacheMb: number;
  /** False with --no-prepacked-cache. */
  prepackedCache: boolean;
}

export interface TranscribedUtterance {
  id: string;
  start_ms: number;
  end_ms: number;
  text: string;
  latency_ms: { total: number; first_token: number; features: number; encode: number; prefill: number; decode: number };
  /** Parts of speech longer than audio.segmenter.max_utterance_ms. */
  part?: { group: string; part: number; of?: number; last: boolean; overlap_ms: number };
}

export function registerTranscribeCommand(program: Command): void {
  program
    .command('transcribe')
    .description('Transcribe the speech in a WAV file with a model package (one line per utterance)')
    .argument('<file>', 'WAV file (any rate, mono or stereo, 16/24/32-bit or float)')
    .requiredOption('-m, --model <dir>', 'model package directory (with audio_encoder.onnx)')
    .option('--json', 'print one JSON array [{id, start_ms, end_ms, text, latency_ms}]')
    .option('--max-tokens <n>', 'largest number of tokens per utterance', intIn(1, 4096), 256)
    .option('--language <name>', 'spoken language, e.g. English (default: the model finds it)')
    .option('--threads <n>', 'ONNX Runtime threads', intIn(1, 64), 4)
    .option('--context-tokens <n>', 'largest context (prompt + transcript)', intIn(128, 131072), 2048)
    .option(NO_PREPACKED_CACHE_FLAG, NO_PREPACKED_CACHE_HELP)
    .option('--ple-cache-mb <n>', 'per-layer-embedding row cache, MiB', intIn(1, 65536), 64)
    .action(async (file: string, opts: TranscribeCommandOptions) => {
      process.exitCode = await transcribeFile(file, opts);
    });
}

async function transcribeFile(file: string, opts: TranscribeCommandOptions): Promise<number> {
  const fail = (message: string): number => reportFailure(opts.json, message);
  let samples: Int16Array;
  try {
    const info = await stat(file);
    if (!info.isFile()) return fail(`${file}: not a regular file`);
    if (info.size > MAX_WAV_BYTES) return fail(`${file}: too large (${info.size} bytes, at most ${MAX_WAV_BYTES})`);
    samples = wavTo16kMono(await readFile(file)).samples;
  } catch (err) {
    return fail(`${file}: ${(err as Error).message}`);
  }
  let transcriber: Transcriber;
  try {
    transcriber = await Transcriber.load(opts.model, {
      threads: opts.threads,
      contextTokens: opts.contextTokens,
      pleCacheMb: opts.pleCacheMb,
      prepackedCache: commandCache(opts.prepackedCache),
      logger: commandLogger(),
    });
  } catch (err) {
    return fail((err as Error).message);
  }
  const ac = new AbortController();
  const onSigint = (): void => ac.abort();
  process.once('SIGINT', onSigint);
  try {
    if (transcriber.engine.randomWeights)
      process.stderr.write(
        'perch: note: this package has random weights (synthetic); its transcripts are meaningless\n',
      );
    const utterances = await segment(samples);
    if (utterances.length === 0) process.stderr.write('perch: no speech found\n');
    const out: TranscribedUtterance[] = [];
    for (const u of utterances) {
      if (ac.signal.aborted) break;
      const r = await transcriber.transcribe(u.samples, {
        signal: ac.signal,
        maxTokens: opts.maxTokens,
        language: opts.language,
      });
      const t = r.timings;
      const item: TranscribedUtterance = {
        id: u.id,
        start_ms: Math.round(u.speechStartMs),
        end_ms: Math.round(u.speechEndMs),
        text: r.text,
        latency_ms: {
          total: ms(t.totalMs),
          first_token: ms(t.firstTokenMs),
          features: ms(t.featuresMs),
          encode: ms(t.encodeMs),
          prefill: ms(t.prefillMs),
          decode: ms(t.decodeMs),
        },
        ...(u.split
          ? {
              part: {
                group: u.split.group,
                part: u.split.part,
                ...(u.split.of !== undefined ? { of: u.split.of } : {}),
                last: u.split.last,
                overlap_ms: u.split.overlapMs,
              },
            }
          : {}),
      };
      out.push(item);
      if (!opts.json) process.stdout.write(`${r.text}\n`);
    }
    if (opts.json) process.stdout.write(JSON.stringify(out) + '\n');
    return 0;
  } catch (err) {
    return fail((err as Error).message);
  } finally {
    process.off('SIGINT', onSigint);
    await transcriber.close();
  }
}

function ms(v: number): number {
  return Math.round(v);
}
