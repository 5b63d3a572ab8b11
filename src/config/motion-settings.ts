/**
 * Per-camera motion detection settings (the `motion:` key of a camera). Defaults follow Frigate's
 * detector, which camera users know: ~100 px high grayscale, running-average background, threshold 30,
 * whole-frame ("lightning") changes ignored, motion held ON for 30 s after it stops.
 */
import { z } from 'zod';

const coord = z.number().min(0).max(1);
const polygon = z
  .array(z.tuple([coord, coord]))
  .min(3)
  .max(64)
  .meta({
    examples: [
      [
        [0, 0],
        [1, 0],
        [1, 0.2],
        [0, 0.2],
      ],
    ],
  });

export const motionZoneSchema = z.object({
  name: z
    .string()
    .regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, "_" or "-"')
    .meta({ examples: ['doorstep'] })
    .describe('Zone name, reported in motion events.'),
  points: polygon.describe('Polygon corners as [x, y] pairs, 0..1 of the frame width and height from the top left.'),
});

export const motionSettingsSchema = z.object({
  enabled: z
    .boolean()
    .default(true)
    .describe('Detect motion on this camera (motion starts captions; off: only snapshots).'),
  frame_height: z
    .number()
    .int()
    .min(16)
    .max(720)
    .default(100)
    .describe('Frames are shrunk to this height (grayscale) for detection; larger sees smaller things and costs more.'),
  alpha: z
    .number()
    .min(0.001)
    .max(0.5)
    .default(0.02)
    .describe('Background learning rate per frame: how fast still changes (a parked car) become background.'),
  threshold: z
    .number()
    .int()
    .min(1)
    .max(255)
    .default(30)
    .describe('Brightness difference (0-255) from the background that counts a pixel as changed.'),
  blur_radius: z
    .number()
    .int()
    .min(0)
    .max(5)
    .default(1)
    .describe('Box blur radius in detection pixels before comparing, against sensor noise (0: off).'),
  dilate: z
    .number()
    .int()
    .min(0)
    .max(5)
    .default(2)
    .describe('Grow changed areas by this many detection pixels, joining the parts of one moving thing.'),
  min_area: z
    .number()
    .min(0)
    .max(1)
    .default(0.002)
    .describe('Smallest moving area that counts, as a fraction of the frame.'),
  lightning_threshold: z
    .number()
    .min(0.05)
    .max(1)
    .default(0.8)
    .describe(
      'A change covering more than this fraction of the frame (lightning, lights switched on, exposure jump) resets the background and raises no event.',
    ),
  cooldown_s: z
    .number()
    .min(0)
    .max(3600)
    .default(30)
    .describe('Motion stays ON this long after the last moving frame; then the event ends.'),
  update_interval_s: z
    .number()
    .min(0)
    .max(3600)
    .default(5)
    .describe(
      'At most this long between update events while motion lasts (updates also come when the area grows or a new zone sees motion).',
    ),
  max_boxes: z
    .number()
    .int()
    .min(1)
    .max(64)
    .default(8)
    .describe('Most bounding boxes reported per frame, largest first.'),
  mask: z
    .array(polygon)
    .max(32)
    .default([])
    .describe('Polygons where motion is ignored (timestamps, trees, a busy road).'),
  zones: z.array(motionZoneSchema).max(32).default([]).describe('Named areas; events list the zones that saw motion.'),
});

export type MotionSettings = z.output<typeof motionSettingsSchema>;
export type MotionSettingsInput = z.input<typeof motionSettingsSchema>;
export type MotionZone = z.output<typeof motionZoneSchema>;
export type Polygon = [number, number][];

/** All defaults, for callers without a config (tests, tools). */
export const defaultMotionSettings: MotionSettings = motionSettingsSchema.parse({});
