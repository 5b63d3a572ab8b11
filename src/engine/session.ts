/**
 * ONNX Runtime session for a package's decoder graph. Every option that changes speed or memory is a named
 * field here (not buried in a literal), so the benchmark can compare them one by one.
 */
import type { CacheOutputs } from './kv-cache.js';
import type * as ort from 'onnxruntime-node';
import type { Gemma4TextConfig } from '../model/gemma4/config.js';
import { type CacheSlot, DECODER_IO, cacheSlots } from '../model/gemma4/contract.js';
import type { WeightsPacking } from './prepacked-cache.js';

export type GraphOptimizationLevel = 'disabled' | 'basic' | 'extended' | 'all';

export interface SessionTuning {
  /** Intra-op threads (model.threads). */
  threads: number;
  graphOptimizationLevel: GraphOptimizationLevel;
  /** ORT's arena allocator: faster reuse, but it keeps peak activation memory reserved. */
  enableCpuMemArena: boolean;
  /** Pre-plans activation buffers per input shape; shapes change every step here (growing caches). */
  enableMemPattern: boolean;
  /**
   * Pre-packing copies MatMulNBits weights from the memory-mapped data file to the heap in a faster layout.
   * Off: weights stay file-backed (less anonymous memory), possibly slower matmuls.
   */
  disablePrepacking: boolean;
  /** Any further session config entries (onnxruntime_session_options_config_keys.h), e.g. session.x = '1'. */
  configEntries?: Record<string, string>;
}

export const DEFAULT_TUNING: Omit<SessionTuning, 'threads'> = {
  graphOptimizationLevel: 'all',
  enableCpuMemArena: true,
  enableMemPattern: false,
  disablePrepacking: false,
};

/** Maps tuning to ORT's SessionOptions (sequential execution: one decoder, intra-op parallelism only). */
export function sessionOptions(t: SessionTuning): ort.InferenceSession.SessionOptions {
  const session: Record<string, string> = {};
  const other: Record<string, Record<string, string>> = {};
  const entries: Record<string, string> = { ...(t.configEntries ?? {}) };
  if (t.disablePrepacking) entries['session.disable_prepacking'] = '1';
  // `extra` takes nested objects that ORT flattens with dots ("session.disable_prepacking").
  for (const [key, value] of Object.entries(entries)) {
    const dot = key.indexOf('.');
    if (dot <= 0) throw new Error(`session config key "${key}" must look like section.name`);
    const section = key.slice(0, dot);
    const name = key.slice(dot + 1);
    if (section === 'session') session[name] = value;
    else (other[section] ??= {})[name] = value;
  }
  return {
    executionProviders: ['cpu'],
    executionMode: 'sequential',
    intraOpNumThreads: t.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: t.graphOptimizationLevel,
    enableCpuMemArena: t.enableCpuMemArena,
    enableMemPattern: t.enableMemPattern,
    extra: { session, ...other },
  };
}

/** The loaded decoder: session plus what the engine needs to drive it. */
export interface DecoderSession {
  session: ort.InferenceSession;
  slots: CacheSlot[];
  vocabSize: number;
  hiddenSize: number;
  pleWidth: number;
  /** The graph takes media_embeds / media_mask (built with the media option). */
  acceptsMedia: boolean;
  /** What the graph returns of the cache: only the new rows (packages written now) or past + new. */
  cacheOutputs: CacheOutputs;
  /** Where the packed weights live: mapped from the prepacked file cache (found or built now) or on the heap. */
  prepacked: WeightsPacking;
  release(): Promise<void>;
}

/** Checks a decoder graph's inputs against the config and wraps it; releases the session when they do not match. */
export async function decoderSession(
  session: ort.InferenceSession,
  modelPath: string,
  cfg: Gemma4TextConfig,
  prepacked: WeightsPacking,
): Promise<DecoderSession> {
  const slots = cacheSlots(cfg);
  const inputs = new Set(session.inputNames);
  const pleWidth = cfg.numHiddenLayers * cfg.hiddenSizePerLayerInput;
  const missing = [
    DECODER_IO.inputIds,
    ...(pleWidth ? [DECODER_IO.perLayerRows] : []),
    DECODER_IO.positionIds,
    ...slots.flatMap((s) => [s.pastKey, s.pastValue]),
  ].filter((n) => !inputs.has(n));
  if (missing.length) {
    await session.release();
    throw new Error(
      `${modelPath}: decoder graph lacks inputs ${missing.join(', ')} (does it match the package config?)`,
    );
  }
  let released = false;
  return {
    session,
    slots,
    vocabSize: cfg.vocabSize,
    hiddenSize: cfg.hiddenSize,
    pleWidth,
    acceptsMedia: inputs.has(DECODER_IO.mediaEmbeds) && inputs.has(DECODER_IO.mediaMask),
    cacheOutputs: slots.length > 0 && session.outputNames.includes(slots[0]!.newKey) ? 'new' : 'present',
    prepacked,
    async release() {
      if (released) return;
      released = true;
      await session.release();
    },
  };
}
