/**
 * A tiny model package that can see: `perch model synth --preset tiny` writes the vision encoder, a
 * media-input decoder and the image markers itself, so this is the plain tiny synthetic package.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_FILES } from '../src/model/package/manifest.js';
import { synthPackage } from '../src/model/build/synth.js';
import {
  captionSchema,
  cameraEventSchema,
  type CameraEventMessage,
  type CaptionMessage,
} from '../src/mqtt/messages.js';
import { SEED } from './engine-helpers.js';
import { DaemonProcess, REPO } from './daemon-helpers.js';
import { Collector, tempDir, uniqueRoot } from './mqtt-helpers.js';

export const FRAMES = join(REPO, 'config', 'samples', 'frames');
export const frame = (n: number): Buffer => readFileSync(join(FRAMES, `frame-0${n}.jpg`));

/** Builds (once per root) a tiny package that can see; returns its directory. */
export async function makeSeeingPackage(root: string, name = 'seeing'): Promise<string> {
  const dir = join(root, name);
  if (existsSync(join(dir, PACKAGE_FILES.visionGraph))) return dir;
  await synthPackage({ preset: 'tiny', outDir: dir, profile: 'pi5', seed: SEED });
  return dir;
}

export const BROKER = 'mqtt://127.0.0.1:1883';
let daemonSeq = 0;

export interface SeeingDaemonOptions {
  /** The model package. */
  modelDir: string;
  scheduler?: Record<string, unknown>;
  /** Settings merged into the one camera `yard`. */
  camera?: Record<string, unknown>;
  /** How long waitForEnd() waits for the event's `end`. */
  endTimeoutMs?: number;
}

/**
 * The real `perch run` with one non-looping directory camera `yard` (six frames, one motion event that ends
 * after 0.5 s still) on the system Mosquitto; cleanup functions go onto `cleanups`.
 */
export async function startSeeingDaemon(cleanups: Array<() => Promise<void> | void>, over: SeeingDaemonOptions) {
  const topicRoot = uniqueRoot();
  const tmp = tempDir('perch-seeing-');
  const config = {
    device: { id: `seeing${process.pid}-${daemonSeq++}` },
    log: { level: 'debug', format: 'json' },
    daemon: { state_dir: tmp.dir, drain_timeout_ms: 2000, stats_interval_s: 1 },
    mqtt: { url: BROKER, root_topic: topicRoot, protocol: '3.1.1', keepalive_s: 5 },
    homeassistant: { enabled: false },
    model: { dir: over.modelDir, threads: 1, context_tokens: 1024, ple_cache_mb: 1, max_answer_tokens: 8 },
    scheduler: over.scheduler ?? {},
    cameras: [
      {
        name: 'yard',
        snapshot_interval_s: 3600,
        image_tokens: 70,
        caption_max_tokens: 12,
        source: { type: 'directory', path: FRAMES, interval_ms: 300, loop: false },
        motion: { cooldown_s: 0.5 },
        ...over.camera,
      },
    ],
  };
  const watcher = await Collector.connect(BROKER, [`${topicRoot}/#`]);
  const daemon = DaemonProcess.start(tmp.dir, config);
  cleanups.push(async () => {
    await daemon.kill();
    await watcher.close();
    tmp.cleanup();
  });
  const json = (payload: Buffer): unknown => JSON.parse(payload.toString());
  const t = `${topicRoot}/camera/yard`;
  const events = (): CameraEventMessage[] =>
    watcher.on(`${t}/event`).map((m) => cameraEventSchema.parse(json(m.payload)));
  const captions = (): CaptionMessage[] => watcher.on(`${t}/caption`).map((m) => captionSchema.parse(json(m.payload)));
  const waitForEnd = () =>
    watcher
      .waitFor(() => events().some((e) => e.type === 'end'), over.endTimeoutMs ?? 40_000)
      .catch((err: Error) => {
        throw new Error(`${err.message}\ndaemon log:\n${daemon.log().slice(-6000)}`);
      });
  await watcher.waitFor(
    (m) => m.some((x) => x.topic === `${topicRoot}/status` && x.payload.toString() === 'online'),
    20_000,
  );
  return { topicRoot, t, daemon, watcher, events, captions, waitForEnd };
}
