/** Option parsers shared by the `perch` subcommands (commander calls them with the raw text). */
import { InvalidArgumentError } from 'commander';

/** A whole number written in digits, from min to max. */
export function intIn(min: number, max: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    return n;
  };
}

/** `--no-prepacked-cache`, shared by the commands that load a model package. */
export const NO_PREPACKED_CACHE_FLAG = '--no-prepacked-cache';
export const NO_PREPACKED_CACHE_HELP = 'pack the weights in memory instead of using the per-machine file cache ($PERCH_CACHE_DIR, default ~/.cache/perch)';
