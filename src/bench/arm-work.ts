#!/usr/bin/env node
/**
 * `npm run bench:arm -- --model DIR [--cpu cortex-a76|cortex-a72] [--prompt-tokens 32] [--decode-tokens 6]
 *   [--json]`: the work Perch does per token on a Raspberry Pi's instruction set, counted, not timed.
 *
 * Runs the package under QEMU user-mode emulation of the chosen core (test/arm/run.sh, after
 * test/arm/setup.sh --counting) with an instruction-counting plugin (test/arm/insn-count.c), one ONNX Runtime
 * thread, greedy decode of a synthetic prompt. The guest asks the plugin for a reading before the prompt and
 * after every token; from them:
 *   per prefilled token = instructions from the call to the first token / prompt tokens (prefill and the first
 *                         sample: the fixed part is small against a prompt of tens of tokens);
 *   per decoded token   = (reading at the last token - reading at token 2) / the decode steps between,
 *                         the steady state (the first decode steps still touch cold code paths).
 * Instruction counts are exact and repeatable, unlike timings under emulation; they are the same kind of figure
 * as llama.cpp's measured the same way (issue #13), so graph and kernel choices are judged on the Pi's
 * instruction set. Dot-product instructions (SDOT/UDOT) show whether the int8 path ran.
 *
 * With --inner it is the guest side (what runs under emulation); without, the host side that starts it.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Engine } from '../engine/engine.js';
import { countKernels, kernelCaseLabel, parseKernelCase, type KernelCase } from './arm-kernels.js';
import { syntheticPrompt } from './run.js';

export const ARM_CPUS = ['cortex-a76', 'cortex-a72'] as const;
export type ArmCpu = (typeof ARM_CPUS)[number];

/** What the guest writes so the plugin records a reading (insn-count.c matches the same prefix). */
const MARK = 'PERCH-COUNT:';
/** Decode steps before the steady state is read: the first ones run code for the first time. */
const WARM_DECODE_STEPS = 2;

export interface Reading {
  label: string;
  instructions: number;
  dotProducts: number;
}

export interface ArmWork {
  cpu: ArmCpu;
  model: string;
  promptTokens: number;
  decodeTokens: number;
  /** Load: opening the package and creating the sessions (ONNX Runtime packs the weights here). */
  loadInstructions: number;
  perPrefilledToken: number;
  perDecodedToken: number;
  dotProductsPerDecodedToken: number;
  /** Decode steps the steady-state figure is the mean of. */
  decodeStepsMeasured: number;
}

/** The plugin's output: `label instructions dot-products` per line. */
export function parseReadings(text: string): Reading[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((line) => {
      const [label, insns, dots] = line.trim().split(' ');
      const instructions = Number(insns);
      const dotProducts = Number(dots);
      if (!label || !Number.isSafeInteger(instructions) || !Number.isSafeInteger(dotProducts))
        throw new Error(`not a reading: ${line}`);
      return { label, instructions, dotProducts };
    });
}

/** Per-token figures from the readings of one run (labels as the guest side writes them). */
export function workFromReadings(
  readings: readonly Reading[],
  cpu: ArmCpu,
  model: string,
  promptTokens: number,
): ArmWork {
  const at = (label: string): Reading => {
    const r = readings.find((x) => x.label === label);
    if (!r) throw new Error(`no reading '${label}' (readings: ${readings.map((x) => x.label).join(', ') || 'none'})`);
    return r;
  };
  const tokens = readings.filter((r) => /^token-\d+$/.test(r.label)).map((r) => Number(r.label.slice(6)));
  const last = Math.max(...tokens);
  // token-0 is the first sampled token (from prefill); token-k follows the k-th decode step.
  if (!(last > WARM_DECODE_STEPS))
    throw new Error(`too few tokens decoded to read a steady state (last token ${last})`);
  const steady = at(`token-${WARM_DECODE_STEPS}`);
  const end = at(`token-${last}`);
  const steps = last - WARM_DECODE_STEPS;
  return {
    cpu,
    model,
    promptTokens,
    decodeTokens: last,
    loadInstructions: at('loaded').instructions - at('start').instructions,
    perPrefilledToken: (at('token-0').instructions - at('prompt').instructions) / promptTokens,
    perDecodedToken: (end.instructions - steady.instructions) / steps,
    dotProductsPerDecodedToken: (end.dotProducts - steady.dotProducts) / steps,
    decodeStepsMeasured: steps,
  };
}

/** Guest side: load, prefill, decode, asking for a reading at each point. */
async function inner(model: string, promptTokens: number, decodeTokens: number): Promise<void> {
  const marks = openSync('/dev/null', 'w');
  const mark = (label: string): void => void writeSync(marks, `${MARK}${label}\n`);
  try {
    mark('start');
    // One thread: the count is the whole work of a token. No prepacked file cache: it builds in a child
    // process, which qemu user mode cannot start without binfmt_misc.
    const engine = await Engine.load(model, {
      threads: 1,
      contextTokens: promptTokens + decodeTokens + 8,
      pleCacheMb: 64,
      prefixSnapshots: 0,
    });
    mark('loaded');
    try {
      const ids = syntheticPrompt(promptTokens, engine.config.vocabSize, 1);
      let n = 0;
      mark('prompt');
      await engine.generate({
        promptIds: ids,
        maxTokens: decodeTokens + 1,
        sampling: { temperature: 0 },
        ignoreEos: true,
        onToken: (_d, info) => {
          if (info.tokenId >= 0) mark(`token-${n++}`);
        },
      });
    } finally {
      await engine.close();
    }
  } finally {
    closeSync(marks);
  }
}

/** Host side: run `dist/bench/arm-work.js --inner ARGS` under test/arm/run.sh with the counting plugin. */
async function countedRun(cpu: ArmCpu, guestArgs: string[], onProgress?: (line: string) => void): Promise<Reading[]> {
  const repo = fileURLToPath(new URL('../..', import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), 'perch-arm-count-'));
  const out = join(dir, 'readings.txt');
  try {
    const args = [
      join(repo, 'test/arm/run.sh'),
      cpu,
      'node',
      'dist/bench/arm-work.js',
      '--inner',
      '--cpu',
      cpu,
      ...guestArgs,
    ];
    const code = await new Promise<number | null>((done, fail) => {
      const p = spawn('bash', args, {
        stdio: ['ignore', 'inherit', 'pipe'],
        env: { ...process.env, PERCH_ARM_COUNT: out },
      });
      p.stderr.setEncoding('utf8').on('data', (d: string) =>
        d
          .split('\n')
          .filter(Boolean)
          .forEach((l) => onProgress?.(l)),
      );
      p.on('error', fail);
      p.on('close', done);
    });
    if (code !== 0) throw new Error(`the emulated run failed (exit ${code})`);
    return parseReadings(readFileSync(out, 'utf8'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function countArmWork(o: {
  model: string;
  cpu: ArmCpu;
  promptTokens: number;
  decodeTokens: number;
  onProgress?: (line: string) => void;
}): Promise<ArmWork> {
  const model = resolve(o.model);
  const readings = await countedRun(
    o.cpu,
    ['--model', model, '--prompt-tokens', String(o.promptTokens), '--decode-tokens', String(o.decodeTokens)],
    o.onProgress,
  );
  return workFromReadings(readings, o.cpu, o.model, o.promptTokens);
}

export type KernelWork = KernelCase & { instructionsPerWeight: number; dotProductsPerWeight: number };

/** One MatMulNBits [K -> N] at M = 1 per case (arm-kernels.ts): instructions per weight on the emulated core. */
export async function countArmKernels(o: {
  cpu: ArmCpu;
  cases: readonly KernelCase[];
  k: number;
  n: number;
  runs: number;
  onProgress?: (line: string) => void;
}): Promise<KernelWork[]> {
  const readings = await countedRun(
    o.cpu,
    [
      '--kernels',
      o.cases.map(kernelCaseLabel).join(','),
      '--k',
      String(o.k),
      '--n',
      String(o.n),
      '--runs',
      String(o.runs),
    ],
    o.onProgress,
  );
  const at = (label: string): Reading => {
    const r = readings.find((x) => x.label === label);
    if (!r) throw new Error(`no reading '${label}'`);
    return r;
  };
  const weights = o.k * o.n * o.runs;
  return o.cases.map((c) => {
    const a = at(`${kernelCaseLabel(c)}-begin`);
    const b = at(`${kernelCaseLabel(c)}-end`);
    return {
      ...c,
      instructionsPerWeight: (b.instructions - a.instructions) / weights,
      dotProductsPerWeight: (b.dotProducts - a.dotProducts) / weights,
    };
  });
}

export function formatArmWork(w: ArmWork): string {
  const g = (n: number) => `${(n / 1e9).toFixed(3)} G`;
  const m = (n: number) => `${(n / 1e6).toFixed(1)} M`;
  return [
    `${w.model} on ${w.cpu} (QEMU user mode, 1 thread, guest instructions)`,
    `  per decoded token:   ${g(w.perDecodedToken)}  (of them SDOT/UDOT: ${m(w.dotProductsPerDecodedToken)}; mean of ${w.decodeStepsMeasured} steady decode steps)`,
    `  per prefilled token: ${g(w.perPrefilledToken)}  (${w.promptTokens}-token prompt, prefill and first sample)`,
    `  load:                ${g(w.loadInstructions)}`,
  ].join('\n');
}

const USAGE = `usage: npm run bench:arm -- --model DIR [--cpu cortex-a76|cortex-a72] [--prompt-tokens N] [--decode-tokens N] [--json]
       npm run bench:arm -- --kernels q4-b64-acc1,... [--cpu C] [--k 1536] [--n 6144] [--runs 3] [--json]
  needs test/arm/setup.sh --counting (QEMU with plugins and the counting plugin)`;

function int(name: string, v: string | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new Error(`--${name} must be an integer from ${min} to ${max}, got ${v}`);
  return n;
}

async function main(argv: string[]): Promise<number> {
  // biome-ignore lint/suspicious/noImplicitAnyLet: TypeScript types it from the parseArgs assignment below
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        model: { type: 'string' },
        cpu: { type: 'string', default: 'cortex-a76' },
        'prompt-tokens': { type: 'string' },
        'decode-tokens': { type: 'string' },
        json: { type: 'boolean', default: false },
        kernels: { type: 'string' },
        k: { type: 'string' },
        n: { type: 'string' },
        runs: { type: 'string' },
        inner: { type: 'boolean', default: false },
      },
    }));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const cpu = values.cpu as ArmCpu;
  if (!ARM_CPUS.includes(cpu)) {
    process.stderr.write(`--cpu must be one of ${ARM_CPUS.join(', ')}\n${USAGE}\n`);
    return 2;
  }
  if (values.kernels !== undefined) {
    const cases = values.kernels.split(',').map((s) => parseKernelCase(s.trim()));
    let k: number, n: number, runs: number;
    try {
      if (cases.some((c) => c === null))
        throw new Error(`--kernels takes cases like q4-b64-acc1,q2-b128-acc4, got ${values.kernels}`);
      k = int('k', values.k, 1536, 16, 65536);
      n = int('n', values.n, 6144, 1, 1 << 20);
      runs = int('runs', values.runs, 3, 1, 100);
    } catch (e) {
      process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
      return 2;
    }
    if (values.inner) {
      const fd = openSync('/dev/null', 'w');
      try {
        await countKernels(cases as KernelCase[], k, n, runs, (label) => void writeSync(fd, `${MARK}${label}\n`));
      } finally {
        closeSync(fd);
      }
      return 0;
    }
    const work = await countArmKernels({
      cpu,
      cases: cases as KernelCase[],
      k,
      n,
      runs,
      onProgress: (l) => process.stderr.write(`${l}\n`),
    });
    process.stdout.write(
      values.json
        ? `${JSON.stringify(work, null, 2)}\n`
        : `one [${k} -> ${n}] matrix, one token, on ${cpu} (guest instructions per weight)\n` +
            work
              .map(
                (w) =>
                  `  ${kernelCaseLabel(w).padEnd(16)} ${w.instructionsPerWeight.toFixed(3)}  (SDOT/UDOT ${w.dotProductsPerWeight.toFixed(4)})`,
              )
              .join('\n') +
            '\n',
    );
    return 0;
  }
  if (!values.model) {
    process.stderr.write(`--model is required\n${USAGE}\n`);
    return 2;
  }
  let promptTokens: number, decodeTokens: number;
  try {
    promptTokens = int('prompt-tokens', values['prompt-tokens'], 32, 1, 4096);
    decodeTokens = int('decode-tokens', values['decode-tokens'], 6, WARM_DECODE_STEPS + 1, 256);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.inner) {
    await inner(values.model, promptTokens, decodeTokens);
    return 0;
  }
  const work = await countArmWork({
    model: values.model,
    cpu,
    promptTokens,
    decodeTokens,
    onProgress: (l) => process.stderr.write(`${l}\n`),
  });
  process.stdout.write(values.json ? `${JSON.stringify(work, null, 2)}\n` : `${formatArmWork(work)}\n`);
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: Error) => {
      process.stderr.write(`bench:arm failed: ${e.message}\n`);
      process.exit(1);
    },
  );
}
