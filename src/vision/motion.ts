/**
 * Motion detection for one camera, Frigate-style and cheap: each JPEG is decoded straight to a small
 * grayscale image (libjpeg shrink-on-load does most of the work), compared with a running-average
 * background, and the changed pixels are grouped into blobs. Motion opens an event (new), refreshes it
 * (update, throttled) and closes it after a cooldown (end); the event keeps its best frame (the one with
 * the largest moving area) for captioning. Time is frame time (`Frame.at`), so replays behave the same.
 */
import { randomBytes } from 'node:crypto';
import sharp from 'sharp';
import type { Frame } from '../sources/types.js';
import { boxBlur, components, dilate, rasterise, type Blob } from './motion-image.js';
import { defaultMotionSettings, type MotionSettings } from '../config/motion-settings.js';

/** A box in normalised frame coordinates (0..1 from the top left). */
export interface MotionBox {
  x: number;
  y: number;
  w: number;
  h: number;
  /** Moving pixels in the box, as a fraction of the frame. */
  area: number;
}

export interface BestFrame {
  jpeg: Buffer;
  at: Date;
  seq: number;
  /** Moving area of that frame (fraction of the frame). */
  score: number;
  box: MotionBox;
}

export interface MotionUpdate {
  type: 'new' | 'update' | 'end';
  /** Ties new, updates and end together. */
  id: string;
  camera: string;
  startedAt: Date;
  /** Time of the frame that produced this message (for end: when the cooldown ran out). */
  at: Date;
  /** Moving areas of the latest moving frame, largest first. */
  boxes: MotionBox[];
  /** Union of `boxes`. */
  box: MotionBox;
  /** Changed fraction of the latest moving frame (unmasked pixels only). */
  changedFraction: number;
  /** Zones that saw motion in the latest moving frame. */
  zones: string[];
  /** Zones that saw motion at any time in this event. */
  zonesSeen: string[];
  /** Largest changed fraction in this event. */
  peakFraction: number;
  /** Frames with motion in this event. */
  motionFrames: number;
  best: BestFrame;
}

export interface MotionStats {
  frames: number;
  dropped: number;
  decodeErrors: number;
  lightningResets: number;
  events: number;
  motionOn: boolean;
  lastChangedFraction: number;
  /** Mean decode + detect time per frame, milliseconds. */
  avgFrameMs: number;
  lastError?: string;
}

interface OpenEvent {
  id: string;
  startedAt: Date;
  lastMotionAt: Date;
  lastEmitAt: Date;
  lastEmitArea: number;
  zonesSeen: Set<string>;
  peakFraction: number;
  motionFrames: number;
  latest: { boxes: MotionBox[]; box: MotionBox; changedFraction: number; zones: string[] };
  best: BestFrame;
}

/** Buffers sized for one detection resolution; rebuilt when the frame size changes. */
interface Work {
  w: number;
  h: number;
  bg: Float32Array;
  cur: Float32Array;
  tmpF: Float32Array;
  mask: Uint8Array;
  tmpU: Uint8Array;
  labels: Int32Array;
  stack: Int32Array;
  ignore: Uint8Array;
  unmasked: number;
  zones: { name: string; map: Uint8Array }[];
}

export class MotionDetector {
  readonly camera: string;
  private readonly cfg: MotionSettings;
  private work: Work | undefined;
  private hasBackground = false;
  private busy = false;
  private event: OpenEvent | undefined;
  private totalMs = 0;
  private readonly st: Omit<MotionStats, 'motionOn' | 'avgFrameMs'> = {
    frames: 0,
    dropped: 0,
    decodeErrors: 0,
    lightningResets: 0,
    events: 0,
    lastChangedFraction: 0,
  };

  constructor(camera: string, settings: Partial<MotionSettings> = {}) {
    this.camera = camera;
    this.cfg = { ...defaultMotionSettings, ...settings };
  }

  get motionOn(): boolean {
    return this.event !== undefined;
  }

  get stats(): MotionStats {
    const n = this.st.frames;
    return { ...this.st, motionOn: this.motionOn, avgFrameMs: n ? this.totalMs / n : 0 };
  }

  /**
   * Feeds one frame. Resolves to the event messages it caused (usually none). A frame that arrives
   * while the previous one is still being decoded is dropped (counted in stats); a frame that cannot be
   * decoded is counted and skipped.
   */
  async push(frame: Frame): Promise<MotionUpdate[]> {
    if (!this.cfg.enabled) return [];
    if (this.busy) {
      this.st.dropped++;
      return [];
    }
    this.busy = true;
    const t0 = performance.now();
    try {
      let gray: { data: Buffer; info: { width: number; height: number } };
      try {
        gray = await sharp(frame.jpeg, { failOn: 'error' })
          .resize({ height: this.cfg.frame_height })
          .greyscale()
          .raw()
          .toBuffer({ resolveWithObject: true });
      } catch (err) {
        this.st.decodeErrors++;
        this.st.lastError = `cannot decode frame ${frame.seq}: ${(err as Error).message}`;
        return [];
      }
      this.st.frames++;
      const out = this.detect(frame, gray.data, gray.info.width, gray.info.height);
      this.totalMs += performance.now() - t0;
      return out;
    } finally {
      this.busy = false;
    }
  }

  /** Ends an open event whose cooldown has run out by wall time (call it when frames stop coming). */
  tick(now: Date = new Date()): MotionUpdate[] {
    const ev = this.event;
    if (ev && now.getTime() - ev.lastMotionAt.getTime() >= this.cfg.cooldown_s * 1000) return [this.end(now)];
    return [];
  }

  /** The next frame becomes the background (after a pause, the old one is stale). Ends no event. */
  forgetBackground(): void {
    this.hasBackground = false;
  }

  /** Ends any open event now (shutdown, camera disabled). */
  close(now: Date = new Date()): MotionUpdate[] {
    return this.event ? [this.end(now)] : [];
  }

  private buffers(w: number, h: number): Work {
    if (this.work && this.work.w === w && this.work.h === h) return this.work;
    const n = w * h;
    const ignore = rasterise(this.cfg.mask, w, h);
    let unmasked = 0;
    for (let i = 0; i < n; i++) if (!ignore[i]) unmasked++;
    this.work = {
      w,
      h,
      ignore,
      unmasked,
      bg: new Float32Array(n),
      cur: new Float32Array(n),
      tmpF: new Float32Array(n),
      mask: new Uint8Array(n),
      tmpU: new Uint8Array(n),
      labels: new Int32Array(n),
      stack: new Int32Array(n),
      zones: this.cfg.zones.map((z) => ({ name: z.name, map: rasterise([z.points], w, h) })),
    };
    this.hasBackground = false; // a new frame size (camera reconfigured) starts a new background
    return this.work;
  }

  private detect(frame: Frame, gray: Uint8Array, w: number, h: number): MotionUpdate[] {
    const k = this.buffers(w, h);
    const n = w * h;
    boxBlur(gray, k.cur, k.tmpF, w, h, this.cfg.blur_radius);
    if (!this.hasBackground) {
      k.bg.set(k.cur);
      this.hasBackground = true;
      return this.quiet(frame);
    }
    let changed = 0;
    const thr = this.cfg.threshold;
    for (let i = 0; i < n; i++) {
      const on = !k.ignore[i] && Math.abs(k.cur[i] - k.bg[i]) > thr ? 1 : 0;
      k.mask[i] = on;
      changed += on;
    }
    const fraction = k.unmasked ? changed / k.unmasked : 0;
    this.st.lastChangedFraction = fraction;
    if (fraction > this.cfg.lightning_threshold) {
      // Whole-frame change: not motion. Start over from this frame.
      k.bg.set(k.cur);
      this.st.lightningResets++;
      return this.quiet(frame);
    }
    const a = this.cfg.alpha;
    for (let i = 0; i < n; i++) k.bg[i] += a * (k.cur[i] - k.bg[i]);
    if (changed === 0) return this.quiet(frame);

    dilate(k.mask, k.tmpU, w, h, this.cfg.dilate);
    // Dilation must not leak motion into masked areas.
    for (let i = 0; i < n; i++) if (k.ignore[i]) k.mask[i] = 0;
    const minPx = Math.max(1, this.cfg.min_area * n);
    const blobs = components(k.mask, k.labels, k.stack, w, h)
      .filter((b) => b.area >= minPx)
      .sort((p, q) => q.area - p.area);
    if (blobs.length === 0) return this.quiet(frame);

    const kept = blobs.slice(0, this.cfg.max_boxes);
    const zones = this.zonesHit(k, new Set(kept.map((b) => b.label)));
    const boxes = kept.map((b) => toBox(b, w, h, n));
    const box = union(boxes);
    return this.moving(frame, { boxes, box, changedFraction: fraction, zones });
  }

  private zonesHit(k: Work, labels: Set<number>): string[] {
    const hit: string[] = [];
    for (const z of k.zones) {
      for (let i = 0; i < z.map.length; i++) {
        if (z.map[i] && k.labels[i] && labels.has(k.labels[i])) {
          hit.push(z.name);
          break;
        }
      }
    }
    return hit;
  }

  private quiet(frame: Frame): MotionUpdate[] {
    const ev = this.event;
    if (ev && frame.at.getTime() - ev.lastMotionAt.getTime() >= this.cfg.cooldown_s * 1000) return [this.end(frame.at)];
    return [];
  }

  private moving(frame: Frame, latest: OpenEvent['latest']): MotionUpdate[] {
    const score = latest.boxes.reduce((s, b) => s + b.area, 0);
    let ev = this.event;
    if (!ev) {
      ev = {
        id: `${(frame.at.getTime() / 1000).toFixed(3)}-${randomBytes(3).toString('hex')}`,
        startedAt: frame.at,
        lastMotionAt: frame.at,
        lastEmitAt: frame.at,
        lastEmitArea: latest.box.w * latest.box.h,
        zonesSeen: new Set(latest.zones),
        peakFraction: latest.changedFraction,
        motionFrames: 1,
        latest,
        best: { jpeg: Buffer.from(frame.jpeg), at: frame.at, seq: frame.seq, score, box: latest.box },
      };
      this.event = ev;
      this.st.events++;
      return [this.message('new', ev, frame.at)];
    }
    ev.lastMotionAt = frame.at;
    ev.latest = latest;
    ev.motionFrames++;
    ev.peakFraction = Math.max(ev.peakFraction, latest.changedFraction);
    if (score > ev.best.score) {
      // Copied: the source's buffer may be a view into a larger chunk we should not keep alive.
      ev.best = { jpeg: Buffer.from(frame.jpeg), at: frame.at, seq: frame.seq, score, box: latest.box };
    }
    const newZone = latest.zones.some((z) => !ev.zonesSeen.has(z));
    for (const z of latest.zones) ev.zonesSeen.add(z);
    const area = latest.box.w * latest.box.h;
    const due = frame.at.getTime() - ev.lastEmitAt.getTime() >= this.cfg.update_interval_s * 1000;
    if (!(due || newZone || area > ev.lastEmitArea * 1.25)) return [];
    ev.lastEmitAt = frame.at;
    ev.lastEmitArea = area;
    return [this.message('update', ev, frame.at)];
  }

  private end(at: Date): MotionUpdate {
    const ev = this.event!;
    this.event = undefined;
    return this.message('end', ev, at);
  }

  private message(type: MotionUpdate['type'], ev: OpenEvent, at: Date): MotionUpdate {
    return {
      type,
      id: ev.id,
      camera: this.camera,
      startedAt: ev.startedAt,
      at,
      boxes: ev.latest.boxes,
      box: ev.latest.box,
      changedFraction: ev.latest.changedFraction,
      zones: ev.latest.zones,
      zonesSeen: [...ev.zonesSeen],
      peakFraction: ev.peakFraction,
      motionFrames: ev.motionFrames,
      best: ev.best,
    };
  }
}

function toBox(b: Blob, w: number, h: number, n: number): MotionBox {
  return { x: b.x0 / w, y: b.y0 / h, w: (b.x1 - b.x0 + 1) / w, h: (b.y1 - b.y0 + 1) / h, area: b.area / n };
}

function union(boxes: MotionBox[]): MotionBox {
  let x0 = 1,
    y0 = 1,
    x1 = 0,
    y1 = 0,
    area = 0;
  for (const b of boxes) {
    x0 = Math.min(x0, b.x);
    y0 = Math.min(y0, b.y);
    x1 = Math.max(x1, b.x + b.w);
    y1 = Math.max(y1, b.y + b.h);
    area += b.area;
  }
  return { x: x0, y: y0, w: x1 - x0, h: y1 - y0, area };
}
