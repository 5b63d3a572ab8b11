/**
 * Which stages the health tracker watches, and how each is restarted:
 * - `audio/vad`: voice activity detection (the hearing pipeline reports it); restart: a fresh VAD session;
 * - `model/vision_encoder`, `model/audio_encoder`: the model's encoders (the engine reports them); restart:
 *   fresh encoder sessions;
 * - `camera/<name>/decoder`: a camera's frames that cannot be decoded (read from the motion counters once a
 *   second, so the motion pipeline needs no hook); restart: the camera's source (its decoding process).
 */
import { ENGINE_STAGES } from '../engine/types.js';
import type { PerchTopics } from '../mqtt/topics.js';
import type { HearingPipeline } from '../pipelines/hearing.js';
import type { MotionPipeline } from '../pipelines/motion.js';
import type { SourceGroup } from '../pipelines/sources.js';
import type { FrameSource } from '../sources/types.js';
import type { HealthTracker } from './health.js';
import type { ModelManager } from './model.js';

export const VAD_STAGE = 'audio/vad';
export const decoderStage = (camera: string): string => `camera/${camera}/decoder`;

/** How often the camera decoders' counters are read. */
const POLL_MS = 1000;

export interface StageWiring {
  health: HealthTracker;
  topics: PerchTopics;
  model: ModelManager;
  hearing: HearingPipeline | undefined;
  motion: MotionPipeline;
  watching: SourceGroup;
  frameSources: readonly FrameSource[];
}

/** Registers the stages; returns a function that stops watching the camera decoders. */
export function watchStages(w: StageWiring): () => void {
  const { health, topics } = w;
  if (w.hearing) {
    const hearing = w.hearing;
    health.register(VAD_STAGE, topics.speech, () => hearing.restartVad());
  }
  health.register(ENGINE_STAGES.vision, topics.answer, () => w.model.restartStage(ENGINE_STAGES.vision));
  health.register(ENGINE_STAGES.audio, topics.transcript, () => w.model.restartStage(ENGINE_STAGES.audio));

  const seen = new Map<string, { frames: number; errors: number }>();
  for (const name of Object.keys(w.motion.stats())) {
    const source = w.frameSources.find((s) => s.name === name);
    health.register(decoderStage(name), topics.camera(name).motion, async () => {
      // Through the Watching group, in turn with the switch messages: a restart never undoes a pause.
      if (source) await w.watching.restart(source);
    });
  }
  const poll = (): void => {
    for (const [name, st] of Object.entries(w.motion.stats())) {
      const before = seen.get(name) ?? { frames: 0, errors: 0 };
      const stage = decoderStage(name);
      if (st.frames > before.frames) health.ok(stage);
      // One report per undecodable frame (capped: the tracker only needs to see the streak).
      for (let i = 0; i < Math.min(50, st.decodeErrors - before.errors); i++)
        health.error(stage, st.lastError ?? 'a frame could not be decoded');
      seen.set(name, { frames: st.frames, errors: st.decodeErrors });
    }
  };
  const timer = setInterval(poll, POLL_MS);
  timer.unref();
  return () => clearInterval(timer);
}
