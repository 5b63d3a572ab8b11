/**
 * What the pipelines consume. Every source (microphone, WAV file, ffmpeg camera, rpicam, HTTP snapshot,
 * image directory) implements one of these two interfaces; the controller starts, pauses and stops them
 * and puts their `state` on the stats topic. Requests may overlap: they apply in order, the last one wins
 * (base.ts).
 */
import type { EventEmitter } from 'node:events';

export type SourceStatus =
  | 'stopped'
  | 'starting'
  | 'running'
  | 'restarting'
  | 'failed'
  | 'ended'
  | 'stopping'
  | 'paused';

export interface SourceState {
  status: SourceStatus;
  /** Restarts since start(). */
  restarts: number;
  /** The last error, in words, if any. */
  lastError?: string;
  /** ISO time of the last chunk or frame delivered. */
  lastDataAt?: string;
}

export interface Source extends EventEmitter {
  readonly name: string;
  readonly kind: string;
  /** Starts (or resumes) the source; rejects when it cannot start, with the reason in state. */
  start(): Promise<void>;
  /** Stops the source for a while (the Listening and Watching switches): status `paused`. */
  pause(): Promise<void>;
  /** Stops the source and any child process; resolves when it is gone. */
  stop(): Promise<void>;
  state(): SourceState;
}

/** The one audio rate: what Gemma 4's audio feature extractor takes, so every source delivers it. */
export const AUDIO_SAMPLE_RATE = 16000;

/** 16 kHz mono signed 16-bit PCM. */
export interface AudioChunk {
  samples: Int16Array;
  sampleRate: typeof AUDIO_SAMPLE_RATE;
  /**
   * Stream time of the first sample, in ms: consecutive within a run, and running on (after a gap of at
   * least the time the source was closed) across pauses and restarts, so it never goes backwards.
   */
  startMs: number;
}

/** Emits 'chunk' (AudioChunk), 'state' (SourceState), 'end' when a non-looping file is done. */
export interface AudioSource extends Source {
  on(event: 'chunk', listener: (chunk: AudioChunk) => void): this;
  on(event: 'state', listener: (state: SourceState) => void): this;
  on(event: 'end', listener: () => void): this;
}

export interface Frame {
  /** The camera's configured name. */
  camera: string;
  /** JPEG bytes as captured (PNG from image directories is converted to JPEG). */
  jpeg: Buffer;
  /** Capture time. */
  at: Date;
  /** Sequence number over the source's life (not reset by pauses). */
  seq: number;
}

/** Emits 'frame' (Frame), 'state' (SourceState), 'end' when a non-looping directory is done. */
export interface FrameSource extends Source {
  on(event: 'frame', listener: (frame: Frame) => void): this;
  on(event: 'state', listener: (state: SourceState) => void): this;
  on(event: 'end', listener: () => void): this;
}
