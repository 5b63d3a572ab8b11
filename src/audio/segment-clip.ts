/** A whole clip through the speech segmenter (perch transcribe, tests): the utterances it finds. */
import { AUDIO_SAMPLE_RATE } from '../sources/types.js';
import { Segmenter, type Utterance } from './segmenter.js';
import { segmenterSettingsSchema } from '../config/segmenter-settings.js';

/** One second per push. */
const FEED_SAMPLES = AUDIO_SAMPLE_RATE;

/** Runs the segmenter over a whole clip, waiting for the VAD after each second so its backlog never overflows. */
export async function segment(samples: Int16Array): Promise<Utterance[]> {
  const seg = await Segmenter.create(segmenterSettingsSchema.parse({}), { idPrefix: 'u' });
  const found: Utterance[] = [];
  seg.on('utterance', (u) => found.push(u));
  let failure: Error | undefined;
  seg.on('error', (err) => (failure ??= err));
  try {
    for (let at = 0; at < samples.length; at += FEED_SAMPLES) {
      seg.push({
        samples: samples.subarray(at, at + FEED_SAMPLES),
        sampleRate: AUDIO_SAMPLE_RATE,
        startMs: (at * 1000) / AUDIO_SAMPLE_RATE,
      });
      await seg.idle();
    }
    await seg.flush();
  } finally {
    await seg.close();
  }
  if (failure) throw failure;
  return found;
}
