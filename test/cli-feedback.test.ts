/**
 * The command line says what happened: library warnings reach stderr, a package that does not suit this CPU is
 * announced, --json failures are JSON, a file that is no image fails before the model loads, and a missing
 * config file gets a hint that fits how its path was chosen. Real child processes of `perch`.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { quantPolicyFor } from '../src/model/package/manifest.js';
import { synthPackage } from '../src/model/build/synth.js';
import { ortRunsInt8Activations } from '../src/engine/int8-activations.js';
import { perch } from './cli-helpers.js';
import { makeTinyPackage, tempRoot, writeTinyCheckpoint } from './engine-helpers.js';

let root: string;
let pkg: string;
/** 2-bit linears in blocks of 16: ONNX Runtime 1.30 has no int8-activation kernel for them on any CPU here. */
let unfit: string;

beforeAll(async () => {
  root = tempRoot('cli-feedback');
  ({ dir: pkg } = await makeTinyPackage(root));
  unfit = join(root, 'unfit');
  const base = quantPolicyFor('pi5');
  await synthPackage({
    preset: 'tiny',
    outDir: unfit,
    seed: 3,
    encoders: false,
    policy: { ...base, linear: { ...base.linear!, block_size: 16, promote: undefined } },
  });
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('perch commands report what happened', () => {
  it('a prepacked cache that cannot be made is a warning on stderr, and the answer still comes', async () => {
    const r = await perch('ask', '--model', pkg, '--max-tokens', '2', '--threads', '1', 'hi', {
      env: { PERCH_CACHE_DIR: '/dev/null/x' },
    });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/prepacked weight cache unavailable/);
    expect(r.stderr).toContain('/dev/null/x');
  });

  it('a package whose 2-bit linears get no int8 kernel on this CPU is announced by ask and verify, naming pi4', async () => {
    expect(await ortRunsInt8Activations(2, 16)).toBe(false); // the premise: this block size has no int8 path
    const ask = await perch(
      'ask',
      '--model',
      unfit,
      '--max-tokens',
      '2',
      '--threads',
      '1',
      '--no-prepacked-cache',
      'hi',
    );
    expect(ask.code).toBe(0);
    expect(ask.stderr).toMatch(/expect int8 dot-product instructions this CPU lacks.*'pi4' profile/);
    const verify = await perch('model', 'verify', '--quick', unfit);
    expect(verify.code).toBe(0);
    expect(verify.stderr).toMatch(/warning: .*'pi4' profile/);
    // A package that suits the CPU says nothing of the kind.
    const fine = await perch('model', 'verify', '--quick', pkg);
    expect(fine.stderr).not.toMatch(/int8/);
  });

  it('a pi4 package on a CPU with int8 dot products is announced, naming pi5', async () => {
    expect(await ortRunsInt8Activations(2, 128)).toBe(true); // the premise: this x86-64 build machine has the int8 path
    const pi4 = join(root, 'pi4');
    await synthPackage({ preset: 'tiny', outDir: pi4, seed: 3, encoders: false, profile: 'pi4' });
    const verify = await perch('model', 'verify', '--quick', pi4);
    expect(verify.code).toBe(0);
    expect(verify.stderr).toMatch(/warning: this package's int8-channel linears .* 'pi5' profile/);
  });

  it('convert without --profile picks the profile this CPU runs best and says why', async () => {
    const ckpt = join(root, 'ckpt');
    await writeTinyCheckpoint(ckpt);
    const out = join(root, 'converted');
    const r = await perch('model', 'convert', '--from', ckpt, '--out', out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/profile pi5: this CPU runs 2-bit linears with int8 activations \(avx2 present\)/);
    expect(r.stdout).toContain('profile pi5');
  });

  it('--json failures are one JSON object on stdout', async () => {
    for (const cmd of [
      ['ask', '--model', join(root, 'none'), '--json', 'hi'],
      ['caption', join(root, 'none.jpg'), '--model', pkg, '--json'],
      ['transcribe', join(root, 'none.wav'), '--model', pkg, '--json'],
    ]) {
      const r = await perch(...cmd);
      expect(r.code, cmd.join(' ')).toBe(1);
      const out = JSON.parse(r.stdout) as { error: string };
      expect(out.error.length).toBeGreaterThan(5);
    }
  });

  it('caption names a file that is no image, before any model is loaded', async () => {
    const junk = join(root, 'junk.jpg');
    writeFileSync(junk, Buffer.from('\xff\xd8\xff\xe0 this is not a JPEG at all', 'latin1'));
    // The model path does not exist: the error must be about the file, found first.
    const r = await perch('caption', junk, '--model', join(root, 'no-model'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${junk}: not a decodable image`);
    expect(r.stderr).not.toContain('no-model');
  });

  it('config check on a missing file names it without pointing at an option it does not take', async () => {
    const missing = join(root, 'nope.yaml');
    const r = await perch('config', 'check', missing);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`config file ${missing} not found`);
    expect(r.stderr).not.toContain('--config');
  });
});
