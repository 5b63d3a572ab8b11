import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { envVariables, type EnvVariable } from '../src/config/env.js';
import { choices } from '../src/config/introspect.js';
import { ConfigError, parseConfig } from '../src/config/load.js';
import { z } from 'zod';

let dir: string;
let file: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'perch-env-'));
  file = join(dir, 'perch.yaml');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

function get(obj: unknown, path: readonly string[]): unknown {
  return path.reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj);
}

/** A valid value for the variable that differs from its default, as environment text and as the loaded value. */
function sample(v: EnvVariable): { text: string; value: unknown } {
  const s = v.field.schema;
  const def = v.field.default;
  if (s instanceof z.ZodNumber) {
    const lo = s.minValue ?? 0;
    const hi = s.maxValue ?? Number.MAX_SAFE_INTEGER;
    const n = typeof def === 'number' && def + 1 <= hi ? def + 1 : lo === def ? lo + 1 : lo;
    return { text: String(n), value: n };
  }
  if (s instanceof z.ZodBoolean) return { text: def ? 'off' : 'yes', value: !def };
  const c = choices(s);
  if (c) {
    const pick = c.find((x) => x !== def) ?? c[0];
    return { text: String(pick), value: pick };
  }
  // Long enough for a string with a minimum length (http.token).
  const min = s instanceof z.ZodString ? (s.minLength ?? 0) : 0;
  const text = (typeof def === 'string' ? `${def}x` : 'x1').padEnd(min, 'x');
  return { text, value: v.field.meta.path === true ? resolve(dir, text) : text };
}

describe('environment overrides', () => {
  it('are derived from the schema: every scalar leaf outside lists, with _FILE for strings, names unique', () => {
    const vars = envVariables();
    const names = vars.map((v) => v.name);
    for (const n of [
      'PERCH_MQTT_URL',
      'PERCH_MQTT_PASSWORD',
      'PERCH_LOG_LEVEL',
      'PERCH_MODEL_DIR',
      'PERCH_MQTT_TLS_CA',
      'PERCH_MQTT_OUTBOX_MAX_BYTES',
      'PERCH_AUDIO_SOURCE_PATH',
    ]) {
      expect(names).toContain(n);
    }
    expect(names.some((n) => n.startsWith('PERCH_CAMERAS'))).toBe(false);
    const all = [...names, ...vars.flatMap((v) => (v.fileName ? [v.fileName] : []))];
    expect(new Set(all).size).toBe(all.length);
    expect(vars.find((v) => v.name === 'PERCH_MQTT_PASSWORD')?.fileName).toBe('PERCH_MQTT_PASSWORD_FILE');
    expect(vars.find((v) => v.name === 'PERCH_MQTT_KEEPALIVE_S')?.fileName).toBeUndefined();
  });

  it('each variable sets its key in the loaded config', () => {
    for (const v of envVariables()) {
      const s = sample(v);
      // Source keys need a source of the type that has them.
      const isSourceKey = v.path[0] === 'audio' && v.path[1] === 'source' && v.path[2] !== 'type';
      let base = isSourceKey
        ? ['path', 'realtime', 'loop'].includes(v.path[2]!)
          ? 'audio: { source: { type: wav, path: a.wav } }\n'
          : 'audio: { source: { type: microphone } }\n'
        : '';
      // Segmenter keys are tied by cross-field rules: hold the other side of each rule at its most lenient.
      if (v.path[1] === 'segmenter') {
        const lenient: Record<string, number> = {
          end_threshold: 0,
          split_overlap_ms: 0,
          pre_roll_ms: 0,
          min_utterance_ms: 0,
          start_threshold: 1,
          max_utterance_ms: 30000,
        };
        delete lenient[v.path[2]!];
        base = `audio: { segmenter: ${JSON.stringify(lenient)} }\n`;
      }
      const { config, applied } = parseConfig(base, { file, env: { [v.name]: s.text }, cwd: dir });
      expect(get(config, v.path), v.name).toEqual(s.value);
      expect(applied).toEqual([{ name: v.name, path: v.path }]);
    }
  });

  it('override the file, coerce by type, and treat empty variables as unset', () => {
    writeFileSync(file, 'mqtt: { url: mqtt://file:1883, keepalive_s: 60 }\nlog: { level: warn }\n');
    const env = {
      PERCH_MQTT_URL: 'mqtts://broker.lan:8883',
      PERCH_MQTT_KEEPALIVE_S: ' 45 ',
      PERCH_MQTT_TLS_REJECT_UNAUTHORIZED: 'false',
      PERCH_EMBEDDED_BROKER_ENABLED: 'ON',
      PERCH_LOG_LEVEL: '',
      PERCH_MQTT_PROTOCOL: '3.1.1',
    };
    const { config } = parseConfig('mqtt: { url: mqtt://file:1883, keepalive_s: 60 }\nlog: { level: warn }\n', {
      file,
      env,
    });
    expect(config.mqtt.url).toBe('mqtts://broker.lan:8883');
    expect(config.mqtt.keepalive_s).toBe(45);
    expect(config.mqtt.tls.reject_unauthorized).toBe(false);
    expect(config.embedded_broker.enabled).toBe(true);
    expect(config.log.level).toBe('warn');
    expect(config.mqtt.protocol).toBe('3.1.1');
  });

  it('read _FILE variants from files, without the trailing newline', () => {
    const secret = join(dir, 'mqtt-password');
    writeFileSync(secret, 's3cr3t with spaces \n');
    const { config, applied } = parseConfig('', { file, env: { PERCH_MQTT_PASSWORD_FILE: secret } });
    expect(config.mqtt.password).toBe('s3cr3t with spaces ');
    expect(applied).toEqual([{ name: 'PERCH_MQTT_PASSWORD_FILE', path: ['mqtt', 'password'], file: secret }]);
  });

  it('report unreadable _FILE variables and a variable set twice, naming the variables', () => {
    const missing = join(dir, 'missing');
    const problems = problemsOf(() =>
      parseConfig('', {
        file,
        env: {
          PERCH_MQTT_PASSWORD_FILE: missing,
          PERCH_MQTT_USERNAME: 'a',
          PERCH_MQTT_USERNAME_FILE: missing,
          PERCH_MODEL_DIR_FILE: dir,
        },
      }),
    );
    expect(problems).toEqual([
      `PERCH_MQTT_USERNAME (sets mqtt.username): both PERCH_MQTT_USERNAME and PERCH_MQTT_USERNAME_FILE are set; set only one`,
      `PERCH_MQTT_PASSWORD_FILE (sets mqtt.password): cannot read ${missing}: it does not exist`,
      `PERCH_MODEL_DIR_FILE (sets model.dir): ${dir} is not a regular file`,
    ]);
  });

  it('report invalid values like file errors, naming the variable, together with file problems', () => {
    const problems = problemsOf(() =>
      parseConfig('mqtt:\n  keepalive: 5\n', {
        file,
        env: {
          PERCH_MQTT_KEEPALIVE_S: 'abc',
          PERCH_EMBEDDED_BROKER_ENABLED: 'maybe',
          PERCH_LOG_FORMAT: 'xml',
          PERCH_MQTT_PASSWORD: 'x'.repeat(3),
        },
      }),
    );
    expect(problems).toEqual([
      'mqtt.keepalive: unknown key — did you mean "keepalive_s"? (line 2)',
      // Environment problems follow the file's, in schema order.
      'PERCH_LOG_FORMAT (sets log.format): got "xml" — expected one of "json", "pretty"',
      'PERCH_MQTT_KEEPALIVE_S (sets mqtt.keepalive_s): got "abc" — expected an integer between 5 and 3600',
      'PERCH_EMBEDDED_BROKER_ENABLED (sets embedded_broker.enabled): got "maybe" — expected true or false',
    ]);
  });

  it('warn about PERCH_ variables that set nothing, with the likely intended name', () => {
    const { warnings } = parseConfig('', { file, env: { PERCH_MQTT_URLL: 'x', PERCH_CONFIG: file, PERCH_ZZZ: '1' } });
    expect(warnings).toEqual([
      'PERCH_MQTT_URLL is not a Perch setting and is ignored — did you mean PERCH_MQTT_URL?',
      'PERCH_ZZZ is not a Perch setting and is ignored',
    ]);
  });
});
