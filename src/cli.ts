#!/usr/bin/env node
/**
 * The `perch` command. This file only composes: each area's subcommands live in src/cli/ (one file per area,
 * `register(program)`), so adding a command never means growing this file beyond one import and one entry.
 */
import { Command } from 'commander';
import { EXIT_CONFIG, loadOrReport, register as registerConfig } from './cli/config.js';
import { registerTranscribeCommand } from './cli/transcribe.js';
import { registerAskCommand } from './cli/ask.js';
import { registerModelCommands } from './cli/model.js';
import { registerHaCommands } from './cli/ha.js';
import { registerCaptionCommand } from './cli/caption.js';
import { perchVersion } from './common/version.js';

type Register = (program: Command) => void;

function registerRun(program: Command): void {
  program
    .command('run')
    .description('Run the daemon (refuses to start, exit 2, when the config has problems)')
    .option('-c, --config <file>', 'config file (default: $PERCH_CONFIG, else /etc/perch/config.yaml)')
    .option(
      '--exit-with-parent',
      'stop when the process that started Perch ends (npm start: npm does not pass SIGTERM on)',
    )
    .action(async (opts: { config?: string; exitWithParent?: boolean }) => {
      const loaded = loadOrReport(opts.config);
      if (!loaded) {
        process.stderr.write('perch: not starting until the configuration is fixed\n');
        process.exitCode = EXIT_CONFIG;
        return;
      }
      // Imported here so that `perch config …` and `perch model …` never load the daemon's modules.
      const { runDaemon } = await import('./daemon/run.js');
      await runDaemon(loaded.config, { configPath: loaded.path, exitWithParent: opts.exitWithParent ?? false });
    });
}

/** Every area's subcommands; new areas add their register function here. */
const areas: Register[] = [
  registerRun,
  registerConfig,
  registerModelCommands,
  registerAskCommand,
  registerTranscribeCommand,
  registerCaptionCommand,
  registerHaCommands,
];

const program = new Command('perch')
  .description('Offline AI on small boards: microphone and camera in, MQTT out')
  .version(perchVersion());
for (const register of areas) register(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  process.stderr.write(`perch: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
