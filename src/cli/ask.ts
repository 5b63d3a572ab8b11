/**
 * `perch ask --model DIR "question"`: one answer from a model package, streamed to stdout (or one JSON object
 * with --json). Thinking text, when asked for, streams to stderr so stdout stays the answer. Errors go to
 * stderr with exit status 1; Ctrl-C stops generation and keeps the partial answer.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { NO_PREPACKED_CACHE_FLAG, NO_PREPACKED_CACHE_HELP, commandLogger, intIn, reportFailure } from './args.js';
import { Engine, type GenerateResult } from '../engine/engine.js';
import { DEFAULT_SAMPLING } from '../engine/gemma-engine.js';
import { commandCache } from '../engine/prepacked-cache.js';
import type { ChatMessage } from '../engine/prompt.js';

const MAX_QUESTION_CHARS = 32_768;

function temperature(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 2)
    throw new InvalidArgumentError('expected a number from 0 to 2');
  return n;
}

interface AskOptions {
  model: string;
  json?: boolean;
  maxTokens: number;
  seed?: number;
  temperature?: number;
  thinking?: boolean;
  system?: string;
  raw?: boolean;
  threads: number;
  contextTokens: number;
  pleCacheMb: number;
  /** False with --no-prepacked-cache. */
  prepackedCache: boolean;
}

export function registerAskCommand(program: Command): void {
  program
    .command('ask')
    .description('Answer one question with a model package (streams the answer to stdout)')
    .argument('<question>', 'the question')
    .requiredOption('-m, --model <dir>', 'model package directory')
    .option('--json', 'print one JSON object {text, thinking, finish_reason, tokens, timings} instead of streaming')
    .option('--max-tokens <n>', 'largest number of answer tokens', intIn(1, 8192), 256)
    .option('--seed <n>', 'sampling seed (same seed, same answer)', intIn(0, 0xffffffff))
    .option('--temperature <t>', 'sampling temperature, 0 = greedy', temperature)
    .option('--thinking', 'let the model think first (its thinking goes to stderr)')
    .option('--system <text>', 'system prompt')
    .option('--raw', 'continue the text as written, without the chat template (base models, completion prompts)')
    .option('--threads <n>', 'ONNX Runtime threads', intIn(1, 64), 4)
    .option('--context-tokens <n>', 'largest context (prompt + answer)', intIn(128, 131072), 4096)
    .option(NO_PREPACKED_CACHE_FLAG, NO_PREPACKED_CACHE_HELP)
    .option('--ple-cache-mb <n>', 'per-layer-embedding row cache, MiB', intIn(1, 65536), 64)
    .action(async (question: string, opts: AskOptions) => {
      process.exitCode = await ask(question, opts);
    });
}

async function ask(question: string, opts: AskOptions): Promise<number> {
  if (question.trim() === '' || question.length > MAX_QUESTION_CHARS) {
    return reportFailure(opts.json, `the question must have 1 to ${MAX_QUESTION_CHARS} characters`);
  }
  let engine: Engine;
  try {
    engine = await Engine.load(opts.model, {
      threads: opts.threads,
      contextTokens: opts.contextTokens,
      pleCacheMb: opts.pleCacheMb,
      prepackedCache: commandCache(opts.prepackedCache),
      logger: commandLogger(),
    });
  } catch (err) {
    return reportFailure(opts.json, (err as Error).message);
  }
  const ac = new AbortController();
  const onSigint = (): void => ac.abort();
  process.once('SIGINT', onSigint);
  try {
    if (engine.randomWeights)
      process.stderr.write('perch: note: this package has random weights (synthetic); its answers are meaningless\n');
    const messages: ChatMessage[] = [];
    if (opts.system?.trim()) messages.push({ role: 'system', content: opts.system.trim() });
    messages.push({ role: 'user', content: question });
    let streamed = false;
    const r: GenerateResult = await engine.generate({
      // --raw: the tokenizer's own special tokens (bos) and the text, nothing else.
      ...(opts.raw ? { promptIds: engine.tokenizer.encode(question, { addSpecialTokens: true }) } : { messages }),
      maxTokens: opts.maxTokens,
      thinking: opts.thinking ?? false,
      sampling: {
        ...DEFAULT_SAMPLING,
        ...(opts.temperature !== undefined ? { temperature: opts.temperature } : {}),
        ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
      },
      signal: ac.signal,
      onToken: opts.json
        ? undefined
        : (delta, info) => {
            if (info.thinking) process.stderr.write(info.thinking);
            if (delta) {
              process.stdout.write(delta);
              streamed = true;
            }
          },
    });
    if (opts.json) {
      const t = r.timings;
      const out = {
        text: r.text,
        ...(r.thinking ? { thinking: r.thinking } : {}),
        finish_reason: r.finishReason,
        tokens: { prompt: r.promptTokens, completion: r.tokens.length },
        timings: {
          prefill_ms: round(t.prefillMs),
          first_token_ms: round(t.firstTokenMs),
          decode_ms: round(t.decodeMs),
          tokens_per_second: round(t.tokensPerSecond),
        },
      };
      process.stdout.write(JSON.stringify(out) + '\n');
    } else if (streamed) {
      process.stdout.write('\n');
    }
    return 0;
  } catch (err) {
    return reportFailure(opts.json, (err as Error).message);
  } finally {
    process.off('SIGINT', onSigint);
    await engine.close();
  }
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
