import { describe, expect, it } from 'vitest';
import sharp from 'sharp';
import type { Frame } from '../src/sources/types.js';
import { MotionDetector, type MotionUpdate } from '../src/vision/motion.js';
import { motionSettingsSchema, type MotionSettings } from '../src/config/motion-settings.js';

const W = 320;
const H = 240;
const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);

interface Square {
  x: number;
  y: number;
  size: number;
  value?: number;
}

/** A static textured grey scene with optional bright squares, plus optional per-pixel noise and brightness offset. */
async function scene(
  squares: Square[] = [],
  opts: { noise?: (x: number, y: number) => number; offset?: number } = {},
): Promise<Buffer> {
  const raw = Buffer.alloc(W * H * 3);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let v = 90 + 30 * Math.sin(x / 17) * Math.cos(y / 23) + (x > 200 && y < 60 ? 25 : 0);
      for (const s of squares) {
        if (x >= s.x && x < s.x + s.size && y >= s.y && y < s.y + s.size) v = s.value ?? 235;
      }
      v += (opts.offset ?? 0) + (opts.noise ? opts.noise(x, y) : 0);
      const c = Math.max(0, Math.min(255, Math.round(v)));
      raw[(y * W + x) * 3] = c;
      raw[(y * W + x) * 3 + 1] = c;
      raw[(y * W + x) * 3 + 2] = c;
    }
  }
  return sharp(raw, { raw: { width: W, height: H, channels: 3 } })
    .jpeg({ quality: 85 })
    .toBuffer();
}

function frame(jpeg: Buffer, i: number): Frame {
  return { camera: 'yard', jpeg, at: new Date(T0 + i * 1000), seq: i };
}

/** Pushes frames at 1 fps from second 0; returns every message with the frame index it came from. */
async function run(det: MotionDetector, jpegs: Buffer[]): Promise<{ i: number; m: MotionUpdate }[]> {
  const out: { i: number; m: MotionUpdate }[] = [];
  for (let i = 0; i < jpegs.length; i++) {
    for (const m of await det.push(frame(jpegs[i]!, i))) out.push({ i, m });
  }
  return out;
}

const settings = (over: Partial<MotionSettings> = {}): MotionSettings => ({
  ...motionSettingsSchema.parse({}),
  cooldown_s: 5,
  ...over,
});

/**
 * Deterministic gaussian-ish noise (sum of four uniforms from an LCG), constant over 3x3 pixel blocks so
 * that it survives the shrink to detection size like blotchy low-light sensor and JPEG noise does.
 */
function blockNoise(sigma: number, seed: number): (x: number, y: number) => number {
  let s = seed;
  const u = (): number => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s / 2 ** 32;
  };
  const bw = Math.ceil(W / 3);
  const cells = Float32Array.from(
    { length: bw * Math.ceil(H / 3) },
    () => (u() + u() + u() + u() - 2) * sigma * Math.sqrt(3),
  );
  return (x, y) => cells[Math.floor(y / 3) * bw + Math.floor(x / 3)]!;
}

describe('MotionDetector', () => {
  it('follows a square across a static scene: one event with new, updates and end after the cooldown', async () => {
    const still = await scene();
    const xs = [20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 220, 240];
    const jpegs = [still, still];
    for (const x of xs) jpegs.push(await scene([{ x, y: 100, size: 40 }]));
    for (let k = 0; k < 10; k++) jpegs.push(still);
    const det = new MotionDetector('yard', settings({ update_interval_s: 3 }));
    const msgs = await run(det, jpegs);

    const types = msgs.map((r) => r.m.type);
    expect(types[0]).toBe('new');
    expect(types.at(-1)).toBe('end');
    expect(types.filter((t) => t === 'new')).toHaveLength(1);
    expect(types.filter((t) => t === 'end')).toHaveLength(1);
    // Throttled: a box of constant size gets an update every update_interval_s, not every frame.
    expect(msgs.filter((r) => r.m.type === 'update').map((r) => r.i)).toEqual([5, 8, 11]);
    expect(new Set(msgs.map((r) => r.m.id)).size).toBe(1);
    expect(msgs[0]!.i).toBe(2);

    // Boxes follow the square (frame i shows the square at xs[i - 2]).
    for (const { i, m } of msgs.filter((r) => r.m.type !== 'end')) {
      const cx = (xs[i - 2]! + 20) / W;
      expect(Math.abs(m.box.x + m.box.w / 2 - cx)).toBeLessThan(0.04);
      expect(Math.abs(m.box.y + m.box.h / 2 - 120 / H)).toBeLessThan(0.05);
      expect(m.box.w).toBeGreaterThan(30 / W);
      expect(m.box.w).toBeLessThan(70 / W);
      expect(m.changedFraction).toBeGreaterThan(0);
    }
    // The end comes with the first still frame at least cooldown_s after the last moving one.
    const lastMoving = 2 + xs.length - 1;
    const end = msgs.at(-1)!;
    expect(end.i).toBe(lastMoving + 5);
    expect(end.m.at.getTime() - T0).toBe((lastMoving + 5) * 1000);
    expect(end.m.motionFrames).toBe(xs.length);
    expect(det.motionOn).toBe(false);
    expect(det.stats.events).toBe(1);
  });

  it('holds motion on during the cooldown and ends by wall time through tick()', async () => {
    const det = new MotionDetector('yard', settings({ cooldown_s: 30 }));
    const still = await scene();
    const msgs = await run(det, [still, await scene([{ x: 100, y: 100, size: 50 }]), still, still]);
    expect(msgs.map((r) => r.m.type)).toEqual(['new']);
    expect(det.motionOn).toBe(true);
    expect(det.tick(new Date(T0 + 20_000))).toEqual([]);
    const ended = det.tick(new Date(T0 + 31_000));
    expect(ended.map((m) => m.type)).toEqual(['end']);
    expect(ended[0]!.id).toBe(msgs[0]!.m.id);
    expect(det.motionOn).toBe(false);
  });

  it('ignores a full-frame brightness flash (and the return to normal) and resets the background', async () => {
    const still = await scene();
    const flash = await scene([], { offset: 100 });
    const det = new MotionDetector('yard', settings());
    const msgs = await run(det, [still, still, still, flash, still, still, flash, flash, still, still]);
    expect(msgs).toEqual([]);
    expect(det.stats.lightningResets).toBeGreaterThanOrEqual(3);
    expect(det.motionOn).toBe(false);
  });

  it('raises no event for low-amplitude sensor noise', async () => {
    const jpegs: Buffer[] = [];
    for (let k = 0; k < 12; k++) jpegs.push(await scene([], { noise: blockNoise(12, 7 + k) }));
    const det = new MotionDetector('yard', settings());
    expect(await run(det, jpegs)).toEqual([]);
    expect(det.stats.frames).toBe(12);
    // Control: the noise is strong enough to cross the threshold when the blur is off.
    const raw = new MotionDetector('yard', settings({ blur_radius: 0, min_area: 0 }));
    expect((await run(raw, jpegs)).length).toBeGreaterThan(0);
  });

  it('raises no event for motion inside a mask, but does outside it', async () => {
    const still = await scene();
    const moving: Buffer[] = [still];
    for (const x of [20, 40, 60, 80]) moving.push(await scene([{ x, y: 80, size: 40 }]));
    const mask = [
      [
        [0, 0],
        [0.55, 0],
        [0.55, 1],
        [0, 1],
      ],
    ] as MotionSettings['mask'];
    const masked = new MotionDetector('yard', settings({ mask }));
    expect(await run(masked, moving)).toEqual([]);
    const open = new MotionDetector('yard', settings());
    expect((await run(open, moving)).map((r) => r.m.type)).toContain('new');
  });

  it('names the zones that saw motion', async () => {
    const zones = [
      {
        name: 'door',
        points: [
          [0.6, 0],
          [1, 0],
          [1, 0.5],
          [0.6, 0.5],
        ],
      },
      {
        name: 'path',
        points: [
          [0, 0.6],
          [0.4, 0.6],
          [0.4, 1],
          [0, 1],
        ],
      },
    ] as MotionSettings['zones'];
    const still = await scene();
    const det = new MotionDetector('yard', settings({ zones }));
    const msgs = await run(det, [
      still,
      await scene([{ x: 230, y: 20, size: 40 }]),
      await scene([{ x: 250, y: 30, size: 40 }]),
    ]);
    expect(msgs[0]!.m.type).toBe('new');
    expect(msgs[0]!.m.zones).toEqual(['door']);
    expect(msgs[0]!.m.zonesSeen).toEqual(['door']);

    const det2 = new MotionDetector('yard', settings({ zones }));
    const m2 = await run(det2, [
      still,
      await scene([{ x: 130, y: 90, size: 40 }]),
      await scene([{ x: 40, y: 190, size: 40 }]),
    ]);
    expect(m2[0]!.m.zones).toEqual([]);
    expect(m2[1]!.m.type).toBe('update'); // entering a zone is news
    expect(m2[1]!.m.zones).toEqual(['path']);
  });

  it('keeps the frame with the biggest moving object as the best frame', async () => {
    const still = await scene();
    const sizes = [20, 40, 90, 50, 30];
    const jpegs = [still];
    for (const size of sizes) jpegs.push(await scene([{ x: 120, y: 60, size }]));
    for (let k = 0; k < 6; k++) jpegs.push(still);
    const det = new MotionDetector('yard', settings());
    const msgs = await run(det, jpegs);
    // Growing boxes are news at once; shrinking ones wait for the update interval.
    expect(msgs.map((r) => `${r.m.type}@${r.i}`)).toEqual(['new@1', 'update@2', 'update@3', 'end@10']);
    const end = msgs.find((r) => r.m.type === 'end')!.m;
    expect(end.best.seq).toBe(3);
    expect(end.best.jpeg.equals(jpegs[3]!)).toBe(true);
    expect(end.best.box.w).toBeGreaterThan(80 / W);
    expect(end.peakFraction).toBeGreaterThan(0.08);
  });

  it('skips undecodable frames and counts them', async () => {
    const det = new MotionDetector('yard', settings());
    expect(await det.push(frame(Buffer.from('garbage, not a jpeg'), 0))).toEqual([]);
    expect(det.stats.decodeErrors).toBe(1);
    expect(det.stats.lastError).toMatch(/cannot decode frame 0/);
    expect(await det.push(frame(await scene(), 1))).toEqual([]);
    expect(det.stats.frames).toBe(1);
  });
});

describe('motionSettingsSchema', () => {
  it('describes every key and checks polygons', () => {
    for (const [key, s] of Object.entries(motionSettingsSchema.shape)) expect(s.description, key).toBeTruthy();
    const d = motionSettingsSchema.parse({});
    expect([d.frame_height, d.threshold, d.cooldown_s, d.lightning_threshold]).toEqual([100, 30, 30, 0.8]);
    expect(() =>
      motionSettingsSchema.parse({
        mask: [
          [
            [0, 0],
            [2, 0],
            [1, 1],
          ],
        ],
      }),
    ).toThrow();
    expect(() =>
      motionSettingsSchema.parse({
        zones: [
          {
            name: 'a',
            points: [
              [0, 0],
              [1, 0],
            ],
          },
        ],
      }),
    ).toThrow();
  });
});
