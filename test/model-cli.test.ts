/** `perch model ...` as a real child process (through the real src/cli.ts). */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { perch as run } from './cli-helpers.js';

const perch = (...args: string[]) => run('model', ...args);

let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'perch-model-cli-'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

it('synth builds a tiny package that verify passes; a flipped byte fails verify naming the file', async () => {
  const pkg = join(root, 'tiny');
  const synth = await perch('synth', '--preset', 'tiny', '--out', pkg, '--seed', '5');
  expect(synth.stderr).toBe('');
  expect(synth.code).toBe(0);
  expect(synth.stdout).toContain('package written (11 files');
  const ok = await perch('verify', pkg);
  expect(ok).toMatchObject({ code: 0, stdout: `${pkg}: OK (11 files, checksums match)\n` });

  const data = join(pkg, 'decoder.onnx.data');
  const bytes = readFileSync(data);
  bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0x80;
  writeFileSync(data, bytes);
  const bad = await perch('verify', pkg);
  expect(bad.code).toBe(1);
  expect(bad.stderr).toContain(`${data}: checksum mismatch`);
  expect(bad.stderr).toContain('1 problem(s)');
  // The quick check does not hash, so it passes this (same size) damage.
  expect((await perch('verify', '--quick', pkg)).code).toBe(0);
});

it('reports bad arguments and failures with exit 1', async () => {
  const badPreset = await perch('synth', '--preset', 'huge', '--out', join(root, 'x'));
  expect(badPreset.code).toBe(1);
  expect(badPreset.stderr).toContain('expected one of tiny, e2b');
  // A seed is written in digits: 1e3 is refused, not read as 1000.
  const badSeed = await perch('synth', '--preset', 'tiny', '--out', join(root, 'x'), '--seed', '1e3');
  expect(badSeed.code).toBe(1);
  expect(badSeed.stderr).toContain('expected an integer from 0 to 4294967295');
  const noPkg = await perch('verify', join(root, 'nothing'));
  expect(noPkg.code).toBe(1);
  expect(noPkg.stderr).toContain('manifest.json: missing');
  const noCkpt = await perch('convert', '--from', join(root, 'nothing'), '--out', join(root, 'y'));
  expect(noCkpt.code).toBe(1);
  expect(noCkpt.stderr).toContain('config.json: missing');
});
