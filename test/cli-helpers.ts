/** Runs Perch's TypeScript entry points as real child processes, as a user's shell would. */
import { execFile } from 'node:child_process';

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** `node --import tsx <script> ...args`; resolves (never rejects) with the exit code and output. */
export function runScript(
  script: string,
  args: readonly string[],
  timeoutMs = 60_000,
  env?: NodeJS.ProcessEnv,
): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', script, ...args],
      { timeout: timeoutMs, maxBuffer: 8 << 20, env: env ? { ...process.env, ...env } : process.env },
      (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      },
    );
  });
}

/** The `perch` command from source; a last argument `{ env }` adds environment variables. */
export function perch(...args: Array<string | { env: NodeJS.ProcessEnv }>): Promise<Run> {
  const last = args[args.length - 1];
  const env = typeof last === 'object' ? last.env : undefined;
  const words = args.filter((a): a is string => typeof a === 'string');
  return runScript('src/cli.ts', words, 60_000, env);
}
