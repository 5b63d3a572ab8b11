/** A Raspberry Pi camera through rpicam-vid writing MJPEG to stdout. */
import type { Logger } from '../common/log.js';
import type { CameraSourceSettings } from '../config/schema.js';
import { ProcessFrameSource } from './process-frames.js';

export type RpicamSettings = Extract<CameraSourceSettings, { type: 'rpicam' }>;

/**
 * Sensors cannot expose for seconds per frame, so below 1 fps the camera runs at 1 fps and the
 * source drops the frames in between.
 */
export function rpicamArgs(settings: RpicamSettings): string[] {
  const framerate = Math.max(1, settings.fps);
  return [
    '-t',
    '0',
    '--codec',
    'mjpeg',
    '--nopreview',
    '--camera',
    String(settings.camera),
    '--width',
    String(settings.width),
    '--height',
    String(settings.height),
    '--framerate',
    String(framerate),
    '-o',
    '-',
  ];
}

export function createRpicamSource(camera: string, settings: RpicamSettings, logger: Logger): ProcessFrameSource {
  return new ProcessFrameSource(camera, 'rpicam', logger, {
    command: 'rpicam-vid',
    args: rpicamArgs(settings),
    restartMinMs: settings.restart_min_ms,
    restartMaxMs: settings.restart_max_ms,
    fps: settings.fps,
    decimate: settings.fps < 1,
  });
}
