/** Option parsers shared by the `perch` subcommands (commander calls them with the raw text). */
import { InvalidArgumentError } from 'commander';
import { createLogger, type Logger } from '../common/log.js';

/** A whole number written in digits, from min to max. */
export function intIn(min: number, max: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max)
      throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    return n;
  };
}

/** `--no-prepacked-cache`, shared by the commands that load a model package. */
export const NO_PREPACKED_CACHE_FLAG = '--no-prepacked-cache';
export const NO_PREPACKED_CACHE_HELP =
  'pack the weights in memory instead of using the per-machine file cache ($PERCH_CACHE_DIR, default ~/.cache/perch)';

/**
 * What library code says while a command runs (a prepacked cache that cannot be written, a package profile that
 * does not suit this CPU): warnings and errors as plain lines on stderr, so they are never silent.
 */
export function commandLogger(): Logger {
  return createLogger({ level: 'warn', format: 'pretty' }, process.stderr);
}

/**
 * A command's failure: with --json, one JSON object {"error": message} on stdout (what a script parses);
 * otherwise a line on stderr. Returns the exit status, 1.
 */
export function reportFailure(json: boolean | undefined, message: string): number {
  if (json) process.stdout.write(JSON.stringify({ error: message }) + '\n');
  else process.stderr.write(`perch: ${message}\n`);
  return 1;
}
