import { afterAll, afterEach, beforeAll } from 'vitest';
/**
 * Test helpers for the MQTT tests: a private Mosquitto we can stop and restart, an in-process aedes
 * broker (MQTT 3.1.1 only), free ports and a collecting subscriber.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Aedes } from 'aedes';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';

export const MOSQUITTO = '/usr/sbin/mosquitto';

// Brokers still running when the test process exits (a crashed or interrupted run) are killed with it.
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`broker on port ${port} did not come up`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface MosquittoOptions {
  /** PEM files of a TLS listener. */
  tls?: { ca: string; cert: string; key: string };
  /** mosquitto_passwd file; without one, anonymous clients are allowed. */
  passwordFile?: string;
  /** More mosquitto.conf lines, e.g. `max_packet_size 2048`. */
  extraConfig?: string[];
}

/** A private Mosquitto with persistence, so sessions of clean:false clients survive its restarts. */
export class Mosquitto {
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'perch-mosq-'));
  private child: ChildProcess | undefined;
  private constructor(
    readonly port: number,
    private readonly opts: MosquittoOptions,
  ) {
    const lines = [
      `listener ${port} 127.0.0.1`,
      'persistence true',
      `persistence_location ${this.dir}/`,
      'autosave_interval 1',
      // Started as root, mosquitto would switch to user mosquitto, who cannot read the temp dir.
      'user root',
      'log_dest none',
    ];
    if (opts.tls) lines.push(`cafile ${opts.tls.ca}`, `certfile ${opts.tls.cert}`, `keyfile ${opts.tls.key}`);
    lines.push(opts.passwordFile ? `password_file ${opts.passwordFile}` : 'allow_anonymous true');
    lines.push(...(opts.extraConfig ?? []));
    writeFileSync(path.join(this.dir, 'mosquitto.conf'), lines.join('\n') + '\n');
  }

  static async start(opts: MosquittoOptions = {}): Promise<Mosquitto> {
    const m = new Mosquitto(await freePort(), opts);
    await m.resume();
    return m;
  }

  get url(): string {
    return `${this.opts.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${this.port}`;
  }

  /** Starts the broker unless it runs already. */
  async resume(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) return;
    const child = spawn(MOSQUITTO, ['-c', path.join(this.dir, 'mosquitto.conf')], { stdio: 'ignore' });
    running.add(child);
    child.once('exit', () => running.delete(child));
    this.child = child;
    await waitForPort(this.port, 10_000);
  }

  /** SIGTERM: mosquitto saves its persistence file and exits. */
  async pause(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  }

  async close(): Promise<void> {
    await this.pause();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** aedes 1.2 in-process: speaks MQTT 3.1.1 only and refuses MQTT 5 with CONNACK code 1. */
export async function startAedes(): Promise<{ url: string; close(): Promise<void> }> {
  const broker = await Aedes.createBroker();
  const server = net.createServer(broker.handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close();
        broker.close(() => resolve());
      }),
  };
}

export interface Received {
  topic: string;
  payload: Buffer;
  packet: IPublishPacket;
}

/** A test client that records everything it receives. */
export class Collector {
  readonly messages: Received[] = [];
  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload, packet) => this.messages.push({ topic, payload, packet }));
  }

  static async connect(url: string, filters: string[], opts: IClientOptions = {}): Promise<Collector> {
    const client = await mqtt.connectAsync(url, { reconnectPeriod: 100, ...opts });
    const c = new Collector(client);
    await client.subscribeAsync(Object.fromEntries(filters.map((f) => [f, { qos: 1 as const }])));
    return c;
  }

  on(topic: string): Received[] {
    return this.messages.filter((m) => m.topic === topic);
  }

  async waitFor(pred: (msgs: Received[]) => boolean, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.messages)) {
      if (Date.now() > deadline)
        throw new Error(
          `timed out; received: ${this.messages.map((m) => `${m.topic}=${m.payload.toString().slice(0, 80)}`).join(' | ')}`,
        );
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}

export function tempDir(prefix: string): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

let counter = 0;
/** A topic root no other test (or earlier run against the system broker) uses. */
export function uniqueRoot(): string {
  return `perch-test/${process.pid}-${Date.now().toString(36)}-${counter++}`;
}

/**
 * One private Mosquitto for all the tests of a file, and cleanups run (last first) after each test: registers
 * the vitest hooks. Read `broker` inside tests and hooks (it is started in beforeAll).
 */
export function privateBrokerForFile(): { readonly broker: Mosquitto; cleanups: Array<() => Promise<void> | void> } {
  let broker: Mosquitto | undefined;
  const cleanups: Array<() => Promise<void> | void> = [];
  beforeAll(async () => {
    broker = await Mosquitto.start();
  });
  afterAll(async () => {
    await broker?.close();
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  return {
    get broker(): Mosquitto {
      if (!broker) throw new Error('the private broker starts in beforeAll');
      return broker;
    },
    cleanups,
  };
}
