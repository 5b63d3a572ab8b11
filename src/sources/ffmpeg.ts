/** A V4L2 device, RTSP/HTTP stream or video file through ffmpeg, emitted as JPEG frames at the configured rate. */
import type { Logger } from '../common/log.js';
import type { CameraSourceSettings } from '../config/schema.js';
import { ProcessFrameSource } from './process-frames.js';

export type FfmpegSettings = Extract<CameraSourceSettings, { type: 'ffmpeg' }>;

/** ffmpeg's argument array; config values are single elements, never parsed by a shell. */
export function ffmpegArgs(settings: FfmpegSettings): string[] {
  const input = settings.input;
  // ffmpeg would read "-..." as an option (and "-" as stdin), not as the input.
  if (input.startsWith('-')) throw new Error(`camera input must not start with "-": ${JSON.stringify(input)}`);
  const args = ['-hide_banner', '-nostdin', '-loglevel', 'error'];
  if (/^rtsps?:\/\//i.test(input)) {
    args.push('-rtsp_transport', settings.rtsp_transport);
  } else if (input.startsWith('/dev/')) {
    args.push('-f', 'v4l2');
  } else if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(input)) {
    // A plain video file: read at its own pace and loop, like a camera would keep going.
    args.push('-re', '-stream_loop', '-1');
  }
  args.push('-i', input, '-an');
  const filters = [`fps=${settings.fps}`];
  if (settings.width) filters.push(`scale=${settings.width}:-2`);
  args.push('-vf', filters.join(','), '-c:v', 'mjpeg', '-q:v', '5', '-f', 'image2pipe', '-');
  return args;
}

export function createFfmpegSource(camera: string, settings: FfmpegSettings, logger: Logger): ProcessFrameSource {
  return new ProcessFrameSource(camera, 'ffmpeg', logger, {
    command: 'ffmpeg',
    args: ffmpegArgs(settings),
    restartMinMs: settings.restart_min_ms,
    restartMaxMs: settings.restart_max_ms,
    fps: settings.fps,
  });
}
