import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateExampleYaml } from '../src/config/docs.js';

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real CLI entry point in a child process, with an argument array and a clean PERCH_* environment. */
function perch(args: string[], env: Record<string, string> = {}): Promise<Result> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PERCH_')));
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'src/cli.ts', ...args],
      { env: { ...base, ...env }, timeout: 20_000, maxBuffer: 1 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'perch-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('perch config check / run', () => {
  it('names all three mistakes and exits 2; run refuses to start', async () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'mqtt:\n  keepalive_s: abc\n  pasword: x\nlog:\n  level: loud\n');
    const check = await perch(['config', 'check', file]);
    expect(check.code).toBe(2);
    const lines = check.stderr.trim().split('\n');
    expect(lines[0]).toBe(`perch: ${file}: 3 problems`);
    expect(lines.slice(1)).toEqual([
      `${file}: mqtt.keepalive_s: got "abc" — expected an integer between 5 and 3600 (line 2)`,
      `${file}: mqtt.pasword: unknown key — did you mean "password"? (line 3)`,
      `${file}: log.level: got "loud" — expected one of "trace", "debug", "info", "warn", "error", "fatal" (line 5)`,
    ]);
    expect(check.stdout).toBe('');

    const run = await perch(['run', '--config', file]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`${file}: mqtt.pasword: unknown key — did you mean "password"? (line 3)`);
    expect(run.stderr).toContain('not starting');
  });

  it('prints OK with the effective settings, environment included and secrets hidden', async () => {
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, 'device: { id: kitchen }\nmqtt: { password: file-secret }\n');
    const secret = join(dir, 'pw');
    writeFileSync(secret, 'env-secret\n');
    const r = await perch(['config', 'check', file], {
      PERCH_MQTT_PASSWORD_FILE: secret,
      PERCH_MQTT_URL: 'mqtt://user:urlpass@broker:1883',
    });
    expect(r.code).toBe(0);
    const out = r.stdout.split('\n');
    expect(out[0]).toBe(`${file}: OK`);
    expect(r.stdout).toContain('from the environment: PERCH_MQTT_PASSWORD_FILE sets mqtt.password');
    expect(r.stdout).toMatch(/^ {4}id: kitchen$/m);
    expect(r.stdout).toMatch(/^ {4}password: "\*{8}"$/m);
    expect(r.stdout).toContain('url: mqtt://user:********@broker:1883');
    expect(r.stdout).not.toMatch(/file-secret|env-secret|urlpass/);
  });

  it('reports invalid environment values and a missing file with exit 2', async () => {
    const file = join(dir, 'empty.yaml');
    writeFileSync(file, '');
    const bad = await perch(['config', 'check', file], { PERCH_MQTT_KEEPALIVE_S: 'abc' });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain(
      `${file}: PERCH_MQTT_KEEPALIVE_S (sets mqtt.keepalive_s): got "abc" — expected an integer between 5 and 3600`,
    );
    const missing = join(dir, 'missing.yaml');
    const gone = await perch(['config', 'check'], { PERCH_CONFIG: missing });
    expect(gone.code).toBe(2);
    expect(gone.stderr).toContain(`config file ${missing} not found`);
  });

  it('config docs prints the generated example; --check finds the committed files current', async () => {
    const r = await perch(['config', 'docs']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(generateExampleYaml());
    const c = await perch(['config', 'docs', '--check']);
    expect(c.code).toBe(0);
  });

  it('starts with a shebang so the built dist/cli.js runs as the perch bin', () => {
    expect(readFileSync('src/cli.ts', 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
  });
});
