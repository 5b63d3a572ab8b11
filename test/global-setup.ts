/**
 * One temporary folder for the whole test run. Every test, and every process a test starts, makes its temporary
 * files under it (TMPDIR), and it is removed when the run ends: a run leaves nothing behind in /tmp, however its
 * tests end. Packages, brokers' state and converted checkpoints add up to gigabytes over a run, and CI's disk is
 * shared.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'perch-test-run-'));
  const before = process.env.TMPDIR;
  process.env.TMPDIR = dir;
  return () => {
    rmSync(dir, { recursive: true, force: true });
    if (before === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = before;
  };
}
