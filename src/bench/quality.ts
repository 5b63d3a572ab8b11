#!/usr/bin/env node
/**
 * `npm run quality -- --checkpoint DIR [--gguf FILE --llama-python PATH] [--out DIR] [--threads 2]`: the
 * quality table (models/README.md, "Quality on a real model"). A fixed passage (test/fixtures/quality/passage.txt)
 * is tokenised with the checkpoint's tokenizer and cut into independent chunks of at most --chunk tokens, each
 * `<bos>` + up to chunk-1 passage tokens; every passage token is predicted exactly once, teacher-forced, from
 * the tokens before it in its chunk. For each package (converted from the checkpoint into --out, reused when
 * already there with the same policy and all-position logits) the decoder graph runs each chunk in one call
 * (empty cache), and we report:
 *   ppl      exp(mean negative log-likelihood of the passage tokens)
 *   KL       mean over positions of KL(float || model) of the next-token distributions, nats
 *   top-1    share of positions whose most likely next token agrees with the float package's
 *   bpw      bits per weight over the linear + embedding weights: the bytes of every decoder initializer that
 *            a MatMulNBits / MatMulInteger / MatMul / Gemm / Gather(BlockQuantized) node consumes (packed weights, scales,
 *            zero points; the tied embedding / LM head once) x 8 / the element count of the checkpoint's 2-D
 *            tensors (the seven linears of every layer and the embedding). Norms are not counted.
 * The float package's log-probs are streamed to <out>/float-logprobs.f32 (float32 little-endian
 * [positions, vocab], positions in chunk order) and the token chunks to <out>/tokens.json, so that
 * reference/quality_llamacpp.py (run with --llama-python) measures llama.cpp on the same tokens, chunks and
 * float reference in the same run; its GGUF bpw counts the same tensors (the 2-D ones) from their stored sizes.
 * Exit status: 0 ok, 1 the run failed, 2 bad arguments.
 */
import { spawn } from 'node:child_process';
import {
  createWriteStream,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  closeSync,
  writeFileSync,
  mkdirSync,
} from 'node:fs';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { PackageTokenizer } from '../engine/tokenizer.js';
import { convertCheckpoint } from '../model/build/convert.js';
import { parseGemma4TextConfig } from '../model/gemma4/config.js';
import { cacheSlots } from '../model/gemma4/contract.js';
import { quantPolicyFor, type QuantPolicy } from '../model/package/manifest.js';
import { SafetensorsCheckpoint } from '../model/safetensors.js';

const { onnx } = onnxProto;

const USAGE = `usage: npm run quality -- --checkpoint DIR [options]
  --checkpoint DIR     official-layout checkpoint (config.json, safetensors, tokenizer.json)
  --out DIR            work directory: packages, tokens.json, float-logprobs.f32 (default /tmp/perch-quality)
  --passage FILE       text (default test/fixtures/quality/passage.txt)
  --chunk N            tokens per chunk, bos included (default 512: the sliding window)
  --threads N          ONNX Runtime / llama.cpp threads (default 2)
  --variants a,b       Perch variants (default all: ${'float,s8,r8,pi4,s4,r4,s2,r2,mixed,...'})
  --gguf FILE          llama.cpp GGUF (Q4_K_M); Q2_K is requantised from it into --out
  --llama-python PATH  python with llama-cpp-python: runs reference/quality_llamacpp.py
`;

class UsageError extends Error {}

interface Variant {
  name: string;
  label: string;
  policy: QuantPolicy;
}

const PLE = quantPolicyFor('float').ple;

/** Perch's variants: error-searched ('s') and round-to-nearest ('r') at 8, 4, 2 bits, and the mixed pi5 policy. */
const E8 = { bits: 8, block_size: 64 } as const;

export function qualityVariants(): Variant[] {
  const lin = (bits: 2 | 4 | 8, block: number, method: 'search' | 'rtn') => ({
    bits,
    block_size: block,
    accuracy_level: 4,
    method,
  });
  return [
    { name: 'float', label: 'Perch float (reference)', policy: quantPolicyFor('float') },
    {
      name: 's8',
      label: 'Perch 8-bit, searched (linear b64, embedding 8-bit b64)',
      policy: { profile: 'pi4', linear: lin(8, 64, 'search'), embedding: { bits: 8, block_size: 64 }, ple: PLE },
    },
    {
      name: 'r8',
      label: 'Perch 8-bit, round-to-nearest (same layout)',
      policy: { profile: 'pi4', linear: lin(8, 64, 'rtn'), embedding: { bits: 8, block_size: 64 }, ple: PLE },
    },
    {
      name: 'pi4',
      label: 'Perch pi4 (linears and LM head int8 channels, 7-bit codes; embedding 4-bit b64)',
      policy: quantPolicyFor('pi4'),
    },
    {
      name: 's4',
      label: 'Perch 4-bit, searched (linear b64, embedding 4-bit b64)',
      policy: { profile: 'pi4', linear: lin(4, 64, 'search'), embedding: { bits: 4, block_size: 64 }, ple: PLE },
    },
    {
      name: 'r4',
      label: 'Perch 4-bit, round-to-nearest (same layout)',
      policy: { profile: 'pi4', linear: lin(4, 64, 'rtn'), embedding: { bits: 4, block_size: 64 }, ple: PLE },
    },
    {
      name: 's2',
      label: 'Perch 2-bit, searched (linear b128, embedding 4-bit b256)',
      policy: { profile: 'pi5', linear: lin(2, 128, 'search'), embedding: { bits: 4, block_size: 256 }, ple: PLE },
    },
    {
      name: 'r2',
      label: 'Perch 2-bit, round-to-nearest (same layout)',
      policy: { profile: 'pi5', linear: lin(2, 128, 'rtn'), embedding: { bits: 4, block_size: 256 }, ple: PLE },
    },
    {
      name: 'mixed',
      label: 'Perch mixed (pi5: 2-bit b128 searched, worst linears 4-bit, embedding 4-bit b256)',
      policy: quantPolicyFor('pi5'),
    },
    // The tied embedding is 63% of Gemma 3 270M's weights and the LM head too: the same linears beside an 8-bit
    // table, as llama.cpp's mixes keep it, show how much of the error each part carries.
    {
      name: 's4e8',
      label: 'Perch 4-bit searched linears (b64), embedding 8-bit b64',
      policy: { profile: 'pi4', linear: lin(4, 64, 'search'), embedding: E8, ple: PLE },
    },
    {
      name: 'r4e8',
      label: 'Perch 4-bit round-to-nearest linears (b64), embedding 8-bit b64',
      policy: { profile: 'pi4', linear: lin(4, 64, 'rtn'), embedding: E8, ple: PLE },
    },
    {
      name: 's2e8',
      label: 'Perch 2-bit searched linears (b128), embedding 8-bit b64',
      policy: { profile: 'pi5', linear: lin(2, 128, 'search'), embedding: E8, ple: PLE },
    },
    {
      name: 'r2e8',
      label: 'Perch 2-bit round-to-nearest linears (b128), embedding 8-bit b64',
      policy: { profile: 'pi5', linear: lin(2, 128, 'rtn'), embedding: E8, ple: PLE },
    },
    {
      name: 'mixede8',
      label: 'Perch mixed linears (pi5), embedding 8-bit b64',
      policy: { ...quantPolicyFor('pi5'), embedding: E8 },
    },
    // Smaller 2-bit blocks: more scales, closer to llama.cpp's 16-wide sub-blocks.
    {
      name: 's2b32e8',
      label: 'Perch 2-bit searched linears (b32), embedding 8-bit b64',
      policy: { profile: 'pi5', linear: lin(2, 32, 'search'), embedding: E8, ple: PLE },
    },
    {
      name: 'r2b32e8',
      label: 'Perch 2-bit round-to-nearest linears (b32), embedding 8-bit b64',
      policy: { profile: 'pi5', linear: lin(2, 32, 'rtn'), embedding: E8, ple: PLE },
    },
  ];
}

export interface QualityRow {
  name: string;
  label: string;
  bpw: number | null;
  ppl: number;
  kl: number | null;
  top1: number | null;
  seconds: number;
}

function int(name: string, v: string | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got ${v}`);
  return n;
}

function log(msg: string): void {
  process.stderr.write(`[quality] ${msg}\n`);
}

/** Policy fields that decide the weights (the mixed policy's per-tensor decisions are derived, not compared). */
function policyKey(p: QuantPolicy): string {
  return JSON.stringify({ linear: p.linear, embedding: p.embedding });
}

interface GraphFacts {
  logitsMode: string | null;
  weightBytes: number;
}

/** Decoder metadata and the linear + embedding weight bytes (see the header for what is counted). */
function graphFacts(onnxPath: string): GraphFacts {
  const model = onnx.ModelProto.decode(readFileSync(onnxPath));
  const logitsMode = (model.metadataProps ?? []).find((m) => m.key === 'perch.logits')?.value ?? null;
  const graph = model.graph!;
  const inits = new Map<string, { bytes: number; key: string }>();
  for (const t of graph.initializer ?? []) {
    const ext = new Map((t.externalData ?? []).map((e) => [e.key ?? '', e.value ?? '']));
    if (t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL) {
      inits.set(t.name ?? '', {
        bytes: Number(ext.get('length') ?? 0),
        key: `${ext.get('location')}@${ext.get('offset') ?? 0}+${ext.get('length')}`,
      });
    } else {
      inits.set(t.name ?? '', { bytes: t.rawData?.length ?? 0, key: `embedded:${t.name}` });
    }
  }
  const WEIGHT_OPS = new Set(['MatMulNBits', 'MatMulInteger', 'MatMul', 'Gemm', 'Gather', 'GatherBlockQuantized']);
  const counted = new Set<string>();
  let weightBytes = 0;
  for (const n of graph.node ?? []) {
    const op = n.opType ?? '';
    if (!WEIGHT_OPS.has(op)) continue;
    // Gathers: the table (input 0) and, for GatherBlockQuantized, its scales / zero points (inputs 2, 3).
    const inputs = (n.input ?? []).filter(
      (_, i) => !(op === 'Gather' && i !== 0) && !(op === 'GatherBlockQuantized' && i === 1),
    );
    for (const name of inputs) {
      const init = inits.get(name);
      // A Gather over a small constant (shape arithmetic) is not a weight table.
      if (!init || counted.has(init.key) || init.bytes < 4096) continue;
      counted.add(init.key);
      weightBytes += init.bytes;
    }
  }
  // The float graph's LM head is a MatMul over Transpose(embedding): the embedding is counted by its Gather.
  return { logitsMode, weightBytes };
}

/** Element count of the checkpoint's 2-D tensors: the linears and the embedding. */
async function checkpointWeightCount(dir: string): Promise<number> {
  const ckpt = await SafetensorsCheckpoint.open(dir);
  try {
    let n = 0;
    for (const name of ckpt.names()) {
      const shape = ckpt.info(name).shape;
      if (shape.length === 2) n += shape[0]! * shape[1]!;
    }
    return n;
  } finally {
    await ckpt.close();
  }
}

async function ensurePackage(checkpoint: string, dir: string, v: Variant): Promise<void> {
  const manifestPath = join(dir, 'manifest.json');
  if (existsSync(manifestPath)) {
    const m = JSON.parse(readFileSync(manifestPath, 'utf8')) as { quantisation: QuantPolicy };
    const facts = graphFacts(join(dir, 'decoder.onnx'));
    if (policyKey(m.quantisation) === policyKey(v.policy) && facts.logitsMode === 'all') {
      log(`${v.name}: reusing ${dir}`);
      return;
    }
    log(`${v.name}: ${dir} has another policy or last-position logits; converting again`);
  }
  const t0 = Date.now();
  log(`${v.name}: converting into ${dir}`);
  await convertCheckpoint({ from: checkpoint, outDir: dir, policy: v.policy, logits: 'all' });
  log(`${v.name}: converted in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
}

/** One chunk's logits [n, vocab] from a fresh (empty-cache) run. */
async function runChunk(
  session: ort.InferenceSession,
  cfgJson: unknown,
  ids: number[],
  hidden: number,
): Promise<Float32Array> {
  const n = ids.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map((i) => BigInt(i))), [1, n]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map((_, i) => BigInt(i))), [1, n]),
  };
  for (const s of cacheSlots(parseGemma4TextConfig(cfgJson))) {
    feeds[s.pastKey] = new ort.Tensor('float32', new Float32Array(0), [1, s.kvHeads, 0, s.headDim]);
    feeds[s.pastValue] = new ort.Tensor('float32', new Float32Array(0), [1, s.kvHeads, 0, s.headDim]);
  }
  const names = new Set(session.inputNames);
  if (names.has('per_layer_rows')) throw new Error('this script drives models without per-layer embeddings (Gemma 3)');
  if (names.has('media_embeds'))
    feeds.media_embeds = new ort.Tensor('float32', new Float32Array(n * hidden), [1, n, hidden]);
  if (names.has('media_mask')) feeds.media_mask = new ort.Tensor('bool', new Uint8Array(n), [1, n]);
  const out = await session.run(feeds);
  const logits = out.logits!;
  if (logits.dims[1] !== n)
    throw new Error(`logits for ${logits.dims[1]} positions, expected ${n} (a package with logits 'last'?)`);
  const data = logits.data as Float32Array;
  for (const t of Object.values(out)) if (t !== logits) t.dispose();
  return data;
}

function logSumExp(row: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  return max + Math.log(sum);
}

interface Tokens {
  chunks: number[][];
  vocab: number;
  positions: number;
}

async function measurePackage(
  v: Variant,
  dir: string,
  tokens: Tokens,
  threads: number,
  floatFile: string,
  weightCount: number,
): Promise<QualityRow> {
  const t0 = Date.now();
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { config: Record<string, unknown> };
  const hidden = Number(
    manifest.config.hidden_size ?? (manifest.config.text_config as Record<string, unknown> | undefined)?.hidden_size,
  );
  const facts = graphFacts(join(dir, 'decoder.onnx'));
  const session = await ort.InferenceSession.create(join(dir, 'decoder.onnx'), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  const V = tokens.vocab;
  const isFloat = v.policy.linear === null;
  const writer = isFloat ? createWriteStream(floatFile) : null;
  const reader = isFloat ? null : openSync(floatFile, 'r');
  let nll = 0;
  let kl = 0;
  let agree = 0;
  let row = 0;
  try {
    for (const [c, ids] of tokens.chunks.entries()) {
      const logits = await runChunk(session, manifest.config, ids, hidden);
      if (logits.length !== ids.length * V) throw new Error(`vocab ${logits.length / ids.length}, expected ${V}`);
      const rows = ids.length - 1;
      if (isFloat) {
        const lp = new Float32Array(rows * V);
        for (let p = 0; p < rows; p++) {
          const z = logits.subarray(p * V, (p + 1) * V);
          const lse = logSumExp(z);
          const o = lp.subarray(p * V, (p + 1) * V);
          for (let i = 0; i < V; i++) o[i] = z[i]! - lse;
          nll -= z[ids[p + 1]!]! - lse;
        }
        await new Promise<void>((res, rej) =>
          writer!.write(Buffer.from(lp.buffer, lp.byteOffset, lp.byteLength), (e) => (e ? rej(e) : res())),
        );
      } else {
        const ref = new Float32Array(rows * V);
        const buf = Buffer.from(ref.buffer);
        let got = 0;
        while (got < buf.length) {
          const r = readSync(reader!, buf, got, buf.length - got, row * V * 4 + got);
          if (r === 0) throw new Error(`${floatFile}: ended early (is it from this run's tokens?)`);
          got += r;
        }
        for (let p = 0; p < rows; p++) {
          const z = logits.subarray(p * V, (p + 1) * V);
          const f = ref.subarray(p * V, (p + 1) * V);
          const lse = logSumExp(z);
          let k = 0;
          let fBest = 0;
          let zBest = 0;
          for (let i = 0; i < V; i++) {
            const lf = f[i]!;
            k += Math.exp(lf) * (lf - (z[i]! - lse));
            if (lf > f[fBest]!) fBest = i;
            if (z[i]! > z[zBest]!) zBest = i;
          }
          kl += k;
          if (fBest === zBest) agree++;
          nll -= z[ids[p + 1]!]! - lse;
          row++;
        }
        continue;
      }
      row += rows;
      log(`${v.name}: chunk ${c + 1}/${tokens.chunks.length}`);
    }
  } finally {
    await session.release();
    if (writer) await new Promise<void>((res) => writer.end(res));
    if (reader !== null) closeSync(reader);
  }
  const n = tokens.positions;
  const result: QualityRow = {
    name: v.name,
    label: v.label,
    bpw: (facts.weightBytes * 8) / weightCount,
    ppl: Math.exp(nll / n),
    kl: isFloat ? 0 : kl / n,
    top1: isFloat ? 1 : agree / n,
    seconds: (Date.now() - t0) / 1000,
  };
  log(
    `${v.name}: ppl ${result.ppl.toFixed(3)} KL ${result.kl!.toFixed(5)} top-1 ${result.top1!.toFixed(4)} bpw ${result.bpw!.toFixed(3)} (${result.seconds.toFixed(0)} s)`,
  );
  return result;
}

function runLlama(python: string, script: string, args: string[]): Promise<void> {
  return new Promise((res, rej) => {
    const child = spawn(python, [script, ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', rej);
    child.on('exit', (code) => (code === 0 ? res() : rej(new Error(`${python} ${script} exited with ${code}`))));
  });
}

export function formatTable(rows: QualityRow[]): string {
  const f = (x: number | null, d: number) => (x === null ? 'n/a' : x.toFixed(d));
  const lines = [
    '| model | bits/weight | perplexity | mean KL vs float (nats) | top-1 agreement |',
    '|---|---:|---:|---:|---:|',
  ];
  for (const r of rows)
    lines.push(
      `| ${r.label} | ${f(r.bpw, 2)} | ${f(r.ppl, 3)} | ${f(r.kl, 4)} | ${f(r.top1 === null ? null : r.top1 * 100, 1)}% |`,
    );
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  // biome-ignore lint/suspicious/noImplicitAnyLet: TypeScript types it from the parseArgs assignment below
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        checkpoint: { type: 'string' },
        out: { type: 'string' },
        passage: { type: 'string' },
        chunk: { type: 'string' },
        threads: { type: 'string' },
        variants: { type: 'string' },
        gguf: { type: 'string' },
        'llama-python': { type: 'string' },
        help: { type: 'boolean', default: false },
      },
    }));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  let chunk: number;
  let threads: number;
  let variants: Variant[];
  try {
    if (!values.checkpoint) throw new UsageError('--checkpoint is required');
    if (values['llama-python'] && !values.gguf) throw new UsageError('--llama-python needs --gguf');
    chunk = int('chunk', values.chunk, 512, 2, 4096);
    threads = int('threads', values.threads, 2, 1, 256);
    const all = qualityVariants();
    const names = values.variants ? values.variants.split(',') : all.map((v) => v.name);
    if (!names.includes('float')) names.unshift('float');
    variants = names.map((n) => {
      const v = all.find((x) => x.name === n);
      if (!v) throw new UsageError(`unknown variant ${n} (have ${all.map((x) => x.name).join(', ')})`);
      return v;
    });
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${e.message}\n${USAGE}`);
      return 2;
    }
    throw e;
  }
  const repo = resolve(new URL('../..', import.meta.url).pathname);
  const checkpoint = resolve(values.checkpoint!);
  const out = resolve(values.out ?? '/tmp/perch-quality');
  const passagePath = resolve(values.passage ?? join(repo, 'test', 'fixtures', 'quality', 'passage.txt'));
  mkdirSync(out, { recursive: true });

  const tok = await PackageTokenizer.load(checkpoint);
  const text = tok.encode(readFileSync(passagePath, 'utf8'));
  const chunks: number[][] = [];
  for (let i = 0; i < text.length; i += chunk - 1) chunks.push([tok.special.bos, ...text.slice(i, i + chunk - 1)]);
  const cfgJson = JSON.parse(readFileSync(join(checkpoint, 'config.json'), 'utf8')) as unknown;
  const vocab = parseGemma4TextConfig(cfgJson).vocabSize;
  const tokens: Tokens = { chunks, vocab, positions: text.length };
  const floatFile = join(out, 'float-logprobs.f32');
  writeFileSync(
    join(out, 'tokens.json'),
    JSON.stringify({ ...tokens, bos: tok.special.bos, passage: passagePath, float_logprobs: floatFile }),
  );
  log(
    `${passagePath}: ${text.length} tokens in ${chunks.length} chunks of at most ${chunk} (bos + ${chunk - 1}); vocab ${vocab}; ${threads} threads`,
  );

  const weightCount = await checkpointWeightCount(checkpoint);
  const rows: QualityRow[] = [];
  for (const v of variants) {
    const dir = join(out, 'packages', v.name);
    await ensurePackage(checkpoint, dir, v);
    rows.push(await measurePackage(v, dir, tokens, threads, floatFile, weightCount));
  }

  if (values['llama-python']) {
    const script = join(repo, 'reference', 'quality_llamacpp.py');
    const json = join(out, 'llamacpp.json');
    await runLlama(values['llama-python'], script, [
      '--tokens',
      join(out, 'tokens.json'),
      '--float-logprobs',
      floatFile,
      '--gguf',
      resolve(values.gguf!),
      '--requantize',
      'Q2_K',
      '--work',
      out,
      '--threads',
      String(threads),
      '--json',
      json,
    ]);
    const llama = JSON.parse(readFileSync(json, 'utf8')) as { rows: QualityRow[] };
    rows.push(...llama.rows);
  }
  writeFileSync(
    join(out, 'quality.json'),
    JSON.stringify(
      { cpu: cpus()[0]?.model, threads, positions: tokens.positions, chunks: chunks.length, rows },
      null,
      1,
    ),
  );
  process.stdout.write(
    `\n${tokens.positions} tokens of ${passagePath}, ${chunks.length} chunks of <= ${chunk}, ${threads} threads, ${cpus()[0]?.model ?? 'unknown CPU'}\n\n`,
  );
  process.stdout.write(`${formatTable(rows)}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`quality: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
