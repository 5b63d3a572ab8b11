import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ConfigError,
  DEFAULT_CONFIG_PATH,
  loadConfig,
  loadConfigDetailed,
  parseConfig,
  resolveConfigPath,
} from '../src/config/load.js';
import { perchConfigSchema } from '../src/config/schema.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'perch-config-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** The ConfigError a load throws; fails the test when it does not throw one. */
function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('reports all three mistakes of a file at once, each with key path, value and expectation', () => {
    const file = write(
      'bad.yaml',
      ['mqtt:', '  keepalive_s: abc', '  pasword: x', 'log:', '  level: loud', ''].join('\n'),
    );
    const problems = problemsOf(() => loadConfig(file, {}));
    expect(problems).toHaveLength(3);
    expect(problems).toContain('mqtt.keepalive_s: got "abc" — expected an integer between 5 and 3600 (line 2)');
    expect(problems).toContain('mqtt.pasword: unknown key — did you mean "password"? (line 3)');
    expect(problems).toContain(
      'log.level: got "loud" — expected one of "trace", "debug", "info", "warn", "error", "fatal" (line 5)',
    );
  });

  it('names paths inside lists and tagged unions, and keys that belong to another source type', () => {
    const file = write(
      'cams.yaml',
      [
        'cameras:',
        '  - name: door',
        '    source: { type: webcam }',
        '  - name: yard',
        '    source: { type: ffmpeg, input: /dev/video0, path: /x }',
        '  - source: { type: http, url: not-a-url }',
        '    image_tokens: 300',
      ].join('\n'),
    );
    const problems = problemsOf(() => loadConfig(file, {}));
    expect(problems).toEqual(
      expect.arrayContaining([
        'cameras[0].source.type: got "webcam" — expected one of "ffmpeg", "rpicam", "http", "directory" (line 3)',
        'cameras[1].source.path: unknown key (it belongs to type directory) (line 5)',
        expect.stringMatching(/^cameras\[2\]\.name: missing — expected a string \(Camera name/),
        expect.stringMatching(/^cameras\[2\]\.source\.url: got "not-a-url" — expected a URL/),
        'cameras[2].image_tokens: got 300 — expected one of 70, 140, 280, 560, 1120 (line 7)',
      ]),
    );
    expect(problems).toHaveLength(5);
  });

  it('reports unknown keys at every level, also without a close match', () => {
    const problems = problemsOf(() =>
      parseConfig('devices:\n  id: x\nmodel:\n  zzzzzz: 1\n', { file: join(dir, 'c.yaml'), env: {} }),
    );
    expect(problems[0]).toBe('devices: unknown key — did you mean "device"? (line 1)');
    expect(problems[1]).toMatch(/^model\.zzzzzz: unknown key — known keys here: dir, threads, /);
  });

  it('never shows secrets in messages', () => {
    const problems = problemsOf(() =>
      parseConfig('mqtt:\n  password: 123456789\n  url: "http://bob:hunter2@example.com"\n', {
        file: join(dir, 'c.yaml'),
        env: {},
      }),
    );
    expect(problems.join('\n')).not.toMatch(/123456789|hunter2/);
    expect(problems).toContain('mqtt.password: got ******** (hidden) — expected a string (line 2)');
    expect(problems[1]).toMatch(/^mqtt\.url: got "http:\/\/bob:\*+@example\.com" — expected mqtt:\/\/host/);
  });

  it('locates YAML syntax errors by line and column', () => {
    const file = write('syntax.yaml', 'device:\n  id: a\nmqtt:\n  url: [mqtt://x\n  keepalive_s: 5\n');
    const problems = problemsOf(() => loadConfig(file, {}));
    expect(problems.length).toBeGreaterThan(0);
    expect(problems[0]).toMatch(/^YAML syntax error at line \d+, column \d+: /);
    const dup = problemsOf(() =>
      parseConfig('log:\n  level: info\nlog:\n  format: json\n', { file: join(dir, 'd.yaml'), env: {} }),
    );
    expect(dup[0]).toMatch(/YAML syntax error at line 3, column 1: Map keys must be unique/);
  });

  it('names the path of a missing file, and finds the file through PERCH_CONFIG', () => {
    const missing = join(dir, 'nope.yaml');
    expect(problemsOf(() => loadConfig(missing, {}))[0]).toBe(`config file ${missing} not found`);
    expect(problemsOf(() => loadConfig(undefined, { PERCH_CONFIG: missing }))[0]).toBe(
      `config file ${missing} not found (the path in PERCH_CONFIG)`,
    );
    expect(resolveConfigPath(undefined, {})).toBe(DEFAULT_CONFIG_PATH);
    const file = write('via-env.yaml', 'device: { id: from-env }\n');
    expect(resolveConfigPath(undefined, { PERCH_CONFIG: file })).toBe(file);
    expect(loadConfig(undefined, { PERCH_CONFIG: file }).device.id).toBe('from-env');
    // An explicit path beats PERCH_CONFIG.
    expect(resolveConfigPath('x.yaml', { PERCH_CONFIG: file })).toBe(resolve('x.yaml'));
  });

  it('gives an empty file and empty sections their defaults', () => {
    const defaults = perchConfigSchema.parse({});
    const empty = loadConfig(write('empty.yaml', '# nothing\n'), {});
    expect(empty.mqtt).toEqual(defaults.mqtt);
    const sections = loadConfig(write('sections.yaml', 'mqtt:\nlog:\n  level:\n  format: pretty\n'), {});
    expect(sections.mqtt).toEqual(defaults.mqtt);
    expect(sections.log).toEqual({ level: 'info', format: 'pretty' });
    expect(problemsOf(() => parseConfig('- a\n- b\n', { file: join(dir, 'l.yaml'), env: {} }))[0]).toMatch(
      /got a list — expected a mapping of sections/,
    );
  });

  it('resolves relative paths against the config file directory and env paths against the working directory', () => {
    const sub = join(dir, 'etc');
    const file = join(sub, 'perch.yaml');
    const text = [
      'daemon: { state_dir: ./state }',
      'model: { dir: ../models/tiny }',
      'mqtt: { tls: { ca: ca.pem, cert: /abs/client.pem, key: keys/client.key } }',
      'audio: { source: { type: wav, path: samples/speech.wav } }',
      'cameras:',
      '  - { name: a, source: { type: directory, path: frames } }',
      '  - { name: b, source: { type: ffmpeg, input: rtsp/stream } }',
    ].join('\n');
    const { config } = parseConfig(text, { file, env: { PERCH_MQTT_TLS_KEY: 'env/key.pem' }, cwd: '/work/cwd' });
    expect(config.daemon.state_dir).toBe(join(sub, 'state'));
    expect(config.model.dir).toBe(join(dir, 'models/tiny'));
    expect(config.mqtt.tls.ca).toBe(join(sub, 'ca.pem'));
    expect(config.mqtt.tls.cert).toBe('/abs/client.pem');
    expect(config.mqtt.tls.key).toBe('/work/cwd/env/key.pem');
    expect(config.audio.source).toMatchObject({ type: 'wav', path: join(sub, 'samples/speech.wav') });
    expect(config.cameras[0]!.source).toMatchObject({ path: join(sub, 'frames') });
    // Not a file path: left alone.
    expect(config.cameras[1]!.source).toMatchObject({ input: 'rtsp/stream' });
  });

  it('names the default when a rule across keys trips on a key left at it', () => {
    expect(
      problemsOf(() => parseConfig('audio: { segmenter: { start_threshold: 0.2 } }\n', { file: 'x.yaml', env: {} })),
    ).toEqual([
      expect.stringMatching(
        /^audio\.segmenter\.end_threshold: the default 0\.35 — expected end_threshold must not exceed start_threshold/,
      ),
    ]);
  });

  it('loads the dev config with its paths under config/', () => {
    const devFile = resolve('config/perch.dev.yaml');
    const { config } = loadConfigDetailed(devFile, {});
    const configDir = resolve('config');
    expect(config.embedded_broker).toEqual({ enabled: true, host: '127.0.0.1', port: 1884 });
    expect(config.mqtt.url).toBe('mqtt://127.0.0.1:1884');
    expect(config.device.id).toBe('perch-dev');
    expect(config.log.format).toBe('pretty');
    expect(config.daemon.state_dir).toBe(join(configDir, 'state'));
    expect(config.model.dir).toBe(resolve('models/tiny'));
    expect(config.audio.enabled).toBe(true);
    expect(config.audio.source).toEqual({
      type: 'wav',
      path: join(configDir, 'samples/speech.wav'),
      realtime: true,
      loop: true,
      restart_min_ms: 1000,
      restart_max_ms: 60000,
    });
    expect(config.cameras).toHaveLength(1);
    expect(config.cameras[0]).toMatchObject({
      name: 'demo',
      enabled: true,
      source: { type: 'directory', path: join(configDir, 'samples/frames'), interval_ms: 2000, loop: true },
    });
  });
});
