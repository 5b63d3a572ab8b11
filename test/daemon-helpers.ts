/** Runs the real `perch run` CLI as a child process with a config written for the test. */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const SAMPLES = path.join(REPO, 'config', 'samples');

export class DaemonProcess {
  readonly output: string[] = [];
  private exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(readonly child: ChildProcess) {
    child.stdout?.on('data', (b: Buffer) => this.output.push(b.toString()));
    child.stderr?.on('data', (b: Buffer) => this.output.push(b.toString()));
    this.exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Writes `config` as YAML into `dir` and starts `perch run --config` on it. */
  static start(dir: string, config: unknown, env: NodeJS.ProcessEnv = {}, configPath?: string): DaemonProcess {
    const file = configPath ?? path.join(dir, 'config.yaml');
    if (!configPath) writeFileSync(file, stringify(config));
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', path.join(REPO, 'src', 'cli.ts'), 'run', '--config', file],
      {
        cwd: REPO,
        env: { ...process.env, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    return new DaemonProcess(child);
  }

  log(): string {
    return this.output.join('');
  }

  exited(timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return Promise.race([
      this.exit,
      new Promise<never>((_, reject) =>
        setTimeout(
          () => reject(new Error(`daemon did not exit within ${timeoutMs} ms; log:\n${this.log()}`)),
          timeoutMs,
        ),
      ),
    ]);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited().catch(() => undefined);
  }
}
