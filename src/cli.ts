#!/usr/bin/env node
/**
 * The `perch` command. This file only composes: each area registers its own subcommands from its module
 * (`register(program)`), so adding a command never means growing this file beyond one import and one entry.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { EXIT_CONFIG, loadOrReport, register as registerConfig } from './config/command.js';

type Register = (program: Command) => void;

function registerRun(program: Command): void {
  program
    .command('run')
    .description('Run the daemon (refuses to start, exit 2, when the config has problems)')
    .option('-c, --config <file>', 'config file (default: $PERCH_CONFIG, else /etc/perch/config.yaml)')
    .action(async (opts: { config?: string }) => {
      const loaded = loadOrReport(opts.config);
      if (!loaded) {
        process.stderr.write('perch: not starting until the configuration is fixed\n');
        process.exitCode = EXIT_CONFIG;
        return;
      }
      // wired by the lead: src/daemon/run.ts does not exist yet; replace these lines with
      //   const { runDaemon } = await import('./daemon/run.js');
      //   await runDaemon(loaded.config, { configPath: loaded.path });
      process.stderr.write(`perch: ${loaded.path}: OK, but the daemon is not part of this build yet\n`);
      process.exitCode = 1;
    });
}

/** Every area's subcommands; new areas add their register function here. */
const areas: Register[] = [registerRun, registerConfig];

function version(): string {
  try {
    // ../package.json from src/ and from dist/ alike.
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

const program = new Command('perch').description('Offline AI on small boards: microphone and camera in, MQTT out').version(version());
for (const register of areas) register(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  process.stderr.write(`perch: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
