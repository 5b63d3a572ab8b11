/**
 * A tiny model package that can see: the tiny synthetic package with a media-input decoder, image markers in
 * its tokenizer and the tiny vision encoder beside it. Until `perch model synth` writes these itself, the
 * tests assemble it here from the same building blocks.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tinyVisionConfig } from '../src/model/gemma4/vision-config.js';
import { writeVisionEncoderModel } from '../src/model/gemma4/vision-graph.js';
import { defaultVisionPolicy } from '../src/model/gemma4/vision-quant.js';
import { syntheticVisionWeightSource } from '../src/model/gemma4/vision-weights.js';
import { MANIFEST_FILE, type Manifest } from '../src/model/package/manifest.js';
import { hashFile } from '../src/model/package/writer.js';
import { makeTinyPackage, rebuildDecoder } from './engine-helpers.js';
import { REPO } from './daemon-helpers.js';

export const FRAMES = join(REPO, 'config', 'samples', 'frames');
export const frame = (n: number): Buffer => readFileSync(join(FRAMES, `frame-0${n}.jpg`));

const IMAGE_MARKERS = ['<|image>', '<|image|>', '<image|>'];

/** Gives the tokenizer Gemma's three image markers (as special tokens) in place of its highest unused ids. */
function addImageMarkers(dir: string): void {
  const file = join(dir, 'tokenizer.json');
  const tok = JSON.parse(readFileSync(file, 'utf8')) as {
    added_tokens: Array<{ id: number; content: string; special: boolean }>;
    model: { vocab: Record<string, number> };
  };
  const vocab = tok.model.vocab;
  if (IMAGE_MARKERS.every((m) => m in vocab)) return;
  const unused = Object.entries(vocab)
    .filter(([t]) => t.startsWith('<unused'))
    .sort((a, b) => b[1] - a[1]);
  IMAGE_MARKERS.forEach((m, i) => {
    const [old, id] = unused[i]!;
    delete vocab[old];
    vocab[m] = id;
    tok.added_tokens.push({ id, content: m, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true } as (typeof tok.added_tokens)[number]);
  });
  tok.added_tokens.sort((a, b) => a.id - b.id);
  writeFileSync(file, JSON.stringify(tok));
}

/** Builds (once per root) a tiny package that can see; returns its directory. */
export async function makeSeeingPackage(root: string, name = 'seeing'): Promise<string> {
  const dir = join(root, name);
  if (existsSync(join(dir, 'vision_encoder.onnx'))) return dir;
  const { dir: base, manifest, cfg } = await makeTinyPackage(root, `${name}-base`);
  await rebuildDecoder(base, manifest, cfg, dir, { media: true });
  addImageMarkers(dir);
  const vcfg = { ...tinyVisionConfig(), textHiddenSize: cfg.hiddenSize };
  await writeVisionEncoderModel(dir, vcfg, syntheticVisionWeightSource(vcfg, 3), { quant: defaultVisionPolicy('rtn') });
  const m = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), 'utf8')) as Manifest;
  for (const f of m.files) Object.assign(f, await hashFile(join(dir, f.path)));
  writeFileSync(join(dir, MANIFEST_FILE), JSON.stringify(m, null, 2));
  return dir;
}
