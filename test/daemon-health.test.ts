/**
 * Hardening, through the real `perch run` and a private Mosquitto:
 * - a stage that keeps failing (a camera whose frames cannot be decoded) shows in stats, reaches `errors`
 *   rate-limited, turns Home Assistant's Problem entity on, is restarted with backoff, and recovers;
 * - a model package that appears in model.dir after start is picked up (a half-written one is refused).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DaemonProcess, SAMPLES } from './daemon-helpers.js';
import { synthPackage } from '../src/model/build/synth.js';
import { messageSchemas } from '../src/mqtt/messages.js';
import { Collector, privateBrokerForFile, type Received, tempDir } from './mqtt-helpers.js';

const shared = privateBrokerForFile();
const cleanups = shared.cleanups;
let seq = 0;

async function startDaemon(stateDir: string, over: Record<string, unknown>) {
  const id = `h${process.pid}-${seq++}`;
  const root = `perch/${id}`;
  const config = {
    device: { id, name: `Perch health ${id}` },
    log: { level: 'debug', format: 'json' },
    daemon: { state_dir: stateDir, drain_timeout_ms: 3000, stats_interval_s: 1 },
    mqtt: { url: shared.broker.url, keepalive_s: 5, reconnect_min_ms: 200, reconnect_max_ms: 1000 },
    homeassistant: { discovery_prefix: `ha-${id}` },
    model: { dir: path.join(stateDir, 'no-model') },
    audio: { enabled: false },
    cameras: [],
    ...over,
  };
  const watcher = await Collector.connect(shared.broker.url, [`${root}/#`, `ha-${id}/#`]);
  const daemon = DaemonProcess.start(stateDir, config);
  cleanups.push(async () => {
    await daemon.kill();
    await watcher.close();
  });
  await watcher
    .waitFor((m) => m.some((x) => x.topic === `${root}/status` && x.payload.toString() === 'online'), 20_000)
    .catch((err: Error) => {
      throw new Error(`${err.message.slice(0, 2000)}\ndaemon log:\n${daemon.log()}`);
    });
  return { id, root, daemon, watcher };
}

// biome-ignore lint/suspicious/noExplicitAny: the test reads arbitrary JSON
const json = (b: Buffer) => JSON.parse(b.toString()) as Record<string, any>;
const lastStats = (msgs: Received[], root: string) => {
  const s = msgs.filter((x) => x.topic === `${root}/stats`).at(-1);
  return s ? json(s.payload) : undefined;
};

describe('a stage that keeps failing', () => {
  it('shows in stats and errors (rate-limited), turns the Problem entity on, is restarted with backoff, and recovers', async () => {
    const tmp = tempDir('perch-health-');
    cleanups.push(() => tmp.cleanup());
    // A truncated JPEG: its header reads (the directory source passes it on), the motion decoder fails on it.
    const frames = path.join(tmp.dir, 'frames');
    mkdirSync(frames);
    const good = path.join(SAMPLES, 'frames', readdirSync(path.join(SAMPLES, 'frames')).sort()[0]!);
    const jpeg = readFileSync(good);
    writeFileSync(path.join(frames, 'broken.jpg'), jpeg.subarray(0, jpeg.length >> 1));
    const { root, id, watcher, daemon } = await startDaemon(tmp.dir, {
      cameras: [
        {
          name: 'yard',
          snapshot_interval_s: 0,
          source: { type: 'directory', path: frames, interval_ms: 100, loop: true },
        },
      ],
    });
    const stage = 'camera/yard/decoder';

    // Home Assistant gets a Problem entity reading the stats' health.
    await watcher.waitFor((m) => m.some((x) => x.topic === `ha-${id}/device/perch_${id}/config`));
    const disco = json(watcher.on(`ha-${id}/device/perch_${id}/config`)[0]!.payload);
    expect(disco.cmps.problem).toMatchObject({
      p: 'binary_sensor',
      device_class: 'problem',
      state_topic: `${root}/stats`,
    });

    // Stats: failing (or being restarted), with the decoder's error, a growing count and restarts.
    const health = () => lastStats(watcher.messages, root)?.health?.[stage];
    await watcher
      .waitFor(() => (health()?.restarts ?? 0) >= 2 && health()?.error_count >= 20, 30_000)
      .catch((err: Error) => {
        throw new Error(
          `${err.message.slice(0, 300)}\nhealth: ${JSON.stringify(health())}\nlog:\n${daemon.log().slice(-4000)}`,
        );
      });
    const h = health();
    expect(['failing', 'restarting']).toContain(h.state);
    expect(h.last_error).toMatch(/cannot decode frame/);
    expect(messageSchemas.stats.safeParse(lastStats(watcher.messages, root)).success).toBe(true);

    // errors: said when it began failing, not once per frame.
    const reports = watcher
      .on(`${root}/errors`)
      .map((x) => json(x.payload))
      .filter((e) => String(e.message).includes(stage));
    expect(reports.length).toBeGreaterThanOrEqual(1);
    expect(reports.length).toBeLessThanOrEqual(2);
    expect(reports[0]).toMatchObject({ code: 'internal', topic: `${root}/camera/yard/motion` });
    expect(messageSchemas.error.safeParse(reports[0]).success).toBe(true);

    // Restarted with backoff: the log shows growing delays (1 s, then 2 s, ...).
    const delays = daemon
      .log()
      .split('\n')
      .filter((l) => l.includes(`restarting stage ${stage}`))
      .map((l) => (JSON.parse(l) as { in_ms: number }).in_ms);
    expect(delays.length).toBeGreaterThanOrEqual(2);
    expect(delays[1]!).toBeGreaterThan(delays[0]!);

    // A good frame: the decoder works again and the stage is ok.
    copyFileSync(good, path.join(frames, 'good.jpg'));
    rmSync(path.join(frames, 'broken.jpg'));
    await watcher.waitFor(() => health()?.state === 'ok', 20_000);
  }, 90_000);
});

describe('a model package that arrives after start', () => {
  let pkgs: { dir: string; cleanup(): void };
  beforeAll(async () => {
    pkgs = tempDir('perch-later-');
    await synthPackage({ preset: 'tiny', outDir: path.join(pkgs.dir, 'good'), seed: 5 });
  }, 120_000);
  afterAll(() => pkgs.cleanup());

  it('refuses a half-written package, then picks up a complete one without a restart', async () => {
    const tmp = tempDir('perch-later-state-');
    cleanups.push(() => tmp.cleanup());
    const modelDir = path.join(tmp.dir, 'model');
    const { root, watcher, daemon } = await startDaemon(tmp.dir, {
      model: { dir: modelDir, threads: 1, context_tokens: 256, max_answer_tokens: 8 },
    });
    const answers = () => watcher.on(`${root}/answer`).map((x) => json(x.payload));
    const ask = async (text: string) => {
      const n = answers().length;
      await watcher.client.publishAsync(`${root}/ask/text`, text, { qos: 1 });
      await watcher.waitFor(() => answers().length > n, 60_000);
      return answers().at(-1)!;
    };

    expect((await ask('Anyone there?')).error).toMatchObject({ code: 'unavailable' });

    // Half-written: a copy missing its decoder, renamed into model.dir. Refused; still unavailable.
    const half = path.join(tmp.dir, 'build-half');
    copyTree(path.join(pkgs.dir, 'good'), half);
    const decoder = readdirSync(half).find((f) => f.startsWith('decoder') && f.endsWith('.onnx'))!;
    rmSync(path.join(half, decoder));
    renameSync(half, modelDir);
    await watcher
      .waitFor(
        () => watcher.on(`${root}/errors`).some((x) => String(json(x.payload).message).includes('failed verification')),
        30_000,
      )
      .catch((err: Error) => {
        throw new Error(`${err.message.slice(0, 300)}\nlog:\n${daemon.log().slice(-4000)}`);
      });
    await watcher.waitFor(() => typeof lastStats(watcher.messages, root)?.engine?.reload_error === 'string');
    expect(lastStats(watcher.messages, root)!.engine.state).toBe('unavailable');
    expect((await ask('And now?')).error).toMatchObject({ code: 'unavailable' });
    expect(daemon.log()).toContain('failed verification');

    // Complete: built elsewhere and renamed in, so the daemon never sees half of it. Picked up and used.
    rmSync(modelDir, { recursive: true });
    const full = path.join(tmp.dir, 'build-full');
    copyTree(path.join(pkgs.dir, 'good'), full);
    renameSync(full, modelDir);
    await watcher
      .waitFor(() => lastStats(watcher.messages, root)?.engine?.state === 'ready', 60_000)
      .catch((err: Error) => {
        throw new Error(`${err.message.slice(0, 300)}\nlog:\n${daemon.log().slice(-4000)}`);
      });
    const st = lastStats(watcher.messages, root)!;
    expect(st.engine).toMatchObject({ reloads: 1, random_weights: true });
    expect(st.engine.reload_error).toBeUndefined();
    expect(daemon.log()).toContain(`now using the model package at ${modelDir}`);
    const a = await ask('Say something.');
    expect(a.error).toBeUndefined();
    expect(messageSchemas.answer.safeParse(a).success).toBe(true);
  }, 180_000);
});

function copyTree(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const e of readdirSync(from, { withFileTypes: true })) {
    if (e.isDirectory()) copyTree(path.join(from, e.name), path.join(to, e.name));
    else copyFileSync(path.join(from, e.name), path.join(to, e.name));
  }
}
