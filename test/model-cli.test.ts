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

it("synth --config --if-missing builds at the config's model.dir once, then leaves it (npm start's demo package)", async () => {
  const dir = join(root, 'from-config');
  const config = join(root, 'perch.yaml');
  writeFileSync(config, `model:\n  dir: ${JSON.stringify(dir)}\n`);
  const first = await perch('synth', '--preset', 'tiny', '--config', config, '--if-missing');
  expect(first.code).toBe(0);
  expect(first.stderr).toContain(`no model package at ${dir}: building the tiny synthetic one`);
  expect(first.stdout).toContain(`${dir}: package written`);
  const manifest = readFileSync(join(dir, 'manifest.json'));
  const again = await perch('synth', '--preset', 'tiny', '--config', config, '--if-missing');
  expect(again).toMatchObject({ code: 0, stdout: '', stderr: '' });
  expect(readFileSync(join(dir, 'manifest.json')).equals(manifest)).toBe(true);
  // Without --if-missing the builder refuses a directory that holds a package.
  expect((await perch('synth', '--preset', 'tiny', '--config', config)).code).toBe(1);
  const both = await perch('synth', '--preset', 'tiny', '--config', config, '--out', join(root, 'y'));
  expect(both.code).toBe(1);
  expect(both.stderr).toContain('exactly one of --out and --config');
});
