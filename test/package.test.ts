import { AudioEncoderSession } from '../src/engine/audio-encoder.js';
import {
  cpSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
  readdirSync,
  existsSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tinyConfig } from '../src/model/gemma4/config.js';
import { cacheSlots } from '../src/model/gemma4/decoder-graph.js';
import { MANIFEST_FILE, type Manifest } from '../src/model/package/manifest.js';
import { openPackage } from '../src/model/package/load.js';
import { assertPackageLoadable, verifyPackage } from '../src/model/package/verify.js';
import { PlePager } from '../src/model/ple/pager.js';
import { synthPackage } from '../src/model/build/synth.js';
import { emptyCache, runChunk } from './gemma4-helpers.js';
import { noMedia } from './package-helpers.js';
import { parseGemma4AudioConfig } from '../src/model/gemma4/audio-config.js';
import { parseGemma4VisionConfig, patchDim } from '../src/model/gemma4/vision-config.js';
import { audioBatch } from './gemma4-audio-helpers.js';
import { gridInput, runVision } from './gemma4-vision-helpers.js';

let root: string;
let pkg: string;
let manifest: Manifest;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'perch-package-'));
  pkg = join(root, 'tiny');
  manifest = await synthPackage({ preset: 'tiny', outDir: pkg, profile: 'pi5', seed: 3 });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A fresh copy of the synth package to damage. */
function copy(name: string): string {
  const dir = join(root, name);
  cpSync(pkg, dir, { recursive: true });
  return dir;
}

function editJson(path: string, edit: (j: Record<string, unknown>) => void): void {
  const j = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  edit(j);
  writeFileSync(path, JSON.stringify(j));
}

describe('tiny synth package', () => {
  it('holds every file with its role and passes a full verify', async () => {
    expect(manifest.files.map((f) => [f.path, f.role])).toEqual([
      ['config.json', 'config'],
      ['decoder.onnx', 'decoder-graph'],
      ['decoder.onnx.data', 'decoder-weights'],
      ['vision_encoder.onnx', 'vision-graph'],
      ['vision_encoder.onnx.data', 'vision-weights'],
      ['audio_encoder.onnx', 'audio-graph'],
      ['audio_encoder.onnx.data', 'audio-weights'],
      ['ple.bin', 'ple'],
      ['tokenizer.json', 'tokenizer'],
      ['tokenizer_config.json', 'tokenizer-config'],
      ['chat_template.jinja', 'chat-template'],
    ]);
    expect(manifest.quantisation).toMatchObject({
      profile: 'pi5',
      linear: { bits: 2, accuracy_level: 4 },
      embedding: { bits: 4 },
      ple: { bits: 4 },
    });
    expect(manifest.created_by).toMatch(/^perch \d+\.\d+\.\d+/);
    expect(readdirSync(pkg).sort()).toEqual([...manifest.files.map((f) => f.path), MANIFEST_FILE].sort());
    const r = await verifyPackage(pkg, { full: true });
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
    await expect(assertPackageLoadable(pkg)).resolves.toMatchObject({ format_version: 1 });
  });

  it('runs in a real ONNX Runtime session fed by the pager', async () => {
    const cfg = tinyConfig();
    const pager = await PlePager.open(join(pkg, 'ple.bin'), {
      cacheBytes: 1 << 20,
      expect: { rows: cfg.vocabSize, cols: cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput },
    });
    const session = await ort.InferenceSession.create(join(pkg, 'decoder.onnx'), { intraOpNumThreads: 1 });
    const slots = cacheSlots(cfg);
    const ids = [2, 4, 100, 300];
    const r = await runChunk(
      session,
      slots,
      { ...emptyCache(slots), ...noMedia(cfg.hiddenSize, ids.length) },
      ids,
      0,
      await pager.rowsFor(ids),
    );
    expect(r.dims).toEqual([1, 1, cfg.vocabSize]); // logits: last
    expect(r.logits.every((x) => Number.isFinite(x))).toBe(true);
    await session.release();
    await pager.close();
  });

  it('openPackage gives the config, file paths and a pager with the configured budget; a damaged package is refused', async () => {
    const opened = await openPackage(pkg, { pleCacheMb: 2 });
    expect(opened.config.numHiddenLayers).toBe(tinyConfig().numHiddenLayers);
    expect(opened.path('decoder-graph')).toBe(join(pkg, 'decoder.onnx'));
    expect(opened.path('other')).toBeNull();
    expect(opened.pager.stats().budgetBytes).toBe(2 * 1024 * 1024);
    expect((await opened.pager.rowsFor([1, 2])).length).toBe(2 * 48);
    await opened.close();
    const dir = copy('open-damaged');
    rmSync(join(dir, 'tokenizer.json'));
    await expect(openPackage(dir, { pleCacheMb: 1 })).rejects.toThrow(`${join(dir, 'tokenizer.json')}: missing`);
  });

  it('ships a tokenizer and chat template that load, cover the vocabulary, and round-trip a chat', () => {
    const tok = new Tokenizer(
      JSON.parse(readFileSync(join(pkg, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(join(pkg, 'tokenizer_config.json'), 'utf8')),
    );
    const template = new Template(readFileSync(join(pkg, 'chat_template.jinja'), 'utf8'));
    const text = template.render({
      messages: [{ role: 'user', content: 'What is on the porch? €' }],
      add_generation_prompt: true,
      bos_token: '<bos>',
    });
    expect(text).toBe('<bos><|turn>user\nWhat is on the porch? €<turn|>\n<|turn>model\n');
    const ids = tok.encode(text, { add_special_tokens: false }).ids;
    expect(ids.slice(0, 2)).toEqual([2, 4]);
    expect(Math.max(...ids)).toBeLessThan(tinyConfig().vocabSize);
    expect(tok.decode(ids, { skip_special_tokens: false })).toBe(text);
    // Every id the decoder can emit decodes to something.
    expect(tok.decode([tinyConfig().vocabSize - 1], { skip_special_tokens: false }).length).toBeGreaterThan(0);
  });

  it('places the media markers at the top ids of the small vocabulary; the template renders images, audio and thinking', () => {
    const tok = new Tokenizer(
      JSON.parse(readFileSync(join(pkg, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(join(pkg, 'tokenizer_config.json'), 'utf8')),
    );
    const v = tinyConfig().vocabSize;
    const markers = ['<|image>', '<|audio>', '<|image|>', '<|audio|>', '<image|>', '<audio|>', '<|video|>'];
    expect(markers.map((m) => tok.token_to_id(m))).toEqual(markers.map((_, i) => v - markers.length + i));
    const template = new Template(readFileSync(join(pkg, 'chat_template.jinja'), 'utf8'));
    const text = template.render({
      messages: [
        { role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'What is this?' }, { type: 'audio' }] },
      ],
      add_generation_prompt: true,
      enable_thinking: true,
      bos_token: '<bos>',
    });
    expect(text).toBe(
      '<bos><|turn>system\n<|think|><turn|>\n<|turn>user\n\n\n<|image|>\n\nWhat is this?<|audio|><turn|>\n<|turn>model\n',
    );
    const ids = tok.encode(text, { add_special_tokens: false }).ids;
    expect(ids).toContain(tok.token_to_id('<|image|>'));
    expect(ids).toContain(tok.token_to_id('<|audio|>'));
    expect(ids).toContain(tok.token_to_id('<|think|>'));
  });

  it('holds vision and audio encoders that run in ONNX Runtime and project to the text width', async () => {
    const cfg = tinyConfig();
    const vcfg = parseGemma4VisionConfig(manifest.config);
    const vision = await ort.InferenceSession.create(join(pkg, 'vision_encoder.onnx'), { intraOpNumThreads: 1 });
    const k = vcfg.poolingKernelSize;
    const img = await runVision(vision, [gridInput(2 * k, 2 * k, patchDim(vcfg), 1)], patchDim(vcfg));
    expect(img.dims).toEqual([1, 4, cfg.hiddenSize]);
    expect(img.data.every(Number.isFinite)).toBe(true);
    await vision.release();
    const acfg = parseGemma4AudioConfig(manifest.config);
    const audio = await AudioEncoderSession.open(join(pkg, 'audio_encoder.onnx'), { intraOpNumThreads: 1 });
    expect(audio.streaming).toBe(true);
    const b = audioBatch(acfg.inputFeatureSize, 48, [48], 2);
    const a = await audio.encode(b.clip(0), b.maskOf(0));
    expect(a.count).toBe(12);
    expect(a.hidden).toBe(cfg.hiddenSize);
    expect(a.rows.every(Number.isFinite)).toBe(true);
    await audio.close();
  });

  it('encoders: false gives a text-only package (no vision/audio config or files), its decoder still taking media rows', async () => {
    const dir = join(root, 'text-only');
    const m = await synthPackage({ preset: 'tiny', outDir: dir, profile: 'pi5', seed: 3, encoders: false });
    expect(m.files.map((f) => f.role)).toEqual([
      'config',
      'decoder-graph',
      'decoder-weights',
      'ple',
      'tokenizer',
      'tokenizer-config',
      'chat-template',
    ]);
    expect(m.config.vision_config).toBeUndefined();
    expect(m.config.audio_config).toBeUndefined();
    expect((await verifyPackage(dir, { full: true })).ok).toBe(true);
    const session = await ort.InferenceSession.create(join(dir, 'decoder.onnx'), { intraOpNumThreads: 1 });
    expect(session.inputNames).toEqual(expect.arrayContaining(['media_embeds', 'media_mask']));
    await session.release();
  });

  it('refuses to overwrite a non-empty directory', async () => {
    await expect(synthPackage({ preset: 'tiny', outDir: pkg, profile: 'float' })).rejects.toThrow(/not empty/);
    expect(existsSync(join(pkg, MANIFEST_FILE))).toBe(true);
  });
});

describe('verify finds damage and names the file', () => {
  it.each([
    'config.json',
    'decoder.onnx',
    'decoder.onnx.data',
    'vision_encoder.onnx',
    'vision_encoder.onnx.data',
    'audio_encoder.onnx',
    'audio_encoder.onnx.data',
    'ple.bin',
    'tokenizer.json',
    'tokenizer_config.json',
    'chat_template.jinja',
  ])('one flipped byte in %s', async (file) => {
    const dir = copy(`flip-${file}`);
    const bytes = readFileSync(join(dir, file));
    const at = Math.floor(bytes.length / 2);
    bytes[at] = bytes[at]! ^ 0x01;
    writeFileSync(join(dir, file), bytes);
    const quick = await verifyPackage(dir, { full: false });
    const full = await verifyPackage(dir, { full: true });
    expect(full.ok).toBe(false);
    expect(full.problems).toContainEqual({
      file,
      message: expect.stringMatching(/^checksum mismatch/) as unknown as string,
    });
    expect(full.problems.every((p) => p.file === file)).toBe(true);
    // Sizes still match, so the quick check at load cannot see a flipped byte in raw data.
    if (file === 'decoder.onnx.data' || file === 'ple.bin')
      expect(quick.problems.filter((p) => p.file !== file)).toEqual([]);
  });

  it('truncation, with expected and actual sizes', async () => {
    const dir = copy('truncated');
    const size = manifest.files.find((f) => f.path === 'ple.bin')!.bytes;
    truncateSync(join(dir, 'ple.bin'), size - 100);
    const r = await verifyPackage(dir, { full: false });
    expect(r.problems).toEqual([{ file: 'ple.bin', message: `truncated: expected ${size} bytes, got ${size - 100}` }]);
    await expect(assertPackageLoadable(dir)).rejects.toThrow(`${join(dir, 'ple.bin')}: truncated`);
  });

  it('a missing file', async () => {
    const dir = copy('missing');
    rmSync(join(dir, 'decoder.onnx.data'));
    const r = await verifyPackage(dir, { full: true });
    expect(r.problems).toContainEqual({ file: 'decoder.onnx.data', message: 'missing' });
  });

  it('a config that does not match the files', async () => {
    const dir = copy('config');
    editJson(join(dir, MANIFEST_FILE), (m) => {
      const tc = (m.config as { text_config: Record<string, unknown> }).text_config;
      tc.vocab_size = 1024;
      tc.vocab_size_per_layer_input = 1024;
    });
    const r = await verifyPackage(dir, { full: true });
    expect(r.ok).toBe(false);
    expect(r.problems).toContainEqual({
      file: 'config.json',
      message: 'config mismatch: differs from the config in manifest.json',
    });
    expect(r.problems).toContainEqual({
      file: 'ple.bin',
      message: 'config mismatch: PLE rows is 512, the config says 1024',
    });
  });

  it('a config the engine cannot run', async () => {
    const dir = copy('bad-config');
    editJson(join(dir, MANIFEST_FILE), (m) => {
      (m.config as { text_config: Record<string, unknown> }).text_config.hidden_size_per_layer_input = 16;
    });
    const r = await verifyPackage(dir, { full: false });
    expect(r.problems).toContainEqual({
      file: 'ple.bin',
      message: 'config mismatch: PLE layerDim is 8, the config says 16',
    });
    expect(r.problems).toContainEqual({
      file: 'decoder.onnx',
      message: 'config mismatch: per_layer_rows width 48, the config says 96',
    });
  });

  it('an unknown format_version, a missing manifest, a file listed outside the package', async () => {
    const dir = copy('version');
    editJson(join(dir, MANIFEST_FILE), (m) => (m.format_version = 99));
    expect((await verifyPackage(dir, { full: false })).problems).toEqual([
      { file: MANIFEST_FILE, message: 'unknown format_version 99 (this Perch reads 1)' },
    ]);
    editJson(join(dir, MANIFEST_FILE), (m) => {
      m.format_version = 1;
      (m.files as Array<{ path: string }>)[0]!.path = '../escape.json';
    });
    expect((await verifyPackage(dir, { full: false })).problems[0]).toMatchObject({
      file: MANIFEST_FILE,
      message: expect.stringMatching(/files\.0\.path/) as unknown as string,
    });
    writeFileSync(join(dir, MANIFEST_FILE), '{"format_version": 1,');
    expect((await verifyPackage(dir, { full: false })).problems[0]).toMatchObject({
      file: MANIFEST_FILE,
      message: expect.stringMatching(/^not valid JSON/) as unknown as string,
    });
    rmSync(join(dir, MANIFEST_FILE));
    expect((await verifyPackage(dir, { full: false })).problems).toEqual([
      { file: MANIFEST_FILE, message: 'missing (not a model package, or an interrupted build)' },
    ]);
  });

  it('a decoder graph that is not ONNX', async () => {
    const dir = copy('not-onnx');
    const size = readFileSync(join(dir, 'decoder.onnx')).length;
    writeFileSync(join(dir, 'decoder.onnx'), Buffer.alloc(size, 0xff));
    const r = await verifyPackage(dir, { full: false });
    expect(r.problems).toEqual([
      { file: 'decoder.onnx', message: expect.stringMatching(/^not a valid ONNX model/) as unknown as string },
    ]);
  });
});
