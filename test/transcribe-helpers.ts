/**
 * A tiny model package that can hear: the tiny synthetic package with a media-input decoder, audio markers in
 * its tokenizer and the tiny audio encoder (8-bit, rtn) beside it. Until `perch model synth` writes these
 * itself, the tests assemble it here from the same building blocks.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tinyAudioConfig } from '../src/model/gemma4/audio-config.js';
import { writeAudioEncoderModel } from '../src/model/gemma4/audio-graph.js';
import { AUDIO_DEFAULT_LINEAR, uniformAudioPolicy } from '../src/model/gemma4/audio-quant.js';
import { syntheticAudioWeightSource } from '../src/model/gemma4/audio-weights.js';
import { MANIFEST_FILE, type Manifest } from '../src/model/package/manifest.js';
import { hashFile } from '../src/model/package/writer.js';
import { makeTinyPackage, rebuildDecoder } from './engine-helpers.js';
import { REPO } from './daemon-helpers.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';

export const SPEECH_WAV = join(REPO, 'config', 'samples', 'speech.wav');
export const phraseWav = (n: 1 | 2 | 3): string => join(REPO, 'test', 'fixtures', 'audio', `phrase-${n}.wav`);
export const phraseSamples = (n: 1 | 2 | 3): Int16Array => wavTo16kMono(readFileSync(phraseWav(n))).samples;

const AUDIO_MARKERS = ['<|audio>', '<|audio|>', '<audio|>'];

/** Gives the tokenizer Gemma's three audio markers (as special tokens) in place of its highest unused ids. */
function addAudioMarkers(dir: string): void {
  const file = join(dir, 'tokenizer.json');
  type Added = { id: number; content: string; single_word: boolean; lstrip: boolean; rstrip: boolean; normalized: boolean; special: boolean };
  const tok = JSON.parse(readFileSync(file, 'utf8')) as { added_tokens: Added[]; model: { vocab: Record<string, number> } };
  const vocab = tok.model.vocab;
  if (AUDIO_MARKERS.every((m) => m in vocab)) return;
  const unused = Object.entries(vocab)
    .filter(([t]) => t.startsWith('<unused'))
    .sort((a, b) => b[1] - a[1]);
  AUDIO_MARKERS.forEach((m, i) => {
    const [old, id] = unused[i]!;
    delete vocab[old];
    vocab[m] = id;
    tok.added_tokens.push({ id, content: m, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  });
  tok.added_tokens.sort((a, b) => a.id - b.id);
  writeFileSync(file, JSON.stringify(tok));
}

/** Builds (once per root) a tiny package that can hear; returns its directory. */
export async function makeHearingPackage(root: string, name = 'hearing'): Promise<string> {
  const dir = join(root, name);
  if (existsSync(join(dir, 'audio_encoder.onnx'))) return dir;
  const { dir: base, manifest, cfg } = await makeTinyPackage(root, `${name}-base`);
  await rebuildDecoder(base, manifest, cfg, dir, { media: true });
  addAudioMarkers(dir);
  // The tokenizer changed: keep the manifest's sizes and hashes true so the package still verifies.
  const m = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), 'utf8')) as Manifest;
  for (const f of m.files) Object.assign(f, await hashFile(join(dir, f.path)));
  writeFileSync(join(dir, MANIFEST_FILE), JSON.stringify(m, null, 2));
  const acfg = { ...tinyAudioConfig(), textHiddenSize: cfg.hiddenSize };
  await writeAudioEncoderModel(dir, acfg, syntheticAudioWeightSource(acfg, 7), { quant: uniformAudioPolicy({ ...AUDIO_DEFAULT_LINEAR, method: 'rtn' }) });
  return dir;
}
