/** Builds the configured audio and camera sources. */
import type { Logger } from '../common/log.js';
import type { AudioSourceSettings, CameraSourceSettings } from '../config/schema.js';
import { createFfmpegSource } from './ffmpeg.js';
import { DirectorySource } from './directory.js';
import { HttpSnapshotSource } from './http.js';
import { MicrophoneSource } from './microphone.js';
import { createRpicamSource } from './rpicam.js';
import type { AudioSource, FrameSource } from './types.js';
import { WavSource } from './wav.js';

export type { AudioChunk, AudioSource, Frame, FrameSource, Source, SourceState, SourceStatus } from './types.js';

/** Throws only for settings that can never work (e.g. an ffmpeg input starting with "-"). */
export function createAudioSource(settings: AudioSourceSettings, logger: Logger): AudioSource {
  switch (settings.type) {
    case 'microphone':
      return new MicrophoneSource(settings, logger);
    case 'wav':
      return new WavSource(settings, logger);
  }
}

export function createFrameSource(cameraName: string, settings: CameraSourceSettings, logger: Logger): FrameSource {
  switch (settings.type) {
    case 'ffmpeg':
      return createFfmpegSource(cameraName, settings, logger);
    case 'rpicam':
      return createRpicamSource(cameraName, settings, logger);
    case 'http':
      return new HttpSnapshotSource(cameraName, settings, logger);
    case 'directory':
      return new DirectorySource(cameraName, settings, logger);
  }
}
