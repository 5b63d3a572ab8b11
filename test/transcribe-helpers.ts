/**
 * A tiny model package that can hear: `perch model synth --preset tiny` writes the audio encoder (8-bit,
 * rtn), a media-input decoder and the audio markers itself, so this is the plain tiny synthetic package.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_FILES } from '../src/model/package/manifest.js';
import { synthPackage } from '../src/model/build/synth.js';
import { SEED } from './engine-helpers.js';
import { REPO } from './daemon-helpers.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';

export const SPEECH_WAV = join(REPO, 'config', 'samples', 'speech.wav');
export const phraseWav = (n: 1 | 2 | 3): string => join(REPO, 'test', 'fixtures', 'audio', `phrase-${n}.wav`);
export const phraseSamples = (n: 1 | 2 | 3): Int16Array => wavTo16kMono(readFileSync(phraseWav(n))).samples;

/** Builds (once per root) a tiny package that can hear; returns its directory. */
export async function makeHearingPackage(root: string, name = 'hearing'): Promise<string> {
  const dir = join(root, name);
  if (existsSync(join(dir, PACKAGE_FILES.audioGraph))) return dir;
  await synthPackage({ preset: 'tiny', outDir: dir, profile: 'pi5', seed: SEED });
  return dir;
}
