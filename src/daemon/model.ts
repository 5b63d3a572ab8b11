/**
 * The daemon's model: the engine for model.dir at start, and a package that arrives or changes there later.
 *
 * Before this, a daemon started without a package answered `unavailable` until it was restarted, even after
 * `perch model pull` had finished. Now model.dir's manifest is polled (a stat per second: it works when the
 * directory does not exist yet, and when a finished package is renamed into place, where fs.watch does not);
 * a change that has been stable for the debounce time is quick-verified (the check the engine does at load),
 * loaded beside the engine in use, and swapped in once ready. A package that fails verification or loading is
 * reported on the log and `<root>/errors`, and the engine in use (or `unavailable`) stays. The manifest is
 * written last by Perch's package writer, so a package built in place is only looked at once complete.
 *
 * Memory: the old engine is closed only after the new one has loaded, so for a moment both are resident.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { PerchConfig } from '../config/schema.js';
import { GemmaAnswerEngine } from '../engine/gemma-engine.js';
import {
  type AnswerEngine,
  EngineSlot,
  type SpeechEngine,
  type StageReporter,
  UnavailableEngine,
} from '../engine/types.js';
import { type Logger, silentLogger } from '../common/log.js';
import { MANIFEST_FILE } from '../model/package/manifest.js';
import { formatProblems, verifyPackage } from '../model/package/verify.js';
import type { Scheduler } from '../scheduler/scheduler.js';

export interface ModelManagerOptions {
  config: PerchConfig;
  scheduler: Scheduler;
  /** A fixed engine (tests): used as is, model.dir is not watched. */
  engine?: AnswerEngine;
  health?: StageReporter;
  /** Says a package that could not be used on `<root>/errors`. */
  report: (message: string) => void;
  /** The engine changed (publish stats now). */
  onChange: () => void;
  logger?: Logger;
  /** Stat interval and the time a change must be stable before it is looked at (defaults 1 s and 2 s). */
  pollMs?: number;
  debounceMs?: number;
}

export function hasPackage(dir: string): boolean {
  return existsSync(path.join(dir, MANIFEST_FILE));
}

/** What identifies one manifest: a rename into place or a rewrite changes it. */
async function manifestSignature(dir: string): Promise<string> {
  try {
    const s = await stat(path.join(dir, MANIFEST_FILE));
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return 'none';
  }
}

export class ModelManager {
  /** What the pipelines hold; its current engine is swapped when a new package is ready. */
  readonly engine: EngineSlot;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private applied = 'none';
  private pending: { sig: string; since: number } | undefined;
  private busy = false;
  private stopped = false;
  private reloads = 0;
  private lastError: string | undefined;

  constructor(private readonly o: ModelManagerOptions) {
    this.log = o.logger ?? silentLogger;
    this.engine = new EngineSlot(o.engine ?? new UnavailableEngine('the model is not loaded yet'));
  }

  /** The transcriber of the engine in use, when it can hear. */
  speech(): SpeechEngine | undefined {
    return this.engine.speech();
  }

  /** Rebuilds an encoder stage of the engine in use (see GemmaAnswerEngine.restartStage). */
  async restartStage(stage: string): Promise<void> {
    await this.engine.restartStage(stage);
  }

  /** The engine for model.dir at start (it loads in the background), then watches model.dir. */
  async start(): Promise<void> {
    if (this.o.engine) return;
    const { model } = this.o.config;
    this.applied = await manifestSignature(model.dir);
    if (this.applied === 'none') {
      const reason = `no model package at ${model.dir}: questions are answered with an "unavailable" error until there is one (Perch picks it up when it appears); get it with \`perch model pull\`, or build one with \`perch model convert\``;
      this.log.warn(reason);
      this.engine.current = new UnavailableEngine(reason);
    } else {
      const engine = this.createEngine();
      this.engine.current = engine;
      void engine.start().then(() => {
        const st = engine.status();
        if (st.randomWeights) this.log.warn(`MODEL OUTPUTS ARE RANDOM: ${st.detail}`);
        this.o.onChange();
      });
    }
    this.timer = setInterval(() => void this.poll(), this.o.pollMs ?? 1000);
    this.timer.unref();
  }

  /** Fields for the stats message's `engine` object. */
  stats(): { reloads: number; reload_error?: string } {
    return { reloads: this.reloads, ...(this.lastError ? { reload_error: this.lastError.slice(0, 500) } : {}) };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.engine.close();
  }

  private createEngine(): GemmaAnswerEngine {
    return new GemmaAnswerEngine(this.o.config.model, {
      logger: this.log,
      defaultCacheDir: path.join(this.o.config.daemon.state_dir, 'model-cache'),
      ...(this.o.health ? { health: this.o.health } : {}),
    });
  }

  private async poll(): Promise<void> {
    if (this.busy || this.stopped) return;
    this.busy = true;
    try {
      const sig = await manifestSignature(this.o.config.model.dir);
      if (sig === this.applied) {
        this.pending = undefined;
        return;
      }
      // Debounce: a package being copied in changes for a while; look once it has been still.
      if (sig !== this.pending?.sig) {
        this.pending = { sig, since: Date.now() };
        return;
      }
      if (Date.now() - this.pending.since < (this.o.debounceMs ?? 2000)) return;
      this.applied = sig;
      this.pending = undefined;
      if (sig === 'none') {
        this.log.warn(
          { dir: this.o.config.model.dir },
          'the model package was removed from model.dir; the loaded model stays in use until one appears again or Perch restarts',
        );
        return;
      }
      await this.tryPackage();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'model package check failed');
    } finally {
      this.busy = false;
    }
  }

  /** Verifies and loads the package now at model.dir; swaps it in when ready, else keeps the engine in use. */
  private async tryPackage(): Promise<void> {
    const dir = this.o.config.model.dir;
    const keeping =
      this.engine.current instanceof GemmaAnswerEngine ? 'the model in use stays' : 'questions stay unavailable';
    const v = await verifyPackage(dir, { full: false });
    if (!v.ok)
      return this.refuse(
        `the model package that appeared at ${dir} failed verification (${keeping}):\n${formatProblems(dir, v.problems)}`,
      );
    this.log.info({ dir, model: v.manifest?.source.model }, 'a new model package appeared at model.dir: loading it');
    const next = this.createEngine();
    await next.start();
    const st = next.status();
    if (this.stopped || st.state !== 'ready') {
      await next.close();
      if (!this.stopped) this.refuse(`the model package at ${dir} could not be loaded (${keeping}): ${st.detail}`);
      return;
    }
    const old = this.engine.current;
    this.engine.current = next;
    this.reloads++;
    this.lastError = undefined;
    this.log.info({ dir, detail: st.detail }, `now using the model package at ${dir}`);
    if (st.randomWeights) this.log.warn(`MODEL OUTPUTS ARE RANDOM: ${st.detail}`);
    this.o.onChange();
    // Jobs that started on the old engine finish on it; it closes once the queue is idle.
    void this.o.scheduler.onIdle().then(() => old.close());
  }

  private refuse(message: string): void {
    this.lastError = message;
    this.log.error({ dir: this.o.config.model.dir }, message);
    this.o.report(message);
    this.o.onChange();
  }
}
