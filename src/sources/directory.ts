/**
 * Image files from a directory, in name order, one every interval_ms. JPEGs pass through; PNG and other
 * formats sharp reads are converted to JPEG. A file that cannot be read or decoded is reported in state and
 * skipped. The directory is listed again on every pass, so files added later are picked up.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import type { Logger } from '../common/log.js';
import type { CameraSourceSettings } from '../config/schema.js';
import { Backoff, sleep } from './backoff.js';
import { PollingFrameSource } from './base.js';
import type { FrameSource } from './types.js';

export type DirectorySettings = Extract<CameraSourceSettings, { type: 'directory' }>;

export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif'];
export const MAX_IMAGE_BYTES = 32 * 1024 * 1024;

export class DirectorySource extends PollingFrameSource implements FrameSource {
  constructor(
    camera: string,
    private readonly settings: DirectorySettings,
    logger: Logger,
  ) {
    super(camera, 'directory', logger);
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const { restart_min_ms: min, restart_max_ms: max } = this.settings;
    const backoff = new Backoff(min, Math.max(min, max));
    let first = true;
    while (!signal.aborted) {
      let files: string[];
      try {
        files = await listImages(this.settings.path);
        if (files.length === 0) throw new Error('no images (.jpg, .jpeg, .png, ...) in the directory');
      } catch (err) {
        // The directory may be a mount that appears later: retry rather than give up.
        const message = `${this.settings.path}: ${(err as Error).message}`;
        const wait = backoff.next();
        this.log.warn({ retryInMs: wait }, message);
        this.setState({ status: 'restarting', restarts: this.state().restarts + 1, lastError: message });
        await sleep(wait, signal);
        continue;
      }
      backoff.reset();
      let delivered = 0;
      for (const file of files) {
        if (signal.aborted) return;
        if (!first) await sleep(this.settings.interval_ms, signal);
        if (signal.aborted) return;
        try {
          const jpeg = await this.load(join(this.settings.path, file));
          if (signal.aborted) return;
          first = false;
          delivered++;
          this.setState({ status: 'running' });
          this.emitFrame(jpeg);
        } catch (err) {
          const message = `${file}: ${(err as Error).message}`;
          this.log.warn(message);
          this.setState({ status: this.state().status === 'starting' ? 'starting' : 'running', lastError: message });
        }
      }
      if (!this.settings.loop) {
        this.setState({ status: 'ended' });
        this.emit('end');
        return;
      }
      // Every file unreadable: do not spin through the directory at full speed.
      if (delivered === 0) await sleep(Math.max(this.settings.interval_ms, backoff.next()), signal);
    }
  }

  private async load(path: string): Promise<Buffer> {
    const info = await stat(path);
    if (info.size > MAX_IMAGE_BYTES) throw new Error(`file too large (${info.size} bytes, at most ${MAX_IMAGE_BYTES})`);
    const data = await readFile(path);
    const isJpeg = data.length > 3 && data[0] === 0xff && data[1] === 0xd8 && data[2] === 0xff;
    try {
      if (isJpeg) {
        // Header check only: catches renamed or truncated-at-the-start files without a full decode.
        await sharp(data).metadata();
        return data;
      }
      return await sharp(data).jpeg({ quality: 85 }).toBuffer();
    } catch (err) {
      throw new Error(`not a readable image (${(err as Error).message})`);
    }
  }
}

async function listImages(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  return entries
    .filter((e) => (e.isFile() || e.isSymbolicLink()) && !e.name.startsWith('.'))
    .map((e) => e.name)
    .filter((n) => IMAGE_EXTENSIONS.some((ext) => n.toLowerCase().endsWith(ext)))
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}
