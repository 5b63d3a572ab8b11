/**
 * A tiny model package that can see: `perch model synth --preset tiny` writes the vision encoder, a
 * media-input decoder and the image markers itself, so this is the plain tiny synthetic package.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_FILES } from '../src/model/package/manifest.js';
import { synthPackage } from '../src/model/synth.js';
import { SEED } from './engine-helpers.js';
import { REPO } from './daemon-helpers.js';

export const FRAMES = join(REPO, 'config', 'samples', 'frames');
export const frame = (n: number): Buffer => readFileSync(join(FRAMES, `frame-0${n}.jpg`));

/** Builds (once per root) a tiny package that can see; returns its directory. */
export async function makeSeeingPackage(root: string, name = 'seeing'): Promise<string> {
  const dir = join(root, name);
  if (existsSync(join(dir, PACKAGE_FILES.visionGraph))) return dir;
  await synthPackage({ preset: 'tiny', outDir: dir, profile: 'pi5', seed: SEED });
  return dir;
}
