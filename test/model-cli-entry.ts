/** Test entry for `perch model ...` until src/cli.ts registers the model commands (spawned by model-cli tests). */
import { Command } from 'commander';
import { registerModelCommands } from '../src/model/commands.js';

const program = new Command('perch').exitOverride((err) => {
  process.exitCode = err.exitCode;
  throw err;
});
registerModelCommands(program);
try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (!(err as { code?: string }).code?.startsWith('commander.')) process.stderr.write(`perch: ${(err as Error).message}\n`);
  process.exitCode ||= 1;
}
