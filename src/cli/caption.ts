/**
 * `perch caption FILE --model DIR`: one caption of an image file from a model package, streamed to stdout (or
 * one JSON object with --json). The same path the daemon's captions take (GemmaAnswerEngine with an image),
 * so it is the quick way to try a prompt or a token budget. Errors go to stderr with exit status 1.
 */
import { readFile, stat } from 'node:fs/promises';
import sharp from 'sharp';
import { InvalidArgumentError, type Command } from 'commander';
import { NO_PREPACKED_CACHE_FLAG, NO_PREPACKED_CACHE_HELP, commandLogger, intIn, reportFailure } from './args.js';
import { DEFAULT_CAPTION_PROMPT, modelSettings } from '../config/schema.js';
import { latencyFields } from '../pipelines/ask.js';
import { GemmaAnswerEngine } from '../engine/gemma-engine.js';
import { DEFAULT_IMAGE_TOKENS, SOFT_TOKEN_BUDGETS, type TokenBudget } from '../vision/preprocess.js';

/** Largest image file read (camera frames are far smaller). */
const MAX_FILE_BYTES = 32 * 1024 * 1024;

interface CaptionOptions {
  model: string;
  json?: boolean;
  prompt: string;
  tokens: TokenBudget;
  maxTokens: number;
  seed?: number;
  threads: number;
  contextTokens: number;
  /** False with --no-prepacked-cache. */
  prepackedCache: boolean;
}

function budget(v: string): TokenBudget {
  const n = Number(v);
  if (!(SOFT_TOKEN_BUDGETS as readonly number[]).includes(n))
    throw new InvalidArgumentError(`expected one of ${SOFT_TOKEN_BUDGETS.join(', ')}`);
  return n as TokenBudget;
}

export function registerCaptionCommand(program: Command): void {
  program
    .command('caption')
    .description('Caption one image file with a model package (streams the caption to stdout)')
    .argument('<file>', 'JPEG or PNG image')
    .requiredOption('-m, --model <dir>', 'model package directory (with a vision encoder)')
    .option('--json', 'print one JSON object {text, width, height, image_tokens, tokens, latency_ms, ...}')
    .option('--prompt <text>', 'what to ask about the image', DEFAULT_CAPTION_PROMPT)
    .option('--tokens <n>', `image token budget (${SOFT_TOKEN_BUDGETS.join(', ')})`, budget, DEFAULT_IMAGE_TOKENS)
    .option('--max-tokens <n>', 'longest caption, in tokens', intIn(1, 2048), 64)
    .option('--seed <n>', 'sampling seed (same seed, same caption)', intIn(0, 0xffffffff))
    .option('--threads <n>', 'ONNX Runtime threads', intIn(1, 64), 4)
    .option('--context-tokens <n>', 'largest context (prompt + caption)', intIn(128, 131072), 4096)
    .option(NO_PREPACKED_CACHE_FLAG, NO_PREPACKED_CACHE_HELP)
    .action(async (file: string, opts: CaptionOptions) => {
      process.exitCode = await caption(file, opts);
    });
}

async function caption(file: string, opts: CaptionOptions): Promise<number> {
  const fail = (message: string): number => reportFailure(opts.json, message);
  if (opts.prompt.trim() === '' || opts.prompt.length > 4096) return fail('the prompt must have 1 to 4096 characters');
  let image: Buffer;
  try {
    const info = await stat(file);
    if (!info.isFile()) return fail(`${file} is not a file`);
    if (info.size > MAX_FILE_BYTES) return fail(`${file} is larger than ${MAX_FILE_BYTES} bytes`);
    image = await readFile(file);
  } catch (err) {
    return fail((err as Error).message);
  }
  // Decode before loading the model (seconds on a board): a file that is no image fails at once, by name.
  try {
    await sharp(image, { failOn: 'error' }).raw().toBuffer();
  } catch (err) {
    return fail(`${file}: not a decodable image (${(err as Error).message})`);
  }
  const settings = modelSettings.parse({
    dir: opts.model,
    threads: opts.threads,
    context_tokens: opts.contextTokens,
    max_answer_tokens: opts.maxTokens,
    prepacked_cache: opts.prepackedCache,
  });
  const engine = new GemmaAnswerEngine(settings, { logger: commandLogger() });
  await engine.start();
  const ac = new AbortController();
  const onSigint = (): void => ac.abort();
  process.once('SIGINT', onSigint);
  try {
    const st = engine.status();
    if (st.state !== 'ready') return fail(st.detail);
    if (st.randomWeights)
      process.stderr.write('perch: note: this package has random weights (synthetic); its captions are meaningless\n');
    let streamed = false;
    const r = await engine.generate({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'image', data: image, tokens: opts.tokens },
            { type: 'text', text: opts.prompt },
          ],
        },
      ],
      maxTokens: opts.maxTokens,
      ...(opts.seed !== undefined ? { sampling: { seed: opts.seed } } : {}),
      signal: ac.signal,
      onToken: (delta) => {
        if (opts.json) return;
        process.stdout.write(delta);
        streamed = true;
      },
    });
    if (opts.json) {
      const out = {
        text: r.text,
        file,
        ...(r.image ? { width: r.image.width, height: r.image.height, image_tokens: r.image.tokens } : {}),
        finish_reason: r.finishReason,
        tokens: r.tokens,
        latency_ms: latencyFields(r.timings),
        ...(st.randomWeights ? { random_weights: true } : {}),
      };
      process.stdout.write(JSON.stringify(out) + '\n');
    } else if (streamed) {
      process.stdout.write('\n');
    }
    return 0;
  } catch (err) {
    return fail((err as Error).message);
  } finally {
    process.off('SIGINT', onSigint);
    await engine.close();
  }
}
