/**
 * The formatter and linter (Biome, configured in biome.json) as part of the suite, so CI fails on a file that
 * is not formatted or breaks a lint rule. `npm run format` rewrites the tree; `npm run lint` is this check.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '..');

describe('biome ci (format and lint)', () => {
  it('finds every file formatted and no lint error', async () => {
    const r = await run(
      path.join(root, 'node_modules/.bin/biome'),
      ['ci', '--colors=off', '--error-on-warnings', '.'],
      {
        cwd: root,
        maxBuffer: 32 << 20,
      },
    ).then(
      (ok) => ({ code: 0, out: ok.stdout + ok.stderr }),
      (err: { code?: number; stdout?: string; stderr?: string }) => ({
        code: err.code ?? -1,
        out: `${err.stdout ?? ''}${err.stderr ?? ''}`,
      }),
    );
    // The whole report in the failure message: it names each file and rule.
    expect(r.code, r.out.slice(0, 20_000)).toBe(0);
    expect(r.out).toMatch(/Checked \d+ files?/);
  }, 60_000);
});
