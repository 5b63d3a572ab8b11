import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { daemonSettings } from '../src/config/schema.js';

const root = join(import.meta.dirname, '..');
const unitPath = join(root, 'systemd', 'perch.service');
const installSh = join(root, 'systemd', 'install.sh');
const ciRun = join(root, '.ci', 'run');
const unit = readFileSync(unitPath, 'utf8');

// systemd-analyze (Debian: systemd) and shellcheck are required, not optional: .ci/run installs both.

/** Values of a key in the unit, in order (repeated keys accumulate). */
function values(key: string): string[] {
  return unit
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));
}

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

/** A copy of the unit whose ExecStart names an executable that exists here. */
function unitCopy(): string {
  dir = mkdtempSync(join(tmpdir(), 'perch-unit-'));
  const copy = join(dir, 'perch.service');
  const text = existsSync('/usr/bin/node')
    ? unit
    : unit.replace('ExecStart=/usr/bin/node ', `ExecStart=${process.execPath} `);
  writeFileSync(copy, text);
  return copy;
}

describe('perch.service', () => {
  it('passes systemd-analyze verify without a word', () => {
    const r = spawnSync('systemd-analyze', ['verify', unitCopy()], { encoding: 'utf8' });
    expect(r.error, 'systemd-analyze must be installed (Debian package systemd)').toBeUndefined();
    const about = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.includes('perch.service'));
    expect(about).toEqual([]);
    expect(r.status).toBe(0);
  });

  it('keeps systemd-analyze security exposure at or below 2.5', () => {
    const r = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', unitCopy()], {
      encoding: 'utf8',
    });
    const m = /Overall exposure level for perch\.service: (\d+(?:\.\d+)?)/.exec(r.stdout);
    expect(m, r.stdout + r.stderr).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(2.5);
  });

  it('is a notify service with a watchdog, restarted on failure, as user perch', () => {
    expect(values('Type')).toEqual(['notify']);
    expect(values('NotifyAccess')).toEqual(['all']);
    expect(Number(values('WatchdogSec')[0])).toBeGreaterThan(0);
    expect(values('Restart')).toEqual(['on-failure']);
    expect(values('User')).toEqual(['perch']);
    expect(values('SupplementaryGroups')).toEqual(['audio video']);
    expect(values('ExecStart')[0]).toMatch(/ run --config \$\{PERCH_CONFIG\}$/);
    expect(values('Environment')).toContain('PERCH_CONFIG=/etc/perch/config.yaml');
    expect(values('Environment')).toContain('PERCH_MQTT_PASSWORD_FILE=%d/mqtt_password');
    expect(values('LoadCredential')).toEqual(['mqtt_password:/etc/perch/mqtt_password']);
  });

  it('gives Perch time to drain before systemd kills it', () => {
    const drainMs = daemonSettings.parse({}).drain_timeout_ms;
    const graceMs = 2000; // installShutdown's default grace after the drain
    expect(Number(values('TimeoutStopSec')[0]) * 1000).toBeGreaterThan(drainMs + graceMs);
  });

  it('keeps the JIT working and the sound card and cameras reachable', () => {
    // V8 needs writable-then-executable memory.
    expect(values('MemoryDenyWriteExecute')).toEqual(['no']);
    expect(values('PrivateDevices')).toEqual(['no']);
    expect(values('DevicePolicy')).toEqual(['closed']);
    expect(values('DeviceAllow')).toEqual(
      expect.arrayContaining(['char-alsa rw', 'char-video4linux rw', 'char-media rw', 'char-dma_heap rw']),
    );
    expect(values('CapabilityBoundingSet')).toEqual(['']);
    expect(values('ProtectSystem')).toEqual(['strict']);
  });
});

describe('install.sh and .ci/run', () => {
  it('are shellcheck-clean', () => {
    const r = spawnSync('shellcheck', [installSh, ciRun], { encoding: 'utf8' });
    expect(r.error, 'shellcheck must be installed (Debian package shellcheck)').toBeUndefined();
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('install.sh --dry-run plans the whole install and changes nothing', () => {
    const r = spawnSync('bash', [installSh, '--dry-run'], {
      encoding: 'utf8',
      env: { ...process.env, PATH: `${join(process.execPath, '..')}:${process.env.PATH}` },
    });
    expect(r.stderr.replace(/^npm warn.*\n/gm, '')).toBe('');
    expect(r.status).toBe(0);
    const plan = r.stdout;
    const order = [
      /^\+ env ONNXRUNTIME_NODE_INSTALL=skip npm ci/m,
      /^\+ npm run build$/m,
      /^\+ npm prune --omit=dev/m,
      /^\+ mv \/opt\/perch\.new \/opt\/perch$/m,
      /^\+ install -m 0644 -o root -g root \S+\/systemd\/perch\.service \/etc\/systemd\/system\/perch\.service$/m,
      /^\+ systemctl daemon-reload$/m,
      /^\+ systemctl enable perch\.service$/m,
    ];
    let at = 0;
    for (const re of order) {
      const m = re.exec(plan.slice(at));
      expect(m, `${re} after offset ${at} in:\n${plan}`).not.toBeNull();
      at += m!.index + m![0].length;
    }
    expect(plan).toMatch(/^\+ useradd --system .* perch$|user perch exists/m);
    expect(plan).toMatch(/usermod --append --groups audio perch|group audio does not exist/);
    if (!existsSync('/etc/perch/config.yaml')) {
      expect(plan).toMatch(
        /^\+ install -m 0640 -o root -g perch \S+\/config\/perch\.example\.yaml \/etc\/perch\/config\.yaml$/m,
      );
    }
    expect(existsSync('/opt/perch.new')).toBe(false);
  });

  it('install.sh points the unit at node with a drop-in when node is not /usr/bin/node', () => {
    dir = mkdtempSync(join(tmpdir(), 'perch-node-'));
    symlinkSync(process.execPath, join(dir, 'node'));
    const r = spawnSync('bash', [installSh, '--dry-run'], {
      encoding: 'utf8',
      env: { ...process.env, PATH: `${dir}:${process.env.PATH}` },
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`+ write /etc/systemd/system/perch.service.d/10-node.conf <<EOF
# Written by install.sh: node is not at /usr/bin/node here.
[Service]
ExecStart=
ExecStart=${dir}/node /opt/perch/dist/cli.js run --config \${PERCH_CONFIG}
EOF`);
    expect(r.stdout).toContain(`exec ${dir}/node /opt/perch/dist/cli.js "$@"`);
  });

  it('install.sh --dry-run --uninstall removes the service but keeps config and state unless --purge', () => {
    const keep = spawnSync('bash', [installSh, '--dry-run', '--uninstall'], { encoding: 'utf8' });
    expect(keep.status).toBe(0);
    expect(keep.stdout).toMatch(/^\+ rm -rf \/etc\/systemd\/system\/perch\.service\.d \/opt\/perch /m);
    expect(keep.stdout).not.toContain('/var/lib/perch\n');
    const purge = spawnSync('bash', [installSh, '--dry-run', '--uninstall', '--purge'], { encoding: 'utf8' });
    expect(purge.status).toBe(0);
    expect(purge.stdout).toMatch(/^\+ rm -rf \/etc\/perch \/var\/lib\/perch$/m);
  });

  it('install.sh refuses unknown options and --purge without --uninstall', () => {
    expect(spawnSync('bash', [installSh, '--bogus'], { encoding: 'utf8' }).status).not.toBe(0);
    const r = spawnSync('bash', [installSh, '--dry-run', '--purge'], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('--purge only goes with --uninstall');
  });
});
