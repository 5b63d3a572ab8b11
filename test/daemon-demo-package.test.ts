/**
 * model.synthetic_if_missing builds the demo package through the model command (`perch model synth`, a child
 * process), not by importing the builder into the daemon: from source here (through tsx), from dist in npm start
 * (test/dev-demo.test.ts).
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hasPackage, synthesiseTinyPackage } from '../src/daemon/model.js';
import { verifyPackage } from '../src/model/package/verify.js';
import { tempRoot } from './engine-helpers.js';

const root = tempRoot('demo-package');
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('the demo package', () => {
  it('is written by perch model synth and verifies', async () => {
    const dir = join(root, 'tiny');
    expect(hasPackage(dir)).toBe(false);
    await synthesiseTinyPackage(dir);
    expect(hasPackage(dir)).toBe(true);
    const r = await verifyPackage(dir, { full: true });
    expect(r.problems).toEqual([]);
    expect(r.manifest!.source).toMatchObject({ kind: 'synth', preset: 'tiny' });
  }, 120_000);

  it('a directory the command cannot make is an error naming it and what the command said', async () => {
    const file = join(root, 'a-file');
    writeFileSync(file, 'not a directory');
    await expect(synthesiseTinyPackage(join(file, 'tiny'))).rejects.toThrow(/could not build the synthetic package in .*a-file\/tiny: .*ENOTDIR/);
  }, 120_000);
});
