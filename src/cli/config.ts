/** `perch config check` and `perch config docs`: the config area's subcommands. */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { ConfigError, loadConfigDetailed, maskSecrets, type LoadedConfig } from '../config/load.js';
import { DOCS_FILE, EXAMPLE_FILE, generateExampleYaml, generateMarkdown, writeDocs } from '../config/docs.js';
import { formatPath } from '../config/introspect.js';

/** Exit status for a configuration that does not validate. */
export const EXIT_CONFIG = 2;

/**
 * Loads the config for a command, or prints every problem to stderr (one per line) and returns undefined;
 * the caller then exits with EXIT_CONFIG. Other failures propagate.
 */
export function loadOrReport(
  file: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
  stderr: NodeJS.WritableStream = process.stderr,
): LoadedConfig | undefined {
  try {
    const loaded = loadConfigDetailed(file, env);
    for (const w of loaded.warnings) stderr.write(`perch: warning: ${w}\n`);
    return loaded;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const n = err.problems.length;
    stderr.write(`perch: ${err.file}: ${n === 1 ? '1 problem' : `${n} problems`}\n`);
    for (const p of err.problems) stderr.write(`${err.file}: ${p}\n`);
    return undefined;
  }
}

function check(file: string | undefined): number {
  const loaded = loadOrReport(file);
  if (!loaded) return EXIT_CONFIG;
  const out: string[] = [`${file ?? loaded.path}: OK`];
  for (const a of loaded.applied) out.push(`  from the environment: ${a.name} sets ${formatPath(a.path)}`);
  out.push('effective settings (secrets hidden):');
  const yaml = stringify(maskSecrets(loaded.config), { lineWidth: 0 }).trimEnd();
  out.push(...yaml.split('\n').map((l) => `  ${l}`));
  process.stdout.write(out.join('\n') + '\n');
  return 0;
}

function docs(opts: { write?: boolean; check?: boolean }): number {
  if (opts.write) {
    for (const f of writeDocs()) process.stdout.write(`wrote ${f}\n`);
    return 0;
  }
  if (opts.check) {
    let stale = 0;
    for (const [file, want] of [
      [EXAMPLE_FILE, generateExampleYaml()],
      [DOCS_FILE, generateMarkdown()],
    ] as const) {
      let have = '';
      try {
        have = readFileSync(file, 'utf8');
      } catch {
        // missing counts as stale
      }
      if (have !== want) {
        stale++;
        process.stderr.write(`${file} is out of date; run perch config docs --write\n`);
      }
    }
    return stale ? 1 : 0;
  }
  process.stdout.write(generateExampleYaml());
  return 0;
}

export function register(program: Command): void {
  const config = program.command('config').description('Check the configuration and generate its documentation');
  config
    .command('check')
    .description(
      'Validate a config file (with environment overrides) and print the effective settings, or every problem (exit 2)',
    )
    .argument('[file]', 'config file (default: $PERCH_CONFIG, else /etc/perch/config.yaml)')
    .action((file: string | undefined) => {
      process.exitCode = check(file);
    });
  config
    .command('docs')
    .description(
      'Print the documented example config; --write regenerates config/perch.example.yaml and docs/config.md',
    )
    .option('--write', 'write both generated files')
    .option('--check', 'exit 1 when the committed files differ from the schema')
    .action((opts: { write?: boolean; check?: boolean }) => {
      process.exitCode = docs(opts);
    });
}
