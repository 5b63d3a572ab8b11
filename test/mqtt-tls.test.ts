/** TLS and authentication against a private Mosquitto with a throwaway CA and a password file. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { mqttSettings } from '../src/config/schema.js';
import { MqttConnection } from '../src/mqtt/connection.js';
import { Collector, Mosquitto, tempDir, uniqueRoot } from './mqtt-helpers.js';

type MqttSettingsInput = z.input<typeof mqttSettings>;

let broker: Mosquitto;
let certs: { dir: string; cleanup(): void };
const file = (name: string) => path.join(certs.dir, name);

beforeAll(async () => {
  certs = tempDir('perch-tls-');
  const ossl = (...args: string[]) => execFileSync('openssl', args, { cwd: certs.dir, stdio: 'ignore' });
  ossl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=Perch Test CA',
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
  );
  ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr');
  execFileSync('sh', ['-c', 'printf "subjectAltName=IP:127.0.0.1,DNS:localhost\\n" > ext.cnf'], { cwd: certs.dir });
  ossl(
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    'ext.cnf',
    '-out',
    'server.pem',
  );
  execFileSync('mosquitto_passwd', ['-b', '-c', file('passwd'), 'perch', 's3cret']);
  broker = await Mosquitto.start({
    tls: { ca: file('ca.pem'), cert: file('server.pem'), key: file('server.key') },
    passwordFile: file('passwd'),
  });
}, 60_000);

afterAll(async () => {
  await broker?.close();
  certs?.cleanup();
});

async function tryConnect(extra: MqttSettingsInput): Promise<{ conn: MqttConnection; ok: boolean }> {
  const settings = mqttSettings.parse({
    url: broker.url,
    root_topic: uniqueRoot(),
    reconnect_min_ms: 200,
    reconnect_max_ms: 1000,
    ...extra,
  });
  const conn = new MqttConnection({ settings, deviceId: 'tls' });
  await conn.start();
  const ok = await conn.waitConnected(1500);
  return { conn, ok };
}

describe('TLS and credentials', () => {
  it('connects with the CA and a password, and delivers results', async () => {
    const { conn, ok } = await tryConnect({ username: 'perch', password: 's3cret', tls: { ca: file('ca.pem') } });
    try {
      expect(ok).toBe(true);
      const sub = await Collector.connect(broker.url, [conn.topics.transcript], {
        username: 'perch',
        password: 's3cret',
        ca: [readFileSync(file('ca.pem'))],
      });
      try {
        await conn.publish(conn.topics.transcript, 'over tls', { final: true, qos: 1, priority: 'transcript' });
        await sub.waitFor((m) => m.length === 1);
        expect(sub.messages[0].payload.toString()).toBe('over tls');
      } finally {
        await sub.close();
      }
    } finally {
      await conn.stop();
    }
  });

  it('refuses a wrong password, and a broker certificate it cannot verify', async () => {
    for (const extra of [
      { username: 'perch', password: 'wrong', tls: { ca: file('ca.pem') } },
      { username: 'perch', password: 's3cret' }, // no CA: the self-made CA is not trusted
    ]) {
      const { conn, ok } = await tryConnect(extra);
      await conn.stop();
      expect(ok).toBe(false);
    }
    // reject_unauthorized: false accepts it (testing only).
    const { conn, ok } = await tryConnect({
      username: 'perch',
      password: 's3cret',
      tls: { reject_unauthorized: false },
    });
    await conn.stop();
    expect(ok).toBe(true);
  });

  it('start() fails with the path of an unreadable TLS file', async () => {
    const settings = mqttSettings.parse({ url: broker.url, tls: { ca: file('missing.pem') } });
    const conn = new MqttConnection({ settings, deviceId: 'tls' });
    await expect(conn.start()).rejects.toThrow(/mqtt\.tls\.ca: cannot read .*missing\.pem/);
  });
});
