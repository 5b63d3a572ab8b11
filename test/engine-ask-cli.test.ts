/** `perch ask` as a real child process on a tiny synthetic package. */
import { rmSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { perch as run } from './cli-helpers.js';
import { copyPackage, makeTinyPackage, tempRoot } from './engine-helpers.js';

const perch = (...args: string[]) => run('ask', ...args);

let root: string;
let pkg: string;
beforeAll(async () => {
  root = tempRoot('ask-cli');
  ({ dir: pkg } = await makeTinyPackage(root));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

it('--json prints text, token counts and timings; the same seed gives the same answer', async () => {
  const args = [
    '--model',
    pkg,
    '--json',
    '--max-tokens',
    '6',
    '--seed',
    '9',
    '--threads',
    '1',
    '--system',
    'Be brief.',
    'what is up?',
  ];
  const a = await perch(...args);
  expect(a.code).toBe(0);
  expect(a.stderr).toContain('random weights');
  const out = JSON.parse(a.stdout) as {
    text: string;
    finish_reason: string;
    tokens: { prompt: number; completion: number };
    timings: Record<string, number>;
  };
  expect(out.tokens.prompt).toBeGreaterThan(5);
  expect(out.tokens.completion).toBeGreaterThan(0);
  expect(out.tokens.completion).toBeLessThanOrEqual(6);
  expect(['stop', 'length']).toContain(out.finish_reason);
  expect(Object.keys(out.timings).sort()).toEqual(['decode_ms', 'first_token_ms', 'prefill_ms', 'tokens_per_second']);
  const b = await perch(...args);
  expect(JSON.parse(b.stdout)).toMatchObject({ text: out.text, tokens: out.tokens });
});

it('streams the answer to stdout: the streamed text is the --json text', async () => {
  const common = ['--model', pkg, '--max-tokens', '8', '--temperature', '0', '--threads', '1', 'hello'];
  const streamed = await perch(...common);
  const json = await perch('--json', ...common);
  expect(streamed.code).toBe(0);
  const text = (JSON.parse(json.stdout) as { text: string }).text;
  expect(text.length).toBeGreaterThan(0);
  expect(streamed.stdout.trimEnd()).toBe(text);
});

it('errors go to stderr with exit 1: damaged package, context overflow, bad option', async () => {
  const bad = copyPackage(pkg, join(root, 'damaged'));
  truncateSync(join(bad, 'decoder.onnx.data'), 100);
  const damaged = await perch('--model', bad, 'hi');
  expect(damaged.code).toBe(1);
  expect(damaged.stdout).toBe('');
  expect(damaged.stderr).toMatch(/decoder\.onnx\.data: truncated/);

  const long = await perch('--model', pkg, '--context-tokens', '128', '--max-tokens', '200', 'hi');
  expect(long.code).toBe(1);
  expect(long.stderr).toMatch(/prompt of \d+ tokens \+ max_tokens 200 exceeds model\.context_tokens 128/);

  const opt = await perch('--model', pkg, '--temperature', 'hot', 'hi');
  expect(opt.code).toBe(1);
  expect(opt.stderr).toMatch(/expected a number from 0 to 2/);
});
