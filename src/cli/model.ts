/**
 * `perch model verify|synth|convert|pull`. Registered on the main program by registerModelCommands();
 * errors go to stderr with exit status 1, progress bars to stderr (only drawn on a terminal).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { loadConfig } from '../config/load.js';
import cliProgress from 'cli-progress';
import { intIn } from './args.js';
import { convertCheckpoint } from '../model/build/convert.js';
import type { BuildPhase, BuildProgress } from '../model/build/build.js';
import { MANIFEST_FILE, profiles, type Manifest, type Profile } from '../model/package/manifest.js';
import { formatProblems, verifyPackage } from '../model/package/verify.js';
import { profileForThisCpu, profileMismatch } from '../engine/cpu-fit.js';
import { DEFAULT_REPO, pullModel } from '../model/build/pull.js';
import { synthPackage, type SynthPreset } from '../model/build/synth.js';

const PHASE_LABEL: Record<BuildPhase, string> = {
  decoder: 'decoder tensors',
  ple: 'PLE rows',
  files: 'tokenizer files',
};

function choice<T extends string>(allowed: readonly T[]): (v: string) => T {
  return (v) => {
    if (!(allowed as readonly string[]).includes(v))
      throw new InvalidArgumentError(`expected one of ${allowed.join(', ')}`);
    return v as T;
  };
}

/** One cli-progress bar, restarted per build phase. */
function progressBar(): { update: (p: BuildProgress) => void; stop: () => void } {
  const bar = new cliProgress.SingleBar(
    { format: '{phase} [{bar}] {percentage}% {value}/{total}', stream: process.stderr, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  let phase: BuildPhase | null = null;
  return {
    update(p) {
      if (p.phase !== phase) {
        if (phase) bar.stop();
        phase = p.phase;
        bar.start(p.total, 0, { phase: PHASE_LABEL[p.phase].padEnd(16) });
      }
      bar.update(p.done);
    },
    stop: () => {
      if (phase) bar.stop();
    },
  };
}

interface SynthOptions {
  preset: SynthPreset;
  out?: string;
  config?: string;
  ifMissing?: boolean;
  profile: Profile;
  seed: number;
  logits: 'last' | 'all';
}

function summary(dir: string, m: Manifest): string {
  const bytes = m.files.reduce((a, f) => a + f.bytes, 0);
  return `${dir}: package written (${m.files.length} files, ${(bytes / 1e6).toFixed(1)} MB, profile ${m.quantisation.profile})\n`;
}

async function withBar(
  dir: string,
  build: (onProgress: (p: BuildProgress) => void) => Promise<Manifest>,
): Promise<void> {
  const bar = progressBar();
  try {
    const m = await build(bar.update);
    bar.stop();
    process.stdout.write(summary(dir, m));
  } catch (e) {
    bar.stop();
    throw e;
  }
}

const PROFILE_HELP = `quantisation profile: ${profiles.join(' | ')} (default: the one this CPU runs best, pi5 with int8 dot-product instructions, else pi4)`;

/** The profile asked for, or the one this CPU suits, said on stderr so the choice is never silent. */
async function chosenProfile(asked: Profile | undefined): Promise<Profile> {
  if (asked) return asked;
  const c = await profileForThisCpu();
  process.stderr.write(`perch: profile ${c.profile}: ${c.reason} (--profile chooses another)\n`);
  return c.profile;
}

export function registerModelCommands(program: Command): void {
  const model = program
    .command('model')
    .description('Model packages: verify, build from a checkpoint, download, or synthesise for tests');

  model
    .command('verify')
    .description(
      'Check a model package: every file present, sizes, sha256, headers and config consistency (exit 1 listing every problem)',
    )
    .argument('<dir>', 'package directory')
    .option('--quick', 'skip the sha256 checks (what the daemon does at load)')
    .action(async (dir: string, opts: { quick?: boolean }) => {
      const r = await verifyPackage(dir, { full: !opts.quick });
      if (r.ok) {
        process.stdout.write(
          `${dir}: OK (${r.manifest!.files.length} files${opts.quick ? ', checksums not checked' : ', checksums match'})\n`,
        );
        const mismatch = await profileMismatch(r.manifest!.quantisation);
        if (mismatch) process.stderr.write(`perch: warning: ${mismatch}\n`);
        return;
      }
      process.stderr.write(`${formatProblems(dir, r.problems)}\n${dir}: ${r.problems.length} problem(s)\n`);
      process.exitCode = 1;
    });

  model
    .command('synth')
    .description('Write a package with random weights and the exact shapes of a preset (tests, benchmarks)')
    .requiredOption('--preset <preset>', 'tiny | e2b', choice<SynthPreset>(['tiny', 'e2b']))
    .option('--out <dir>', 'output directory (must be empty or absent)')
    .option('--config <file>', "write to that config's model.dir (its PERCH_* environment overrides apply)")
    .option('--if-missing', 'do nothing when a package is already there (how npm start makes its demo package)')
    .option('--profile <profile>', `quantisation profile: ${profiles.join(' | ')}`, choice<Profile>(profiles), 'pi5')
    .option('--seed <n>', 'random seed', intIn(0, 0xffffffff), 1)
    .option('--logits <mode>', 'graph logits: last | all', choice(['last', 'all'] as const), 'last')
    .action(async (opts: SynthOptions) => {
      const out = opts.out ?? (opts.config !== undefined ? loadConfig(opts.config).model.dir : undefined);
      if (out === undefined || (opts.out !== undefined && opts.config !== undefined))
        throw new InvalidArgumentError('give the output directory with exactly one of --out and --config');
      if (opts.ifMissing && existsSync(path.join(out, MANIFEST_FILE))) return;
      if (opts.ifMissing)
        process.stderr.write(
          `perch: no model package at ${out}: building the tiny synthetic one (RANDOM WEIGHTS, its answers are meaningless; get the real model with \`perch model pull\`)\n`,
        );
      await withBar(out, (onProgress) =>
        synthPackage({
          preset: opts.preset,
          outDir: out,
          profile: opts.profile,
          seed: opts.seed,
          logits: opts.logits,
          onProgress,
        }),
      );
    });

  model
    .command('convert')
    .description(
      'Convert an official Gemma 4 checkpoint directory (config.json, safetensors, tokenizer) into a package',
    )
    .requiredOption('--from <dir>', 'checkpoint directory')
    .requiredOption('--out <dir>', 'output directory (must be empty or absent)')
    .option('--profile <profile>', PROFILE_HELP, choice<Profile>(profiles))
    .option('--logits <mode>', 'graph logits: last | all', choice(['last', 'all'] as const), 'last')
    .action(async (opts: { from: string; out: string; profile?: Profile; logits: 'last' | 'all' }) => {
      const profile = await chosenProfile(opts.profile);
      await withBar(opts.out, (onProgress) =>
        convertCheckpoint({ from: opts.from, outDir: opts.out, profile, logits: opts.logits, onProgress }),
      );
    });

  model
    .command('pull')
    .description(
      `Download the official checkpoint from Hugging Face (resumable, sha256-checked) and convert it (gated: set HF_TOKEN)`,
    )
    .requiredOption('--out <dir>', 'output package directory (must be empty or absent)')
    .option('--repo <id>', 'Hugging Face repository', DEFAULT_REPO)
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option('--cache <dir>', 'where the checkpoint is downloaded (default: <out>.download)')
    .option('--profile <profile>', PROFILE_HELP, choice<Profile>(profiles))
    .action(async (opts: { out: string; repo: string; revision: string; cache?: string; profile?: Profile }) => {
      const profile = await chosenProfile(opts.profile);
      const cacheDir = opts.cache ?? `${opts.out}.download`;
      let last = '';
      await withBar(opts.out, (onProgress) =>
        pullModel({
          repo: opts.repo,
          revision: opts.revision,
          cacheDir,
          outDir: opts.out,
          profile,
          onDownload: (file, done, total) => {
            const line = `${file}: ${Math.floor((100 * done) / Math.max(1, total))}%`;
            if (line !== last && process.stderr.isTTY) process.stderr.write(`\r${line}   `);
            last = line;
          },
          onProgress,
        }),
      );
    });
}
