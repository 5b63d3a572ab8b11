/**
 * Long speech is transcribed in overlapping parts (the segmenter's UtteranceSplit). This collects the parts'
 * transcripts per group, in part order, and once the last part is in gives the group's own transcript: the
 * parts' texts stitched with each overlap's repeated words kept once (id = the group id, `stitched_from` = the
 * parts' ids). A part that failed, or a group whose first part was never seen, gets no stitched transcript:
 * a gap would be published as if it were all that was said.
 */
import type { UtteranceSplit } from '../audio/segmenter.js';
import { stitchTranscripts } from '../audio/stitch.js';
import { isoNow, type TranscriptMessage } from '../mqtt/messages.js';

/** Groups waiting for their last part; more means a last part was lost (the oldest is dropped). */
const MAX_OPEN_GROUPS = 8;
/** Parts stitched into one transcript at most (the schema's bound on stitched_from). */
const MAX_GROUP_PARTS = 1000;

/** The transcribed parts of one long utterance so far, in order. */
interface PartGroup {
  ids: string[];
  texts: string[];
  /** started_at of the first part. */
  startedAt?: string;
  audioMs: number;
  /** A part failed (or there were too many): no stitched transcript for this group. */
  broken: boolean;
}

/** After a part: nothing yet (null), the finished group's transcript, or a finished group with a part missing. */
export type GroupOutcome = null | { stitched: TranscriptMessage } | { missing: true; group: string };

export class TranscriptGroups {
  private readonly groups = new Map<string, PartGroup>();

  constructor(private readonly maxText: number) {}

  /** Groups still waiting for their last part. */
  get open(): number {
    return this.groups.size;
  }

  /** Forgets every open group (the pipeline stopped). */
  clear(): void {
    this.groups.clear();
  }

  /** A part that got no transcript: its group will not be stitched. */
  fail(split: UtteranceSplit): void {
    if (split.last) this.groups.delete(split.group);
    else this.groupFor(split).broken = true;
  }

  /**
   * Records a part's transcript (called in part order: each part is decided after the previous one). After the
   * last part, the group's outcome; `speechEnd` (wall ms) dates its latency.
   */
  add(split: UtteranceSplit, part: TranscriptMessage, speechEnd: number, now = Date.now()): GroupOutcome {
    const g = this.groupFor(split);
    // A group whose first part was not seen (listening started mid-speech, or it was dropped) is incomplete.
    if (g.ids.length + 1 !== split.part || g.ids.length >= MAX_GROUP_PARTS) g.broken = true;
    if (!g.broken) {
      g.ids.push(part.id);
      g.texts.push(part.text);
      g.startedAt ??= part.started_at;
      g.audioMs += part.audio_ms - (split.part > 1 ? Math.round(split.overlapMs) : 0);
    }
    if (!split.last) return null;
    this.groups.delete(split.group);
    if (g.broken) return { missing: true, group: split.group };
    return {
      stitched: {
        v: 1,
        id: split.group,
        ts: isoNow(now),
        text: stitchTranscripts(g.texts).slice(0, this.maxText),
        started_at: g.startedAt ?? part.started_at,
        ended_at: part.ended_at,
        audio_ms: Math.max(0, g.audioMs),
        source: part.source,
        ...(part.language !== undefined ? { language: part.language } : {}),
        stitched_from: g.ids,
        ...(part.random_weights ? { random_weights: true } : {}),
        latency_ms: { total: Math.max(0, Math.round(now - speechEnd)) },
      },
    };
  }

  /** The group of a part, opened on its first part seen (parts are decided in order, failures may come early). */
  private groupFor(split: UtteranceSplit): PartGroup {
    let g = this.groups.get(split.group);
    if (!g) {
      if (this.groups.size >= MAX_OPEN_GROUPS) this.groups.delete(this.groups.keys().next().value!);
      g = { ids: [], texts: [], audioMs: 0, broken: false };
      this.groups.set(split.group, g);
    }
    return g;
  }
}
